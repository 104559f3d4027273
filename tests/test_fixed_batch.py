"""Models exported with a fixed batch: every method runs in chunks of that batch (the last chunk
padded, its padding dropped), giving the maps the same model with a dynamic batch gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcam import Explainer

from .hostile import models as M


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "fullgrad", "guidedbackprop", "cam"])
def test_fixed_batch_maps_equal_the_dynamic_model(tmp_path: Path, batch: int, method: str):
    fixed = M.save(M.tiny_model(batch=batch), tmp_path / "fixed.onnx")
    dynamic = M.save(M.tiny_model(batch="N"), tmp_path / "dynamic.onnx")
    x = np.random.default_rng(0).random((2, 3, M.SIZE, M.SIZE), dtype=np.float32)
    got = Explainer(str(fixed), method=method).explain(x)
    ref = Explainer(str(dynamic), method=method).explain(x)
    np.testing.assert_allclose(got.heatmaps, ref.heatmaps, atol=1e-5)
    np.testing.assert_array_equal(got.targets, ref.targets)
