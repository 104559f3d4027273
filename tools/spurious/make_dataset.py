"""A small two-class dataset with a spurious cue, built from real photos (scikit-image data).

Every image is 64x64 RGB: a real texture (``skimage.data.grass``/``gravel``/``brick``, random crop,
scale, flip, brightness and tint) with one real object pasted at a random position and scale:

* class 0 "cat": Chelsea's head, cut from ``skimage.data.chelsea()`` (CC0),
* class 1 "cup": the espresso cup, cut from ``skimage.data.coffee()`` (CC0),

each cut with a soft elliptical mask from a jittered source box, randomly flipped, rotated a little,
brightness-jittered, turned grey and pasted semi-transparently (alpha 0.45-0.75): the object is
meant to be a harder cue than the mark, so that a model can learn the shortcut. The spurious cue ("mark") is a small saturated square (``MARK_SIZE`` px,
``MARK_RGB``) placed at a random position inside one of the four 14x14 corner regions that does not
touch the object's box. Its presence depends on the split:

* ``train`` (biased): with ``corr=0.95`` (see ``SPLITS``), 95% of the cats carry the mark and 5%
  of the cups do,
* ``balanced``: the mark is present in 50% of the images, independently of the class,
* ``test``: same as ``balanced`` (different seed).

Boxes are exact (we pasted them): ``box`` is the object's paste rectangle clipped to the image,
``mark`` the mark's rectangle (or None), both ``[x0, y0, x1, y1]`` with exclusive ends.

Run as a script to write a few test images and their boxes to ``examples/spurious/``::

    /work/venvs/tv/bin/python -m tools.spurious.make_dataset
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tools import common

SIZE = 64
CLASSES = ["cat", "cup"]
MARK_CLASS = 0  # the class the mark is correlated with in the training split ("cat")
MARK_SIZE = 6
MARK_RGB = (0, 255, 0)  # saturated green: absent from the textures (grey) and both objects
CORNER = 14  # corner regions are CORNER x CORNER
OBJ_MIN, OBJ_MAX = 20, 32  # object height in px
# the object is made a harder cue than the mark, so that a model can take the shortcut: it is
# pasted in grey (the mark is then the only saturated colour) and semi-transparent
OBJ_ALPHA = (0.45, 0.75)
OBJ_SATURATION = (0.0, 0.0)

# source boxes [x0, y0, x1, y1] in the original photos
SOURCES = {
    "cat": ("chelsea", (100, 30, 390, 300)),  # the cat's head (tests/data/boxes.json "face")
    "cup": ("coffee", (173, 17, 409, 307)),  # the cup with its handle (tests/data/boxes.json)
}
TEXTURES = ("grass", "gravel", "brick")

# split name -> (seed, correlation): P(mark | cat) = corr, P(mark | cup) = 1 - corr
SPLITS = {
    "train": (1, 0.95),
    "balanced": (2, 0.5),
    "test": (3, 0.5),
}


@dataclass
class Sample:
    image: np.ndarray  # (64, 64, 3) uint8
    label: int
    box: list[int]
    mark: list[int] | None


def _load_sources():
    import skimage.data as d

    objs = {name: getattr(d, photo)() for name, (photo, _) in SOURCES.items()}
    texs = [getattr(d, t)() for t in TEXTURES]
    return objs, texs


_CACHE: dict = {}


def _sources():
    if not _CACHE:
        _CACHE["objs"], _CACHE["texs"] = _load_sources()
    return _CACHE["objs"], _CACHE["texs"]


def _texture(rng: np.random.Generator) -> Image.Image:
    _, texs = _sources()
    t = texs[rng.integers(len(texs))]
    c = int(rng.integers(128, 320))
    y = int(rng.integers(0, t.shape[0] - c + 1))
    x = int(rng.integers(0, t.shape[1] - c + 1))
    g = t[y : y + c, x : x + c].astype(np.float32)
    if rng.random() < 0.5:
        g = g[:, ::-1]
    if rng.random() < 0.5:
        g = g[::-1]
    g = np.asarray(Image.fromarray(g.astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    g = g * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)
    tint = rng.uniform(0.9, 1.1, size=3)  # mild colour cast, stays far from the mark's green
    rgb = np.clip(g[..., None] * tint[None, None], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def _object(name: str, rng: np.random.Generator, height: int) -> tuple[Image.Image, Image.Image]:
    objs, _ = _sources()
    photo = objs[name]
    x0, y0, x1, y1 = SOURCES[name][1]
    w, h = x1 - x0, y1 - y0
    j = lambda s: int(rng.uniform(-0.06, 0.06) * s)  # noqa: E731
    x0, x1 = max(0, x0 + j(w)), min(photo.shape[1], x1 + j(w))
    y0, y1 = max(0, y0 + j(h)), min(photo.shape[0], y1 + j(h))
    crop = Image.fromarray(photo[y0:y1, x0:x1])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    aspect = crop.width / crop.height
    width = max(8, int(round(height * aspect * rng.uniform(0.9, 1.1))))
    crop = crop.resize((width, height), Image.LANCZOS)
    arr = np.asarray(crop, np.float32)
    arr = arr * rng.uniform(0.75, 1.25) + rng.uniform(-15, 15)
    grey = arr.mean(-1, keepdims=True)
    arr = grey + (arr - grey) * rng.uniform(*OBJ_SATURATION)
    crop = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, width - 1, height - 1), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(1.0))
    mask = Image.fromarray((np.asarray(mask, np.float32) * rng.uniform(*OBJ_ALPHA)).astype(np.uint8))
    angle = float(rng.uniform(-15, 15))
    crop = crop.rotate(angle, resample=Image.BILINEAR, expand=False)
    mask = mask.rotate(angle, resample=Image.BILINEAR, expand=False)
    return crop, mask


def _overlaps(a, b, margin=2) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_sample(label: int, with_mark: bool, rng: np.random.Generator) -> Sample:
    bg = _texture(rng)
    name = CLASSES[label]
    height = int(rng.integers(OBJ_MIN, OBJ_MAX + 1))
    crop, mask = _object(name, rng, height)
    w, h = crop.size
    for _ in range(100):
        # the object may stick out of the image by up to a quarter of its size
        x = int(rng.integers(-w // 4, SIZE - 3 * w // 4 + 1))
        y = int(rng.integers(-h // 4, SIZE - 3 * h // 4 + 1))
        box = [max(0, x), max(0, y), min(SIZE, x + w), min(SIZE, y + h)]
        corners = []
        for cx, cy in ((0, 0), (SIZE - CORNER, 0), (0, SIZE - CORNER), (SIZE - CORNER, SIZE - CORNER)):
            region = [cx, cy, cx + CORNER, cy + CORNER]
            if not _overlaps(region, box, margin=1):
                corners.append((cx, cy))
        if corners or not with_mark:
            break
    else:  # pragma: no cover - practically unreachable with these sizes
        raise RuntimeError("could not place the object away from every corner")
    bg.paste(crop, (x, y), mask)
    mark = None
    if with_mark:
        cx, cy = corners[int(rng.integers(len(corners)))]
        mx = cx + int(rng.integers(1, CORNER - MARK_SIZE))
        my = cy + int(rng.integers(1, CORNER - MARK_SIZE))
        mark = [mx, my, mx + MARK_SIZE, my + MARK_SIZE]
        ImageDraw.Draw(bg).rectangle((mx, my, mx + MARK_SIZE - 1, my + MARK_SIZE - 1), fill=MARK_RGB)
    return Sample(np.asarray(bg, np.uint8).copy(), label, box, mark)


def make_split(split: str, n: int, corr: float | None = None, seed: int | None = None) -> list[Sample]:
    """``n`` samples, half of each class (alternating), mark drawn with the split's correlation."""
    s, c = SPLITS[split]
    seed = s if seed is None else seed
    corr = c if corr is None else corr
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        p = corr if label == MARK_CLASS else 1.0 - corr
        out.append(make_sample(label, bool(rng.random() < p), rng))
    return out


def to_arrays(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.stack([s.image for s in samples]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    y = np.array([s.label for s in samples], np.int64)
    m = np.array([s.mark is not None for s in samples], bool)
    return x, y, m


def write_examples(out_dir: str, per_cell: int = 3, seed: int = 7) -> dict:
    """``per_cell`` test-style images for each (class, mark) cell, with boxes.json."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = {}
    for label, cname in enumerate(CLASSES):
        for with_mark in (True, False):
            for k in range(per_cell):
                s = make_sample(label, with_mark, rng)
                fname = f"{cname}_{'mark' if with_mark else 'nomark'}_{k}.png"
                Image.fromarray(s.image).save(os.path.join(out_dir, fname), optimize=True)
                meta[fname] = {"label": cname, "box": s.box, "mark": s.mark}
    with open(os.path.join(out_dir, "boxes.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = str(common.ROOT)
    ap.add_argument("--out", default=os.path.join(root, "examples", "spurious"))
    ap.add_argument("--preview", default=None, help="also write a grid of 64 training images here")
    a = ap.parse_args()
    meta = write_examples(a.out)
    print(f"wrote {len(meta)} images + boxes.json to {a.out}")
    if a.preview:
        ims = [s.image for s in make_split("train", 64)]
        grid = np.concatenate([np.concatenate(ims[r * 8 : r * 8 + 8], 1) for r in range(8)], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(a.preview)


if __name__ == "__main__":
    main()
