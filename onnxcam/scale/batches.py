"""`ExplainBatches`: the callable class `Dataset.map_batches` runs in each Ray actor.

The Explainer is built in `__init__`, inside the actor: onnxruntime sessions cannot be pickled, and
building once per actor (not per batch) keeps the rewrite off the hot path. Each call takes a
batch of encoded images (`bytes`) or decoded RGB uint8 arrays (`image`), decodes them exactly as
the local CLI does (OpenCV, BGR → RGB), preprocesses, explains, and returns one row per image and
target (topK and det:top=K give K rows per image, in rank order; an image that failed as a whole
gives one row):

    path, order      passed through (`path` names the image in results and errors)
    rank             the target's rank among the image's maps: 1..K (1 for one target per image;
                     0 for an image that failed as a whole)
    record           JSON: the image's results.json record (`onnxcam.output.image_record`)
    target, label    the explained class (−1 and None when the image failed)
    score, probability   the target's score and probability (NaN when not a classifier)
    heatmap          the map `onnxcam explain` saves: (H, W) at the model's input size, in [0, 1],
                     float32 (or float16); over the photo, so of varying size, when letterboxed
                     or at native sizes (then a variable-shaped tensor column)
    overlay          PNG bytes of the heatmap over the image at its own size (with overlay=True)
    guided           PNG bytes of the pixel-space map (guidedbackprop, guidedgradcam)
    layer, provider, output   what was explained and where
    error            "" or why this image has no result (undecodable, non-finite map, ...)

A failed image never fails its batch: the batch is explained again image by image and only the
images that fail carry an error (their heatmap is NaN, so it cannot pass for a map). A target
whose map cannot be right (non-finite, or an error the Explainer reports for that item) is a row
with an error, as the local run lists it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np
import onnx

from ..errors import ImageError, OnnxcamError, UsageError
from ..explainer import Explainer
from ..methods import CAMMethod
from ..image import decode_image, deprocess, encode_png, overlay
from ..output import image_record
from ..preprocessing import InputPolicy, policy_for
from ..targets import maps_per_image

log = logging.getLogger(__name__)

PIXEL_METHODS = ("guidedbackprop", "guidedgradcam")  # they also give a pixel-space image (guided.png)


class ExplainBatches:
    """Explain batches of images inside a Ray actor (see the module docstring for the columns).

    >>> ds.map_batches(ExplainBatches, fn_constructor_kwargs={"model": "m.onnx"},
    ...                compute=ray.data.ActorPoolStrategy(size=2), batch_size=8)   # doctest: +SKIP

    model: the serialised model (bytes: it travels with the job, see `explain_dataset`) or a path
    every worker can read. method, layer, providers, threads and `explainer` (further Explainer
    keyword arguments: fuse, aug_smooth, eigen_smooth, output, backend, inputs) go to
    `onnxcam.Explainer`. target: None (each image's predicted class), a class index, an
    `onnxcam.targets.Target` or `TopK` (K maps per image, one row each). policy: the input policy resolved on the driver
    (`onnxcam.preprocessing.policy_for`), default the model's own. overlay: also return the overlay
    PNG; heatmap_dtype: "float32" (exact) or "float16" (half the size; about 5e-4 off).
    """

    def __init__(self, model: str | bytes, method: str | CAMMethod = "gradcam", layer: str | Sequence[str] | None = None,
                 target: Any = None, policy: InputPolicy | None = None, providers: Sequence[str] | None = None,
                 threads: int | None = None, overlay: bool = False, heatmap_dtype: str = "float32",
                 explainer: dict[str, Any] | None = None) -> None:
        if heatmap_dtype not in ("float32", "float16"):
            raise UsageError(f"heatmap_dtype must be 'float32' or 'float16', got {heatmap_dtype!r}")
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        self.explainer = Explainer(model, method=method, layer=layer, providers=providers, threads=threads,
                                   **(explainer or {}))
        self.policy = policy or policy_for(self.explainer)
        self.target = target
        self.per_image = maps_per_image(target)
        self.overlay = overlay
        self.guided = self.explainer.method.name in PIXEL_METHODS
        self.dtype = np.dtype(heatmap_dtype)
        self.ragged = self.policy.native or self.policy.letterbox  # saved maps differ in size

    # -- per image -----------------------------------------------------------------------------
    def _explain(self, images: list[np.ndarray], paths: list[str]) -> list[list[dict[str, Any]]]:
        """Per image, its rows: one per target, in rank order."""
        batch = self.policy.batch(images)
        res = self.explainer.explain(batch.x, targets=self.target)
        pixel = res.extra.get("guided_gradcam", res.extra.get("guided_backprop"))
        out = []
        for i, img in enumerate(images):
            rows = []
            for j in range(self.per_image):
                r = i * self.per_image + j
                heat, scores = res.heatmaps[r], res.outputs[r]
                if res.errors and res.errors[r]:
                    rows.append(self._failed(f"{paths[i]}: {res.errors[r]}; no map written", j + 1))
                    continue
                if not (np.isfinite(heat).all() and np.isfinite(scores).all()):
                    rows.append(self._failed(f"{paths[i]}: the model's outputs or the map are not finite (NaN or "
                                             "Inf); no map written", j + 1))
                    continue
                rec = image_record(paths[i], scores, int(res.targets[r]), self.policy.label)
                row: dict[str, Any] = {
                    "rank": j + 1, "record": json.dumps(rec), "target": rec["target"], "label": rec["label"],
                    "score": rec.get("score", np.nan), "probability": rec.get("probability", np.nan), "error": "",
                    "heatmap": batch.saved_map(i, heat).astype(self.dtype), "layer": res.layer,
                    "provider": res.provider, "output": self.explainer.prepared(batch.size).output,
                }
                if self.overlay:
                    row["overlay"] = encode_png(overlay(img, batch.image_map(i, heat)))
                if self.guided:
                    row["guided"] = encode_png(deprocess(pixel[r], img.shape[:2])) if pixel is not None else b""
                rows.append(row)
            out.append(rows)
        return out

    def _failed(self, message: str, rank: int = 0) -> dict[str, Any]:
        shape = (1, 1) if self.ragged else self.policy.size
        row: dict[str, Any] = {"rank": rank, "record": None, "target": -1, "label": None, "score": np.nan,
                               "probability": np.nan, "error": message, "heatmap": np.full(shape, np.nan, self.dtype),
                               "layer": None, "provider": None, "output": None}
        if self.overlay:
            row["overlay"] = b""
        if self.guided:
            row["guided"] = b""
        return row

    def _decode(self, batch: dict[str, np.ndarray], i: int, path: str) -> np.ndarray:
        errors = batch.get("read_error")
        if errors is not None and errors[i]:
            raise ImageError(str(errors[i]))
        if "image" in batch:
            img = np.asarray(batch["image"][i])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ImageError(f"image column of {path} is {img.dtype} {list(img.shape)}, not RGB uint8 (H, W, 3)")
            return img
        return decode_image(bytes(batch["bytes"][i]), path)

    def _explain_group(self, idx: list[int], images: dict[int, np.ndarray], paths: list[str],
                       rows: list[list[dict[str, Any]] | None]) -> None:
        """Explain images that share a size; when that fails, one by one, so only the culprit fails."""
        try:
            for i, row in zip(idx, self._explain([images[i] for i in idx], [paths[i] for i in idx])):
                rows[i] = row
            return
        except UsageError:
            raise  # the request is wrong for every image: fail the job with its message
        except Exception as exc:  # noqa: BLE001
            if len(idx) == 1:
                rows[idx[0]] = [self._failed(str(exc) if isinstance(exc, OnnxcamError) else
                                             f"{paths[idx[0]]}: {type(exc).__name__}: {exc}")]
                return
            log.warning("a batch failed (%s); explaining its %d images one by one", exc, len(idx))
        for i in idx:
            self._explain_group([i], images, paths, rows)

    # -- per batch -----------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        paths = [str(p) for p in batch["path"]] if "path" in batch else [f"<row {i}>" for i in range(n)]
        rows: list[list[dict[str, Any]] | None] = [None] * n
        images: dict[int, np.ndarray] = {}
        for i in range(n):
            try:
                images[i] = self._decode(batch, i, paths[i])
            except OnnxcamError as exc:
                rows[i] = [self._failed(str(exc))]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in images.items():
            groups.setdefault(self.policy.size_for(img), []).append(i)
        for idx in groups.values():
            step = self.policy.batch_step(len(idx))
            for s in range(0, len(idx), step):
                self._explain_group(idx[s : s + step], images, paths, rows)
        assert all(r is not None for r in rows)
        done = [row for image in rows for row in image or []]
        of = [i for i, image in enumerate(rows) for _ in image or []]  # the input row of each output row
        n = len(done)
        out: dict[str, np.ndarray] = {"path": np.asarray([paths[i] for i in of], dtype=object)}
        if "order" in batch:
            out["order"] = np.asarray(batch["order"], np.int64)[of]
        out["rank"] = np.asarray([r["rank"] for r in done], np.int64)
        out["target"] = np.asarray([r["target"] for r in done], np.int64)
        for key in ("score", "probability"):
            out[key] = np.asarray([r[key] for r in done], np.float64)
        for key in ("label", "record", "error", "layer", "provider", "output"):
            out[key] = np.asarray([r[key] for r in done], dtype=object)
        if self.ragged:
            maps = np.empty(n, dtype=object)
            maps[:] = [r["heatmap"] for r in done]
            out["heatmap"] = maps
        else:
            out["heatmap"] = np.stack([r["heatmap"] for r in done])
        for key in ("overlay", "guided"):
            if key in done[0]:
                col = np.empty(n, dtype=object)
                col[:] = [r[key] for r in done]
                out[key] = col
        return out
