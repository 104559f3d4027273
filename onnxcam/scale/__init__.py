"""Explaining datasets at scale on Ray Data (the optional extra: `pip install 'onnxcam[ray]'`).

Importing this package does not import Ray; every function that needs it raises `RayError` with
the install command when it is missing.

- `read_sources`: folders, globs, Parquet files with an image column, WebDataset tars, `s3://`;
- `ExplainBatches`: the callable class `Dataset.map_batches` runs in each actor;
- `explain_dataset`: the actor pool, sized by `plan_actors` so that a small machine never hangs;
- `connect`: a local Ray, or a cluster (`auto`, `ray://host:10001`).
"""

from .batches import ExplainBatches
from .cluster import ActorPlan, NodeShape, RayError, cluster_shape, connect, plan_actors, require_ray
from .dataset import explain_dataset
from .sources import expand, plan_units, read_sources

__all__ = [
    "ActorPlan", "ExplainBatches", "NodeShape", "RayError", "cluster_shape", "connect",
    "expand", "explain_dataset", "plan_actors", "plan_units", "read_sources", "require_ray",
]
