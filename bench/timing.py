"""The one timing step the method benchmarks share (bench_methods.py, bench_vs_pytorch_grad_cam.py)."""

from __future__ import annotations

import time
from typing import Callable


def timed_block(fn: Callable[[], object], slow: bool, settle_s: float,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """One timed call of `fn` on `clock`, after `settle_s` seconds of warm-up calls unless `fn` is
    slow (over a second: warming it up would cost more than it settles)."""
    if not slow and settle_s > 0:
        end = time.perf_counter() + settle_s
        fn()
        while time.perf_counter() < end:
            fn()
    t0 = clock()
    fn()
    return clock() - t0
