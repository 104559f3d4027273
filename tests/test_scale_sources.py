"""SOURCE strings → read units → image rows (onnxcam.scale.sources), without starting Ray.

The readers are plain functions that Ray runs in its tasks; here they run in-process, and what
they return is checked against the files' own bytes and the Parquet/tar layouts written here.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="the ray extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from onnxcam.errors import UsageError  # noqa: E402
from onnxcam.scale.sources import _as_item, expand, output_stems, plan_units, read_units, row_name, sample_key  # noqa: E402

pytestmark = pytest.mark.ray


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in ("b.png", "a.jpg", "a/x.png", "a-b/y.png", "notes.txt", "out/old.png"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return root


def _rows(units) -> list[dict]:
    out = []
    for u in units:
        item = _as_item(u)
        batch = {k: [v] for k, v in item.items()}
        for chunk in read_units(batch):
            out.extend(dict(zip(chunk, vals)) for vals in zip(*chunk.values()))
    return out


def test_folders_are_listed_like_the_local_cli(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    got = expand([str(root)], exclude=str(root / "out"))
    want = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg") and "out" not in p.parts)
    assert got == [(str(p), str(root)) for p in want]  # pathlib order: a/x.png before a-b/y.png
    assert expand([str(root / "*.png")]) == [(str(root / "b.png"), None)]
    assert expand([str(root / "missing.png")]) == [(str(root / "missing.png"), None)]  # reported per image
    assert output_stems(got + expand([str(root / "*.png")])) == {
        str(root / "a" / "x.png"): "a/x", str(root / "a-b" / "y.png"): "a-b/y", str(root / "a.jpg"): "a",
        str(root / "b.png"): "b-2",  # given twice: once in the folder, once by the glob
    }
    with pytest.raises(UsageError, match="no files match"):
        expand([str(root / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images, Parquet files or tars in"):
        expand([str(tmp_path / "empty")])


def test_file_rows_carry_their_bytes_and_read_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files = [f for f, _ in expand([str(root)], exclude=str(root / "out"))] + [str(root / "gone.png")]
    units = plan_units(files, files_per_unit=2, skip=[str(root / "b.png")])
    assert [len(u.uris) for u in units] == [2, 2]  # 5 files, one skipped
    rows = _rows(units)
    assert [r["path"] for r in rows] == [f for f in files if not f.endswith("b.png")]
    for r in rows[:-1]:
        assert r["bytes"] == Path(r["path"]).read_bytes() and r["read_error"] == ""
    assert rows[-1]["read_error"] == f"image not found: {root / 'gone.png'}"
    assert sorted(r["order"] for r in rows) == [r["order"] for r in rows]


def test_parquet_rows_are_named_by_file_and_row(tmp_path: Path) -> None:
    blobs = [bytes([i]) * (i + 1) for i in range(5)]
    structs = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)])
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": list(range(5)), "image": structs, "note": ["x"] * 5}), path, row_group_size=2)
    units = plan_units([str(path)], skip=[f"{path}#3"])
    assert [(u.row_group, u.first_row, u.rows, u.image_column) for u in units] == [
        (0, 0, 2, "image"), (1, 2, 2, "image"), (2, 4, 1, "image")]
    stems = output_stems([(str(path), str(tmp_path))])
    assert row_name(f"{path}#4", stems) == "d.parquet/4"
    rows = _rows(units)
    assert [r["path"] for r in rows] == [f"{path}#{i}" for i in (0, 1, 2, 4)]
    assert [r["bytes"] for r in rows] == [blobs[i] for i in (0, 1, 2, 4)]
    plain = tmp_path / "p.parquet"
    pq.write_table(pa.table({"name": ["a", "b"], "jpg": pa.array(blobs[:2], pa.binary())}), plain)
    assert [r["bytes"] for r in _rows(plan_units([str(plain)]))] == blobs[:2]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["a"], "n": [1]}), bad)
    with pytest.raises(UsageError, match="no column of encoded images .*its columns: name, n"):
        plan_units([str(bad)])
    with pytest.raises(UsageError, match="has no column 'pixels'"):
        plan_units([str(plain)], image_column="pixels")


def test_webdataset_samples_are_grouped_by_key(tmp_path: Path) -> None:
    assert sample_key("train/0001.seg.png") == ("train/0001", "seg.png")
    path = tmp_path / "shard.tar"
    members = {"k0.jpg": b"img0", "k0.cls": b"3", "d/k1.png": b"img1", "d/k1.json": b"{}", "k2.txt": b"t"}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = _rows(plan_units([str(path)]))
    assert [(r["path"], r["bytes"]) for r in rows] == [(f"{path}#k0", b"img0"), (f"{path}#d/k1", b"img1")]
    assert [r["path"] for r in _rows(plan_units([str(path)], skip=[f"{path}#k0"]))] == [f"{path}#d/k1"]


def test_read_row_reads_one_image_again_on_the_driver(tmp_path: Path) -> None:
    from onnxcam.errors import ImageError
    from onnxcam.scale.sources import ImageSource, read_row

    img = tmp_path / "a.png"
    img.write_bytes(b"file-bytes")
    blobs = [bytes([65 + i]) * 3 for i in range(5)]
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"jpg": pa.array(blobs, pa.binary())}), table, row_group_size=2)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in {"k0.jpg": b"zero", "k1.png": b"one", "k1.cls": b"1"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files = [str(img), str(table), str(shard), str(tmp_path / "gone.png")]
    src = ImageSource(None, [(f, None) for f in files], plan_units(files), None)
    assert read_row(src, str(img)) == b"file-bytes"
    assert [read_row(src, f"{table}#{i}") for i in (0, 3, 4)] == [blobs[0], blobs[3], blobs[4]]
    assert read_row(src, f"{shard}#k1") == b"one"
    with pytest.raises(ImageError, match="image not found: .*gone.png"):
        read_row(src, str(tmp_path / "gone.png"))
    with pytest.raises(ImageError, match="is not in the sources read"):
        read_row(src, f"{table}#9")
