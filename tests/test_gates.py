"""Gates (onnxcam.gates) on hand-made metric values, the grammar's errors, drift (onnxcam.drift) on
a hand-made review, and the CI files (onnxcam.ci): JUnit XML read back by a parser against the
schema's required attributes, Markdown tables read back row by row."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest

from onnxcam import UsageError
from onnxcam.ci import junit_xml, markdown_summary, md_escape
from onnxcam.drift import drift
from onnxcam.gates import (GATE_FAILED_EXIT_CODE, check_names, evaluate_gates, facts_from_report, parse_condition,
                           parse_conditions)


# -- a hand-made review report ------------------------------------------------------------------
def _rec(label: str, hit: bool, energy_in_forbidden: float | None, correct: bool | None) -> dict:
    r = {"label": label, "pointing_hit": hit, "energy": 0.5, "drop": 10.0, "increase": False,
         "deletion_auc": 0.2, "insertion_auc": 0.7}
    if energy_in_forbidden is not None:
        r["energy_in_forbidden"] = energy_in_forbidden
    if correct is not None:
        r["correct"] = correct
    return r


def _metrics(pointing: float, forbidden: float | None, accuracy: float | None) -> dict:
    return {"images": 3, "images_with_boxes": 3, "pointing_game": pointing, "energy_pointing_game": 0.5,
            "localisation_iou": 0.4, "average_drop": 10.0, "increase_in_confidence": 0.0, "deletion_auc": 0.2,
            "insertion_auc": 0.7, "road_morf": None, "road_lerf": None, "energy_in_forbidden": forbidden,
            "images_with_forbidden": 2 if forbidden is not None else 0, "accuracy": accuracy,
            "images_with_truth": 3 if accuracy is not None else 0}


def _pair(rho: float | None, iou: float, same: bool, moved: float | None) -> dict:
    p = {"a": "old", "b": "new", "spearman": rho, "top_iou": iou, "same_label": same}
    if moved is not None:
        p["energy_moved_to_forbidden"] = moved
    return p


# three images: old (deployed) and new (candidate); "x.png" has no forbidden region
IMAGES = [
    ("a.png", _rec("cat", True, 0.01, True), _rec("cat", True, 0.11, True), _pair(0.9, 0.8, True, 0.10)),
    ("b.png", _rec("cup", True, 0.02, True), _rec("cat", False, 0.30, False), _pair(0.1, 0.2, False, 0.28)),
    ("x.png", _rec("cup", False, None, True), _rec("cup", True, None, True), _pair(None, 0.5, True, None)),
]
REPORT = {
    "models": [{"name": "old", "metrics": _metrics(100 * 2 / 3, 0.015, 100.0)},
               {"name": "new", "metrics": _metrics(100 * 2 / 3, 0.205, 100 * 2 / 3)}],
    "agreement": {"pairs": [{"a": "old", "b": "new", "spearman": 0.5, "top_iou": 0.5, "same_label": 2,
                             "label_agreement": 2 / 3, "energy_moved_to_forbidden": 0.19}]},
    "images": [{"image": n, "models": {"old": o, "new": w}, "agreement": {"pairs": [p]}} for n, o, w, p in IMAGES],
}


def _outcomes(*texts: str):
    return evaluate_gates(parse_conditions(texts), facts_from_report(REPORT))


# -- grammar --------------------------------------------------------------------------------------
def test_conditions_parse_with_scopes_units_and_spaces():
    c = parse_condition(" model[ biased ] . energy_in_forbidden <= 5% ")
    assert (c.model, c.metric, c.op, c.threshold, c.pair) == ("biased", "energy_in_forbidden", "<=", 0.05, None)
    c = parse_condition("agreement(deployed,candidate).spearman>=0.6")
    assert c.pair == ("deployed", "candidate") and c.is_pair and c.threshold == 0.6
    assert parse_condition("pointing_game>=80%").threshold == parse_condition("pointing_game>=0.8").threshold == 0.8
    assert parse_condition("top_iou>.25").is_pair  # a pair metric without a scope: every pair
    assert parse_condition("model[resnet-50.v2].deletion_auc<0.3").model == "resnet-50.v2"
    assert parse_condition("images>=20").threshold == 20  # a count: no upper bound


@pytest.mark.parametrize("text, message", [
    ("pointing_game=>0.8", "is not a condition"),
    ("pointing_game>=", "is not a condition"),
    ("model[].accuracy>=0.5", "is not a condition"),
    ("model[a]accuracy>=0.5", "is not a condition"),
    ("accuracy>=0.5 and spearman>=0.5", "is not a condition"),
    ("accuracy==1", "operator '==' is not allowed"),
    ("accuracy=1", "operator '=' is not allowed"),
    ("model[a].spearman>=0.5", r"write agreement\(A,B\).spearman"),
    ("agreement(a,b).accuracy>=0.5", "not a pair metric"),
    ("pointing_game>=80", r"can never pass: pointing_game lies in \[0, 1\] \(read as a share: write 0.8 or 80%\)"),
    ("energy_in_forbidden<=1", "can never fail"),
    ("spearman>-1.5", "can never fail"),
    ("top_iou<0", "can never pass"),
])
def test_grammar_errors_are_usage_errors(text: str, message: str):
    with pytest.raises(UsageError, match=message) as info:
        parse_condition(text)
    assert info.value.exit_code == 2


# -- outcomes on hand-made values -----------------------------------------------------------------
def test_passing_and_failing_gates_per_model():
    out = _outcomes("model[old].energy_in_forbidden<=0.05", "energy_in_forbidden<=0.05")
    assert [(o.subject, o.passed) for o in out] == [("old", True), ("old", True), ("new", False)]
    failed = out[2]
    assert failed.value == pytest.approx(0.205) and failed.images == 2
    assert failed.failing_images == [("b.png", 0.30), ("a.png", 0.11)]  # worst first
    assert out[0].failing_images == []  # a passing gate lists no image
    line = failed.line()
    assert line.startswith("gate failed: energy_in_forbidden<=0.05: new energy_in_forbidden = 0.205")
    assert "2 of 2 image(s) break it: b.png, a.png" in line


def test_percent_metrics_are_read_as_shares():
    out = _outcomes("accuracy>=0.9", "accuracy>=90%", "pointing_game>=0.66", "pointing_game>0.67")
    assert [o.passed for o in out] == [True, False, True, False, True, True, False, False]
    assert out[1].value == pytest.approx(2 / 3) and out[1].failing_images == [("b.png", 0.0)]
    assert "(66.7%)" in out[1].line()


def test_pair_gates_and_their_order():
    iou, moved, moved_back = _outcomes("agreement(old,new).top_iou>=0.3", "energy_moved_to_forbidden<=0.1",
                                       "agreement(new,old).energy_moved_to_forbidden<=0")
    assert iou.passed and iou.value == 0.5 and iou.subject == "old vs new" and iou.images == 3
    assert not moved.passed and moved.value == pytest.approx(0.19)
    assert [i for i, _ in moved.failing_images] == ["b.png"]
    assert moved_back.passed and moved_back.value == pytest.approx(-0.19)  # B − A, the other way round
    low = _outcomes("spearman>=0.6")[0]
    # x.png's ρ is undefined (a constant map): it breaks the gate and comes first
    assert not low.passed and low.failing_images == [("x.png", None), ("b.png", 0.1)]
    # the mean (0.5) and every defined image hold, but x.png's map cannot be measured: the gate fails
    lenient = _outcomes("agreement(old,new).spearman>=0.05")[0]
    assert lenient.value == 0.5 and not lenient.passed and lenient.failing_images == [("x.png", None)]
    assert "= 0.5, required >= 0.05; undefined on 1 image(s); 1 of 3 image(s) break it: x.png" in lenient.line()


def test_undefined_values_fail_and_missing_metrics_are_usage_errors():
    report = {**REPORT, "models": [{"name": "old", "metrics": {**_metrics(50.0, None, None), "deletion_auc": None}},
                                   REPORT["models"][1]]}
    facts = facts_from_report(report)
    (undefined,) = evaluate_gates([parse_condition("model[old].deletion_auc<=0.5")], facts)
    assert not undefined.passed and undefined.value is None and "= undefined" in undefined.line()
    # computed on 2 images but undefined on both (all-zero maps): a failure, not a usage error
    new = {**_metrics(50.0, None, None), "images_with_forbidden": 2}
    facts2 = facts_from_report({**REPORT, "models": [REPORT["models"][0], {"name": "new", "metrics": new}]})
    (zero,) = evaluate_gates([parse_condition("model[new].energy_in_forbidden<=0.1")], facts2)
    assert not zero.passed and zero.value is None
    for text, message in [("model[old].energy_in_forbidden<=0.1",
                           r"no energy_in_forbidden for old \(it needs --forbidden for at least one image\)"),
                          ("model[old].accuracy>=0.5", r"it needs --truth"),
                          ("road_morf<=0.5", r"it needs --road"),
                          ("model[old].f1_score>=0.5", "no f1_score for old; known: "),
                          ("model[nobody].accuracy>=0.5", "no model named 'nobody'")]:
        with pytest.raises(UsageError, match=message):
            evaluate_gates([parse_condition(text)], facts)


def test_names_and_needs_are_checked_before_the_run():
    conds = parse_conditions(["pointing_game>=0.5"])
    with pytest.raises(UsageError, match="pointing_game needs --boxes"):
        check_names(conds, ["m"], provided=[])
    check_names(conds, ["m"], provided=["--boxes"])
    with pytest.raises(UsageError, match="no model named 'x'; models: a, b"):
        check_names(parse_conditions(["model[x].accuracy>=0.5"]), ["a", "b"], ["--truth"])
    with pytest.raises(UsageError, match="compares two models; give at least two"):
        check_names(parse_conditions(["spearman>=0.5"]), ["a"])
    with pytest.raises(UsageError, match="needs --forbidden"):
        check_names(parse_conditions(["agreement(a,b).energy_moved_to_forbidden<=0.1"]), ["a", "b"])


def test_eval_reports_are_read_too():
    ev = {"model": {"name": "m", "path": "m.onnx"}, "metrics": _metrics(50.0, None, 75.0),
          "images": [{"image": n, **o} for n, o, _, _ in IMAGES]}
    acc, point = evaluate_gates(parse_conditions(["accuracy>=0.8", "pointing_game>=0.5"]), facts_from_report(ev))
    assert (acc.subject, acc.passed, acc.value) == ("m", False, 0.75) and acc.failing_images == []
    assert point.passed and point.images == 3


# -- drift ----------------------------------------------------------------------------------------
def test_drift_orders_images_and_classes_most_changed_first():
    (d,) = drift(REPORT)
    assert (d["old"], d["new"]) == ("old", "new")
    assert [r["image"] for r in d["images"]] == ["x.png", "b.png", "a.png"]  # undefined ρ first, then 0.1, 0.9
    b = d["images"][1]
    assert b["label_changed"] and b["energy_moved_to_forbidden"] == pytest.approx(0.28)
    assert "energy_moved_to_forbidden" not in d["images"][0]  # x.png has no forbidden region
    s = d["summary"]
    assert s["spearman"] == pytest.approx(0.5) and s["top_iou"] == pytest.approx(0.5)
    assert s["labels_changed"] == 1 and s["energy_moved_to_forbidden"] == pytest.approx((0.10 + 0.28) / 2)
    classes = {c["class"]: c for c in d["classes"]}  # by the old model's label
    assert classes["cup"]["images"] == 2 and classes["cup"]["spearman"] == pytest.approx(0.1)
    assert classes["cat"]["spearman"] == pytest.approx(0.9)
    assert [c["class"] for c in d["classes"]] == ["cup", "cat"]


# -- CI files -------------------------------------------------------------------------------------
JUNIT_SUITE_REQUIRED = ("name", "tests", "failures", "errors", "time", "timestamp", "hostname", "id", "package")


def test_junit_xml_parses_and_has_the_schema_required_attributes():
    out = _outcomes("energy_in_forbidden<=0.05", "agreement(old,new).top_iou>=0.3")
    data = junit_xml(out, properties={"models": "old, new"}, timestamp=dt.datetime(2026, 1, 2, 3, 4, 5),
                     hostname="ci")
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(data)
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    for attr in JUNIT_SUITE_REQUIRED:
        assert suite.get(attr) not in (None, ""), attr
    assert suite.get("timestamp") == "2026-01-02T03:04:05" and suite.get("hostname") == "ci"
    assert [child.tag for child in suite][0] == "properties" and [c.tag for c in suite][-2:] == ["system-out", "system-err"]
    cases = suite.findall("testcase")
    # 3 gate outcomes (old, new, the pair) + the 2 images that break the failed gate on "new"
    assert len(cases) == 5 == int(suite.get("tests")) == int(root.get("tests"))
    for case in cases:
        assert case.get("name") and case.get("classname") and float(case.get("time")) == 0
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 3 == int(suite.get("failures"))
    for c in failures:
        f = c.find("failure")
        assert f.get("type") == "GateFailed" and f.get("message")
    names = [c.get("name") for c in failures]
    assert names == ["energy_in_forbidden<=0.05 [new]", "b.png: energy_in_forbidden<=0.05",
                     "a.png: energy_in_forbidden<=0.05"]
    assert "b.png: energy_in_forbidden = 0.3" in failures[0].find("failure").text
    assert suite.find("properties/property").get("value") == "old, new"


def _table(md: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with `header_start` (cells split on
    unescaped pipes)."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_markdown_summary_tables():
    out = _outcomes("energy_in_forbidden<=0.05", "accuracy>=0.9")
    md = markdown_summary({**REPORT, "drift": drift(REPORT)}, out, {("new", "b.png"): "thumbs/new/b.png"})
    assert f"**FAILED**: 2 of 4 condition(s) (exit code {GATE_FAILED_EXIT_CODE})" in md
    gates = _table(md, "| | gate |")
    assert [(r[0], r[1], r[2]) for r in gates] == [("✅", "`energy_in_forbidden<=0.05`", "old"),
                                                  ("❌", "`energy_in_forbidden<=0.05`", "new"),
                                                  ("✅", "`accuracy>=0.9`", "old"), ("❌", "`accuracy>=0.9`", "new")]
    assert gates[1][5] == "2 / 2" and gates[3][5] == "1 / 3"
    metrics = _table(md, "| model |")
    assert [r[0] for r in metrics] == ["old", "new"]
    header = md.splitlines()[next(k for k, l in enumerate(md.splitlines()) if l.startswith("| model |"))]
    col = [c.strip() for c in header.split("|")[1:-1]].index("accuracy (%) ↑")
    assert metrics[1][col] == "66.7"
    failing = _table(md, "| image |")
    assert [(r[0], r[2]) for r in failing] == [("b.png", "energy_in_forbidden"), ("a.png", "energy_in_forbidden"),
                                               ("b.png", "accuracy")]
    assert failing[0][4] == "![new](thumbs/new/b.png)" and failing[1][4] == ""  # no thumbnail given for a.png
    drift_rows = _table(md, "| old → new |")
    assert drift_rows[0][:2] == ["old → new", "3"]


def test_markdown_escapes_names():
    assert md_escape("a|b_c*d [x](y) <img>") == r"a\|b\_c\*d \[x\](y) \<img\>"


def test_markdown_lists_at_most_the_worst_images(monkeypatch):
    import onnxcam.ci as ci

    monkeypatch.setattr(ci, "MAX_IMAGES", 1)
    out = _outcomes("model[new].energy_in_forbidden<=0.05")
    md = ci.markdown_summary(REPORT, out, {})
    assert [r[0] for r in _table(md, "| image |")] == ["b.png"]  # the worst of the two
    assert "1 more image(s) break it" in md
    assert ci.thumbnails(out) == {("new", "b.png")}
