"""The CAM method contract: one small class per method, over one hook.

The base class does what every method shares: the weighted sum over channels and the ReLU (the
per-image normalisation and resize that follow are maps.py's, GUIDE.md's conventions as
pytorch-grad-cam does them). A method overrides `weights` (N, C) — or, for the element-wise ones,
`cam` (N, h, w). `METHODS` registers them by name.

A method may also override `graph`: the same reductions written as ONNX ops (graph/rewrite.py
appends them to the rewritten model, so they run inside onnxruntime, multi-threaded, next to the
forward pass, and A and ∂y/∂A are reduced before they leave it). What `graph` returns comes back
after the run in `MethodInputs.graph` under the same keys; a map returned as "cam" is the method's
map (the explainer uses it instead of calling `cam`, and appends its heatmap to the same run:
graph/scaled_maps.py). A method whose `graph` is its whole map
from A, ∂y/∂A and the targets alone sets `graph_map`: graph/heatmap.py appends that same `graph`
to exported models (`onnxcam export --heatmap`), so each formula is written once. The numpy
`cam` stays the formula of record
(the ort-training backend, eigen_smooth, and the tests' cross-checks use it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from ..errors import UsageError
from ..graph.rewrite import GraphTensors
from ..layers import CamHead
from ..tokens import TokenModel
from .maps import first_component


@dataclass
class MethodInputs:
    """What a method sees: channels-first activations A and gradients g = ∂y_c/∂A."""

    activations: np.ndarray  # (N, C, h, w)
    gradients: np.ndarray | None  # (N, C, h, w) or None
    targets: np.ndarray  # (N,) int64
    outputs: np.ndarray  # (N, K)
    head: CamHead | None = None
    inputs: np.ndarray | None = None  # the batch, in the model's layout
    layout: str = "NCHW"  # the model input's layout
    input_size: tuple[int, int] = (0, 0)  # (H, W)
    # forward(batch in the model's layout) → (B, K) scores of the explained output
    forward: Optional[Callable[[np.ndarray], np.ndarray]] = None
    # tail(n, activations (B, C, h, w) channels first) → (B, K): the model after the layer, with
    # everything else it needs taken from image n
    tail: Optional[Callable[[int, np.ndarray], np.ndarray]] = None
    input_gradients: np.ndarray | None = None  # (N, C_in, H, W) ∂y_t/∂x, channels first
    graph: dict[str, np.ndarray] = field(default_factory=dict)  # what the method's `graph` computed in the run
    item_bytes: int = 0  # one image's working set in a forward run (input + twice the largest tensor)
    # gradients_at(batch) → (activations, gradients) at the layer for another input, same targets
    gradients_at: Optional[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = None
    pixel_maps: dict = field(default_factory=dict)  # pixel-space outputs a method adds (Result.extra)
    seeds: np.ndarray | None = None  # (N, ...) cotangents, when the target is not a plain class
    tokens: TokenModel | None = None  # vision transformers: prefix, grid, the tokens the head reads
    attentions: list = field(default_factory=list)  # per block (N, heads, T, T) probabilities
    attention_gradients: list | None = None  # per block ∂y_t/∂A (N, heads, T, T)

    def score(self, n: int, out: np.ndarray) -> np.ndarray:
        """The explained score of item n's target on a batch of outputs (B, ...): y[:, t_n] for a
        class target, ⟨u_n, y⟩ for a seed."""
        if self.seeds is None:
            return out.reshape(len(out), -1)[:, int(self.targets[n])]
        return out.reshape(len(out), -1) @ self.seeds[n].reshape(-1).astype(out.dtype)

    @property
    def inputs_nchw(self) -> np.ndarray:
        x = self.inputs
        return x if self.layout == "NCHW" else x.transpose(0, 3, 1, 2)


class CAMMethod:
    """Base class: map = ReLU(Σ_k w_k A^k) with w from `weights`."""

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True  # ∂y/∂A at the layer
    needs_head: ClassVar[bool] = False  # the GAP → linear classifier weights (CAM)
    input_gradient: ClassVar[Optional[str]] = None  # ∂y/∂x at the input: "plain" or "guided"
    bias_taps: ClassVar[bool] = False  # FullGrad's bias-gradient terms
    needs_attention: ClassVar[bool] = False  # every block's attention probabilities (transformers)
    attention_gradients: ClassVar[bool] = False  # and their gradients

    uses_head: ClassVar[bool] = False  # the head where there is one (None elsewhere, no error)
    graph_map: ClassVar[bool] = False  # `graph` returns the whole map as "cam" (export --heatmap uses it)

    def graph(self, g: GraphTensors) -> dict[str, str]:
        """The method's reductions as ONNX ops (through `g.e`), returned as {key: tensor}; none by default."""
        return {}

    @classmethod
    def needs_backward(cls) -> bool:
        """True when the method runs a backward pass of any kind: ∂y/∂A at the layer, ∂y/∂x at the
        input (guided backpropagation, FullGrad), the bias gradients (FullGrad) or the attention
        gradients (Grad-Rollout, Chefer et al.)."""
        return bool(cls.needs_gradients or cls.input_gradient or cls.bias_taps or cls.attention_gradients)

    def weights(self, inp: MethodInputs) -> np.ndarray:
        raise NotImplementedError

    def cam(self, inp: MethodInputs) -> np.ndarray:
        w = self.weights(inp).astype(np.float32)
        a = inp.activations
        m = np.matmul(w[:, None, :], a.reshape(a.shape[0], a.shape[1], -1)).reshape(a.shape[0], *a.shape[2:])
        return np.maximum(m, 0).astype(np.float32, copy=False)

    def weighted(self, inp: MethodInputs) -> np.ndarray:
        """The per-channel terms whose channel sum is the map (N, C, h, w): w_k A^k by default;
        element-wise methods override it (g ⊙ A, ReLU(g) ⊙ A, ...)."""
        return self.weights(inp)[:, :, None, None] * inp.activations.astype(np.float64)

    def eigen_cam(self, inp: MethodInputs) -> np.ndarray:
        """eigen_smooth: the first principal component of the weighted activations instead of
        their sum (pytorch-grad-cam's eigen_smooth; the sign fixed as Eigen-CAM's)."""
        return np.maximum(first_component(self.weighted(inp)), 0).astype(np.float32)


METHODS: dict[str, type[CAMMethod]] = {}
ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "elementwise": "gradcamelementwise"}


def register(cls: type[CAMMethod]) -> type[CAMMethod]:
    """Class decorator: make the method available by its `name` (METHODS, get_method, the CLI)."""
    METHODS[cls.name] = cls
    return cls


def configured(name: str | CAMMethod, **params: Any) -> CAMMethod:
    """A method by name built with the constructor parameters given (None: left at the method's
    default); UsageError naming a parameter the method does not take (CLI options such as
    --head-fusion for `rollout`)."""
    given = {k: v for k, v in params.items() if v is not None}
    method = get_method(name)
    if not given:
        return method
    accepted = inspect.signature(type(method).__init__).parameters
    bad = sorted(k for k in given if k not in accepted)
    if bad:
        opts = ", ".join("--" + b.replace("_", "-") for b in bad)
        raise UsageError(f"method {method.name} takes no {opts}")
    return type(method)(**given)


def get_method(name: str | CAMMethod) -> CAMMethod:
    """A method instance from its name (case, '-' and '_' ignored; aliases as gradcampp), or the
    instance itself; UsageError listing the names where unknown."""
    if isinstance(name, CAMMethod):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    for n, cls in METHODS.items():
        if n.replace("-", "").replace("_", "") == key:
            return cls()
    raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
