"""Forbidden regions and true labels (onnxcam.annotations): formats, lookup, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxcam import UsageError
from onnxcam.annotations import Annotations, is_correct, load_regions, load_truth


def _write(tmp_path: Path, obj) -> Path:
    p = tmp_path / "f.json"
    p.write_text(json.dumps(obj))
    return p


def test_regions_in_pixels_and_fractions_for_every_image(tmp_path: Path):
    regions = load_regions(_write(tmp_path, {
        "a.png": [1, 2, 3, 4],
        "b": {"boxes": [[0, 0, 5, 5], [6, 6, 8, 8]]},
        "c.jpg": {"relative": [0.5, 0.0, 1.0, 0.25]},
        "*": {"relative": [[0, 0.9, 1, 1]]},  # the bottom tenth of every image
    }))
    # an image 40 high and 200 wide: fractions scale x by 200, y by 40
    assert regions.for_image("in/a.png", (40, 200)) == [[1, 2, 3, 4], [0, 36, 200, 40]]
    assert regions.for_image("b.png", (40, 200)) == [[0, 0, 5, 5], [6, 6, 8, 8], [0, 36, 200, 40]]  # by stem
    assert regions.for_image("c.jpg", (40, 200)) == [[100, 0, 200, 10], [0, 36, 200, 40]]
    assert regions.for_image("other.png", (10, 10)) == [[0, 9, 10, 10]]
    only = load_regions(_write(tmp_path, {"a.png": [1, 2, 3, 4]}))
    assert only.for_image("z.png", (10, 10)) is None
    assert Annotations(forbidden=only).forbidden_for("a.png", (10, 10)) == [[1, 2, 3, 4]]
    assert Annotations().forbidden_for("a.png", (10, 10)) is None


@pytest.mark.parametrize("obj, message", [
    ({"a.png": [1, 2, 3]}, r"entry 'a.png' is not \[x0, y0, x1, y1\]"),
    ({"a.png": {"label": "cat"}}, "entry 'a.png' is not"),
    ({"a.png": "box"}, "entry 'a.png' is not"),
    ({"a.png": [0, 0, float("inf"), 1]}, "entry 'a.png' is not"),
    ({"*": {"relative": [0, 0, 2, 1]}}, "fractions in"),
    ([1, 2, 3, 4], "must hold a JSON object"),
])
def test_malformed_regions_are_usage_errors(tmp_path: Path, obj, message: str):
    with pytest.raises(UsageError, match=message):
        load_regions(_write(tmp_path, obj))


def test_truth_labels(tmp_path: Path):
    truth = load_truth(_write(tmp_path, {"a.png": "cat", "b.png": {"label": 1, "box": [0, 0, 1, 1]},
                                         "c.png": {"box": [0, 0, 1, 1]}}))
    assert truth == {"a.png": "cat", "b.png": 1}  # c.png has no label: skipped
    assert Annotations(truth=truth).label_of("x/b.png") == 1 and Annotations(truth=truth).label_of("d.png") is None
    with pytest.raises(UsageError, match="must be a class name or index"):
        load_truth(_write(tmp_path, {"a.png": True}))
    with pytest.raises(UsageError, match="holds no label"):
        load_truth(_write(tmp_path, {"a.png": {"box": [0, 0, 1, 1]}}))
    assert is_correct("cat", 0, "cat") and not is_correct("cat", 1, "cup")
    assert is_correct(1, 1, "cup") and not is_correct(0, 1, "cup")
    assert is_correct("3", 3, None) and not is_correct("3", 3, "three")  # an index as text, without labels only


def test_relative_regions_give_the_pixel_regions_numbers():
    """The spurious marks as fractions of the 64×64 images measure exactly what the pixel boxes do."""
    from onnxcam.review import ModelRun, evaluate
    from onnxcam.annotations import Regions
    from onnxcam.image import load_image

    from .helpers import EXAMPLES, ROOT

    marks = json.loads((EXAMPLES / "spurious" / "marks.json").read_text())
    images = [(n, load_image(EXAMPLES / "spurious" / n)) for n in sorted(marks)[:2]]
    pixel = Regions(pixels={n: [b] for n, b in marks.items()})
    frac = Regions(relative={n: [[v / 64 for v in b]] for n, b in marks.items()})
    run = ModelRun.load(str(ROOT / "models" / "spurious" / "biased.onnx"))
    a = evaluate(run, images, steps=2, notes=Annotations(forbidden=pixel))
    b = evaluate(run, images, steps=2, notes=Annotations(forbidden=frac))
    assert [r["energy_in_forbidden"] for r in a.images] == pytest.approx([r["energy_in_forbidden"] for r in b.images])
    assert all(r["energy_in_forbidden"] > 0 for r in a.images)
