"""Run the onnxcam CLI as a hostile user would, and check the contract every run must keep.

`run_cli` starts the CLI in its own process (so that a crash, a hang or a memory blow-up is seen
as such), under an address-space limit that keeps a runaway case from taking the machine down, and
reads that process's own peak RSS with ``os.wait4``. `Snapshot` records a folder tree without
following links (kind, size, mtime, sha256, link target) so that a test can prove nothing outside
OUT changed. `check_contract` asserts the README's promises on one run:

- the documented exit code;
- stderr: every error is one line starting with ``onnxcam: error:``, at most one more (the summary)
  line, no traceback, no library noise (onnxruntime/OpenCV/numpy warnings), no control characters
  or ANSI escapes;
- results.json, when present, is strict JSON (no bare NaN/Infinity), every record's files exist
  inside OUT, no two records share a file, and every good input has its record;
- the peak RSS of the CLI process is at most 2 GiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
MAX_RSS_BYTES = 2 * 1024**3
# A safety net, not the measure: a runaway allocation fails instead of swapping the machine out.
ADDRESS_SPACE_LIMIT = 6 * 1024**3
CLI = "import sys; from onnxcam.cli import main; sys.exit(main())"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Run:
    """One finished CLI process."""

    args: list[str]
    code: int
    stdout: str
    stderr: str
    max_rss: int  # bytes
    seconds: float
    timed_out: bool = False

    @property
    def lines(self) -> list[str]:
        return [l for l in self.stderr.split("\n") if l != ""]

    def describe(self) -> str:
        tail = self.stderr[-1500:]
        return f"exit {self.code} after {self.seconds:.1f}s, rss {self.max_rss / 2**20:.0f} MiB, stderr:\n{tail}"


def _drop_permission_override() -> None:
    """Make file permissions apply to root too: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
    CAP_FOWNER from the bounding set, so the exec'd process never gets them back."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limits(fsize: int | None, restricted: bool) -> Callable[[], None]:
    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if restricted and os.geteuid() == 0:
            _drop_permission_override()

    return apply


def run_cli(
    args: Iterable[object],
    cwd: Path,
    *,
    timeout: float = 180,
    fsize: int | None = None,
    restricted: bool = False,
    interrupt_when: Callable[[], bool] | None = None,
    tty: bool = False,
) -> Run:
    """Run `onnxcam ARGS` in a fresh process from cwd; wait for it with os.wait4 (peak RSS).

    fsize: RLIMIT_FSIZE in bytes (a write past it fails with EFBIG, as a full disk would fail it);
    restricted: file permissions apply even when the suite runs as root (permission cases);
    interrupt_when: polled while the process runs; when it first returns True, SIGINT is sent.
    """
    argv = [str(a) for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_", "PYTHONWARNINGS"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HOME", str(cwd))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            env=env, preexec_fn=_limits(fsize, restricted),
        )
        timed_out = interrupted = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if now - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if interrupt_when is not None and not interrupted and interrupt_when():
                interrupted = True
                os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        so = out.read().decode("utf-8", "replace")
        se = err.read().decode("utf-8", "replace")
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    run = Run(argv, code, so, se, usage.ru_maxrss * 1024, seconds, timed_out)
    log = os.environ.get("ONNXCAM_HOSTILE_LOG")  # figures for a report: one JSON line per run
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "args": argv[:1], "code": code,
                                "max_rss_mib": round(run.max_rss / 2**20), "seconds": round(seconds, 2)}) + "\n")
    return run


# -- snapshots ------------------------------------------------------------------------------------
def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Snapshot:
    """Every entry under a root, links not followed: path → (kind, size, mtime_ns, sha256 | target).

    Folders are recorded by kind only (their mtime changes whenever OUT is created beside them).
    Paths under `skip` (OUT) are left out.
    """

    root: Path
    entries: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def take(cls, root: Path, skip: Iterable[Path] = ()) -> "Snapshot":
        skips = {os.path.abspath(p) for p in skip}
        snap = cls(root)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            keep = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if os.path.abspath(full) in skips:
                    continue
                keep.append(d)
            dirnames[:] = keep
            for name in [*keep, *filenames]:
                full = os.path.join(dirpath, name)
                if os.path.abspath(full) in skips:
                    continue
                st = os.lstat(full)
                rel = os.path.relpath(full, root)
                if stat.S_ISLNK(st.st_mode):
                    snap.entries[rel] = ("link", os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    snap.entries[rel] = ("dir", stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    digest = _digest(full) if st.st_size < (64 << 20) and os.access(full, os.R_OK) else ""
                    snap.entries[rel] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)
                else:
                    snap.entries[rel] = ("other", stat.S_IFMT(st.st_mode))
        return snap

    def diff(self, other: "Snapshot") -> list[str]:
        changes = []
        for k in sorted(set(self.entries) | set(other.entries)):
            a, b = self.entries.get(k), other.entries.get(k)
            if a != b:
                changes.append(f"{k}: {a} -> {b}")
        return changes


# -- the contract ---------------------------------------------------------------------------------
class JSONConstantError(ValueError):
    pass


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (which are not JSON)."""

    def bad(name: str):
        raise JSONConstantError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=bad)


def _resolve(p: str, cwd: Path, out: Path) -> Path:
    q = Path(p)
    if q.is_absolute():
        return q
    for base in (cwd, out):
        if (base / q).exists() or (base / q).is_symlink():
            return base / q
    return cwd / q


def _inside(path: Path, folder: Path) -> bool:
    a = os.path.realpath(path.parent)
    b = os.path.realpath(folder)
    return a == b or a.startswith(b + os.sep)


def results_records(out: Path, cwd: Path) -> dict | None:
    """results.json (strict JSON) or None when absent."""
    rj = out / "results.json"
    if rj.is_symlink() or not rj.exists():  # a link planted there is not the run's results
        return None
    return strict_json(rj.read_text(encoding="utf-8"))


def is_incomplete(report: dict) -> bool:
    """A results.json that says the run did not finish (resume with the same command)."""
    return bool(report.get("incomplete")) or report.get("status") in ("incomplete", "interrupted", "failed")


def check_results(out: Path, cwd: Path, good: Iterable[Path] = (), bad: Iterable[Path] = (),
                  image_sizes: dict[str, tuple[int, int]] | None = None) -> dict | None:
    """results.json is strict JSON; every record's files exist inside OUT, unshared, and decode;
    every good input has a record, every bad one an error."""
    import numpy as np

    report = results_records(out, cwd)
    if report is None:
        return None
    records = report.get("images", [])
    seen_files: dict[str, str] = {}
    by_image: dict[str, list[dict]] = {}
    for rec in records:
        img = os.path.realpath(_resolve(rec["image"], cwd, out))
        by_image.setdefault(img, []).append(rec)
        for key in ("overlay", "heatmap", "guided"):
            if key not in rec or rec[key] is None:
                continue
            f = _resolve(rec[key], cwd, out)
            assert f.is_file() and not f.is_symlink(), f"{key} {rec[key]} of {rec['image']} missing"
            assert _inside(f, out), f"{key} {f} is outside OUT"
            real = os.path.realpath(f)
            assert real not in seen_files, f"{real} is claimed by {seen_files[real]} and {rec['image']}"
            seen_files[real] = rec["image"]
        hm = np.load(_resolve(rec["heatmap"], cwd, out), allow_pickle=False)
        assert np.isfinite(hm).all() and hm.min() >= 0 and hm.max() <= 1, f"heatmap of {rec['image']} not in [0, 1]"
        if image_sizes is not None and img in image_sizes:
            import cv2

            ov = cv2.imread(str(_resolve(rec["overlay"], cwd, out)), cv2.IMREAD_UNCHANGED)
            assert ov is not None and ov.shape[:2] == image_sizes[img], (
                f"overlay of {rec['image']} is {None if ov is None else ov.shape[:2]}, the image is {image_sizes[img]}"
            )
    if not is_incomplete(report):
        for g in good:
            assert os.path.realpath(g) in by_image, f"no result for {g}; results: {sorted(by_image)}"
        errs = {os.path.realpath(_resolve(e["image"], cwd, out)) for e in report.get("errors", []) if "image" in e}
        for b in bad:
            assert os.path.realpath(b) in errs, f"no error recorded for {b}; errors: {sorted(errs)}"
    return report


NOISE = ("Traceback", "[W:onnxruntime", "[E:onnxruntime", "RuntimeWarning", "UserWarning", "libpng",
         "DeprecationWarning", "cv2.error", "[ WARN:", "[ERROR:", "[ INFO:", "Corrupt JPEG", "Premature end")


def check_stderr(run: Run, errors: int | None = None) -> None:
    """Errors are one line each (`onnxcam: error: ...`); at most one other line (the summary)."""
    text = run.stderr
    assert "Traceback" not in text, f"a traceback on stderr:\n{text[-2000:]}"
    foreign = "\n".join(l for l in text.split("\n") if not l.startswith("onnxcam: "))
    for word in NOISE:  # a library's own line (our error lines may quote a codec's reason)
        assert word not in foreign, f"library noise on stderr ({word}):\n{text[-2000:]}"
    assert not _CONTROL.search(text), f"control characters on stderr: {text[-500:]!r}"
    lines = run.lines
    err_lines = [l for l in lines if l.startswith("onnxcam: error: ")]
    other = [l for l in lines if not l.startswith("onnxcam: error: ")]
    if errors is None:
        errors = 0 if run.code == 0 else 1
    assert len(err_lines) == errors, f"expected {errors} error line(s), got {len(err_lines)}:\n{text[-2000:]}"
    if run.code == 2 or (run.code == 1 and errors == 1 and not other):
        assert len(lines) == errors, f"expected only the error line(s):\n{text[-2000:]}"
    assert len(other) <= 1, f"more than one non-error line on stderr:\n{text[-2000:]}"


def check_run(run: Run, code: int | set[int], errors: int | None = None, max_rss: int = MAX_RSS_BYTES) -> None:
    codes = {code} if isinstance(code, int) else code
    assert not run.timed_out, f"timed out: {run.describe()}"
    assert run.code in codes, f"expected exit {sorted(codes)}, {run.describe()}"
    check_stderr(run, errors)
    assert run.max_rss <= max_rss, f"peak RSS {run.max_rss / 2**20:.0f} MiB > {max_rss / 2**20:.0f} MiB"
