"""The Python API: `Explainer(model).explain(batch)` → `Result`.

The explainer ties the layers together: it prepares the model at each image size (graph/), builds
the rewritten model and its onnxruntime session (graph/rewrite.py, runtime.py), runs a batch, hands
the activations and gradients to the method (methods/) and turns the method's maps into heatmaps
(methods/maps.py). What it builds is cached per image size in named caches.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from .backends.ort_training import OrtTrainingSession
from . import detection
from .blas import one_blas_thread
from .preselection import PreSelection, final_outputs, find_preselection
from .errors import HeadError, ItemError, ModelLoadError, UsageError
from .limits import check_text_value
from .graph.rewrite import (
    ATTN_GRAD_OUTPUT, ATTN_OUTPUT, ACT_OUTPUT, GRAD_OUTPUT, INPUT_GRAD_OUTPUT, SEED_INPUT, TARGET_INPUT, TARGETS_OUTPUT, ExplainModel,
    GraphTensors, MethodGraph, Prepared, build_explain_model, prepare,
)
from .graph.scaled_maps import HEATMAPS_OUTPUT, MAPS_INPUT, append_scaled_maps, scaled_maps_model
from .graph.split import Split, split_at
from .layers import CamHead, Layer, cam_head
from .methods import CAMMethod, MethodInputs, get_method
from .methods.maps import normalize_maps, scale_maps
from .model import ModelInfo, inspect_model, load_model
from .protos import copy_model
from .runtime import CPU, make_session, provider_of, run, session_for
from .types import FLOAT_TYPES
from .targets import ClassTarget, DetectionTarget, Target, TopK
from .tokens import from_grid, to_grid

log = logging.getLogger(__name__)

Targets = Union[None, int, Sequence[int], np.ndarray, Target, Sequence[Target], TopK]
Size = tuple[int, int]


@dataclass
class _SeedPlan:
    """Cotangents for a batch: the output they apply to, the seeds, the class per item (or −1)."""

    output: str
    seeds: np.ndarray
    classes: np.ndarray
    errors: list[Optional[str]] = field(default_factory=list)  # per item: why it cannot be explained


@dataclass(frozen=True)
class _BuildKey:
    """What a rewritten model depends on besides the method: image size, layer, output, and
    whether the cotangent is fed (targets other than classes)."""

    hw: Size
    layer: Optional[str]
    output: Optional[str]
    seed_input: bool


@dataclass
class _Built:
    """A rewritten model, the session that runs it, and the CAM head where the method needs it."""

    prep: Prepared
    em: ExplainModel
    session: Any  # ort.InferenceSession, or OrtTrainingSession (same run/get_providers)
    head: Optional[CamHead]
    item_bytes: int = 0  # one image's working set in a forward run (sizes Score-CAM's batches)


@dataclass
class _SplitSessions:
    """The model cut at a layer (Ablation-CAM): sessions for the part before and after it."""

    split: Split
    head: ort.InferenceSession
    tail: ort.InferenceSession


@dataclass
class Result:
    """One explained batch. Maps and tensors are channels-first whatever the model's layout."""

    heatmaps: np.ndarray  # (N, H, W) float32 in [0, 1], at the model input's spatial size
    cams: np.ndarray  # (N, h, w) float32 at the layer's resolution, after ReLU, before normalising
    activations: np.ndarray  # (N, C, h, w) float32
    gradients: np.ndarray | None  # (N, C, h, w) float32, None for gradient-free methods
    targets: np.ndarray  # (N,) int64
    outputs: np.ndarray  # (N, K) float32: the explained output (any shape for segmenters, detectors)
    layer: str
    method: str
    provider: str = ""
    extra: dict = field(default_factory=dict)  # pixel-space maps a method adds (guided backprop, ...)
    layer_results: list["Result"] = field(default_factory=list)  # per layer, when several are fused
    errors: list[Optional[str]] = field(default_factory=list)  # per item: None, or why its map means nothing


def _read_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[str, onnx.ModelProto]:
    if isinstance(model, onnx.ModelProto):
        return "<model>", model
    path = os.fspath(model)
    return path, load_model(path)


def metadata_labels(metadata: dict[str, str]) -> list[str] | None:
    """The class names in a model's metadata (`onnxcam.labels`, a JSON list of strings, at most
    MAX_TEXT_BYTES, checked before parsing); ModelLoadError when the value is anything else."""
    raw = metadata.get("onnxcam.labels")
    if not raw:
        return None
    check_text_value(raw, "the model's metadata onnxcam.labels", error=ModelLoadError)
    try:
        labels = json.loads(raw)
    except (ValueError, RecursionError):
        raise ModelLoadError("the model's metadata onnxcam.labels is not valid JSON; it must be a JSON list of "
                             "class names") from None
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise ModelLoadError("the model's metadata onnxcam.labels must be a JSON list of strings (class names)")
    return labels


def _other_inputs(info: ModelInfo, given: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The values of the model's inputs besides the image, checked against its inputs and cast
    to their types."""
    values = {k: np.asarray(v) for k, v in (given or {}).items()}
    others = {i.name: i for i in info.inputs if i.name != info.image_input.name}
    unknown = set(values) - set(others)
    if unknown:
        raise UsageError(f"the model has no input(s) {sorted(unknown)}; its other inputs: {sorted(others) or 'none'}")
    missing = set(others) - set(values)
    if missing:
        desc = ", ".join(f"{n} {list(others[n].shape)} {others[n].dtype}" for n in sorted(missing))
        raise UsageError(f"the model also needs input(s) {desc}: give them (inputs={{name: value}}, CLI --input NAME=VALUE)")
    return {name: _fit_shape(name, v.astype(others[name].dtype, copy=False), others[name].shape)
            for name, v in values.items()}


def _fit_shape(name: str, v: np.ndarray, declared: tuple) -> np.ndarray:
    """A value for input `name` in its declared shape: as given when it fits (symbolic axes match
    anything), reshaped when every axis is fixed and the element count agrees (a scalar for a
    shape-[1] input), with a leading axis added for a symbolic batch; UsageError otherwise."""
    if not declared:
        return v
    fits = len(declared) == v.ndim and all(not isinstance(d, int) or d == s for d, s in zip(declared, v.shape))
    if fits:
        return v
    if all(isinstance(d, int) for d in declared) and v.size == int(np.prod(declared)):
        return v.reshape(declared)
    rest = declared[1:]
    if len(declared) == v.ndim + 1 and not isinstance(declared[0], int) and all(
            not isinstance(d, int) or d == s for d, s in zip(rest, v.shape)):
        return v[None]
    raise UsageError(f"input {name}: a value of shape {list(v.shape)} does not fit its declared shape "
                     f"{list(declared)}")


def _in_chunks(session, key: str, rows: np.ndarray, others: dict[str, np.ndarray], fixed: int | None) -> np.ndarray:
    """The session's first output for `rows` fed as `key` (with `others` as they are): in chunks of
    `fixed` rows where the model's batch is fixed (the last chunk padded by repeating its last row,
    the padding dropped)."""
    n = len(rows)
    if not fixed or fixed == n:
        return run(session, {key: rows, **others})[0]
    outs = []
    for s in range(0, n, fixed):
        chunk = rows[s : s + fixed]
        m = len(chunk)
        if m < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - m, axis=0)])
        outs.append(run(session, {key: chunk, **others})[0][:m])
    return np.concatenate(outs)


def _item_bytes(prep: Prepared) -> int:
    """One image's working set in a forward run, estimated from the shapes: its input plus twice
    its largest intermediate tensor (onnxruntime reuses buffers, so the sum would overstate it)."""
    def size(info) -> int:
        dims = info.shape[1:] if info.shape else ()
        if not all(isinstance(d, int) for d in dims):
            return 0
        return int(np.prod(dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(info.elem_type).itemsize
    floats = [size(i) for i in prep.shapes.values() if i.elem_type in FLOAT_TYPES]
    return size(prep.shapes[prep.info.image_input.name]) + 2 * max(floats, default=0)


def _to_nchw(a: np.ndarray, layer: Layer) -> np.ndarray:
    """A layer's tensor as channels-first (N, C, h, w) float32: 4-D tensors transposed (no copy
    when already NCHW), token tensors without their prefix tokens, on the patch grid."""
    return to_grid(a, layer.layout, layer.prefix, (layer.height, layer.width))


def _from_nchw(acts: np.ndarray, layer: Layer, own: np.ndarray) -> np.ndarray:
    """(B, C, h, w) activations back in the layer's layout; token layers with image's own prefix
    tokens (`own`: its activation, batch 1), zeroed in the channels `acts` ablates."""
    if not layer.is_tokens:
        return from_grid(acts, layer.layout)
    ntc = own.transpose([layer.layout.index(a) for a in "NTC"])
    prefix = np.repeat(ntc[:, : layer.prefix], len(acts), axis=0)
    ablated = ~acts.reshape(len(acts), acts.shape[1], -1).any(axis=2)
    ablated &= ntc[:, layer.prefix:].any(axis=1)
    prefix = prefix * ~ablated[:, None, :]
    return from_grid(acts, layer.layout, prefix)


def _per_head(a: np.ndarray, n: int) -> np.ndarray:
    """Attention probabilities as (N, heads, T, T): exporters keep the batch outermost, heads
    next, or fold them into one axis (N·heads, T, T)."""
    t = a.shape[-1]
    return a.reshape(n, -1, t, t)
def _concat_results(runs: list["Result"]) -> "Result":
    """Results of single-item runs as one (outputs kept per run where their shapes differ)."""
    first = runs[0]
    cat = lambda name: np.concatenate([getattr(r, name) for r in runs])  # noqa: E731
    outs = [r.outputs for r in runs]
    same = all(o.shape == outs[0].shape for o in outs)
    return Result(
        heatmaps=cat("heatmaps"), cams=cat("cams"), activations=cat("activations"),
        gradients=None if first.gradients is None else cat("gradients"), targets=cat("targets"),
        outputs=np.concatenate(outs) if same else np.array(outs + [None], dtype=object)[:-1],
        layer=first.layer, method=first.method, provider=first.provider,
        layer_results=[_concat_results([r.layer_results[i] for r in runs]) for i in range(len(first.layer_results))],
        errors=[e for r in runs for e in r.errors],
    )


def _item_errors(seeded: list[Optional[str]], results: list["Result"]) -> list[Optional[str]]:
    """Per item: why its map means nothing — the target's own error, or a map that is exactly zero
    at every layer (∂y/∂A = 0 there, or the ReLU removed all of it) — else None."""
    errors = list(seeded)
    for n, err in enumerate(errors):
        if err is None and not any(np.any(r.cams[n]) for r in results):
            errors[n] = (f"the map is exactly zero at {' + '.join(r.layer for r in results)}: the target does not "
                         "depend on this layer here (or every contribution is negative); try another --layer or target")
    return errors




class Explainer:
    """Explain an ONNX image classifier with a CAM method.

    >>> ex = Explainer("model.onnx", method="gradcam")      # doctest: +SKIP
    >>> res = ex.explain(batch)                             # doctest: +SKIP
    >>> res.heatmaps.shape                                  # (N, H, W)   # doctest: +SKIP

    model: a path or an onnx.ModelProto. method: a name from `onnxcam.METHODS` or an instance.
    layer: an ONNX tensor name (default: the last spatial activation feeding the output), or a
        list of them: their heatmaps are fused (`fuse="mean"` or `"max"`), as pytorch-grad-cam
        does with several target layers.
    providers: onnxruntime providers (default: CUDA where it works, else CPU).
    output: the output to explain (default: the first float output shaped (N, K)).
    aug_smooth: test-time augmentation — average the heatmaps of the image flipped left-right ×
        its values scaled by 0.9, 1 and 1.1 (pytorch-grad-cam's aug_smooth), maps flipped back.
    eigen_smooth: replace Σ_k w_k A^k by its first principal component over locations (less noise).
    inputs: values for the model's other inputs (besides the image), fed with every batch; an
        array whose first axis is 1 is repeated over the batch where the model's batch is dynamic.
    backend: "onnx" (default: onnxcam's engine, plain ai.onnx ops) or "ort-training"
        (onnxruntime-training's gradient builder; needs that wheel in place of onnxruntime).
    """

    def __init__(
        self,
        model: str | os.PathLike | onnx.ModelProto,
        method: str | CAMMethod = "gradcam",
        layer: str | None = None,
        providers: Sequence[str] | None = None,
        output: str | None = None,
        threads: int | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        fuse: str = "mean",
        backend: str = "onnx",
        inputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.path, self._model = _read_model(model)
        self.info: ModelInfo = inspect_model(self._model, self.path)
        self.method = get_method(method)
        if fuse not in ("mean", "max"):
            raise UsageError(f"fuse must be 'mean' or 'max', got {fuse!r}")
        self.layer_names: list[str | None] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        if not self.layer_names:
            raise UsageError("layer=[] names no layer")
        self.layer_name = self.layer_names[0]
        self.fuse = fuse
        if backend not in ("onnx", "ort-training"):
            raise UsageError(f"backend must be 'onnx' (onnxcam's engine) or 'ort-training', got {backend!r}")
        self.backend = backend
        self.other_inputs = _other_inputs(self.info, inputs)
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.providers = list(providers) if providers else None
        self.output_name = output
        self.threads = threads
        self._prepared: dict[tuple[Size, Optional[str]], Prepared] = {}
        self._built: dict[_BuildKey, _Built] = {}
        self._forward_sessions: dict[Size, ort.InferenceSession] = {}
        self._splits: dict[tuple[Size, str, Optional[str]], _SplitSessions] = {}
        self._whole: Optional[PreSelection] = None  # a whole exported detector's pre-selection scores
        self._scalers: dict[tuple[Size, Size], Any] = {}  # (layer size, input size) → scale_maps session
        if self.info.fixed_size is not None:
            self._check_early(self.info.fixed_size)

    def _check_early(self, hw: Size) -> None:
        """Fail at construction, not at the first batch: unknown layer, missing rule, no CAM head."""
        prep = self._prepare(hw)
        if final_outputs(prep.model, prep.shapes) is not None:
            return  # a whole exported detector: what is explained is found on the first image
        for name in self.layer_names:
            if len(prep.shapes[prep.output].shape) == 2:
                self._build(hw, name)
            elif name is None or any(l.name == name for l in prep.layers):
                prep.layer(name)  # a segmenter or detector: check the layer now, build on first use

    # -- set-up per image size --------------------------------------------------------------
    def _prepare(self, hw: Size, output: str | None = None) -> Prepared:
        output = output or self.output_name
        key = (hw, output)
        if key not in self._prepared:
            self._prepared[key] = prepare(self._model, self.info, hw if self.info.fixed_size is None else None, output)
        return self._prepared[key]

    def _ort_training_session(self, prep: Prepared, layer: str | None, seed_input: bool) -> tuple[ExplainModel, Any]:
        """The rewritten model's interface with onnxruntime-training's gradient behind it."""
        if seed_input:
            raise UsageError("the ort-training backend explains class targets only; use the default backend")
        if self.method.input_gradient or self.method.bias_taps:
            raise UsageError(f"the ort-training backend gives layer gradients only; {self.method.name} "
                             "needs the input's: use the default backend")
        em = build_explain_model(prep, layer, False)
        em.with_gradient = True
        sess = OrtTrainingSession(prep.model, self.info.image_input.name, em.layer.name, em.output, self.providers)
        return em, sess

    def _build(self, hw: Size, layer: str | None = None, output: str | None = None, seed_input: bool = False) -> _Built:
        key = _BuildKey(hw, layer if layer is not None else self.layer_names[0], output, seed_input)
        if key not in self._built:
            prep = self._prepare(hw, output)
            if self.backend == "ort-training" and self.method.needs_gradients:
                em, sess = self._ort_training_session(prep, key.layer, seed_input)
            else:
                em = build_explain_model(
                    prep, key.layer, self.method.needs_gradients,
                    input_gradient=self.method.input_gradient, with_bias_taps=self.method.bias_taps,
                    seed_input=seed_input, method_graph=self._method_graph(prep, hw), attention=self.method.needs_attention,
                    attention_gradients=self.method.attention_gradients,
                )
                sess = session_for(em.model, self.providers, self.threads)
            head = self._head(prep, em)
            self._built[key] = _Built(prep, em, sess, head, _item_bytes(prep))
            log.info("explaining %s at layer %s (%s) on %s", em.output, em.layer.name, em.layer.layout, provider_of(sess))
        return self._built[key]

    def _method_graph(self, prep: Prepared, hw: Size) -> MethodGraph:
        """The method's in-graph part for the explain model, and after a map it returns ("cam"),
        that map's heatmap at `hw` ("heatmap": `scale_maps` in the graph, graph/scaled_maps.py),
        unless eigen_smooth replaces the map. CAM's map gets the classifier head's weights."""
        method = self.method

        def graph(g: GraphTensors) -> dict[str, str]:
            if method.needs_head and method.graph_map and g.acts is not None:
                g = replace(g, head_weight=cam_head(prep.model, prep.shapes, prep.constants, g.layer, prep.output).weight)
            found = dict(method.graph(g))
            if "cam" in found and not self.eigen_smooth:
                heat = append_scaled_maps(g.e, found["cam"], (g.layer.height, g.layer.width), hw)
                if heat is not None:
                    found["heatmap"] = heat
            return found

        return graph

    def _head(self, prep: Prepared, em: ExplainModel) -> CamHead | None:
        """The GAP → linear head after the layer: required (HeadError) for methods that need it,
        None where there is none for methods that only use it when it is there."""
        if not (self.method.needs_head or self.method.uses_head):
            return None
        try:
            return cam_head(prep.model, prep.shapes, prep.constants, em.layer, em.output)
        except HeadError:
            if self.method.needs_head:
                raise
            return None

    def prepared(self, hw: tuple[int, int] | None = None) -> Prepared:
        """The normalised model at image size `hw` (default: the model's own size)."""
        return self._prepare(self._size_or(hw))

    def explain_model(self, hw: tuple[int, int] | None = None) -> onnx.ModelProto:
        """The rewritten model (outputs, activation, gradient, targets) at image size `hw`."""
        return self._build(self._size_or(hw)).em.model

    def layers(self, hw: tuple[int, int] | None = None) -> list[Layer]:
        """The candidate layers at image size `hw` (default: the model's own size)."""
        return self.prepared(hw).layers

    def _size_or(self, hw: tuple[int, int] | None) -> Size:
        size = hw or self.info.fixed_size
        if size is None:
            raise UsageError("the model's input size is dynamic; give the image size (height, width)")
        return size

    @property
    def labels(self) -> list[str] | None:
        """Class names from the model's metadata (`onnxcam.labels`, a JSON list), if any."""
        return metadata_labels(self.info.metadata)

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.info.fixed_size

    # -- sessions for forward-only methods ----------------------------------------------------
    def _forward(self, hw: Size, batch: np.ndarray, output: str | None = None) -> np.ndarray:
        """The plain model's explained output on a batch (a second session, built once)."""
        return self._forward_all(hw, batch, [output or self._prepare(hw).output])[0]

    def _forward_all(self, hw: Size, batch: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        """The plain model's outputs (all, or `names`) on a batch."""
        if hw not in self._forward_sessions:
            m = copy_model(self._prepare(hw).model)
            self._forward_sessions[hw] = session_for(m, self.providers, self.threads)
        return self._run_fixed(self._forward_sessions[hw], {self.info.image_input.name: batch}, names)

    def _with_other_inputs(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """`feeds` plus the model's other inputs, a leading axis of 1 repeated to the batch `n`
        where the model's batch is dynamic."""
        feeds = dict(feeds)
        for name, v in self.other_inputs.items():
            declared = next(i for i in self.info.inputs if i.name == name).shape
            tile = v.ndim and v.shape[0] == 1 and declared and not isinstance(declared[0], int)
            feeds.setdefault(name, np.repeat(v, n, axis=0) if tile and n > 1 else v)
        return feeds

    def _run_fixed(self, sess, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        """Run in chunks of the model's fixed batch size, if it has one."""
        fixed = self.info.batch if isinstance(self.info.batch, int) else None
        n = len(feeds[self.info.image_input.name])
        feeds = self._with_other_inputs(feeds, n)
        if not fixed or fixed == n:
            return run(sess, feeds, names)
        parts = []
        for s in range(0, n, fixed):
            chunk = {k: (v[s : s + fixed] if v.ndim and len(v) == n else v) for k, v in feeds.items()}
            k = len(chunk[self.info.image_input.name])
            if k < fixed:  # the last chunk, padded with copies of its last item; their outputs dropped
                chunk = {name: (np.concatenate([v, np.repeat(v[-1:], fixed - k, axis=0)])
                                if v.ndim and len(v) == k and feeds[name].ndim and len(feeds[name]) == n else v)
                         for name, v in chunk.items()}
            outs = run(sess, chunk, names)
            parts.append([o[:k] if o.ndim and len(o) == fixed else o for o in outs])
        return [np.concatenate(p) for p in zip(*parts)]

    def _split_sessions(self, hw: Size, layer: str, output: str | None) -> _SplitSessions:
        key = (hw, layer, output)
        if key not in self._splits:
            prep = self._prepare(hw, output)
            sp = split_at(prep.model, prep.shapes, layer, prep.output)
            self._splits[key] = _SplitSessions(
                sp, session_for(sp.head, self.providers, self.threads), session_for(sp.tail, self.providers, self.threads),
            )
        return self._splits[key]

    def _tail_fn(self, hw: Size, x: np.ndarray, layer: Layer, output: str | None = None) -> Callable[[int, np.ndarray], np.ndarray]:
        """tail(n, acts): the part of the model after `layer`, fed ablated activations of image n.
        Token layers get their prefix tokens back from image n's own activation, with every channel
        that `acts` zeroes on all patch tokens (and image n does not) zeroed on them too: a channel
        ablated on every token, as pytorch-grad-cam's ViT ablation layer does. The part before the
        layer reruns only where the tail needs more than the layer (prefix tokens, tensors around
        it); a model with a fixed batch gets padded chunks."""
        heads: dict[tuple[int, int], list[np.ndarray]] = {}  # (image n, batch) → the head's outputs
        fixed = self.info.batch if isinstance(self.info.batch, int) else None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self._prepare(hw, output).shapes[layer.name].elem_type)

        def tail(n: int, acts: np.ndarray) -> np.ndarray:
            ss = self._split_sessions(hw, layer.name, output)
            if not ss.split.externals and not layer.is_tokens:
                return _in_chunks(ss.tail, ss.split.layer, from_grid(acts, layer.layout).astype(dtype, copy=False), {}, fixed)
            b = fixed or len(acts)
            key = (n, b)
            if key not in heads:  # at the tail's batch size: values computed from shapes (the
                # flat indices of Swin's pooling) are only right at the batch they were made for
                heads[key] = self._run_fixed(ss.head, {self.info.image_input.name: np.repeat(x[n : n + 1], b, 0)})
            own = heads[key]
            rows = _from_nchw(acts, layer, own[0][:1]).astype(own[0].dtype)
            return _in_chunks(ss.tail, ss.split.layer, rows, dict(zip(ss.split.externals, own[1:])), fixed)

        return tail

    # -- targets -----------------------------------------------------------------------------
    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise UsageError(f"batch must be 4-D ({self.info.layout}), got shape {x.shape}")
        c = x.shape[self.info.channel_axis]
        if isinstance(self.info.channels, int) and c != self.info.channels:
            raise UsageError(
                f"batch has {c} channels on axis {self.info.channel_axis}; the model's input "
                f"{self.info.image_input.name!r} is {self.info.layout} with {self.info.channels}"
            )
        want = self.info.image_input.dtype
        return np.ascontiguousarray(x.astype(want, copy=False))

    def _targets(self, targets: Targets, n: int, k: int) -> np.ndarray:
        if targets is None:
            t = np.full(n, -1, np.int64)
        elif np.isscalar(targets):
            t = np.full(n, int(targets), np.int64)
        else:
            t = np.asarray(targets, dtype=np.int64).reshape(-1)
            if t.size != n:
                raise UsageError(f"got {t.size} targets for a batch of {n}")
        bad = t[(t >= k) | (t < -1)]
        if bad.size:
            raise UsageError(f"target class {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1})")
        return t

    def _is_class_targets(self, targets) -> bool:
        if targets is None or isinstance(targets, (int, np.integer)):
            return True
        if isinstance(targets, (Target, TopK)):
            return False
        if isinstance(targets, np.ndarray):
            return targets.dtype.kind in "iu"
        if isinstance(targets, (list, tuple)):
            return all(isinstance(v, (int, np.integer)) for v in targets)
        raise UsageError(f"targets must be None, a class index, one per item, a Target or a seed array; got {type(targets).__name__}")

    def _item_shape(self, hw: Size, output: str, x: np.ndarray) -> tuple:
        """One item's shape of `output`: from shape inference, or measured where it is dynamic."""
        shape = self._prepare(hw, output).shapes[output].shape[1:]
        if all(isinstance(d, int) for d in shape):
            return tuple(shape)
        return tuple(self._forward(hw, x[:1], output).shape[1:])

    def _seed_plan(self, targets, x: np.ndarray, hw: Size) -> tuple[_SeedPlan, np.ndarray]:
        """Turn Target objects or a seed array into cotangents (and expand the batch for TopK)."""
        if isinstance(targets, TopK):
            return self._topk_plan(targets, x, hw)
        if isinstance(targets, DetectionTarget) and targets.top:  # the k best detections, one map each
            items = [replace(targets, top=None, rank=j, chosen=targets.chosen) for _ in range(len(x)) for j in range(targets.top)]
            x = np.repeat(x, targets.top, axis=0)
            return self._target_plan(items, x, hw), x
        if isinstance(targets, np.ndarray):
            return self._array_plan(targets, x, hw), x
        return self._target_plan(targets, x, hw), x

    def _topk_plan(self, targets: TopK, x: np.ndarray, hw: Size) -> tuple[_SeedPlan, np.ndarray]:
        """k class targets per item (the batch repeated k times), the k best scores first."""
        out = targets.output or self._prepare(hw).output
        y = self._forward(hw, x, out).reshape(len(x), -1)
        if targets.k > y.shape[1]:
            raise UsageError(f"top{targets.k} asks for more maps than output {out!r} has classes ({y.shape[1]})")
        k = targets.k
        order = np.argsort(-y, axis=1)[:, :k]
        x = np.repeat(x, k, axis=0)
        return self._target_plan([ClassTarget(int(c), out) for c in order.reshape(-1)], x, hw), x

    def _array_plan(self, seeds: np.ndarray, x: np.ndarray, hw: Size) -> _SeedPlan:
        """A float seed array shaped like the output (one item's shape: the same for all)."""
        out = self._prepare(hw).output
        shape = self._item_shape(hw, out, x)
        u = np.asarray(seeds, np.float32)
        if u.shape == shape:
            u = np.broadcast_to(u, (len(x),) + shape)
        if u.shape != (len(x),) + tuple(shape):
            raise UsageError(f"seed shaped {list(seeds.shape)} does not match output {out!r}: {[len(x)] + list(shape)}")
        return _SeedPlan(out, np.ascontiguousarray(u), np.full(len(x), -1, np.int64))

    def _target_output(self, items: list[Target], hw: Size) -> str:
        """The one output a batch of Target objects explains (checked to exist)."""
        outs = {t.output or self._prepare(hw).output for t in items}
        if len(outs) != 1:
            raise UsageError(f"one batch explains one output; these targets name {sorted(outs)}")
        out = outs.pop()
        names = [o.name for o in self._prepare(hw).model.graph.output]
        if out not in names:
            raise UsageError(f"output {out!r} is not one of the model's outputs {names}")
        return out

    def _target_plan(self, targets, x: np.ndarray, hw: Size) -> _SeedPlan:
        """One Target for every item, or one per item: their seeds from the items' outputs."""
        items = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(x)
        if len(items) != len(x):
            raise UsageError(f"got {len(items)} targets for a batch of {len(x)}")
        if not all(isinstance(t, Target) for t in items):
            raise UsageError("mix of targets: give Target objects for every item, or class indices for every item")
        if any(isinstance(t, DetectionTarget) for t in items) and self._whole_export(hw, x):
            if not self._whole.batched and len(x) > 1:
                raise UsageError("this detector's scores are per proposal, chosen at run time, with no batch axis: "
                                 "explain one image per call (CLI --batch-size 1)")
            return self._whole_plan(items, x, hw)
        out = self._target_output(items, hw)
        if any(isinstance(t, DetectionTarget) for t in items):
            prep, shape = self._prepare(hw), self._item_shape(hw, out, x)
            items = [detection.resolve(t, prep.model, prep.shapes, out, shape, hw) if isinstance(t, DetectionTarget) else t
                     for t in items]
        if any(t.needs_outputs for t in items):
            names = [o.name for o in self._prepare(hw).model.graph.output]
            values = dict(zip(names, self._forward_all(hw, x, names)))
        else:
            values = {out: np.zeros((len(x),) + self._item_shape(hw, out, x), np.float32)}  # only shapes used
        seeds, classes, errors = [], [], []
        for n, t in enumerate(items):
            item = {k: v[n] for k, v in values.items()}
            try:
                seeds.append(t.seed(item, out))
                classes.append(t.class_index(item, out))
                errors.append(None)
            except ItemError as exc:  # this image only: reported, never drawn as a blank map
                seeds.append(np.zeros(item[out].shape, np.float32))
                classes.append(-1)
                errors.append(str(exc))
        return _SeedPlan(out, np.ascontiguousarray(np.stack(seeds)), np.asarray(classes, np.int64), errors)

    def _whole_export(self, hw: Size, x: np.ndarray) -> bool:
        """True for a detector exported with its post-processing (final boxes, scores, labels).
        On the first call, find its pre-selection scores (preselection.py) and add them to the
        model's outputs, so that they can be explained."""
        if self._whole is not None:
            return True
        prep = self._prepare(hw)
        final = final_outputs(prep.model, prep.shapes)
        if final is None:
            return False

        def run(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
            m = copy_model(model)
            known = {o.name for o in m.graph.output}
            m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
            sess = session_for(m, ["CPUExecutionProvider"], self.threads)
            feeds = self._with_other_inputs({self.info.image_input.name: x[:1]}, 1)
            return dict(zip(names, sess.run(names, feeds)))

        self._whole = find_preselection(prep.model, prep.shapes, final, run)
        info = prep.shapes[self._whole.tensor]
        m = copy_model(self._model)
        m.graph.output.append(onnx.helper.make_tensor_value_info(info.name, info.elem_type, list(info.shape)))
        self._model = m
        for cache in (self._prepared, self._built, self._forward_sessions, self._splits):
            cache.clear()
        log.info("whole detector: final detections explained at their pre-selection scores %s (%s)",
                 self._whole.tensor, self._whole.format)
        return True

    def _whole_plan(self, items: list[Target], x: np.ndarray, hw: Size) -> _SeedPlan:
        """Seeds on the pre-selection scores for detection targets on a whole export, one image
        per run (its final outputs have no batch axis)."""
        assert self._whole is not None
        w = self._whole
        final = (w.final.boxes, w.final.scores, w.final.labels)
        names = list(final) + [w.tensor]
        seeds, classes, errors = [], [], []
        for n, t in enumerate(items):
            if not isinstance(t, DetectionTarget):
                raise UsageError("a whole exported detector explains detection targets (det:...)")
            t = replace(t, output=w.tensor, final=final, pre_format=w.format, chosen=t.chosen)
            values = dict(zip(names, self._forward_all(hw, x[n : n + 1], names)))
            item = {**{k: values[k] for k in final}, w.tensor: values[w.tensor][0] if w.batched else values[w.tensor]}
            try:
                seeds.append(t.seed(item, w.tensor))
                classes.append(t.class_index(item, w.tensor))
                errors.append(None)
            except ItemError as exc:
                seeds.append(np.zeros(item[w.tensor].shape, np.float32))
                classes.append(-1)
                errors.append(str(exc))
        stacked = np.stack(seeds) if w.batched else seeds[0]  # unbatched: (rows, K) of the one image
        return _SeedPlan(w.tensor, np.ascontiguousarray(stacked), np.asarray(classes, np.int64), errors)

    # -- running -----------------------------------------------------------------------------
    def explain(self, batch: np.ndarray, targets: Targets = None) -> Result:
        """Explain a preprocessed batch in the model's own layout.

        targets: None (each item's predicted class), a class index, one per item, a Target (for
        every item) or one per item (onnxcam.targets: class, softmax probability, counterfactual,
        any output index, a segmentation region, a detection), TopK(k) (k maps per item, the batch
        grows k-fold), or a float seed array shaped like the explained output (∂⟨seed, y⟩/∂A).
        """
        x = self._check_batch(batch)
        hw = (x.shape[2], x.shape[3]) if self.info.layout == "NCHW" else (x.shape[1], x.shape[2])
        if self._one_by_one(targets, x, hw):
            return self._explain_each(x, targets)
        if self._is_class_targets(targets):
            t = self._targets(targets, len(x), self._build(hw).em.num_classes)
        else:
            t, x = self._seed_plan(targets, x, hw)
        results = [self._explain_layer(x, t, hw, name) for name in self._layers(hw, t.output if isinstance(t, _SeedPlan) else None)]
        res = replace(results[0]) if len(results) > 1 else results[0]  # layer_results keep their own
        if len(results) > 1:
            stack = np.stack([r.heatmaps for r in results])
            fused = stack.mean(axis=0) if self.fuse == "mean" else stack.max(axis=0)
            res.heatmaps = normalize_maps(fused)
            res.layer = " + ".join(r.layer for r in results)
            res.layer_results = results
        res.errors = _item_errors(t.errors if isinstance(t, _SeedPlan) and t.errors else [None] * len(x), results)
        return res

    def _one_by_one(self, targets, x: np.ndarray, hw: Size) -> bool:
        """A whole two-stage detector (scores per proposal, no batch axis) explains one image and
        one detection per run."""
        dets = isinstance(targets, DetectionTarget) or (
            isinstance(targets, (list, tuple)) and targets and all(isinstance(t, DetectionTarget) for t in targets))
        if not dets or not self._whole_export(hw, x) or self._whole.batched:
            return False
        first = targets if isinstance(targets, DetectionTarget) else targets[0]
        return len(x) > 1 or bool(first.top)

    def _explain_each(self, x: np.ndarray, targets) -> Result:
        """Explain item by item (top=k: each of the k detections in turn); results concatenated."""
        items = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(x)
        runs = []
        for n, t in enumerate(items):
            ranks = [replace(t, top=None, rank=j, chosen=t.chosen) for j in range(t.top)] if t.top else [t]
            runs += [self.explain(x[n : n + 1], r) for r in ranks]
        return _concat_results(runs)

    def _layers(self, hw: Size, output: str | None) -> list[str | None]:
        """The layers explained: those asked for; by default, for a multi-scale detection head,
        the map it reads at each scale (fused), else the one default layer."""
        if self.layer_names != [None]:
            return self.layer_names
        heads = self._prepare(hw, output).head_inputs()
        return [l.name for l in heads] or [None]

    def _explain_layer(self, x: np.ndarray, t, hw: Size, layer: str | None) -> Result:
        if not self.aug_smooth:
            return self._explain_once(x, t, hw, layer)
        # pytorch-grad-cam's TTA: horizontal flip × value scaling 0.9 / 1 / 1.1, maps de-augmented
        # and averaged (not normalised again)
        w_axis = 3 if self.info.layout == "NCHW" else 2
        first = None
        maps = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                xa = np.flip(x, axis=w_axis) if flip else x
                r = self._explain_once(np.ascontiguousarray(xa * np.asarray(factor, x.dtype)), t, hw, layer)
                maps.append(np.flip(r.heatmaps, axis=2) if flip else r.heatmaps)
                if not flip and factor == 1.0:
                    first = r
        assert first is not None
        first.heatmaps = np.mean(maps, axis=0).astype(np.float32)
        return first

    def _feeds(self, built: _Built, x: np.ndarray, t) -> dict[str, np.ndarray]:
        """The rewritten model's inputs: the image, and the class targets or the seeds."""
        feeds = {self.info.image_input.name: x}
        if not isinstance(t, _SeedPlan):
            feeds[TARGET_INPUT] = t
        elif built.em.with_gradient or built.em.input_gradient:
            feeds[SEED_INPUT] = t.seeds.astype(built.prep.shapes[built.em.output].dtype)
        return feeds

    def _input_gradients(self, em: ExplainModel, got: dict[str, np.ndarray]) -> np.ndarray | None:
        """∂y/∂x channels-first float32, where the method asked for it."""
        if not em.input_gradient:
            return None
        g = got[INPUT_GRAD_OUTPUT].astype(np.float32)
        return np.ascontiguousarray(g.transpose(0, 3, 1, 2)) if self.info.layout == "NHWC" else g

    def _scale_maps(self, cams: np.ndarray, hw: Size) -> np.ndarray:
        """`scale_maps` of maps finished in numpy, through its ONNX form (graph/scaled_maps.py: equal
        within 1e-6, several times cheaper than numpy's float64 passes) on one CPU thread; numpy's
        `scale_maps` where that form does not apply."""
        key = ((int(cams.shape[1]), int(cams.shape[2])), hw)
        if key not in self._scalers:
            model = scaled_maps_model(*key)
            self._scalers[key] = None if model is None else make_session(model.SerializeToString(), [CPU], 1)
        sess = self._scalers[key]
        if sess is None or not len(cams):
            return scale_maps(cams, hw)
        return sess.run([HEATMAPS_OUTPUT], {MAPS_INPUT: np.ascontiguousarray(cams, np.float32)})[0]

    def _method_inputs(self, built: _Built, x: np.ndarray, t, hw: Size) -> MethodInputs:
        """Run the rewritten model on a batch; what the method needs, channels-first."""
        em, sess, plan = built.em, built.session, (t if isinstance(t, _SeedPlan) else None)
        names, feeds = em.output_names, self._feeds(built, x, t)
        got = dict(zip(names, self._run_fixed(sess, feeds, names)))

        def gradients_at(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r = dict(zip(names, self._run_fixed(sess, {**feeds, self.info.image_input.name: batch}, names)))
            return _to_nchw(r[ACT_OUTPUT], em.layer), _to_nchw(r[GRAD_OUTPUT], em.layer)

        return MethodInputs(
            _to_nchw(got[ACT_OUTPUT], em.layer),
            _to_nchw(got[GRAD_OUTPUT], em.layer) if em.with_gradient else None,
            got[TARGETS_OUTPUT].astype(np.int64) if plan is None else plan.classes,
            got[em.output].astype(np.float32), built.head,
            inputs=x, layout=self.info.layout, input_size=hw,
            forward=lambda b: self._forward(hw, b, em.output), tail=self._tail_fn(hw, x, em.layer, em.output),
            seeds=plan.seeds if plan is not None else None,
            input_gradients=self._input_gradients(em, got),
            graph={key: got[name] for key, name in em.method_outputs.items()},
            item_bytes=built.item_bytes,
            gradients_at=gradients_at if em.with_gradient else None,
            tokens=built.prep.tokens,
            attentions=[_per_head(got[ATTN_OUTPUT.format(i)], len(x)) for i in range(len(em.attention))],
            attention_gradients=[_per_head(got[ATTN_GRAD_OUTPUT.format(i)], len(x)) for i in range(len(em.attention))]
            if em.attention_gradients else None,
        )

    def _explain_once(self, x: np.ndarray, t, hw: Size, layer: str | None) -> Result:
        """One batch at one layer: run, apply the method, scale the maps."""
        plan = t if isinstance(t, _SeedPlan) else None
        built = self._build(hw, layer, plan.output if plan else None, seed_input=plan is not None)
        inp = self._method_inputs(built, x, t, hw)
        with one_blas_thread():  # numpy's small linear algebra, without OpenBLAS's spinning workers
            if self.eigen_smooth:
                cams = self.method.eigen_cam(inp)
            elif "cam" in inp.graph:  # the method's map, computed inside the run
                cams = inp.graph["cam"].astype(np.float32, copy=False)
            else:
                cams = self.method.cam(inp)
            heat = None if self.eigen_smooth else inp.graph.get("heatmap")  # scale_maps inside the run
            heatmaps = heat if heat is not None else self._scale_maps(cams, hw)
        return Result(
            heatmaps=heatmaps, cams=cams, activations=inp.activations, gradients=inp.gradients,
            targets=inp.targets, outputs=inp.outputs, layer=built.em.layer.name, method=self.method.name,
            provider=provider_of(built.session), extra=inp.pixel_maps,
        )
