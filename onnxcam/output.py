"""One safe writer for every file a command writes.

`OutputDir(root)` resolves every path it writes inside ROOT and refuses one that would leave it:
an absolute or ``..`` name, or a symbolic link anywhere under ROOT on the way (a link planted in
the output folder is never followed, not even with ``overwrite``). Each file is written to a
temporary file in its own folder, flushed, then renamed over its name (``os.replace``), so a file
is either the old one or the complete new one. Files that already exist are replaced only with
``overwrite``; an input (an image or the model, also through a hard link) is never written over.
Commands write their summary (results.json, review.json) last, after removing the stale one at the
start of an overwriting run, so a folder without one is an incomplete run.

`output_names` gives every input image a unique relative name that mirrors its folder under the
input root it was found in, so two images with one name in two folders cannot collide.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import OnnxcamError, UsageError


class OutputDir:
    """A folder the command writes into, and nothing outside it."""

    def __init__(self, root: str | os.PathLike, overwrite: bool = False,
                 protect: Iterable[str | os.PathLike] = ()) -> None:
        self.given = Path(root)
        self.overwrite = overwrite
        self._protect: dict[Path, Path] = {}  # resolved → as given
        self._inodes: dict[tuple[int, int], Path] = {}
        for given in map(Path, protect):
            self._protect[given.resolve()] = given
            try:
                st = given.stat()
                self._inodes[(st.st_dev, st.st_ino)] = given
            except OSError:
                pass
        if self.given.exists() and not self.given.is_dir():
            raise OnnxcamError(f"{self.given} is not a folder; choose another -o")
        self.root = self.given.resolve()
        self._written: set[Path] = set()

    # -- paths ------------------------------------------------------------------------------------
    def path(self, name: str | os.PathLike) -> Path:
        """ROOT/name, checked: relative, no '..', no symbolic link on the way."""
        rel = PurePosixPath(Path(name).as_posix())
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OnnxcamError(f"output name {str(name)!r} is not a plain relative name inside {self.given}")
        p = self.root
        for part in rel.parts:
            p = p / part
            if p.is_symlink():
                raise OnnxcamError(f"{self.given / rel} is a symbolic link (at {p.name}); onnxcam does not write "
                                   f"through links: remove it or choose another -o")
        return p

    def shown(self, name: str | os.PathLike) -> Path:
        """The path as the user named it (for messages and records)."""
        return self.given / Path(name)

    def check_free(self, names: Iterable[str | os.PathLike]) -> None:
        """Refuse before writing anything: two outputs with one name, existing files without
        overwrite, links, inputs."""
        names = list(names)
        folded = [str(n).casefold() for n in names]
        if len(set(folded)) != len(folded):
            dup = next(n for n, f in zip(names, folded) if folded.count(f) > 1)
            raise OnnxcamError(f"two outputs would be written to {self.shown(dup)}; rename one of their inputs")
        for name in names:
            p = self.path(name)
            self._check_not_input(p, name)
            if p.exists() and not self.overwrite:
                raise OnnxcamError(f"{self.shown(name)} exists; pass --overwrite or choose another -o")

    def _check_not_input(self, p: Path, name: str | os.PathLike) -> None:
        inp = self._protect.get(p)
        if inp is None and self._inodes:
            try:
                st = p.stat()
                inp = self._inodes.get((st.st_dev, st.st_ino))
            except OSError:
                pass
        if inp is not None:
            raise UsageError(f"{self.shown(name)} is an input ({inp}); choose another -o")

    # -- writing ----------------------------------------------------------------------------------
    def write_bytes(self, name: str | os.PathLike, data: bytes) -> Path:
        """Write atomically (temp file in the same folder, then os.replace); returns the shown path."""
        with self.open_atomic(name) as f:
            f.write(data)
        return self.shown(name)

    @contextlib.contextmanager
    def open_atomic(self, name: str | os.PathLike) -> Iterator[BinaryIO]:
        """A binary file to write `name` piece by piece (a page bigger than memory should hold):
        a temp file in the same folder, renamed over `name` when the block ends without error,
        removed when it fails. Same checks as write_bytes."""
        p = self.path(name)
        self._check_not_input(p, name)
        if p.exists() and not self.overwrite and p not in self._written:
            raise OnnxcamError(f"{self.shown(name)} exists; pass --overwrite or choose another -o")
        if p.exists() and (p.is_dir() or p.is_symlink()):
            raise OnnxcamError(f"{self.shown(name)} is not a plain file; choose another -o")
        self._mkdirs(p.parent)
        with _atomic_file(p) as f:
            yield f
        self._written.add(p)

    def _mkdirs(self, folder: Path) -> None:
        rel = folder.relative_to(self.root) if folder != self.root else PurePosixPath()
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.root
        for part in Path(rel).parts:
            p = p / part
            if p.is_symlink():
                raise OnnxcamError(f"{p} is a symbolic link; onnxcam does not write through links")
            p.mkdir(exist_ok=True)

    def write_text(self, name: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str | os.PathLike, obj: Any) -> Path:
        """Strict JSON (NaN/inf become null), indented."""
        return self.write_text(name, dumps(obj))

    def write_npy(self, name: str | os.PathLike, array: np.ndarray) -> Path:
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.write_bytes(name, buf.getvalue())

    def write_png(self, name: str | os.PathLike, rgb: np.ndarray) -> Path:
        from .image import encode_png

        return self.write_bytes(name, encode_png(rgb))

    def remove_stale(self, name: str | os.PathLike) -> None:
        """Remove a summary file of an earlier run before an overwriting run starts."""
        p = self.path(name)
        if p.is_file():
            self._check_not_input(p, name)
            p.unlink()


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temp file next to `path`, fsynced and renamed over `path` when the block succeeds,
    removed when it raises (also on Ctrl-C)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file next to `path`, fsync it, and rename it over `path`."""
    with _atomic_file(path) as f:
        f.write(data)


def write_file(path: str | os.PathLike, data: bytes, overwrite: bool = False,
               protect: Iterable[str | os.PathLike] = ()) -> Path:
    """One file (export's -o) written atomically: never through a link, never over an input."""
    p = Path(path)
    if p.is_symlink():
        raise OnnxcamError(f"{p} is a symbolic link; onnxcam does not write through links")
    out = OutputDir(p.parent if str(p.parent) else ".", overwrite, protect)
    out.write_bytes(p.name, data)
    return p


# -- JSON -----------------------------------------------------------------------------------------
def json_safe(v: Any) -> Any:
    """JSON-safe: NaN/inf → None, numpy scalars and arrays → Python."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def dumps(obj: Any) -> str:
    """Strict, indented JSON of `obj` (see json_safe)."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


# -- records --------------------------------------------------------------------------------------
def probabilities_or_softmax(scores: np.ndarray) -> np.ndarray:
    """Scores as probabilities: unchanged when they already are (non-negative, summing to 1),
    else their softmax."""
    if np.all(scores >= 0) and abs(float(scores.sum()) - 1) < 1e-3:
        return scores
    z = np.exp(scores - scores.max())
    return z / z.sum()


def image_record(image: str, scores: np.ndarray, target: int, label: Callable[[int], str | None]) -> dict[str, Any]:
    """What results.json says about one explained image (local and Ray runs alike): its target
    and label and, for a classifier (1-D scores), the target's score and probability and the top-5."""
    rec: dict[str, Any] = {"image": image, "target": target, "label": label(target) if target >= 0 else None}
    if scores.ndim == 1:
        probs = probabilities_or_softmax(scores.astype(np.float64))
        if target >= 0:
            rec["score"] = float(scores[target])
            rec["probability"] = float(probs[target])
        rec["top5"] = [{"class": int(k), "label": label(int(k)), "score": float(scores[k]),
                        "probability": float(probs[k])} for k in np.argsort(-scores)[:5]]
    return rec


# -- names ----------------------------------------------------------------------------------------
def unique_names(keys: Sequence[str]) -> list[str]:
    """`keys` made unique: the first of each keeps its name, later ones get -2, -3, ... chosen so
    that the suffixed name is neither another key nor an earlier result. Names that differ only in
    case count as equal (they are one file on macOS and Windows)."""
    taken = {k.casefold() for k in keys}
    seen: set[str] = set()
    out: list[str] = []
    for key in keys:
        name = key
        if name.casefold() in seen:
            n = 2
            while f"{key}-{n}".casefold() in taken | seen:
                n += 1
            name = f"{key}-{n}"
        seen.add(name.casefold())
        out.append(name)
    return out


def output_names(images: Sequence[tuple[Path, Path | None]]) -> list[str]:
    """Unique relative output stems ('sub/dir/name') for (image, root) pairs: an image found in a
    folder given as input keeps its path under that folder (without the suffix), a file given by
    itself its stem; clashes (a.png and a.jpg, one file given twice) are made unique."""
    keys = []
    for img, root in images:
        rel = img.relative_to(root) if root is not None else Path(img.name)
        keys.append(PurePosixPath(rel.as_posix()).with_suffix("").as_posix())
    return unique_names(keys)
