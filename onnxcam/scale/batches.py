"""`ExplainBatches`: the callable class `Dataset.map_batches` runs in each Ray actor.

The Explainer is built in `__init__`, inside the actor: onnxruntime sessions cannot be pickled, and
building once per actor (not per batch) keeps the rewrite off the hot path. Each call takes a
batch of encoded images (`bytes`) or decoded RGB uint8 arrays (`image`), decodes them exactly as
the local CLI does (OpenCV, BGR → RGB), preprocesses, explains, and returns one row per image:

    path, order      passed through (`path` names the image in results and errors)
    target, label    the explained class (−1 and None when the image failed)
    score, probability   the target's score and softmax probability (NaN when not a classifier)
    top5             JSON: [{class, label, score, probability}] (classifiers)
    heatmap          (H, W) at the model's input size, in [0, 1], float32 (or float16)
    overlay          PNG bytes of the heatmap over the image at its own size (with overlay=True)
    error            None, or why this image has no result (undecodable, non-finite map, ...)

A failed image never fails its batch: the batch is explained again image by image and only the
images that fail carry an error (their heatmap is NaN, so it cannot pass for a map).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import cv2
import numpy as np
import onnx

from ..errors import ImageError, OnnxcamError, UsageError
from ..explainer import Explainer
from ..image import PRESETS, Preset, load_config, overlay, preprocess, preset_from_config

log = logging.getLogger(__name__)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes → RGB uint8 (H, W, 3), decoded as `onnxcam.load_image` decodes files."""
    buf = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ImageError(f"cannot decode image: {name}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 → PNG bytes, byte for byte what `onnxcam.image.save_png` writes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("cannot encode PNG")
    return buf.tobytes()


def softmax_or_same(v: np.ndarray) -> np.ndarray:
    """Scores as probabilities: unchanged when they already are, else their softmax."""
    if np.all(v >= 0) and abs(float(v.sum()) - 1) < 1e-3:
        return v
    z = np.exp(v - v.max())
    return z / z.sum()


def resolve_input(explainer: Explainer, preset: str | None, size: tuple[int, int] | None,
                  labels: Sequence[str] | None) -> tuple[Preset, tuple[int, int], list[str] | None]:
    """Preset, input size and labels as `onnxcam explain` resolves them: --preset, else the
    model's metadata (`onnxcam.preprocess`, `onnxcam.preset`), else imagenet; the model's own size,
    else `size`, else the config's, else 224×224."""
    meta = explainer.info.metadata
    cfg: dict[str, Any] = {}
    if meta.get("onnxcam.preprocess"):
        cfg.update(load_config(text=meta["onnxcam.preprocess"]))
    elif meta.get("onnxcam.preset") in PRESETS:
        cfg["preset"] = meta["onnxcam.preset"]
    if preset:
        cfg = {k: v for k, v in cfg.items() if k not in ("mean", "std", "scale", "bgr")}
        cfg["preset"] = preset
    if cfg.get("letterbox") or (isinstance(cfg.get("size"), str) and cfg["size"].lower() == "native"):
        raise UsageError("letterboxed and native-size inputs are not supported on Ray yet; run without --ray")
    pre = preset_from_config(cfg) if cfg else PRESETS["imagenet"]
    hw = explainer.input_size or size or (tuple(int(v) for v in cfg["size"]) if isinstance(cfg.get("size"), list) else (224, 224))
    names = list(labels) if labels else explainer.labels or (list(cfg["labels"]) if isinstance(cfg.get("labels"), list) else None)
    return pre, (int(hw[0]), int(hw[1])), names


class ExplainBatches:
    """Explain batches of images inside a Ray actor (see the module docstring for the columns).

    >>> ds.map_batches(ExplainBatches, fn_constructor_kwargs={"model": "m.onnx"},
    ...                compute=ray.data.ActorPoolStrategy(size=2), batch_size=8)   # doctest: +SKIP

    model: the serialised model (bytes: it travels with the job, see `explain_dataset`) or a path
    every worker can read. method, layer, providers, threads and `explainer` (further
    Explainer keyword arguments) go to `onnxcam.Explainer`; target: None (each image's predicted
    class), a class index or an `onnxcam.targets.Target` (one map per image). preset, size and
    labels override the model's metadata. overlay: also return the overlay PNG; heatmap_dtype:
    "float32" (exact) or "float16" (half the size; about 5e-4 off).
    """

    def __init__(self, model: str | bytes, method: str = "gradcam", layer: str | Sequence[str] | None = None,
                 target: Any = None, preset: str | None = None, size: tuple[int, int] | None = None,
                 labels: Sequence[str] | None = None, providers: Sequence[str] | None = None,
                 threads: int | None = None, overlay: bool = False, heatmap_dtype: str = "float32",
                 explainer: dict[str, Any] | None = None) -> None:
        from ..targets import TopK

        if isinstance(target, TopK):
            raise UsageError("topK targets give several maps per image; on Ray explain one target per image")
        if heatmap_dtype not in ("float32", "float16"):
            raise UsageError(f"heatmap_dtype must be 'float32' or 'float16', got {heatmap_dtype!r}")
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        self.explainer = Explainer(model, method=method, layer=layer, providers=providers, threads=threads, **(explainer or {}))
        self.preset, self.size, self.labels = resolve_input(self.explainer, preset, size, labels)
        self.target = target
        self.overlay = overlay
        self.dtype = np.dtype(heatmap_dtype)
        info = self.explainer.info
        self.channels = info.channels if isinstance(info.channels, int) else 3

    # -- per image -----------------------------------------------------------------------------
    def _label(self, k: int) -> str | None:
        return self.labels[k] if self.labels and 0 <= k < len(self.labels) else None

    def _row(self, img: np.ndarray, heat: np.ndarray, scores: np.ndarray, target: int) -> dict[str, Any]:
        if not np.all(np.isfinite(heat)) or not np.all(np.isfinite(scores)):
            raise OnnxcamError("the map or the scores are not finite (NaN or infinity): no explanation for this image")
        row: dict[str, Any] = {"target": target, "label": self._label(target) if target >= 0 else None,
                               "score": np.nan, "probability": np.nan, "top5": None, "error": None}
        if scores.ndim == 1:
            probs = softmax_or_same(scores.astype(np.float64))
            if target >= 0:
                row["score"], row["probability"] = float(scores[target]), float(probs[target])
            top = np.argsort(-scores)[:5]
            row["top5"] = json.dumps([{"class": int(k), "label": self._label(int(k)), "score": float(scores[k]),
                                       "probability": float(probs[k])} for k in top])
        row["heatmap"] = heat.astype(self.dtype)
        if self.overlay:
            row["overlay"] = encode_png(overlay(img, heat))
        return row

    def _failed(self, message: str) -> dict[str, Any]:
        row: dict[str, Any] = {"target": -1, "label": None, "score": np.nan, "probability": np.nan, "top5": None,
                               "error": message, "heatmap": np.full(self.size, np.nan, self.dtype)}
        if self.overlay:
            row["overlay"] = b""
        return row

    def _explain(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        ex = self.explainer
        batch = preprocess(images, self.size, self.preset, ex.info.layout, self.channels)
        res = ex.explain(batch, targets=self.target)
        return [self._row(img, res.heatmaps[i], res.outputs[i], int(res.targets[i])) for i, img in enumerate(images)]

    # -- per batch -----------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        paths = [str(p) for p in batch["path"]] if "path" in batch else [f"<row {i}>" for i in range(n)]
        rows: list[dict[str, Any] | None] = [None] * n
        images: dict[int, np.ndarray] = {}
        read_errors = batch.get("read_error")
        for i in range(n):
            try:
                if read_errors is not None and read_errors[i]:
                    raise ImageError(str(read_errors[i]))
                if "image" in batch:
                    img = np.asarray(batch["image"][i])
                    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                        raise ImageError(f"image column of {paths[i]} is {img.dtype} {list(img.shape)}, not RGB uint8 (H, W, 3)")
                    images[i] = img
                else:
                    images[i] = decode_image(bytes(batch["bytes"][i]), paths[i])
            except OnnxcamError as exc:
                rows[i] = self._failed(str(exc))
        if images:
            idx = list(images)
            try:
                for i, row in zip(idx, self._explain([images[i] for i in idx])):
                    rows[i] = row
            except UsageError:
                raise  # the request is wrong for every image: fail the job with its message
            except Exception as exc:  # noqa: BLE001  (isolate the image that fails, keep the others)
                log.warning("batch failed (%s); explaining its %d images one by one", exc, len(idx))
                for i in idx:
                    try:
                        rows[i] = self._explain([images[i]])[0]
                    except UsageError:
                        raise
                    except Exception as one:  # noqa: BLE001
                        rows[i] = self._failed(f"{paths[i]}: {type(one).__name__}: {one}")
        out: dict[str, np.ndarray] = {"path": np.asarray(paths, dtype=object)}
        if "order" in batch:
            out["order"] = np.asarray(batch["order"], np.int64)
        done = [r for r in rows if r is not None]
        assert len(done) == n
        out["target"] = np.asarray([r["target"] for r in done], np.int64)
        for key in ("score", "probability"):
            out[key] = np.asarray([r[key] for r in done], np.float64)
        for key in ("label", "top5", "error"):
            out[key] = np.asarray([r[key] for r in done], dtype=object)
        out["heatmap"] = np.stack([r["heatmap"] for r in done])
        if self.overlay:
            ov = np.empty(n, dtype=object)
            ov[:] = [r["overlay"] for r in done]
            out["overlay"] = ov
        return out
