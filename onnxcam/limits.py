"""Limits on what onnxcam reads and allocates, checked before the work that would exceed them.

Files nobody checked can ask for any amount of memory: a 130 KB PNG that decodes to 32768²
pixels, a model declaring a 60000² input, a labels list of 235 MB in the metadata, `--labels
/dev/zero`. Each limit here is checked from what is known before the allocation (an image's
header, a model's declared shape, a file's size) and raises an error that says what was asked,
the limit, and what to do. With these limits one image is at most ~200 MB decoded, one model input
at most 4096² pixels per item, and a text file at most 16 MB: the CLI stays under 2 GB.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Optional

from .errors import ImageError, OnnxcamError, UsageError

MAX_IMAGE_PIXELS = 1 << 26
"""Decoded pixels per image (8192² = 67 M: 200 MB as RGB bytes); checked from the header."""

MAX_INPUT_PIXELS = 4096 * 4096
"""Pixels (H·W) of one model input item, declared by the model or asked with --size/config."""

MAX_INPUT_SIDE = 16384
"""Either side of a model input."""

MAX_TEXT_BYTES = 16 << 20
"""A text file named on the command line (--labels, --config, --boxes), or one metadata value."""

MAX_NPY_BYTES = 256 << 20
"""A .npy file given with --input."""

MAX_TOPK = 100
"""Maps per image asked with --target topK."""

MAX_STEPS = 1000
"""Deletion/insertion steps of `onnxcam eval`/`review`."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_size(path: str | os.PathLike, what: str, error: type[OnnxcamError] = OnnxcamError) -> int:
    """The size of `path`, which must be a regular file (following links); never opens it, so a
    FIFO or a device cannot block or stream forever."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} {p} not found") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is {_kind(st.st_mode)}, not a file")
    return int(st.st_size)


def read_bytes(path: str | os.PathLike, what: str, limit: int, error: type[OnnxcamError] = UsageError) -> bytes:
    """A regular file's bytes, refused (before reading) when over `limit`."""
    p = os.fspath(path)
    size = regular_file_size(p, what, error)
    if size > limit:
        raise error(f"{what} {p} is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.0f} MB")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    if len(data) > limit:  # it grew while we read it
        raise error(f"{what} {p} is over the limit of {limit / 2**20:.0f} MB")
    return data


def read_text(path: str | os.PathLike, what: str, limit: int = MAX_TEXT_BYTES,
              error: type[OnnxcamError] = UsageError) -> str:
    """A regular, UTF-8 text file of at most `limit` bytes (a leading BOM is dropped)."""
    data = read_bytes(path, what, limit, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {os.fspath(path)} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise error(f"{what} {os.fspath(path)} is not text (it contains NUL bytes)")
    return text.removeprefix("\ufeff")


def check_text_value(text: str, what: str, limit: int = MAX_TEXT_BYTES, error: type[OnnxcamError] = OnnxcamError) -> None:
    """A text value (e.g. model metadata) of at most `limit` bytes, checked before parsing it."""
    if len(text) > limit:  # characters ≤ bytes: a cheap first test
        raise error(f"{what} is {len(text) / 2**20:.1f} MB, over the limit of {limit / 2**20:.0f} MB")


# -- images --------------------------------------------------------------------------------------
def _png(data: bytes) -> Optional[tuple[int, int]]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> Optional[tuple[int, int]]:
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _bmp(data: bytes) -> Optional[tuple[int, int]]:
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    return None


def _webp(data: bytes) -> Optional[tuple[int, int]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    if kind == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _pnm(data: bytes) -> Optional[tuple[int, int]]:
    if len(data) < 3 or data[0:1] != b"P" or data[1:2] not in b"123456":
        return None
    fields: list[int] = []
    for line in data[2:4096].split(b"\n"):
        for tok in line.split(b"#")[0].split():
            if not tok.isdigit():
                return None
            fields.append(int(tok))
            if len(fields) == 2:
                return fields[0], fields[1]
    return None


def _tiff(data: bytes) -> Optional[tuple[int, int]]:
    if data[:4] not in (b"II*\x00", b"MM\x00*") or len(data) < 8:
        return None
    e = "<" if data[:2] == b"II" else ">"
    off = struct.unpack(e + "I", data[4:8])[0]
    if off + 2 > len(data):
        return None
    count = struct.unpack(e + "H", data[off : off + 2])[0]
    w = h = None
    for k in range(count):
        at = off + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, typ = struct.unpack(e + "HH", data[at : at + 4])
        val = struct.unpack(e + ("H" if typ == 3 else "I"), data[at + 8 : at + (10 if typ == 3 else 12)])[0]
        if tag == 256:
            w = val
        elif tag == 257:
            h = val
    return (w, h) if w is not None and h is not None else None


def image_header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) declared by an image file's header (PNG, JPEG, BMP, WebP, PNM, TIFF), or
    None when the format is not one of these or the header cannot be read."""
    for probe in (_png, _jpeg, _bmp, _webp, _pnm, _tiff):
        try:
            found = probe(data)
        except (struct.error, IndexError, ValueError):
            found = None
        if found is not None:
            return found
    return None


def check_image_pixels(width: int, height: int, name: str, limit: int = MAX_IMAGE_PIXELS) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} declares {width}×{height} pixels: not an image")
    if width * height > limit:
        raise ImageError(
            f"{name} declares {width}×{height} pixels ({width * height / 1e6:.0f} MP), over the limit of "
            f"{limit / 1e6:.0f} MP per image; resize it first"
        )


def check_input_size(height: int, width: int, what: str, error: type[OnnxcamError] = UsageError) -> None:
    """A model input size (declared, or asked with --size / a config) within the limits."""
    if height <= 0 or width <= 0:
        raise error(f"{what} {height}x{width} is not a size: both sides must be positive")
    if max(height, width) > MAX_INPUT_SIDE or height * width > MAX_INPUT_PIXELS:
        raise error(
            f"{what} {height}x{width} is over the limit of {MAX_INPUT_PIXELS // 1_000_000} MP "
            f"(at most {MAX_INPUT_SIDE} per side) per image"
        )
