"""`onnxcam explain --ray`, `onnxcam eval --ray` and `onnxcam review --ray`: the same commands on
Ray Data; `onnxcam.scale.job`, `onnxcam.scale.evaluate` and `onnxcam.scale.review` do the work.

The model is loaded here first, with the same Explainer options, input policy and target parsing
as the local path, so that a wrong option is a usage error before Ray starts; then the job runs on
Ray and writes or prints what the local run does. Ray's own logs and progress bars are kept off stderr
(-v shows its warnings): the command shows one progress bar and one line per failed image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Iterator

import click

from ..explainer import Explainer
from ..output import OutputDir, dumps
from ..preprocessing import policy_for
from ..targets import parse_target, with_detection_options
from . import options as opt
from .common import report_error


class _Bar:
    """A progress bar opened once the number of images is known (none when unknown or hidden)."""

    def __init__(self, show: bool) -> None:
        self.show, self.cm, self.bar = show, None, None

    def total(self, n: int | None) -> None:
        if self.show and n and n > 1:
            self.cm = click.progressbar(length=n, label="explaining on Ray", file=sys.stderr)
            self.bar = self.cm.__enter__()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)


@contextlib.contextmanager
def _native_stderr_to_devnull(enabled: bool) -> Iterator[None]:
    """Ray's C++ core writes log lines straight to file descriptor 2 (e.g. an "E" line about actor
    constructor arguments at every actor start, harmless). Unless -v, point descriptor 2 at
    /dev/null meanwhile, and Python's sys.stderr (our bar, error lines and log handlers) at a copy
    of it."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is old]
    for h in handlers:  # onnxcam's own warnings (e.g. the actor plan's note) keep reaching the terminal
        h.setStream(sys.stderr)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        for h in handlers:
            h.setStream(old)
        sys.stderr.close()
        sys.stderr = old
        os.close(saved)
        os.close(devnull)


def _connect_quietly(address: str | None, quiet: bool) -> None:
    """Connect (or start a local Ray) with Ray's progress bars off and, unless -v, its Python logs
    at ERROR (everything stays in Ray's session logs)."""
    from ..scale import connect, require_ray

    ray = require_ray()
    connect(address, **({"logging_level": logging.ERROR} if quiet else {}))
    ctx = ray.data.DataContext.get_current()
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"ray\.")  # e.g. "fewer inputs than actors" on a small rerun
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def explain_on_ray(model: str, inputs: tuple[str, ...], out_dir: str, method: Any, layers: tuple[str, ...],
                   explainer: dict[str, Any], target: str, policy_options: dict[str, Any], batch_size: int,
                   device: str, as_json: bool, overwrite: bool, ray_options: dict[str, Any],
                   det_format: str | None = None, boxes_output: str | None = None) -> None:
    """Check the request locally, then run it on Ray (see the module docstring); exit 1 when an
    image failed, as the local path."""
    from ..scale.job import RayOptions, explain_to_dir

    layer = list(layers) if len(layers) > 1 else (layers[0] if layers else None)
    ex = Explainer(model, method=method, layer=layer, providers=["CPUExecutionProvider"], **explainer)
    policy = policy_for(ex, **policy_options)
    tgt = with_detection_options(parse_target(target, policy.labels), det_format, boxes_output)
    out = OutputDir(out_dir, overwrite, protect=[model, *(p for p in inputs if os.path.isfile(p))])
    quiet = not logging.getLogger("onnxcam").isEnabledFor(logging.INFO)
    options = RayOptions(ray_options["address"], ray_options["actors"], None, device == "cuda", ray_options["fmt"],
                         ray_options["image_column"], batch_size)
    with _native_stderr_to_devnull(quiet):
        _connect_quietly(options.address, quiet)
        bar = _Bar(not as_json and sys.stderr.isatty())
        try:
            report = explain_to_dir(model, inputs, out, policy, method=method, layer=layer, target=tgt,
                                    target_spec=target, explainer=explainer, providers=opt.providers(device),
                                    options=options, on_progress=bar.update, on_total=bar.total,
                                    on_error=report_error, det_format=det_format, boxes_output=boxes_output)
        finally:
            bar.close()
    if as_json:
        click.echo(dumps(report))
    else:
        r = report["ray"]
        kept = f", {r['kept']} kept from an earlier run" if r["kept"] else ""
        click.echo(f"explained {r['explained']} map(s) with {report['method']} at {report['layer']} on {r['actors']} "
                   f"Ray actor(s){kept}; results in {out_dir}", err=True)
    if report["errors"]:
        sys.exit(1)


def _ray_run(call: Any, ray_options: dict[str, Any], device: str, batch_size: int) -> Any:
    """`call(options, on_progress=, on_total=, on_error=)` on Ray, quietly, with the progress bar."""
    from ..scale.job import RayOptions

    quiet = not logging.getLogger("onnxcam").isEnabledFor(logging.INFO)
    options = RayOptions(ray_options["address"], ray_options["actors"], None, device == "cuda", "files",
                         ray_options["image_column"], batch_size)
    with _native_stderr_to_devnull(quiet):
        _connect_quietly(options.address, quiet)
        bar = _Bar(sys.stderr.isatty())
        try:
            return call(options, on_progress=bar.update, on_total=bar.total, on_error=report_error)
        finally:
            bar.close()


def eval_on_ray(run: Any, images: tuple[str, ...], notes: Any, steps: int, road: bool, tolerance: float,
                batch_size: int, device: str, ray_options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """`onnxcam eval`'s report for `images` computed on Ray (`run`: the model loaded here), and
    the images as `onnxcam.scale.records.Gathered` (to read again for a CI summary)."""
    from ..scale.evaluate import evaluate_sources

    return _ray_run(lambda options, **cb: evaluate_sources(run, images, notes, steps, road, tolerance, batch_size,
                                                           options, exclude=ray_options.get("exclude"), **cb),
                    ray_options, device, batch_size)


def review_on_ray(runs: Any, images: tuple[str, ...], notes: Any, steps: int, road: bool, tolerance: float,
                  batch_size: int, device: str, ray_options: dict[str, Any]) -> tuple[Any, Any]:
    """`onnxcam review` of `images` computed on Ray (`runs`: the models loaded here): the Review
    and the images as `onnxcam.scale.records.Gathered`."""
    from ..scale.review import review_sources

    return _ray_run(lambda options, **cb: review_sources(runs, images, notes, steps, road, tolerance, batch_size,
                                                         options=options, exclude=ray_options.get("exclude"), **cb),
                    ray_options, device, batch_size)
