"""Hostile image files, generated at test time by seeded code.

A decompression bomb (a 1-bit PNG of 32768² pixels in ~130 KB), truncated and corrupted files,
16-bit and CMYK images, empty files, non-images, FIFOs and folders named like images, and file
names with control characters.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def photo(path: Path, h: int = 40, w: int = 56, seed: int = 0) -> Path:
    """A small, decodable RGB PNG (or JPEG by suffix): a seeded gradient with a bright square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 128)], -1)
    y0, x0 = int(rng.integers(0, max(h // 2, 1))), int(rng.integers(0, max(w // 2, 1)))
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = 255
    img = (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = 32768) -> Path:
    """A valid 1-bit grayscale PNG of side² black pixels: ~130 KB on disk, side²·3 bytes decoded
    to BGR (3 GiB at 32768²). The rows are compressed as a stream, never held whole."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    for _ in range(side // 256):
        parts.append(comp.compress(block))
    parts.append(comp.flush())
    idat = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def header_only_png(path: Path, width: int = 100000, height: int = 100000) -> Path:
    """A PNG header declaring width×height with hardly any data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def truncated(path: Path, fraction: float = 0.5, source: Path | None = None) -> Path:
    data = (source or photo(path.with_name("_src" + path.suffix), 64, 64, seed=3)).read_bytes()
    if source is None:
        path.with_name("_src" + path.suffix).unlink()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def not_an_image(path: Path) -> Path:
    path.write_bytes(b"this is not a picture\n" * 20)
    return path


def zero_size(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def png16(path: Path) -> Path:
    img = (np.random.default_rng(4).integers(0, 65535, (30, 40, 3))).astype(np.uint16)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def gray_alpha(path: Path) -> Path:
    """A 2-channel (gray + alpha) PNG, written by hand (OpenCV cannot write one)."""
    h, w = 20, 24
    rows = b"".join(b"\x00" + bytes(v for x in range(w) for v in ((x * 10) % 256, 200)) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
                     + _chunk(b"IEND", b""))
    return path


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK (Adobe) JPEG: the committed 16×16 file made by tools/hostile/make_cmyk.py."""
    path.write_bytes((HERE / "data" / "cmyk.jpg").read_bytes())
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def unreadable(path: Path) -> Path:
    photo(path, seed=5)
    os.chmod(path, 0)
    return path
