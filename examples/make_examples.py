"""Regenerate the example photos in this folder from scikit-image's bundled data.

Run (any Python with scikit-image and Pillow installed, e.g. the venv used for the model build):

    python examples/make_examples.py

Writes chelsea.png, coffee.png and astronaut.png next to this script at their original size as
8-bit RGB PNGs. The images ship inside the scikit-image wheel (skimage/data/*.png), so nothing is
downloaded.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent

PHOTOS = {
    "chelsea.png": data.chelsea,  # (300, 451, 3) Chelsea the cat, CC0 (Stefan van der Walt)
    "coffee.png": data.coffee,  # (400, 600, 3) coffee cup, CC0 (Rachel Michetti)
    "astronaut.png": data.astronaut,  # (512, 512, 3) Eileen Collins, NASA, public domain
}


def main() -> None:
    for name, loader in PHOTOS.items():
        arr = np.asarray(loader())
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, (name, arr.shape)
        out = HERE / name
        # Plain PNG with no metadata: the output is byte-stable across runs.
        Image.fromarray(arr).save(out, format="PNG")
        print(f"{out.name}: {arr.shape[1]}x{arr.shape[0]} RGB")


if __name__ == "__main__":
    main()
