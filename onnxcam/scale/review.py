"""`onnxcam review --ray`: several models side by side over a dataset, per image on the actors,
assembled here.

Each actor holds every model of the review (`ReviewBatches`), so an image's maps from all of them
meet in one process: the actor computes the image's review.json entry (each model's record, the
pairwise agreement) and its card's pictures (`onnxcam.review.review_chunk`, the local run's own
batch step). The driver puts the images back in the listing order, names them as the local run
does and builds the report with `onnxcam.review.ReviewCollector` (per-model metrics, pair means,
the disagreement ranking, the drift), the same code as one process: the same review.json.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ..annotations import Annotations
from ..review import TOP_PERCENT, ModelRun, Review, ReviewCollector, Reviewed, review_chunk
from .cluster import ActorPlan
from .evaluate import actor_args, actor_run
from .job import RayOptions
from .records import Gathered, RecordBatches, gather

log = logging.getLogger(__name__)


class ReviewBatches(RecordBatches):
    """Per image of a batch, inside a Ray actor: its review entry and card pictures (as JSON),
    through every model. `models`: per model `onnxcam.scale.evaluate.actor_args` plus `name`;
    see `onnxcam.review.review_stream` for the other arguments."""

    def __init__(self, models: Sequence[dict[str, Any]], notes: Annotations, steps: int, road: bool,
                 tolerance: float, percent: float, thumb_width: int = 300) -> None:
        self.runs = [actor_run(m["name"], m["model"], m["method"], m["policy"], m["layer"], m["target"],
                               m["providers"], m["threads"]) for m in models]
        self.notes, self.steps, self.road, self.tolerance = notes, steps, road, tolerance
        self.percent, self.thumb_width = percent, thumb_width

    def _results(self, items: list[tuple[str, np.ndarray]]) -> list[dict[str, Any] | str]:
        step = min(r.policy.batch_step(len(items)) for r in self.runs)
        out: list[dict[str, Any] | str] = []
        for s in range(0, len(items), step):
            for got in review_chunk(self.runs, items[s : s + step], self.notes.boxes, self.steps, self.road,
                                    self.tolerance, self.percent, self.notes, self.thumb_width):
                out.append(got if isinstance(got, str) else
                           {"record": got.record, "figures": got.figures, "layers": got.layers})
        return out


def review_sources(runs: Sequence[ModelRun], sources: Sequence[str], notes: Annotations | None = None,
                   steps: int = 50, road: bool = False, tolerance: float = 15.0, batch_size: int = 8,
                   percent: float = TOP_PERCENT, options: RayOptions | None = None,
                   on_progress: Callable[[int], None] = lambda n: None,
                   on_total: Callable[[int | None], None] = lambda n: None,
                   on_error: Callable[[str], None] = lambda m: None,
                   exclude: str | None = None,
                   actor_class: type[ReviewBatches] = ReviewBatches) -> tuple[Review, Gathered]:
    """`onnxcam review` of every image of `sources` computed on Ray: the `Review` (its report is
    review.json without "errors"; `onnxcam.review.write_report` writes the page) and what the
    actors returned (`Gathered`: the errors, and `items()` to read images again for a CI summary).
    `runs`: the models loaded on the driver (their policies, layers and targets go to the actors);
    `exclude`: a folder not searched for images (OUT); `actor_class`: `ReviewBatches` or a subclass."""
    opts = options or RayOptions()
    notes = notes or Annotations()

    def ctor(plan: ActorPlan) -> dict[str, Any]:
        return {"models": [{**actor_args(r, opts, plan), "name": r.name} for r in runs], "notes": notes,
                "steps": steps, "road": road, "tolerance": tolerance, "percent": percent}

    collector = ReviewCollector([r.name for r in runs])

    def keep(order: int, row: dict[str, Any]) -> dict[str, Any]:
        """Spool the image's pictures at once (memory holds only the records)."""
        collector.add(Reviewed(row["record"], row["figures"], row["layers"]), order)
        return {}

    got = gather(actor_class, ctor, sources, opts, batch_size, on_progress, on_total, on_error, keep=keep,
                 exclude=exclude, doing="reviewing")
    rv = collector.finish([r.describe() for r in runs], runs[0].explainer.method.name, steps, tolerance, percent,
                          names=got.names())
    return rv, got

