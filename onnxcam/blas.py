"""numpy's BLAS on one thread while a method finishes its map after an onnxruntime run.

What a method still computes in numpy is small (an (N, 49, 49) eigendecomposition, a weighted sum
of a few channels): one thread does it in microseconds. But the OpenBLAS that numpy's wheels ship
starts a worker per core even for a 49 × 49 `eigh`, and its workers spin at barriers: next to
onnxruntime's own spinning intra-op threads, or on a machine shared with other processes, one
descheduled worker stalls the call. Measured here (2 vCPUs, load average 18): `eigh` of one 49 × 49
matrix 10 ms of CPU and 65–146 ms of wall time with OpenBLAS's default threads, 0.22 ms / 3 ms with
one thread; Eigen-CAM's thin SVD of a 2048 × 49 matrix 1.7 s against 29 ms.

`one_blas_thread()` sets OpenBLAS to one thread for the duration of a `with` block and restores
the previous count after it (it is process-wide: other threads' numpy calls are single-threaded
meanwhile). Where numpy's BLAS is not a bundled OpenBLAS that can be found, it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from typing import Callable, Iterator, Optional

import numpy as np

# (setter, getter) symbol names of the OpenBLAS builds numpy ships (scipy-openblas, 64-bit ints
# first) and of a plain OpenBLAS
_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]


@functools.lru_cache(maxsize=1)
def _openblas() -> Optional[tuple[Callable[[int], None], Callable[[], int]]]:
    """The thread-count setter and getter of the OpenBLAS loaded with numpy, or None."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    candidates = glob.glob(os.path.join(root, "numpy.libs", "*openblas*")) + glob.glob(
        os.path.join(os.path.dirname(np.__file__), ".dylibs", "*openblas*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same library and state
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                return setter, getter
    return None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with numpy's OpenBLAS on one thread (no-op where it cannot be found)."""
    fns = _openblas()
    if fns is None:
        yield
        return
    setter, getter = fns
    before = getter()
    setter(1)
    try:
        yield
    finally:
        setter(before)
