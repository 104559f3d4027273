"""Sessions: the I/O-binding run (the CUDA path) gives the plain run's outputs, here on the CPU."""

from __future__ import annotations

import numpy as np

from onnxcam import Explainer
from onnxcam.graph.rewrite import TARGET_INPUT
from onnxcam.runtime import CPU, provider_of, run, run_bound, session_for

from .helpers import GOLDENS


def test_io_binding_run_equals_the_plain_run():
    ex = Explainer(GOLDENS / "torchscript_tinyresnet.onnx", method="gradcam++")
    sess = session_for(ex.explain_model(), [CPU])
    assert provider_of(sess) == CPU
    x = np.random.default_rng(0).standard_normal((3, 3, *ex.input_size)).astype(np.float32)
    feeds = {ex.info.image_input.name: x, TARGET_INPUT: np.array([1, 0, 2], np.int64)}
    names = [o.name for o in sess.get_outputs()]
    want = sess.run(names, feeds)
    for got in (run_bound(sess, feeds, names), run_bound(sess, feeds), run(sess, feeds, names)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
