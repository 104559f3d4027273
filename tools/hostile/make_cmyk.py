"""Write tests/hostile/data/cmyk.jpg: a 16×16 CMYK (Adobe) JPEG, the kind print workflows and
some phone apps produce, which OpenCV must convert to RGB. Needs Pillow (build time only):

    python tools/hostile/make_cmyk.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "tests" / "hostile" / "data" / "cmyk.jpg"

if __name__ == "__main__":
    yy, xx = np.mgrid[0:16, 0:16]
    cmyk = np.stack([xx * 16, yy * 16, np.full_like(xx, 64), np.full_like(xx, 32)], -1).astype(np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(OUT, quality=90)
    print(OUT, OUT.stat().st_size, "bytes")
