"""CI-native outputs of gates: a JUnit XML file and a Markdown summary.

JUnit XML (the format Jenkins, GitLab, Azure and GitHub test reporters display): one
``<testsuites>`` holding one ``<testsuite>`` with one ``<testcase>`` per gate and subject (model or
pair; a ``<failure>`` when it fails) and one per image that breaks a failed gate. It carries every
attribute the strictest common schema (the Ant-derived JUnit.xsd) requires: testsuite ``name``,
``tests``, ``failures``, ``errors``, ``time``, ``timestamp``, ``hostname``, ``id``, ``package`` and
its ``properties``, ``system-out`` and ``system-err`` children; testcase ``name``, ``classname``,
``time``; failure ``type`` (and ``message``).

Markdown: the verdict, the gates table, the metrics table (review.METRIC_COLUMNS), the drift
summary of a review, and the images that break a failed gate, each with small overlay thumbnails
written next to it (relative links, so the folder can be published as a CI artifact or page).
"""

from __future__ import annotations

import datetime as _dt
import socket
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np

from .gates import GATE_FAILED_EXIT_CODE, Outcome

THUMB_WIDTH = 96
MAX_IMAGES = 20
"""Images listed (with thumbnails) per failed condition in the Markdown summary; JUnit lists all."""


# -- JUnit ----------------------------------------------------------------------------------------
def _failure_text(o: Outcome) -> str:
    lines = [o.line()]
    lines += [f"  {image}: {o.condition.metric} = {o.value_text(v)}" for image, v in o.failing_images]
    return "\n".join(lines)


def junit_xml(outcomes: Sequence[Outcome], suite: str = "onnxcam gates", properties: dict[str, str] | None = None,
              timestamp: _dt.datetime | None = None, hostname: str | None = None) -> bytes:
    """The gates' outcomes as JUnit XML (UTF-8 bytes with an XML declaration)."""
    cases: list[ET.Element] = []
    for o in outcomes:
        case = ET.Element("testcase", name=f"{o.condition.text} [{o.subject}]",
                          classname=f"onnxcam.gates.{o.subject}", time="0")
        if not o.passed:
            ET.SubElement(case, "failure", message=o.line(), type="GateFailed").text = _failure_text(o)
        cases.append(case)
        for image, v in o.failing_images:
            img_case = ET.Element("testcase", name=f"{image}: {o.condition.text}",
                                  classname=f"onnxcam.images.{o.subject}", time="0")
            c = o.condition
            ET.SubElement(img_case, "failure", type="GateFailed",
                          message=f"{image}: {o.subject} {c.metric} = {o.value_text(v)}, required {c.op} {c.threshold:g}")
            cases.append(img_case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    stamp = (timestamp or _dt.datetime.now(_dt.timezone.utc)).replace(tzinfo=None, microsecond=0).isoformat()
    root = ET.Element("testsuites", name="onnxcam", tests=str(len(cases)), failures=str(failures), errors="0",
                      time="0")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0",
                       skipped="0", time="0", timestamp=stamp, hostname=hostname or socket.gethostname() or "localhost",
                       id="0", package="onnxcam")
    props = ET.SubElement(ts, "properties")
    for k, v in (properties or {}).items():
        ET.SubElement(props, "property", name=k, value=str(v))
    ts.extend(cases)
    ET.SubElement(ts, "system-out").text = "\n".join(o.line() for o in outcomes if not o.passed)
    ET.SubElement(ts, "system-err").text = ""
    ET.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


# -- Markdown -------------------------------------------------------------------------------------
def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes, backslashes, HTML and emphasis escaped)."""
    s = " ".join(str(text).split())
    for ch in "\\|*_`[]<>#":
        s = s.replace(ch, "\\" + ch)
    return s


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def thumb_name(model: str, image: str) -> str:
    """The relative file name of a model's overlay thumbnail of an image (image names are unique)."""
    return str(PurePosixPath("thumbs") / model / (image if image.lower().endswith(".png") else f"{image}.png"))


def _link(name: str) -> str:
    return quote(name, safe="/")


def _metrics_rows(models: Sequence[dict[str, Any]]) -> list[str]:
    from .review import METRIC_COLUMNS

    cols = [c for c in METRIC_COLUMNS if any(m["metrics"].get(c[0]) is not None for m in models)]
    if not cols:
        return []
    out = ["## Metrics", "", "| model | " + " | ".join(f"{md_escape(t)} {'↑' if b == 'higher' else '↓'}"
                                                   for _, t, b in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for m in models:
        out.append(f"| {md_escape(m['name'])} | " + " | ".join(
            _num(m["metrics"].get(k), 1 if "(%)" in t else 3) for k, t, _ in cols) + " |")
    return out + [""]


def _drift_rows(report: dict[str, Any]) -> list[str]:
    if not report.get("drift"):
        return []
    out = ["## Drift from the reference model", "",
           "| old → new | images | mean ρ | mean top-k IoU | labels changed | energy moved to forbidden |",
           "|---|---:|---:|---:|---:|---:|"]
    for d in report["drift"]:
        s = d["summary"]
        out.append(f"| {md_escape(d['old'])} → {md_escape(d['new'])} | {s['images']} | {_num(s['spearman'])} | "
                   f"{_num(s['top_iou'])} | {s['labels_changed']} | {_num(s['energy_moved_to_forbidden'], 4)} |")
        worst = d["images"][:5]
        if worst:
            out.append("")
            out.append(f"Most changed images ({md_escape(d['new'])}): " + ", ".join(
                f"{md_escape(r['image'])} (ρ {_num(r['spearman'], 2)})" for r in worst))
    return out + [""]


def markdown_summary(report: dict[str, Any], outcomes: Sequence[Outcome], thumbs: dict[tuple[str, str], str],
                     title: str = "onnxcam gates") -> str:
    """The summary page. `report`: eval JSON (one "model") or review JSON ("models");
    `thumbs`: (model, image) → relative file name of an overlay thumbnail."""
    failed = [o for o in outcomes if not o.passed]
    verdict = (f"**FAILED**: {len(failed)} of {len(outcomes)} condition(s) (exit code {GATE_FAILED_EXIT_CODE})"
               if failed else f"**passed**: {len(outcomes)} condition(s)")
    models = report["models"] if "models" in report else [{**report["model"], "metrics": report["metrics"]}]
    out = [f"# {md_escape(title)}", "", verdict, ""]
    if outcomes:
        out += ["## Gates", "", "| | gate | subject | value | required | images breaking it |", "|---|---|---|---:|---|---:|"]
        for o in outcomes:
            c = o.condition
            broken = f"{len(o.failing_images)} / {o.images}" if not o.passed and o.images else "–"
            out.append(f"| {'✅' if o.passed else '❌'} | `{c.text.replace('`', '')}` | {md_escape(o.subject)} | "
                       f"{md_escape(o.value_text())} | {c.op} {c.threshold:g} | {broken} |")
        out.append("")
    out += _metrics_rows(models) + _drift_rows(report)
    rows = [(o, image, v) for o in failed for image, v in o.failing_images[:MAX_IMAGES]]
    more = {o.condition.text + o.subject: len(o.failing_images) - MAX_IMAGES for o in failed
            if len(o.failing_images) > MAX_IMAGES}
    if rows:
        out += ["## Images breaking a gate", "", "| image | subject | metric | value | overlay |", "|---|---|---|---:|---|"]
        for o, image, v in rows:
            names = [n for n in _subject_models(o) if (n, image) in thumbs]
            pics = " ".join(f"![{md_escape(n)}]({_link(thumbs[(n, image)])})" for n in names)
            out.append(f"| {md_escape(image)} | {md_escape(o.subject)} | {o.condition.metric} | "
                       f"{md_escape(o.value_text(v))} | {pics} |")
        out.append("")
        out += [f"{md_escape(o.subject)} `{o.condition.text.replace('`', '')}`: {more[o.condition.text + o.subject]} "
                f"more image(s) break it (the worst {MAX_IMAGES} are shown; the JUnit file and the JSON list all)."
                for o in failed if o.condition.text + o.subject in more]
    return "\n".join(out)


def _subject_models(o: Outcome) -> list[str]:
    """The model(s) an outcome is about: one model, or both of a pair."""
    c = o.condition
    if c.pair is not None:
        return list(c.pair)
    if c.is_pair:
        return o.subject.split(" vs ")
    return [o.subject]


def thumbnails(outcomes: Sequence[Outcome]) -> set[tuple[str, str]]:
    """(model, image) pairs whose overlay the Markdown summary shows."""
    return {(n, image) for o in outcomes if not o.passed for image, _ in o.failing_images[:MAX_IMAGES]
            for n in _subject_models(o)}


def thumbnail(rgb: np.ndarray, heatmap: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """A small overlay of a map on its image (at most `width` pixels wide)."""
    import cv2

    from .image import overlay

    ov = overlay(rgb, heatmap)
    h, w = ov.shape[:2]
    if w > width:
        ov = cv2.resize(ov, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return ov
