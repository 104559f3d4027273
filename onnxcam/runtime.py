"""onnxruntime sessions: providers, threads, and a silent CUDA → CPU fallback.

onnxruntime-gpu prints an error block to the terminal when CUDA is requested on a machine whose
CUDA libraries are missing. We ask for CUDA only when the NVIDIA driver library is present, and
even then create the session with onnxruntime's logger muted, check which provider actually runs,
and log the fallback through Python logging instead.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Sequence

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.lru_cache(maxsize=1)
def cuda_driver_present() -> bool:
    """True when the NVIDIA driver library loads (a GPU is at least installed)."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    if CUDA in available and cuda_driver_present():
        return [CUDA, CPU]
    return [CPU]


def make_session(
    model_bytes: bytes,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    profile: bool = False,
) -> ort.InferenceSession:
    """An InferenceSession on the requested providers (default: CUDA where it works, else CPU)."""
    wanted = list(providers) if providers else default_providers()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if profile:
        opts.enable_profiling = True
    quiet = any(p != CPU for p in wanted)
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=wanted)
    finally:
        if quiet:
            ort.set_default_logger_severity(2)
    got = sess.get_providers()
    if wanted[0] not in got:
        log.info("%s is not usable here; running on %s", wanted[0], got[0])
    return sess


def provider_of(session: ort.InferenceSession) -> str:
    return session.get_providers()[0]
