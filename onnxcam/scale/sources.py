"""SOURCE strings → a Ray Dataset of encoded images: one row per image, columns `path`, `bytes`,
`order`.

A SOURCE is an image file, a folder (its images, Parquet files and WebDataset tars, recursively),
a glob (`data/**/*.jpg`, `s3://bucket/shards/*.tar`), a Parquet file with an image column, or a
WebDataset tar; any of them local or on a filesystem pyarrow knows (`s3://`, `gs://`, `hdfs://`;
an S3-compatible endpoint comes from `AWS_ENDPOINT_URL`).

`path` names the image as the user would: the file as given, `FILE.parquet#ROW` (the row's index
in its file) or `SHARD.tar#KEY` (the WebDataset sample key). `order` sorts rows as a local run
would see them (sources in the order given, folders sorted). Listing happens on the driver;
reading the bytes happens in Ray tasks, one per chunk of files, Parquet row group or tar.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import UsageError
from ..image import IMAGE_SUFFIXES
from .cluster import require_ray

PARQUET_SUFFIXES = (".parquet", ".pq")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FILES_PER_UNIT = 32
ROWS_PER_CHUNK = 64
ORDER_SHIFT = 32  # order = unit index << 32 | row within the unit
IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "bytes")


@dataclass(frozen=True)
class Unit:
    """One read task: a chunk of image files, one Parquet row group, or one tar."""

    kind: str  # "files" | "parquet" | "tar"
    uris: tuple[str, ...]
    index: int
    row_group: int = -1
    first_row: int = 0  # the row group's first row in its file
    rows: int = -1  # the row group's rows (Parquet)
    image_column: str | None = None
    skip: frozenset[str] = field(default_factory=frozenset)  # row paths already done


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if _is_remote(uri):
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as exc:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, ...)
            raise UsageError(f"cannot open {uri}: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))


def _suffix_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if _is_remote(uri) else ""


def _path_key(path: str) -> tuple[str, ...]:
    """Sort as pathlib sorts (part by part: `a/x` before `a-b/x`), as a local run lists folders."""
    return tuple(path.replace(os.sep, "/").split("/"))


def _list_dir(uri: str, exclude: str | None) -> list[str]:
    """Files under a folder (recursively, sorted) that are images, Parquet files or tars."""
    import pyarrow.fs as pafs

    if not _is_remote(uri):
        root = os.path.abspath(exclude) if exclude else None
        out = []
        for dirpath, dirnames, files in os.walk(uri):
            dirnames.sort()
            if root and (os.path.abspath(dirpath) == root or os.path.abspath(dirpath).startswith(root + os.sep)):
                continue
            out.extend(str(Path(dirpath) / f) for f in files if _suffix_kind(f))
        return sorted(out, key=_path_key)
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
    return sorted((_scheme(uri) + i.path for i in infos if i.type == pafs.FileType.File and _suffix_kind(i.path)), key=_path_key)


def _expand_glob(pattern: str) -> list[str]:
    if not _is_remote(pattern):
        return sorted((p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)), key=_path_key)
    head = pattern.split("://", 1)[1]
    cut = min(i for i, ch in enumerate(head) if ch in "*?[")
    base = head[: head.rfind("/", 0, cut)] if "/" in head[:cut] else head[:cut]
    found = _list_dir(_scheme(pattern) + base, None)
    return [f for f in found if fnmatch.fnmatchcase(f, pattern)]


def expand(sources: Sequence[str], exclude: str | None = None) -> list[tuple[str, str | None]]:
    """(file, root) for every file the SOURCE strings name, in order: folders listed recursively
    and sorted (root: the folder, so outputs can mirror the layout below it), globs expanded and
    files as given (root None); a source that matches nothing is a UsageError naming it (a missing
    local file is reported later with the images that fail, as the local run does)."""
    import pyarrow.fs as pafs

    files: list[tuple[str, str | None]] = []
    for src in sources:
        if any(ch in src for ch in "*?["):
            found = _expand_glob(src)
            if not found:
                raise UsageError(f"no files match {src}")
            files.extend((f, None) for f in found)
            continue
        fs, path = filesystem(src)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = _list_dir(src, exclude)
            if not found:
                raise UsageError(f"no images, Parquet files or tars in {src}")
            files.extend((f, src) for f in found)
        elif info.type == pafs.FileType.File or not _is_remote(src):
            files.append((src, None))
        else:
            raise UsageError(f"{src} does not exist")
    return files


def output_stems(files: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """Unique output names per file, mirroring its path below its root: an image's stem
    (`sub/photo`), or a Parquet file's or tar's name with its suffix (`shards/s-000.tar`), under
    which its rows go (`shards/s-000.tar/KEY`). See `onnxcam.output.unique_names`."""
    from ..output import unique_names

    keys = []
    for f, root in files:
        rel = f[len(root):].replace(os.sep, "/").lstrip("/") if root is not None and f.startswith(root) else f.rsplit("/", 1)[-1]
        rel = rel or f.rsplit("/", 1)[-1]
        keys.append(rel if _suffix_kind(f) in ("parquet", "tar") else str(PurePosixPath(rel).with_suffix("")))
    return dict(zip((f for f, _ in files), unique_names(keys)))


def row_name(path: str, stems: dict[str, str]) -> str:
    """The output name of a row: its file's stem, or its container's name + `/` + the row's key."""
    if path in stems:
        return stems[path]
    uri, sep, key = path.rpartition("#")
    if sep and uri in stems:
        return f"{stems[uri]}/{key}"
    uri = next(u for u in stems if path.startswith(u + "#"))  # a tar sample key holding '#'
    return f"{stems[uri]}/{path[len(uri) + 1:]}"


def _image_column(schema: Any, wanted: str | None, uri: str) -> str:
    """The Parquet column holding encoded images: `wanted`, else the first binary column (or
    struct with a binary `bytes` field, as Hugging Face datasets write), preferring usual names."""
    import pyarrow as pa

    def encoded(t: Any) -> bool:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0

    if wanted is not None:
        if wanted not in schema.names:
            raise UsageError(f"{uri} has no column {wanted!r}; its columns: {', '.join(schema.names)}")
        return wanted
    cands = [f.name for f in schema if encoded(f.type)]
    if not cands:
        raise UsageError(f"{uri} has no column of encoded images (binary, or a struct with 'bytes'); "
                         f"its columns: {', '.join(schema.names)}")
    named = [c for c in cands if c.lower() in IMAGE_COLUMN_NAMES]
    return (named or cands)[0]


def plan_units(files: Sequence[str], image_column: str | None = None, skip: Iterable[str] = (),
               files_per_unit: int = FILES_PER_UNIT) -> list[Unit]:
    """Split the files into read tasks (reads Parquet footers for their row groups), image files
    `files_per_unit` at a time; rows whose `path` is in `skip` are left out (reruns)."""
    import pyarrow.parquet as pq

    done = set(skip)
    by_file: dict[str, set[str]] = {}
    for p in done:
        base, sep, _ = p.rpartition("#")
        if sep:
            by_file.setdefault(base, set()).add(p)
    units: list[Unit] = []
    chunk: list[str] = []

    def flush() -> None:
        if chunk:
            units.append(Unit("files", tuple(chunk), len(units)))
            chunk.clear()

    for f in files:
        kind = _suffix_kind(f)
        if kind == "parquet":
            flush()
            fs, path = filesystem(f)
            try:
                with fs.open_input_file(path) as fh:
                    meta = pq.ParquetFile(fh).metadata
                    column = _image_column(meta.schema.to_arrow_schema(), image_column, f)
            except OSError as exc:
                raise UsageError(f"cannot read Parquet file {f}: {exc}") from None
            first = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                units.append(Unit("parquet", (f,), len(units), g, first, rows, column, frozenset(by_file.get(f, ()))))
                first += rows
        elif kind == "tar":
            flush()
            units.append(Unit("tar", (f,), len(units), skip=frozenset(by_file.get(f, ()))))
        elif f not in done:
            chunk.append(f)
            if len(chunk) >= files_per_unit:
                flush()
    flush()
    return units


# -- reading, inside Ray tasks ----------------------------------------------------------------
def _rows(paths: list[str], blobs: list[bytes], orders: list[int], errors: list[str] | None = None) -> dict[str, np.ndarray]:
    out = np.empty(len(blobs), dtype=object)
    out[:] = blobs
    return {"path": np.asarray(paths, dtype=object), "bytes": out, "order": np.asarray(orders, np.int64),
            "read_error": np.asarray(errors or [""] * len(paths), dtype=object)}


def _read_files(u: Unit) -> Iterator[dict[str, np.ndarray]]:
    paths, blobs, orders, errors = [], [], [], []
    for i, uri in enumerate(u.uris):
        data, err = b"", ""
        try:
            fs, path = filesystem(uri)
            with fs.open_input_stream(path) as fh:
                data = bytes(fh.read())
        except FileNotFoundError:
            err = f"image not found: {uri}"
        except (OSError, UsageError) as exc:  # reported by the explaining actor, with its path
            err = f"cannot read {uri}: {exc}"
        paths.append(uri)
        blobs.append(data)
        orders.append((u.index << ORDER_SHIFT) | i)
        errors.append(err)
    yield _rows(paths, blobs, orders, errors)


def _encoded_bytes(v: Any) -> bytes:
    if isinstance(v, dict):
        v = v.get("bytes")
    return bytes(v) if v is not None else b""


def _read_parquet(u: Unit) -> Iterator[dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    uri = u.uris[0]
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as fh:
        table = pq.ParquetFile(fh).read_row_group(u.row_group, columns=[u.image_column])
    values = table.column(0).to_pylist()
    for s in range(0, len(values), ROWS_PER_CHUNK):
        paths, blobs, orders = [], [], []
        for i, v in enumerate(values[s : s + ROWS_PER_CHUNK], start=s):
            name = f"{uri}#{u.first_row + i}"
            if name in u.skip:
                continue
            paths.append(name)
            blobs.append(_encoded_bytes(v))
            orders.append((u.index << ORDER_SHIFT) | i)
        if paths:
            yield _rows(paths, blobs, orders)


def sample_key(member: str) -> tuple[str, str]:
    """WebDataset's grouping: `dir/key.ext1.ext2` → (`dir/key`, `ext1.ext2`)."""
    d, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _read_tar(u: Unit) -> Iterator[dict[str, np.ndarray]]:
    uri = u.uris[0]
    fs, path = filesystem(uri)
    paths, blobs, orders = [], [], []
    seen: set[str] = set()
    with fs.open_input_stream(path) as raw, tarfile.open(fileobj=io.BufferedReader(raw), mode="r|*") as tar:
        for i, member in enumerate(tar):
            if not member.isfile():
                continue
            key, ext = sample_key(member.name)
            name = f"{uri}#{key}"
            if "." + ext.rsplit(".", 1)[-1] not in IMAGE_SUFFIXES or name in seen or name in u.skip:
                continue  # labels, JSON and other members; one image per sample
            seen.add(name)
            fh = tar.extractfile(member)
            paths.append(name)
            blobs.append(fh.read() if fh else b"")
            orders.append((u.index << ORDER_SHIFT) | i)
            if len(paths) == ROWS_PER_CHUNK:
                yield _rows(paths, blobs, orders)
                paths, blobs, orders = [], [], []
    if paths:
        yield _rows(paths, blobs, orders)


def _parquet_rows(u: Unit) -> list[str]:
    return [p for p in (f"{u.uris[0]}#{u.first_row + i}" for i in range(u.rows)) if p not in u.skip]


def count_rows(units: Sequence[Unit]) -> int:
    """Rows the units will give (files and Parquet row groups; tars must be read to know)."""
    if any(u.kind == "tar" for u in units):
        raise ValueError("tars must be read to count their samples")
    return sum(len(u.uris) if u.kind == "files" else len(_parquet_rows(u)) for u in units)


READERS = {"files": _read_files, "parquet": _read_parquet, "tar": _read_tar}


def _as_item(u: Unit) -> dict[str, Any]:
    """A unit as plain columns (Arrow stores them natively; no pickled objects in blocks)."""
    return {"kind": u.kind, "uris": list(u.uris), "index": u.index, "row_group": u.row_group,
            "first_row": u.first_row, "rows": u.rows, "image_column": u.image_column or "", "skip": sorted(u.skip)}


def read_units(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """map_batches function: units (one per row, as `_as_item` columns) → image rows."""
    for i in range(len(batch["kind"])):
        u = Unit(str(batch["kind"][i]), tuple(str(v) for v in batch["uris"][i]), int(batch["index"][i]),
                 int(batch["row_group"][i]), int(batch["first_row"][i]), int(batch["rows"][i]),
                 str(batch["image_column"][i]) or None,
                 frozenset(str(v) for v in batch["skip"][i]))
        yield from READERS[u.kind](u)


@dataclass
class ImageSource:
    """What `read_sources` found: the lazy Dataset (None when nothing is left to read), the files
    with their roots, the read units, and the rows to expect (None when tars must be read first)."""

    ds: Any
    files: list[tuple[str, str | None]]
    units: list[Unit]
    total: int | None

    def expected(self) -> list[str] | None:
        """Every row path the dataset will give (None with tars): to find rows a crash lost."""
        if self.total is None:
            return None
        out: list[str] = []
        for u in self.units:
            out.extend(u.uris if u.kind == "files" else _parquet_rows(u))
        return out

    def orders(self) -> dict[str, int]:
        """Each expected row's `order` (empty with tars): a later read that skips rows (a
        quarantine, `onnxcam.scale.records`) numbers them afresh; these put them back in place."""
        if self.total is None:
            return {}
        out: dict[str, int] = {}
        for u in self.units:
            rows = u.uris if u.kind == "files" else [f"{u.uris[0]}#{u.first_row + i}" for i in range(u.rows)]
            out.update(((p, (u.index << ORDER_SHIFT) | i) for i, p in enumerate(rows) if p not in u.skip))
        return out


def read_sources(sources: Sequence[str], image_column: str | None = None, exclude: str | None = None,
                 skip: Iterable[str] = (), read_cpus: float = 1.0, parallelism: int = 8) -> ImageSource:
    """A Ray Dataset of (path, bytes, order, read_error) rows for the SOURCE strings (see the
    module docstring), leaving out the row paths in `skip`. Image files are read in chunks small
    enough to give at least `parallelism` blocks (e.g. 4 × the actors)."""
    require_ray()
    import ray.data as rd

    done = set(skip)
    files = expand(sources, exclude)
    n_images = sum(1 for f, _ in files if _suffix_kind(f) not in ("parquet", "tar") and f not in done)
    per_unit = max(1, min(FILES_PER_UNIT, -(-n_images // max(1, parallelism))))
    units = plan_units([f for f, _ in files], image_column, done, per_unit)
    if not units:
        return ImageSource(None, files, units, 0)
    total = None if any(u.kind == "tar" for u in units) else count_rows(units)
    items = [_as_item(u) for u in units]
    ds = rd.from_items(items, override_num_blocks=len(items)).map_batches(
        read_units, batch_size=1, batch_format="numpy", num_cpus=read_cpus,
    )
    return ImageSource(ds, files, units, total)


def read_row(source: ImageSource, path: str) -> bytes:
    """The encoded bytes of one row of `source` (`path` as its rows name it), read in this process:
    for the few images the driver shows again (a CI summary's thumbnails). ImageError when the
    row cannot be read."""
    from ..errors import ImageError

    for u in source.units:
        if u.kind == "files":
            if path not in u.uris:
                continue
            u = Unit("files", (path,), u.index)
        elif not path.startswith(u.uris[0] + "#"):
            continue
        else:
            u = Unit(u.kind, u.uris, u.index, u.row_group, u.first_row, u.rows, u.image_column)
        for rows in READERS[u.kind](u):
            for p, data, err in zip(rows["path"], rows["bytes"], rows["read_error"]):
                if p == path:
                    if err:
                        raise ImageError(str(err))
                    return bytes(data)
    raise ImageError(f"{path} is not in the sources read")
