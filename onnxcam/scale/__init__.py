"""Explaining datasets at scale on Ray Data (the optional extra: `pip install 'onnxcam[ray]'`).

Importing this package does not import Ray; every function that needs it raises `RayError` with
the install command when it is missing.

- `read_sources`: folders, globs, Parquet files with an image column, WebDataset tars, `s3://`;
- `ExplainBatches`: the callable class `Dataset.map_batches` runs in each actor;
- `explain_dataset`: the actor pool, sized by `plan_actors` so that a small machine never hangs;
- `explain_to_dir`: `onnxcam explain --ray` (OUT written as the local run writes it);
- `evaluate_sources`: `onnxcam eval --ray` (per-image metrics on the actors, averaged here);
- `review_sources`: `onnxcam review --ray` (every model on each actor, the report assembled here);
- `connect`: a local Ray, or a cluster (`auto`, `HOST:PORT`, `ray://HOST:10001`).
"""

from .batches import ExplainBatches
from .cluster import ActorPlan, NodeShape, RayError, cluster_shape, connect, plan_actors, require_ray
from .dataset import explain_dataset, map_on_actors
from .evaluate import EvaluateBatches, evaluate_sources
from .job import RayOptions, explain_to_dir
from .records import Gathered, RecordBatches, gather
from .review import ReviewBatches, review_sources
from .sources import ImageSource, expand, plan_units, read_sources

__all__ = [
    "ActorPlan", "EvaluateBatches", "ExplainBatches", "Gathered", "ImageSource", "NodeShape", "RayError", "RayOptions",
    "RecordBatches", "ReviewBatches", "cluster_shape", "connect", "evaluate_sources", "expand", "explain_dataset",
    "explain_to_dir", "gather", "map_on_actors", "plan_actors", "plan_units", "read_sources", "require_ray",
    "review_sources",
]
