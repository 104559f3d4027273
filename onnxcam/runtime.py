"""onnxruntime sessions: providers, threads, and a silent CUDA → CPU fallback.

onnxruntime-gpu prints an error block to the terminal when CUDA is requested on a machine whose
CUDA libraries are missing. We ask for CUDA only when the NVIDIA driver library is present, and
even then create the session with onnxruntime's logger muted, check which provider actually runs,
and log the fallback through Python logging instead.

`session_for(model)` is the way in from an in-memory ModelProto, whatever its size: below
`INLINE_LIMIT` it is serialised and loaded from bytes; above (protobuf cannot serialise more than
2 GB) it is written, with its initializers as external data, into a temporary directory that lives
as long as the returned session (`session.onnxcam_tmpdir`) and is removed with it.

`run(session, feeds, names)` is how the explainer runs a session: on the CUDA provider through
onnxruntime's I/O binding (each input copied to the GPU once, the outputs allocated there and
copied back once, no staging through onnxruntime's own output copies); on the CPU the plain run,
whose outputs already are numpy arrays. `run_bound` is the binding path itself, on any provider.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import tempfile
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ModelLoadError, OnnxcamError
from .storage import proto_size, without_big_data

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
    """CUDA then CPU where onnxruntime has CUDA and a driver is installed, else CPU."""
    available = ort.get_available_providers()
    if CUDA in available and cuda_driver_present():
        return [CUDA, CPU]
    return [CPU]


def make_session(
    model_bytes: bytes | str,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    profile: bool = False,
) -> ort.InferenceSession:
    """An InferenceSession on the requested providers (default: CUDA where it works, else CPU).
    `model_bytes`: a serialised model, or the path of a model file."""
    check_install()
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
    except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented, ... (no common base)
        raise ModelLoadError(f"onnxruntime cannot load the model: {ort_message(exc)}") from None
    finally:
        if quiet:
            ort.set_default_logger_severity(_severity)
    got = sess.get_providers()
    if wanted[0] not in got:
        log.info("%s is not usable here; running on %s", wanted[0], got[0])
    return sess


_severity = 2  # onnxruntime's default logger: warnings and up

RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-training", "onnxruntime-directml",
                         "onnxruntime-openvino", "onnxruntime-qnn")
"""Distributions that each install the same `onnxruntime/` package: exactly one may be installed."""


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed in this environment (name==version)."""
    from importlib import metadata

    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def install_problem(found: Sequence[str]) -> str | None:
    """What is wrong with the onnxruntime distributions `found` (see installed_runtimes), or None."""
    if len(found) > 1:
        names = " ".join(f.split("==")[0] for f in found)
        return (f"{' and '.join(found)} are installed together; they overwrite each other's onnxruntime "
                f"package, so which one runs is an accident: pip uninstall -y {names}, then pip install "
                f"'onnxcam[cpu]' (or 'onnxcam[gpu]' for CUDA)")
    return None


@functools.lru_cache(maxsize=1)
def check_install() -> None:
    """OnnxcamError when the environment holds a broken mix of onnxruntime distributions."""
    problem = install_problem(installed_runtimes())
    if problem:
        raise OnnxcamError(problem)


def quiet_logs() -> None:
    """onnxruntime's default logger shows fatal errors only (the CLI, unless --verbose)."""
    global _severity
    _severity = 4
    ort.set_default_logger_severity(_severity)


def ort_message(exc: BaseException) -> str:
    """onnxruntime's exception text without its status prefix and C++ source location."""
    msg = str(exc)
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"/onnxruntime_src/\S+:\d+ [^()]*\([^()]*\)\s*", "", msg)
    return msg


def run_bound(session: ort.InferenceSession, feeds: dict[str, np.ndarray], names: Sequence[str] | None = None) -> list:
    """`session.run(names, feeds)` through I/O binding: inputs placed on the session's device
    (CUDA's first GPU or the CPU), outputs bound there, then copied to numpy arrays."""
    device = "cuda" if provider_of(session) == CUDA else "cpu"
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for name in names or [o.name for o in session.get_outputs()]:
        binding.bind_output(name, device, 0)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def run(session, feeds: dict[str, np.ndarray], names: Sequence[str] | None = None) -> list:
    """Run a session: I/O binding on CUDA (`run_bound`), the plain run elsewhere (and for sessions
    that are not onnxruntime InferenceSessions, such as the ort-training backend's)."""
    if isinstance(session, ort.InferenceSession) and provider_of(session) == CUDA:
        return run_bound(session, feeds, names)
    return session.run(None if names is None else list(names), feeds)


def provider_of(session: ort.InferenceSession) -> str:
    """The provider a session runs on first (what the user's results report)."""
    return session.get_providers()[0]


# Models whose protobuf is at least this big (bytes) go to onnxruntime through a file with
# external data instead of bytes: protobuf refuses to serialise 2 GiB, and this leaves headroom
# for the nodes and the graph outputs added around the initializers.
INLINE_LIMIT = 1_800_000_000
WEIGHTS_FILE = "weights.bin"


def model_size(model: onnx.ModelProto) -> int:
    """The model's serialised size in bytes (computed, not serialised; over 2 GB, where protobuf
    refuses to compute it, a number above 2**31 - 1)."""
    return proto_size(model)


def session_for(
    model: onnx.ModelProto,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    profile: bool = False,
) -> ort.InferenceSession:
    """An InferenceSession for an in-memory model of any size; `model` is not changed.

    Under `INLINE_LIMIT` the model goes to onnxruntime as bytes. Over it, the model is saved as
    `model.onnx` plus `weights.bin` (every initializer of 1 KiB or more, page-aligned) in a
    `tempfile.TemporaryDirectory`, loaded from there, and the directory is attached to the
    session as `session.onnxcam_tmpdir`: it lives as long as the session and is deleted when the
    session is garbage-collected (or by `session.onnxcam_tmpdir.cleanup()`).
    """
    if model_size(model) < INLINE_LIMIT:
        return make_session(model.SerializeToString(), providers, threads, profile)

    tmp = tempfile.TemporaryDirectory(prefix="onnxcam-")
    try:
        path = os.path.join(tmp.name, "model.onnx")
        with open(os.path.join(tmp.name, WEIGHTS_FILE), "wb") as f:
            skeleton = without_big_data(model, min_bytes=1024, data_file=f, location=WEIGHTS_FILE)
        with open(path, "wb") as f:
            f.write(skeleton.SerializeToString())
        del skeleton
        log.info("model of %.2f GB: loading it through external data in %s", model_size(model) / 1e9, tmp.name)
        sess = make_session(path, providers, threads, profile)
    except BaseException:
        tmp.cleanup()
        raise
    sess.onnxcam_tmpdir = tmp  # type: ignore[attr-defined]  # keep the files as long as the session
    return sess
