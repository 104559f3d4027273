"""Hostile ONNX models, generated at test time by seeded code (nothing binary is committed).

The base is a tiny classifier, Conv(3→4, 3×3) → Relu → GlobalAveragePool → Flatten → Gemm, that
every CAM method can explain in milliseconds; each generator writes one variant that breaks one
assumption: not ONNX, truncated, an IR or opset onnxruntime refuses or the rewriter mishandles,
a cycle, an unknown op, non-finite outputs, a fixed batch of 1, external data that points out of
the model's folder, a huge declared input, huge or wrong-typed metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32


def _weights(classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv_w": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (4,)).astype(np.float32),
        "fc_w": rng.normal(0, 1.0, (classes, 4)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (classes,)).astype(np.float32),
    }


def tiny_graph(classes: int = 10, batch: int | str = "N", size: tuple[int, int] | tuple[str, str] = (SIZE, SIZE),
               seed: int = 0, fc_bias: np.ndarray | None = None, extra_nodes: list | None = None,
               relu_out: str = "relu") -> onnx.GraphProto:
    """The base classifier's graph; `extra_nodes` are spliced between the Relu and the pooling
    (they must read `relu` and write `relu2`)."""
    w = _weights(classes, seed)
    if fc_bias is not None:
        w["fc_b"] = fc_bias.astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
    ]
    pooled_in = "relu"
    if extra_nodes:
        nodes += extra_nodes
        pooled_in = "relu2"
    nodes += [
        helper.make_node("GlobalAveragePool", [pooled_in], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size[0], size[1]])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    return helper.make_graph(nodes, "tiny", [x], [y], inits)


def tiny_model(classes: int = 10, opset: int = 13, ir: int = 8, **kw) -> onnx.ModelProto:
    g = tiny_graph(classes, **kw)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="hostile")
    m.ir_version = ir
    return m


def save(model: onnx.ModelProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    if metadata:
        for k, v in metadata.items():
            e = model.metadata_props.add()
            e.key, e.value = k, v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def good(path: Path, classes: int = 10, **kw) -> Path:
    return save(tiny_model(classes, **kw), path)


# -- broken files --------------------------------------------------------------------------------
def not_onnx(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def png_named_onnx(path: Path) -> Path:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    path.write_bytes(buf.tobytes())
    return path


def truncated(path: Path, fraction: float = 0.6) -> Path:
    data = tiny_model().SerializeToString()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def ir14(path: Path) -> Path:
    """IR 14 (onnx 1.23's make_model default), which onnxruntime 1.31 refuses to load and 1.32 reads."""
    return save(tiny_model(ir=14, opset=21), path)


def opset7_ir3(path: Path) -> Path:
    """An old model: IR 3 (initializers also listed as graph inputs), opset 7."""
    m = tiny_model(opset=7, ir=3)
    for init in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return save(m, path)


def cycle(path: Path) -> Path:
    """Two nodes feeding each other on the path from the input to the output."""
    extra = [
        helper.make_node("Add", ["relu", "loop_b"], ["loop_a"], name="loop_add"),
        helper.make_node("Relu", ["loop_a"], ["loop_b"], name="loop_relu"),
        helper.make_node("Identity", ["loop_a"], ["relu2"], name="loop_out"),
    ]
    return save(tiny_model(extra_nodes=extra), path)


def custom_op(path: Path) -> Path:
    """An op of a domain no runtime knows, between the layer and the head."""
    extra = [helper.make_node("Frobnicate", ["relu"], ["relu2"], name="frob", domain="com.hostile")]
    m = tiny_model(extra_nodes=extra)
    m.opset_import.append(helper.make_opsetid("com.hostile", 1))
    return save(m, path)


def nonfinite(path: Path, value: float) -> Path:
    """Every output is NaN (value=nan) or +Inf (value=inf): the head's bias."""
    return save(tiny_model(fc_bias=np.full(10, value)), path)


def fixed_batch1(path: Path) -> Path:
    return save(tiny_model(batch=1), path)


def with_external(path: Path, location: str) -> Path:
    """The Gemm weight stored as external data at `location` (relative to the model's folder)."""
    m = tiny_model()
    for init in m.graph.initializer:
        if init.name == "fc_w":
            raw = numpy_helper.to_array(init).tobytes()
            init.ClearField("float_data")
            init.ClearField("raw_data")
            init.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
                e = init.external_data.add()
                e.key, e.value = k, v
    return save(m, path)


def external_outside(folder: Path) -> Path:
    """External data at ../secret.bin: outside the model's folder."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "secret.bin").write_bytes(np.ones(40, np.float32).tobytes())
    return with_external(folder / "models" / "m.onnx", "../secret.bin")


def external_absolute(folder: Path) -> Path:
    (folder / "secret.bin").write_bytes(np.ones(40, np.float32).tobytes())
    (folder / "models").mkdir(parents=True, exist_ok=True)
    return with_external(folder / "models" / "m.onnx", str((folder / "secret.bin").resolve()))


def external_symlink(folder: Path) -> Path:
    """External data through a symlink in the model's folder pointing outside it."""
    (folder / "secret.bin").write_bytes(np.ones(40, np.float32).tobytes())
    (folder / "models").mkdir(parents=True, exist_ok=True)
    os.symlink(folder / "secret.bin", folder / "models" / "weights.bin")
    return with_external(folder / "models" / "m.onnx", "weights.bin")


def external_missing(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True, exist_ok=True)
    return with_external(folder / "models" / "m.onnx", "nothere.bin")


def huge_input(path: Path, side: int = 60000) -> Path:
    """A fixed input of 1×3×side×side (43 GB of float32 at 60000²)."""
    return save(tiny_model(batch=1, size=(side, side)), path)


def many_classes(path: Path, classes: int) -> Path:
    return save(tiny_model(classes=classes), path)


def with_metadata(path: Path, metadata: dict[str, str], **kw) -> Path:
    return save(tiny_model(**kw), path, metadata)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def huge_labels(path: Path, megabytes: int = 235) -> Path:
    """A valid model whose metadata `onnxcam.labels` is a JSON list of ~`megabytes` MB.

    Written without building the string: protobuf lets a message be followed by more of its
    fields, so the metadata entry (field 14, a StringStringEntryProto) is appended to the
    serialised model and its value streamed in 1 MiB chunks.
    """
    base = tiny_model().SerializeToString()
    item = b'"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",'  # 50 bytes
    chunk = item * ((1 << 20) // len(item))
    n_chunks = megabytes * (1 << 20) // len(chunk)
    value_len = 1 + n_chunks * len(chunk) + len(b'"end"]')
    key = b"onnxcam.labels"
    entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(value_len)
    entry_len = len(entry) + value_len
    with open(path, "wb") as f:
        f.write(base)
        f.write(b"\x72" + _varint(entry_len))  # field 14, wire type 2
        f.write(entry)
        f.write(b"[")
        for _ in range(n_chunks):
            f.write(chunk)
        f.write(b'"end"]')
    return path


# wrong-typed metadata values (the model's own): each must be one error line, exit 1
BAD_METADATA: dict[str, dict[str, str]] = {
    "labels-int": {"onnxcam.labels": "5"},
    "labels-object": {"onnxcam.labels": json.dumps({"a": 1})},
    "labels-not-json": {"onnxcam.labels": "[cat, dog"},
    "labels-nested": {"onnxcam.labels": json.dumps([["a"], {"b": 1}, None])},
    "preprocess-list": {"onnxcam.preprocess": "[1, 2]"},
    "preprocess-size-text": {"onnxcam.preprocess": json.dumps({"size": "big"})},
    "preprocess-size-zero": {"onnxcam.preprocess": json.dumps({"size": [0, 0]})},
    "preprocess-size-huge": {"onnxcam.preprocess": json.dumps({"size": [100000, 100000]})},
    "preprocess-mean-text": {"onnxcam.preprocess": json.dumps({"mean": "x"})},
    "preprocess-std-zero": {"onnxcam.preprocess": json.dumps({"std": [0, 0, 0]})},
    "preprocess-mean-len2": {"onnxcam.preprocess": json.dumps({"mean": [1, 2]})},
    "preprocess-multiple-zero": {"onnxcam.preprocess": json.dumps({"size": "native", "multiple": 0})},
    "preprocess-letterbox-text": {"onnxcam.preprocess": json.dumps({"letterbox": "yes please"})},
    "preprocess-labels-int": {"onnxcam.preprocess": json.dumps({"labels": 7})},
    "preprocess-scale-nan": {"onnxcam.preprocess": '{"scale": NaN}'},
    "preset-unknown": {"onnxcam.preset": "sepia"},
}
