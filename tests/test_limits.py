"""Limits checked before allocating (image headers, text files, input sizes), terminal escaping,
native stderr capture."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.console import escape, native_stderr, one_line
from onnxcam.errors import ImageError, UsageError
from onnxcam.limits import (
    MAX_IMAGE_PIXELS, check_image_pixels, check_input_size, image_header_size, read_text, regular_file_size,
)

from .hostile import images as I


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".pgm"])
@pytest.mark.parametrize("hw", [(33, 45), (1, 700), (517, 3)])
def test_header_size_matches_what_was_encoded(ext: str, hw: tuple[int, int]):
    channels = 1 if ext == ".pgm" else 3
    img = np.zeros((*hw, channels), np.uint8).squeeze(-1) if channels == 1 else np.zeros((*hw, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    assert image_header_size(buf.tobytes()) == (hw[1], hw[0])


def test_header_size_of_the_bomb_and_the_cmyk_jpeg(tmp_path: Path):
    bomb = I.png_bomb(tmp_path / "b.png", side=4096)
    assert bomb.stat().st_size < 40_000
    assert image_header_size(bomb.read_bytes()[:64]) == (4096, 4096)
    assert image_header_size(I.cmyk_jpeg(tmp_path / "c.jpg").read_bytes()) == (16, 16)
    assert image_header_size(b"not an image at all") is None
    assert image_header_size(b"\x89PNG\r\n\x1a\n") is None  # cut inside the header


def test_pixel_limits():
    check_image_pixels(8192, 8192, "x.png")
    with pytest.raises(ImageError, match=r"32768×32768 pixels \(1074 MP\), over the limit of 67 MP"):
        check_image_pixels(32768, 32768, "x.png")
    assert MAX_IMAGE_PIXELS == 8192 * 8192
    check_input_size(4096, 4096, "--size")
    with pytest.raises(UsageError, match="30000x30000 is over the limit"):
        check_input_size(30000, 30000, "--size")
    with pytest.raises(UsageError, match="over the limit"):
        check_input_size(1, 20000, "--size")
    with pytest.raises(UsageError, match="both sides must be positive"):
        check_input_size(0, 5, "--size")


def test_read_text_refuses_what_is_not_a_small_utf8_file(tmp_path: Path):
    good = tmp_path / "labels.txt"
    good.write_bytes("\ufeffcat\nchat\u00e9\n".encode("utf-8"))
    assert read_text(good, "labels") == "cat\nchat\u00e9\n"
    with pytest.raises(UsageError, match="labels /dev/zero is a device, not a file"):
        read_text("/dev/zero", "labels")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is a FIFO, not a file"):
        read_text(fifo, "labels")  # never opened: would block
    with pytest.raises(UsageError, match="is a folder"):
        read_text(tmp_path, "labels")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(300 << 20)
    with pytest.raises(UsageError, match=r"is 300.0 MB, over the limit of 16 MB"):
        read_text(big, "labels")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UsageError, match="not UTF-8 text"):
        read_text(binary, "labels")
    with pytest.raises(UsageError, match="not found"):
        regular_file_size(tmp_path / "nope", "labels", UsageError)


def test_escape_and_one_line():
    assert escape("a\x1b[31mred\x1b[0m\r\n\tb\x07\x7f\u2028") == "a\\x1b[31mred\\x1b[0m\\r\\n\\tb\\x07\\x7f\\u2028"
    assert one_line("first line\n   second\r\n third\x1b") == "first line second third\\x1b"
    assert escape("plain ü ✓") == "plain ü ✓"


def test_native_stderr_captures_what_c_code_writes():
    with native_stderr() as box:
        os.write(2, b"libfoo: warning\n")
    assert box == ["libfoo: warning\n"]
