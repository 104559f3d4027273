"""The gate options eval and review share (--require, --forbidden, --truth, --junit, --markdown)
and their one ending: gates judged by onnxcam.gates, CI files written through the output writer,
one stderr line per failed condition, exit code 3 when a gate failed (1 on errors, 2 on usage)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Sequence

import click
import numpy as np

from ..ci import junit_xml, markdown_summary, thumb_name, thumbnail, thumbnails
from ..errors import UsageError
from ..gates import (GATE_FAILED_EXIT_CODE, GRAMMAR_HELP, Condition, Outcome, check_names, evaluate_gates,
                     facts_from_report, gate_report, parse_conditions)
from ..output import OutputDir
from ..annotations import Annotations, load_regions, load_truth
from ..review import load_boxes
from . import options as opt
from .common import one_line


def gate_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return opt.stack(
        click.option("--forbidden", "forbidden_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="JSON {image name: box(es) in pixels, or {\"relative\": box(es)} in fractions of the "
                          "image; \"*\": for every image} of regions the map must avoid (a watermark, a "
                          "border): adds energy_in_forbidden."),
        click.option("--truth", "truth_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="JSON {image name: class name or index, or {\"label\": ...}}: adds accuracy."),
        click.option("--require", "requires", multiple=True, metavar="CONDITION",
                     help=f"A gate (repeatable): {GRAMMAR_HELP}. A failed gate exits with code "
                          f"{GATE_FAILED_EXIT_CODE}; see onnxcam.gates for the metrics."),
        click.option("--junit", "junit_name", default=None, metavar="NAME",
                     help="Write the gates as JUnit XML to OUT/NAME."),
        click.option("--markdown", "markdown_name", default=None, metavar="NAME",
                     help="Write a Markdown summary (gates, metrics, failing images with thumbnails) to OUT/NAME."),
    )(f)


@dataclass
class GatePlan:
    """What the gate options asked for, checked before any model runs."""

    conditions: list[Condition]
    notes: Annotations
    provided: set[str]
    junit: str | None = None
    markdown: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def planned(self) -> list[str]:
        """The CI files this run writes (for OutputDir.check_free)."""
        return [n for n in (self.junit, self.markdown) if n] + ([str(self.thumbs_dir())] if self.markdown else [])

    def thumbs_dir(self) -> PurePosixPath:
        """Thumbnails go to a "thumbs" folder next to the Markdown file (its links are relative)."""
        return PurePosixPath(self.markdown or "").parent / "thumbs"


def plan(requires: Sequence[str], boxes_file: str | None, forbidden_file: str | None, truth_file: str | None,
         road: bool, junit_name: str | None, markdown_name: str | None, has_out: bool) -> GatePlan:
    """Parse the gates and read the annotation files (UsageError for a bad condition or file)."""
    if (junit_name or markdown_name) and not has_out:
        raise UsageError("--junit and --markdown write inside the output folder: give -o OUT")
    conditions = parse_conditions(requires)
    notes = Annotations(load_boxes(boxes_file) if boxes_file else None,
                        load_regions(forbidden_file) if forbidden_file else None,
                        load_truth(truth_file) if truth_file else None)
    provided = {flag for flag, given in (("--boxes", boxes_file), ("--forbidden", forbidden_file),
                                         ("--truth", truth_file), ("--road", road)) if given}
    return GatePlan(conditions, notes, provided, junit_name, markdown_name)


def check(p: GatePlan, models: Sequence[str]) -> None:
    """Before the run: model names and needed inputs of every condition."""
    check_names(p.conditions, models, p.provided)


def judge(p: GatePlan, report: dict[str, Any]) -> None:
    """Evaluate the gates on the report (UsageError for a metric it lacks); adds report["gates"]."""
    if not p.conditions:
        return
    p.outcomes = evaluate_gates(p.conditions, facts_from_report(report))
    report["gates"] = gate_report(p.outcomes)


def write_ci(p: GatePlan, out: OutputDir | None, report: dict[str, Any], images: dict[str, np.ndarray],
             maps: dict[tuple[str, str], np.ndarray]) -> None:
    """Thumbnails and the Markdown summary, then the JUnit file, inside OUT."""
    if out is None:
        return
    if p.markdown:
        thumbs = {}
        for model, image in sorted(thumbnails(p.outcomes)):
            if (model, image) in maps and image in images:
                link = thumb_name(model, image)
                out.write_png(str(p.thumbs_dir().parent / link), thumbnail(images[image], maps[(model, image)]))
                thumbs[(model, image)] = link
        out.write_text(p.markdown, markdown_summary(report, p.outcomes, thumbs))
    if p.junit:
        names = [m["name"] for m in report["models"]] if "models" in report else [report["model"]["name"]]
        out.write_bytes(p.junit, junit_xml(p.outcomes, properties={"models": ", ".join(names)}))


def finish(p: GatePlan, errors: Sequence[dict[str, str]]) -> None:
    """One stderr line per failed condition; exit 1 on image errors, else 3 when a gate failed."""
    failed = [o for o in p.outcomes if not o.passed]
    for o in failed:
        click.echo(f"onnxcam: {one_line(o.line())}", err=True)
    if p.outcomes and not failed:
        click.echo(f"onnxcam: gates passed: {len(p.outcomes)} condition(s)", err=True)
    if errors:
        sys.exit(1)
    if failed:
        sys.exit(GATE_FAILED_EXIT_CODE)
