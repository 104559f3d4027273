"""one_blas_thread: numpy's OpenBLAS on one thread inside the block, the old count restored after."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.blas import _openblas, one_blas_thread


def test_one_blas_thread_sets_and_restores_the_thread_count():
    fns = _openblas()
    if fns is None:
        pytest.skip("numpy's BLAS here is not a bundled OpenBLAS")
    setter, getter = fns
    setter(2)
    with one_blas_thread():
        assert getter() == 1
        a = np.random.default_rng(0).standard_normal((49, 49))
        w, v = np.linalg.eigh(a + a.T)  # still computes
        np.testing.assert_allclose((a + a.T) @ v, v * w, atol=1e-9)
    assert getter() == 2
    with pytest.raises(ZeroDivisionError):
        with one_blas_thread():
            1 / 0
    assert getter() == 2
