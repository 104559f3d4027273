"""Images in and out: decoding, preprocessing presets, overlays.

Presets (what the model was trained on):
- ``imagenet``: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225);
- ``raw``: RGB in [0, 255];
- ``unit``: RGB in [0, 1];
- ``tf``: RGB in [−1, 1] (x / 127.5 − 1), as Keras MobileNet/Inception;
- ``caffe``: BGR in [0, 255] minus (103.939, 116.779, 123.68), as Keras ResNet50/VGG.
A 1-channel model gets the grayscale image under the same scaling (mean/std of the first channel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .console import native_stderr
from .errors import ImageError, UsageError
from .limits import MAX_IMAGE_PIXELS, check_image_pixels, image_header_size, regular_file_size

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))  # OpenCV's own check, any format

import cv2  # noqa: E402
import numpy as np  # noqa: E402

_ROWS = 512  # rows per band of the overlay arithmetic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Preset:
    name: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False


PRESETS: dict[str, Preset] = {
    "imagenet": Preset("imagenet", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "raw": Preset("raw", 1.0, (0, 0, 0), (1, 1, 1)),
    "unit": Preset("unit", 1 / 255, (0, 0, 0), (1, 1, 1)),
    "tf": Preset("tf", 1 / 127.5, (1, 1, 1), (1, 1, 1)),
    "caffe": Preset("caffe", 1.0, (103.939, 116.779, 123.68), (1, 1, 1), bgr=True),
}


def _decode_problem(noise: str) -> str | None:
    """The first line of what a codec printed while decoding, when it says the file is damaged
    (a truncated or corrupt JPEG decodes with a warning and grey where the data ran out)."""
    for line in noise.splitlines():
        low = line.lower()
        if ("corrupt jpeg" in low and "extraneous bytes" not in low) or "premature end" in low or "libpng error" in low:
            return line.strip()
    return None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3).

    ImageError (so a command can report it in one line and go on) when the file is not a regular
    readable file, declares more than MAX_IMAGE_PIXELS pixels in its header (checked before
    decoding: a 130 KB PNG can decode to gigabytes), cannot be decoded, or decodes with the codec
    reporting damage. What the codecs print is captured, never shown."""
    p = os.fspath(path)
    try:
        regular_file_size(p, "image", ImageError)
        with open(p, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc.strerror or exc}") from None
    return decode_image(data, p)


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes (a file's whole content) → RGB uint8 (H, W, 3), as `load_image` decodes
    files (the Ray path decodes the same bytes the same way); ImageError naming `name` otherwise:
    more than MAX_IMAGE_PIXELS declared in the header (checked before decoding), undecodable, or
    decoded with the codec reporting damage (what the codecs print is captured, never shown)."""
    data = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    p = name
    if not data.size:
        raise ImageError(f"cannot decode image: {p} (the file is empty)")
    dims = image_header_size(data[: 1 << 16].tobytes())
    if dims is not None:
        check_image_pixels(dims[0], dims[1], f"image {p}")
    try:
        with native_stderr() as noise:
            img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError) as exc:
        raise ImageError(f"cannot decode image: {p} ({type(exc).__name__})") from None
    problem = _decode_problem(noise[0] if noise else "")
    if img is None:
        raise ImageError(f"cannot decode image: {p}" + (f" ({problem})" if problem else ""))
    if problem:
        raise ImageError(f"image {p} is damaged: {problem}")
    check_image_pixels(img.shape[1], img.shape[0], f"image {p}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def preprocess(
    images: list[np.ndarray] | np.ndarray,
    size: tuple[int, int],
    preset: "str | Preset" = "imagenet",
    layout: str = "NCHW",
    channels: int = 3,
) -> np.ndarray:
    """RGB uint8 images → one float32 batch at size=(H, W) in the model's layout (images already
    at that size, e.g. letterboxed, are not resized)."""
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    h, w = size
    batch = []
    for img in images:
        x = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        x = x.astype(np.float32)
        if p.bgr:
            x = x[..., ::-1]
        if channels == 1:
            x = cv2.cvtColor(np.ascontiguousarray(x if not p.bgr else x[..., ::-1]), cv2.COLOR_RGB2GRAY)[..., None]
            x = (x * p.scale - p.mean[0]) / p.std[0]
        else:
            x = (x * p.scale - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
        batch.append(x)
    out = np.stack(batch).astype(np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2) if layout == "NCHW" else out)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to size=(H, W)."""
    return cv2.resize(heatmap.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, heatmap: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size) over an RGB uint8 image with the JET colormap.

    As pytorch-grad-cam's show_cam_on_image: (1 − w)·jet + w·image in [0, 1], divided by its max.
    Computed in bands of rows, the same numbers as whole-image float32 arithmetic, so a photo's
    overlay takes a few bytes per pixel instead of 28.
    """
    h, w = image.shape[:2]
    m = resize_map(heatmap, (h, w))
    np.clip(m, 0, 1, out=m)
    index = np.empty((h, w), np.uint8)
    for s in range(0, h, _ROWS):
        index[s : s + _ROWS] = np.uint8(255 * m[s : s + _ROWS])
    del m
    jet = cv2.applyColorMap(index, cv2.COLORMAP_JET)
    del index
    cv2.cvtColor(jet, cv2.COLOR_BGR2RGB, dst=jet)

    def blend(s: int) -> np.ndarray:
        return (1 - image_weight) * (jet[s : s + _ROWS].astype(np.float32) / 255) + image_weight * (
            image[s : s + _ROWS].astype(np.float32) / 255)

    top = np.float32(max(float(np.max(blend(s))) for s in range(0, h, _ROWS)))
    for s in range(0, h, _ROWS):
        jet[s : s + _ROWS] = np.uint8(255 * (blend(s) / top))
    return jet


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG file bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("cannot encode PNG")
    return buf.tobytes()


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as a PNG file (commands write through onnxcam.output instead)."""
    with open(os.fspath(path), "wb") as f:
        f.write(encode_png(rgb))


def deprocess(grad: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A (C, H, W) pixel-space gradient (guided backprop) as an RGB uint8 image, the usual way:
    standardise, scale by 0.1, centre on 0.5, clip (as pytorch-grad-cam's deprocess_image)."""
    g = grad.transpose(1, 2, 0).astype(np.float64)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    img = np.uint8(255 * np.clip(g, 0, 1))
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if size is not None and img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return img


# -- letterbox (detectors) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model's input: scaled by `scale`, then padded."""

    scale: float
    pad_x: int
    pad_y: int
    width: int  # the image's own size
    height: int


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to size=(H, W), centred (as YOLO's letterbox)."""
    h, w = image.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.full((th, tw, image.shape[2]), pad_value, dtype=image.dtype)
    py, px = (th - nh) // 2, (tw - nw) // 2
    canvas[py : py + nh, px : px + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, Letterbox(scale, px, py, w, h)


def unletterbox_map(heatmap: np.ndarray, box: Letterbox) -> np.ndarray:
    """A map over the letterboxed input → the map over the original image (padding cut off)."""
    nh, nw = max(1, round(box.height * box.scale)), max(1, round(box.width * box.scale))
    inner = heatmap[box.pad_y : box.pad_y + nh, box.pad_x : box.pad_x + nw]
    return resize_map(inner, (box.height, box.width))
