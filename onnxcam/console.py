"""What reaches the terminal: one escaped line per message, and no library noise.

File names, label strings and library messages can hold anything: a newline that splits one error
into two lines, a carriage return or an ANSI escape that rewrites the terminal. `escape` makes any
text safe to print (control characters as Python-style escapes); `one_line` also joins lines.

OpenCV's codecs (libpng, libjpeg) and onnxruntime write warnings straight to file descriptor 2,
past Python. `native_stderr()` captures that descriptor around one call and returns what was
written, so the caller can turn it into an error for that one image (a corrupt JPEG decodes with a
warning) or drop it. `quiet_libraries()` mutes numpy's floating-point warnings and OpenCV's logger
for the process; the CLI calls it unless --verbose.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def escape(text: object) -> str:
    """`text` with every control character (C0, DEL, C1, line separators) written as an escape."""
    s = str(text)

    def repl(m: re.Match) -> str:
        c = m.group(0)
        return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(repl, s)


def one_line(text: object) -> str:
    """A message as one printable line: runs of whitespace inside library messages (which span
    several lines) become one space, then what is left of control characters is escaped."""
    s = str(text).strip()
    s = re.sub(r"\s*\n\s*", " ", s)
    return escape(s)


_capture_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 inside the block.

    Yields a list that holds, after the block, the captured text (one string). Python's own
    sys.stderr is flushed first so nothing of ours is swallowed."""
    box: list[str] = []
    fd = 2  # native code writes to the descriptor, whatever sys.stderr is
    with _capture_lock:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        saved = os.dup(fd)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), fd)
            try:
                yield box
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, fd)
                os.close(saved)
                tmp.seek(0)
                box.append(tmp.read(1 << 16).decode("utf-8", "replace"))


def quiet_libraries() -> None:
    """No warnings from numpy or OpenCV on stderr (errors still raise; onnxruntime's logger is
    runtime.quiet_logs)."""
    import warnings

    import numpy as np

    np.seterr(all="ignore")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:  # noqa: BLE001  (an OpenCV without the logging API)
        pass
