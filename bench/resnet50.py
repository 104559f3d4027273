"""A ResNet-50-shaped ONNX classifier built with onnx.helper and numpy (no torch, no download).

The topology is torchvision's `resnet50` (v1.5: the stride sits in the bottleneck's 3x3 conv):

    conv 7x7/2 (64) + BN + ReLU → MaxPool 3x3/2 pad 1
    → 4 stages of bottlenecks [3, 4, 6, 3], widths 64/128/256/512, expansion 4
      (1x1 → 3x3/stride → 1x1, BN after each, 1x1/stride + BN downsample on the first block)
    → GlobalAveragePool → Flatten → Gemm 2048→1000 (transB=1, as the exporters write it)

Weights are random (seeded): convs He-initialised like torchvision (kaiming normal, fan_out,
ReLU gain), the classifier uniform(±1/√2048). BatchNormalization gets seeded, non-trivial
statistics so that folding is not a no-op; by default it is folded into the convs (conv + bias),
as the PyTorch exporters do in eval mode; `fold_bn=False` keeps BatchNormalization nodes.
The residual branch's last BN scale is small (like torchvision's `zero_init_residual`, but not
zero), which keeps activations in a sane range through 16 blocks of random weights: no overflow,
no denormals, so timings are those of a trained model.

Opset 17, input "input" [N, 3, 224, 224] (dynamic batch), output "logits" [N, 1000]. Tensor
names follow the TorchScript exporter (`/layer4/layer4.2/relu_2/Relu_output_0`), so onnxcam's
default layer is the last bottleneck's output ReLU.

    python bench/resnet50.py [--no-fold-bn] [--seed 0] [-o PATH]   # prints the cached path
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = 1  # bump when the generated model changes, so stale cache files are not reused
OPSET = 17
STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]  # (width, blocks, stride)
EXPANSION = 4
BN_EPS = 1e-5


def default_path(fold_bn: bool = True, seed: int = 0) -> Path:
    """Where `build_resnet50` caches the model for these settings."""
    return CACHE / f"resnet50-v{VERSION}-{'folded' if fold_bn else 'bn'}-seed{seed}.onnx"


class _Builder:
    def __init__(self, fold_bn: bool, seed: int) -> None:
        self.fold_bn = fold_bn
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv_bn(self, x: str, scope: str, cin: int, cout: int, k: int, stride: int, last_in_branch: bool = False) -> str:
        """Conv (no bias) + BatchNormalization, or the conv with BN folded in. Returns the output."""
        fan_out = cout * k * k
        w = (self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_out)))
        gamma = (0.2 if last_in_branch else 1.0) * (1.0 + 0.1 * self.rng.standard_normal(cout))
        beta = 0.05 * self.rng.standard_normal(cout)
        mean = 0.05 * self.rng.standard_normal(cout)
        var = self.rng.uniform(0.5, 1.5, cout)
        conv_name, bn_name = _names(scope)
        pads = [k // 2] * 4
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads, dilations=[1, 1], group=1)
        if self.fold_bn:
            scale = gamma / np.sqrt(var + BN_EPS)
            wf = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            bf = (beta - mean * scale).astype(np.float32)
            out = f"{conv_name}/Conv_output_0"
            n = len(self.inits)  # the exporters name folded parameters onnx::Conv_<n>
            self.nodes.append(helper.make_node(
                "Conv", [x, self.init(f"onnx::Conv_{n}", wf), self.init(f"onnx::Conv_{n + 1}", bf)],
                [out], name=f"{conv_name}/Conv", **attrs,
            ))
            return out
        conv_out = f"{conv_name}/Conv_output_0"
        self.nodes.append(helper.make_node(
            "Conv", [x, self.init(f"{_param(scope)}.weight", w)], [conv_out], name=f"{conv_name}/Conv", **attrs,
        ))
        p = _param(scope).replace("conv", "bn").replace("downsample.0", "downsample.1")
        out = f"{bn_name}/BatchNormalization_output_0"
        self.nodes.append(helper.make_node(
            "BatchNormalization",
            [conv_out] + [self.init(f"{p}.{n}", v.astype(np.float32)) for n, v in
                          (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))],
            [out], name=f"{bn_name}/BatchNormalization", epsilon=BN_EPS, momentum=0.9,
        ))
        return out

    def relu(self, x: str, scope: str) -> str:
        out = f"{scope}/Relu_output_0"
        self.nodes.append(helper.make_node("Relu", [x], [out], name=f"{scope}/Relu"))
        return out

    def bottleneck(self, x: str, stage: int, block: int, cin: int, width: int, stride: int) -> tuple[str, int]:
        s = f"/layer{stage}/layer{stage}.{block}"
        cout = width * EXPANSION
        h = self.relu(self.conv_bn(x, f"{s}/conv1", cin, width, 1, 1), f"{s}/relu")
        h = self.relu(self.conv_bn(h, f"{s}/conv2", width, width, 3, stride), f"{s}/relu_1")
        h = self.conv_bn(h, f"{s}/conv3", width, cout, 1, 1, last_in_branch=True)
        skip = x
        if stride != 1 or cin != cout:
            skip = self.conv_bn(x, f"{s}/downsample/downsample.0", cin, cout, 1, stride)
        add = f"{s}/Add_output_0"
        self.nodes.append(helper.make_node("Add", [h, skip], [add], name=f"{s}/Add"))
        return self.relu(add, f"{s}/relu_2"), cout


def _names(scope: str) -> tuple[str, str]:
    """TorchScript-style node scopes for a conv and its BN ("/layer1/layer1.0/conv1" → ".../bn1")."""
    head, _, last = scope.rpartition("/")
    if last.startswith("downsample."):
        return scope, f"{head}/downsample.1"
    return scope, f"{head}/{last.replace('conv', 'bn')}"


def _param(scope: str) -> str:
    """State-dict-style parameter prefix ("/layer1/layer1.0/conv1" → "layer1.0.conv1")."""
    parts = [p for p in scope.split("/") if p]
    keep = [p for p in parts if not (p.startswith("layer") and "." not in p)]
    return ".".join(keep).replace("downsample.downsample.", "downsample.")


def make_resnet50(fold_bn: bool = True, seed: int = 0) -> onnx.ModelProto:
    """The model in memory (about 100 MB of float32 weights)."""
    b = _Builder(fold_bn, seed)
    x = b.relu(b.conv_bn("input", "/conv1", 3, 64, 7, 2), "/relu")
    pooled = "/maxpool/MaxPool_output_0"
    b.nodes.append(helper.make_node(
        "MaxPool", [x], [pooled], name="/maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
        ceil_mode=0, dilations=[1, 1],
    ))
    x, c = pooled, 64
    for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
        for i in range(blocks):
            x, c = b.bottleneck(x, stage, i, c, width, stride if i == 0 else 1)
    gap = "/avgpool/GlobalAveragePool_output_0"
    flat = "/Flatten_output_0"
    bound = 1.0 / np.sqrt(c)
    fc_w = b.rng.uniform(-bound, bound, (1000, c)).astype(np.float32)
    fc_b = b.rng.uniform(-bound, bound, 1000).astype(np.float32)
    b.nodes += [
        helper.make_node("GlobalAveragePool", [x], [gap], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", [gap], [flat], name="/Flatten", axis=1),
        helper.make_node("Gemm", [flat, b.init("fc.weight", fc_w), b.init("fc.bias", fc_b)], ["logits"],
                         name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    graph = helper.make_graph(
        b.nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxcam-bench")
    model.ir_version = 8
    helper.set_model_props(model, {
        "onnxcam.bench": f"resnet50 v{VERSION} fold_bn={int(fold_bn)} seed={seed} (random He-initialised weights)",
    })
    onnx.checker.check_model(model)
    return model


def build_resnet50(path: str | os.PathLike | None = None, fold_bn: bool = True, seed: int = 0) -> Path:
    """Write the model to `path` (default: bench/.cache/resnet50-v1-<folded|bn>-seed<seed>.onnx)
    unless that file already exists; return the path. The file is ~100 MB: never commit it."""
    out = Path(path) if path is not None else default_path(fold_bn, seed)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(make_resnet50(fold_bn, seed).SerializeToString())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", help="where to write (default: the cache path)")
    a = ap.parse_args(argv)
    print(build_resnet50(a.output, fold_bn=not a.no_fold_bn, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
