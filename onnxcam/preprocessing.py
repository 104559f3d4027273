"""One input policy for every command and the API: how a model wants its images.

`resolve_policy` merges, in this order (later wins): the model's metadata (``onnxcam.preprocess``,
a config text, else ``onnxcam.preset``), a config file (``--config``, JSON or flat YAML), a preset
name (``--preset``, replacing mean/std/scale/bgr), the size (``--size HxW`` or ``native``; a model
with a fixed input size always gets its own), letterboxing and labels (``--labels`` file, else the
model's ``onnxcam.labels`` metadata, else the config's ``labels``). The result, an `InputPolicy`,
turns decoded RGB images into a batch in the model's layout and maps heatmaps back onto the photos,
so explain, eval and review see a model the same way.

Config keys: preset, or mean/std/scale/bgr; size [H, W] or "native"; multiple (native sizes are
rounded down to it, default 32); letterbox; labels (a list).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ModelLoadError, UsageError
from .limits import MAX_INPUT_SIDE, check_input_size, check_text_value, read_text
from .image import PRESETS, Letterbox, Preset, get_preset, letterbox, preprocess, resize_map, unletterbox_map
from .types import DEFAULT_SIZE

CONFIG_KEYS = {"preset", "mean", "std", "scale", "bgr", "size", "letterbox", "labels", "multiple"}
_NORMALISATION_KEYS = ("mean", "std", "scale", "bgr")


# -- sizes ----------------------------------------------------------------------------------------
def parse_size(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """"HxW" (or (H, W)) → (H, W) of positive ints; None stays None. UsageError otherwise."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in (value.lower().split("x") if isinstance(value, str) else value))
        if h <= 0 or w <= 0:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise UsageError(f"size {value!r} is not HxW, e.g. 224x224") from None
    check_input_size(h, w, "size")
    return h, w


def _is_native(value: Any) -> bool:
    return isinstance(value, str) and value.lower() == "native"


# -- configs --------------------------------------------------------------------------------------
def _yaml_value(value: str, n: int) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if value.startswith("[") or value.startswith('"') or value.replace(".", "", 1).lstrip("-").isdigit():
        try:
            return json.loads(value.replace("'", '"'))
        except ValueError:
            raise UsageError(f"config line {n}: cannot read value {value!r}") from None
    return value.strip("'")


def _parse_flat_yaml(text: str) -> dict:
    """The flat subset of YAML a preprocessing config needs: `key: value` lines, values being
    numbers, true/false, quoted or bare strings, or [a, b, c] lists; # comments."""
    out: dict = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].strip() if not raw.strip().startswith("#") else ""
        if not line:
            continue
        if ":" not in line:
            raise UsageError(f"config line {n}: expected 'key: value', got {raw.strip()!r}")
        key, value = (p.strip() for p in line.split(":", 1))
        out[key] = _yaml_value(value, n)
    return out


def load_config(path: str | os.PathLike | None = None, text: str | None = None) -> dict:
    """A preprocessing config from a JSON or YAML file (or text, e.g. the model's metadata
    `onnxcam.preprocess`); UsageError for unreadable files, bad syntax or unknown keys."""
    if text is None:
        p = os.fspath(path)  # type: ignore[arg-type]
        try:
            text = read_text(p, "config")
        except UsageError as exc:
            raise UsageError(f"cannot read {exc}") from None
    check_text_value(text, "the config", error=UsageError)
    text = text.strip()
    try:
        cfg = json.loads(text, parse_constant=_no_constant) if text.startswith("{") else _parse_flat_yaml(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"config is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise UsageError("a preprocessing config must be a mapping of keys to values")
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise UsageError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    _check_config_types(cfg)
    return cfg


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_numbers(value: Any, key: str, counts: tuple[int, ...]) -> None:
    values = value if isinstance(value, list) else [value]
    ok = len(values) in counts and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not ok:
        raise UsageError(f"config {key} must be {' or '.join(map(str, counts))} finite number(s), got {value!r}")


def _check_config_types(cfg: dict) -> None:
    """Every value of the type its key needs (UsageError naming the key otherwise)."""
    if "preset" in cfg and cfg["preset"] not in PRESETS:
        raise UsageError(f"config preset {cfg['preset']!r} is not one of: {', '.join(PRESETS)}")
    for key in ("mean", "std"):
        if key in cfg:
            _finite_numbers(cfg[key], key, (1, 3))
    if "std" in cfg and any(v == 0 for v in (cfg["std"] if isinstance(cfg["std"], list) else [cfg["std"]])):
        raise UsageError("config std must not be 0 (the input would be divided by it)")
    if "scale" in cfg:
        _finite_numbers(cfg["scale"], "scale", (1,))
        if cfg["scale"] == 0:
            raise UsageError("config scale must not be 0")
    for key in ("bgr", "letterbox"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise UsageError(f"config {key} must be true or false, got {cfg[key]!r}")
    if "size" in cfg and not _is_native(cfg["size"]):
        size = cfg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in size)):
            raise UsageError(f"config size must be [height, width] or \"native\", got {size!r}")
        check_input_size(size[0], size[1], "config size")
    if "multiple" in cfg:
        m = cfg["multiple"]
        if not (isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= MAX_INPUT_SIDE):
            raise UsageError(f"config multiple must be an integer from 1 to {MAX_INPUT_SIDE}, got {m!r}")
    if "labels" in cfg and not (isinstance(cfg["labels"], list) and all(isinstance(v, str) for v in cfg["labels"])):
        raise UsageError("config labels must be a list of strings")


def preset_from_config(cfg: dict) -> Preset:
    """The preset a config names, or a custom one from its mean/std/scale/bgr."""
    if "preset" in cfg and not any(k in cfg for k in ("mean", "std", "scale")):
        return get_preset(str(cfg["preset"]))
    base = get_preset(str(cfg.get("preset", "unit")))
    try:
        mean = tuple(float(v) for v in cfg.get("mean", base.mean))
        std = tuple(float(v) for v in cfg.get("std", base.std))
        scale = float(cfg.get("scale", base.scale))
    except (TypeError, ValueError):
        raise UsageError("config mean/std must be lists of numbers and scale a number") from None
    mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    if len(mean) != 3 or len(std) != 3 or not all(s != 0 for s in std):
        raise UsageError("config mean/std need 1 or 3 values, std non-zero")
    return Preset("custom", scale, mean, std, bool(cfg.get("bgr", base.bgr)))  # type: ignore[arg-type]


def merged_config(metadata: dict[str, str], config_file: str | os.PathLike | None = None,
                  preset: str | None = None) -> dict:
    """The model's metadata config, updated by a config file, then by a preset name."""
    cfg: dict[str, Any] = {}
    if metadata.get("onnxcam.preprocess"):
        try:
            cfg.update(load_config(text=metadata["onnxcam.preprocess"]))
        except UsageError as exc:  # the model's own metadata: a model error (exit 1), not a usage error
            raise ModelLoadError(f"the model's metadata onnxcam.preprocess: {exc}") from None
    elif metadata.get("onnxcam.preset"):
        if metadata["onnxcam.preset"] not in PRESETS:
            raise ModelLoadError(f"the model's metadata onnxcam.preset {metadata['onnxcam.preset']!r} is not one of: "
                                 f"{', '.join(PRESETS)}; give --preset or --config")
        cfg["preset"] = metadata["onnxcam.preset"]
    if config_file:
        cfg.update(load_config(config_file))
    if preset:
        get_preset(preset)
        cfg = {k: v for k, v in cfg.items() if k not in _NORMALISATION_KEYS}
        cfg["preset"] = preset
    return cfg


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (a regular UTF-8 file of at most MAX_TEXT_BYTES)."""
    return read_text(path, "labels").splitlines()


# -- the policy -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """Images prepared for one run: the model input `x` at `size` and, per image, its own (H, W)
    and its letterbox (None when stretched), so maps can be put back onto the photos."""

    x: np.ndarray
    size: tuple[int, int]
    shapes: list[tuple[int, int]]
    fits: list[Letterbox | None] = field(default_factory=list)

    def image_map(self, i: int, heatmap: np.ndarray) -> np.ndarray:
        """Item i's map (at the model input's size) over its photo, at the photo's own size."""
        fit = self.fits[i]
        return unletterbox_map(heatmap, fit) if fit is not None else resize_map(heatmap, self.shapes[i])

    def saved_map(self, i: int, heatmap: np.ndarray) -> np.ndarray:
        """The map a command saves: at the model's input size, or over the photo when letterboxed
        (the padding has no meaning on the photo)."""
        return self.image_map(i, heatmap) if self.fits[i] is not None else heatmap


@dataclass(frozen=True)
class InputPolicy:
    """How one model wants its images: normalisation, size (None: each image at its own size,
    rounded down to `multiple`), letterboxing, layout, channels and class names."""

    preset: Preset
    size: tuple[int, int] | None = DEFAULT_SIZE
    multiple: int = 32
    letterbox: bool = False
    layout: str = "NCHW"
    channels: int = 3
    labels: list[str] | None = None

    @property
    def native(self) -> bool:
        return self.size is None

    def batch_step(self, batch_size: int) -> int:
        """Images per run: native sizes differ, so one image per batch."""
        return 1 if self.native else max(1, batch_size)

    def size_for(self, image: np.ndarray) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        m = self.multiple
        h, w = image.shape[:2]
        return max(m, h // m * m), max(m, w // m * m)

    def batch(self, images: Sequence[np.ndarray]) -> Batch:
        """RGB uint8 images → one Batch at the policy's size (native: the first image's)."""
        if not images:
            raise UsageError("no images to prepare")
        size = self.size_for(images[0])
        fits: list[Letterbox | None] = []
        fitted = []
        for img in images:
            if self.letterbox:
                canvas, box = letterbox(img, size)
                fitted.append(canvas)
                fits.append(box)
            else:
                fitted.append(img)
                fits.append(None)
        x = preprocess(fitted, size, self.preset, self.layout, self.channels)
        return Batch(x, size, [tuple(im.shape[:2]) for im in images], fits)  # type: ignore[misc]

    def label(self, k: int) -> str | None:
        return self.labels[k] if self.labels and 0 <= k < len(self.labels) else None

    def describe(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "input_size": list(self.size) if self.size else "native",
                "letterbox": self.letterbox}


def _size_from(cfg: dict, size: str | Sequence[int] | None) -> tuple[int, int] | None:
    """--size (HxW or native) first, then the config's size, else DEFAULT_SIZE; None = native."""
    if _is_native(size):
        return None
    if size is not None:
        return parse_size(size)
    cfg_size = cfg.get("size")
    if _is_native(cfg_size):
        return None
    if cfg_size is not None:
        return parse_size(cfg_size)
    return DEFAULT_SIZE


def resolve_policy(info: Any, model_labels: list[str] | None = None, config_file: str | os.PathLike | None = None,
                   preset: str | None = None, size: str | Sequence[int] | None = None,
                   letterbox: bool | None = None, labels_file: str | os.PathLike | None = None) -> InputPolicy:
    """The input policy of a model (`info`: its onnxcam.model.ModelInfo) under the given options.

    A model with a fixed input size always gets it; `letterbox` None means the config's choice;
    `model_labels` are the model's own (``Explainer.labels``).
    """
    cfg = merged_config(info.metadata, config_file, preset)
    pre = preset_from_config(cfg) if cfg else PRESETS["imagenet"]
    requested = _size_from(cfg, size)  # parsed (and checked) even where the model's own size wins
    hw = info.fixed_size or requested
    try:
        multiple = int(cfg.get("multiple", 32))
    except (TypeError, ValueError):
        raise UsageError(f"config multiple {cfg.get('multiple')!r} is not an integer") from None
    if multiple < 1:
        raise UsageError(f"config multiple must be ≥ 1, got {multiple}")
    use_letterbox = bool(cfg.get("letterbox", False)) if letterbox is None else bool(letterbox)
    labels = model_labels or (list(map(str, cfg["labels"])) if isinstance(cfg.get("labels"), list) else None)
    if labels_file:
        labels = read_labels(labels_file)
    channels = info.channels if isinstance(info.channels, int) else 3
    return InputPolicy(pre, hw, multiple, use_letterbox, info.layout, channels, labels)


def policy_for(explainer: Any, **options: Any) -> InputPolicy:
    """`resolve_policy` for an `Explainer` (its model info and labels)."""
    return resolve_policy(explainer.info, explainer.labels, **options)
