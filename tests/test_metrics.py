"""onnxcam.metrics against hand-computed values on small synthetic cases, plus one real model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcam import metrics as M

from .helpers import EXAMPLES, MOBILENET


# -- pointing games ---------------------------------------------------------------------------------
def _peak(r: int, c: int, shape=(50, 50)) -> np.ndarray:
    m = np.zeros(shape)
    m[r, c] = 1.0
    return m


BOX = [10, 10, 30, 30]  # x 10..29, y 10..29 (end-exclusive)


def test_pointing_game_inside_and_at_the_tolerance_border():
    assert M.pointing_game(_peak(20, 20), BOX, tolerance=0)
    # 11 px right of the last column (29): hit at 11, miss just under
    assert M.pointing_game(_peak(20, 40), BOX, tolerance=11)
    assert not M.pointing_game(_peak(20, 40), BOX, tolerance=10.99)
    # diagonal: dx = 38 − 29 = 9, dy = 41 − 29 = 12 → distance exactly 15 (the paper's tolerance)
    assert M.pointing_game(_peak(41, 38), BOX)
    assert not M.pointing_game(_peak(41, 38), BOX, tolerance=14.99)
    # left/top side: c = 10 − 15 = −5 is off the image; c = 0 → distance 10
    assert M.pointing_game(_peak(20, 0), BOX, tolerance=10)
    assert not M.pointing_game(_peak(20, 0), BOX, tolerance=9.9)


def test_pointing_game_mask_and_several_boxes():
    mask = np.zeros((50, 50), bool)
    mask[5, 5] = True
    assert M.pointing_game(_peak(8, 9), mask, tolerance=5)  # 3-4-5 triangle
    assert not M.pointing_game(_peak(8, 9), mask, tolerance=4.99)
    boxes = np.array([[0, 0, 2, 2], [40, 40, 50, 50]])
    assert M.pointing_game(_peak(45, 45), boxes, tolerance=0)
    assert not M.pointing_game(_peak(20, 20), boxes, tolerance=0)


def test_energy_pointing_game_known_fractions():
    assert M.energy_pointing_game(np.ones((10, 10)), [0, 0, 5, 10]) == pytest.approx(0.5)
    m = np.ones((4, 4))
    m[:2, :2] = 3.0  # inside box: 4 px × 3 = 12; total 12 + 12 × 1 = 24
    assert M.energy_pointing_game(m, [0, 0, 2, 2]) == pytest.approx(0.5)
    assert M.energy_pointing_game(m, [0, 0, 1, 1]) == pytest.approx(3 / 24)
    assert M.energy_pointing_game(np.zeros((4, 4)), [0, 0, 2, 2]) == 0.0


# -- CAM box and IoU ----------------------------------------------------------------------------------
def test_cam_box_is_the_bigger_blob_above_20_percent():
    m = np.zeros((20, 20))
    m[2:6, 3:10] = 1.0  # 4 × 7 = 28 px: the biggest component
    m[10:12, 10:12] = 0.5  # 4 px, above 0.2
    m[14:20, 0:20] = 0.1  # 120 px but under 20% of the max: not segmented
    assert M.cam_box(m) == [3, 2, 10, 6]
    m[10:19, 12:19] = 0.3  # now a 9 × 7 = 63 px blob (joined with the 0.5 square, 8-connected)
    assert M.cam_box(m) == [10, 10, 19, 19]
    assert M.cam_box(np.zeros((5, 5))) is None


def test_box_iou():
    assert M.box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert M.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert M.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert M.box_iou(None, [0, 0, 1, 1]) == 0.0


# -- agreement --------------------------------------------------------------------------------------
def test_rank_averages_ties():
    np.testing.assert_array_equal(M.rank(np.array([10, 20, 20, 30])), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(M.rank(np.array([5, 5, 5])), [2, 2, 2])


def test_spearman_with_ties_and_formula_without():
    # ranks a = [1, 2.5, 2.5, 4], b = [1, 3, 2, 4]: Σ dev products 4.5, Σ dev² 4.5 and 5
    a, b = np.array([[1, 2], [2, 3]]), np.array([[1, 3], [2, 4]])
    assert M.spearman(a, b) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # no ties: 1 − 6 Σ d² / (n (n² − 1))
    x = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0])
    y = np.array([2.0, 7.0, 1.0, 8.0, 2.5, 8.5])
    d = M.rank(x) - M.rank(y)
    n = len(x)
    assert M.spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum() / (n * (n * n - 1)))
    assert M.spearman(x, x) == pytest.approx(1.0)
    assert M.spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(np.ones(4), x[:4]))


def test_top_k_iou():
    a = np.arange(100.0).reshape(10, 10)  # top 20% = 80..99
    b = np.roll(np.arange(100.0), 10).reshape(10, 10)  # top 20% = flat positions 90..99, 0..9
    assert M.top_k_iou(a, b, 20) == pytest.approx(10 / 30)
    assert M.top_k_iou(a, a, 20) == 1.0
    sparse = np.zeros((10, 10))
    sparse.flat[90:] = 1.0  # 10% positive: its top-20% region is those 10 px, not the whole map
    assert M.top_k_iou(sparse, a, 20) == pytest.approx(10 / 20)


# -- perturbation metrics on toy "models" -------------------------------------------------------------
def _region_mean(batch: np.ndarray) -> np.ndarray:
    """Score = mean of the left half (columns 0..3) of an (N, 3, 8, 8) batch: one class."""
    return batch[:, :, :, :4].mean(axis=(1, 2, 3))[:, None]


def _left_map() -> np.ndarray:
    m = np.zeros((1, 8, 8))
    m[0, :, :4] = 1.0
    return m


def test_deletion_insertion_auc_analytic():
    x = np.ones((1, 3, 8, 8), np.float32)
    # 8 steps of 8 px; the 32 left-half px go first: curve 1, .75, .5, .25, 0, 0, 0, 0, 0
    d = M.deletion(x, _left_map(), _region_mean, steps=8, softmax=False)
    np.testing.assert_allclose(d.curves[0], [1, .75, .5, .25, 0, 0, 0, 0, 0])
    assert d.auc[0] == pytest.approx(0.25)  # = ∫ max(0, 1 − 2t) dt
    ins = M.insertion(x, _left_map(), _region_mean, steps=8, baseline="zero", softmax=False)
    assert ins.auc[0] == pytest.approx(0.75)
    # the opposite ranking deletes the region last: 1 − 0.25
    d2 = M.deletion(x, 1 - _left_map(), _region_mean, steps=8, softmax=False)
    assert d2.auc[0] == pytest.approx(0.75)
    np.testing.assert_allclose(d2.fractions, np.arange(9) / 8)
    # insertion from a blurred constant image: nothing changes, curve flat at 1
    assert M.insertion(x, _left_map(), _region_mean, steps=4, softmax=False).auc[0] == pytest.approx(1.0)
    # small batches give the same numbers (memory-bounded path)
    assert M.deletion(x, _left_map(), _region_mean, steps=8, softmax=False, batch_size=3).auc[0] == pytest.approx(0.25)


def test_deletion_nhwc_matches_nchw():
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    maps = np.random.default_rng(1).random((2, 8, 8))
    f = lambda b: _region_mean(b)  # noqa: E731
    g = lambda b: _region_mean(b.transpose(0, 3, 1, 2))  # noqa: E731
    a = M.deletion(x, maps, f, steps=5, softmax=False)
    b = M.deletion(x.transpose(0, 2, 3, 1), maps, g, steps=5, softmax=False, layout="NHWC")
    np.testing.assert_allclose(a.auc, b.auc)


def test_average_drop_and_increase_toy_models():
    x = np.ones((3, 3, 8, 8), np.float32)
    maps = np.stack([np.full((8, 8), 0.5), np.ones((8, 8)), _left_map()[0]])
    r = M.average_drop_increase(x, maps, _region_mean, softmax=False)
    # Y = 1; O = 0.5, 1, 1 → drops 50, 0, 0; no O > Y
    np.testing.assert_allclose(r.drop, [50, 0, 0])
    assert r.average_drop == pytest.approx(50 / 3)
    assert r.increase_in_confidence == 0.0
    inverse = lambda b: 1 - _region_mean(b) / 2  # noqa: E731  Y = 0.5
    r2 = M.average_drop_increase(x[:2], maps[:2], inverse, softmax=False)
    np.testing.assert_allclose(r2.o, [0.75, 0.5])
    assert r2.average_drop == 0.0
    assert r2.increase_in_confidence == 50.0


def test_probabilities_softmax_auto():
    p = M.probabilities(np.array([[0.0, 0.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5]])
    already = np.array([[0.2, 0.8]])
    np.testing.assert_allclose(M.probabilities(already), already)


# -- ROAD ---------------------------------------------------------------------------------------------
def test_road_imputation_is_exact_on_a_linear_ramp():
    yy, xx = np.mgrid[0:20, 0:30]
    ramp = np.stack([0.3 * yy - 0.7 * xx + 2.0, 0.05 * xx + 1.0])  # 2 channels
    removed = np.zeros((20, 30), bool)
    removed[3:15, 4:25] = True  # a big hole
    removed[17, 2] = True  # a lone pixel
    out = M.impute_linear(ramp, removed, noise=0, tol=1e-13, max_iter=2000)
    np.testing.assert_allclose(out, ramp, atol=1e-8)
    # one pixel: the weighted mean of its 8 neighbours, by hand
    img = np.arange(25.0).reshape(1, 5, 5) ** 2
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    direct = img[0, 1, 2] + img[0, 3, 2] + img[0, 2, 1] + img[0, 2, 3]
    diag = img[0, 1, 1] + img[0, 1, 3] + img[0, 3, 1] + img[0, 3, 3]
    want = (direct / 6 + diag / 12) / (4 / 6 + 4 / 12)
    assert M.impute_linear(img, one, noise=0, tol=1e-14)[0, 2, 2] == pytest.approx(want)


def test_road_noise_only_on_removed_pixels_and_curves():
    img = np.random.default_rng(0).random((3, 16, 16))
    removed = np.zeros((16, 16), bool)
    removed[4:8, 4:8] = True
    out = M.impute_linear(img, removed, noise=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(out[:, ~removed], img[:, ~removed])
    with pytest.raises(ValueError, match="all removed"):
        M.impute_linear(img, np.ones((16, 16), bool))
    # constant image: imputation gives the constant back, so the toy score stays 1 everywhere
    x = np.ones((1, 3, 8, 8), np.float32)
    r = M.road(x, _left_map(), _region_mean, noise=0, softmax=False, percentiles=(25, 50, 75))
    assert r.morf.shape == r.lerf.shape == (1, 3)
    np.testing.assert_allclose(r.morf, 1, atol=1e-5)
    assert r.combined == pytest.approx(0, abs=1e-5)


def test_road_morf_lower_than_lerf_on_a_toy_model():
    # score = mean of the left half of a random image, removal replaces by smooth imputation of
    # the right half's values (mean ~0.5) — MoRF, removing the left half first, changes the score
    # more than LeRF. Scores are |score − original| based: 1 − |Δ|.
    x = np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32)
    x[..., :8] += 2.0
    base = float(_region_mean(x)[0, 0])
    f = lambda b: 1 - np.abs(_region_mean(b) - base)  # noqa: E731
    m = np.zeros((1, 16, 16))
    m[0, :, :8] = 1 + np.random.default_rng(2).random((16, 8))
    r = M.road(x, m, f, noise=0, softmax=False, percentiles=(20, 40))
    assert r.morf_mean < r.lerf_mean


# -- the real model -------------------------------------------------------------------------------------
def test_real_model_gradcam_points_and_deletes_better_than_random(boxes):
    """Grad-CAM on MobileNetV2: the map's maximum lies on the cat and on the cup, and deleting by
    Grad-CAM's ranking lowers the espresso probability faster than by random maps.

    The random maps are drawn at the layer's 7 × 7 resolution and upsampled as CAMs are: a map of
    independent random pixels deletes salt-and-pepper noise, which breaks the classifier faster
    than any coherent region (AUC 0.075 on chelsea.png against Grad-CAM's 0.24), so it is no fair
    baseline. On chelsea.png the cat fills the frame and Grad-CAM's map covers most of it; its
    deletion AUC is no better than coarse random maps there, so the AUC test uses coffee.png.
    """
    from onnxcam import Explainer
    from onnxcam.image import load_image, preprocess, resize_map

    ex = Explainer(MOBILENET, method="gradcam")
    imgs = [load_image(EXAMPLES / n) for n in ("chelsea.png", "coffee.png")]
    x = preprocess(imgs, (224, 224), "imagenet")
    res = ex.explain(x)
    for name, img, hm in zip(("chelsea.png", "coffee.png"), imgs, res.heatmaps):
        assert M.pointing_game(resize_map(hm, img.shape[:2]), boxes[name]["box"]), name
    forward = M.scores_fn(ex)
    np.testing.assert_allclose(forward(x), res.outputs, rtol=1e-4, atol=1e-4)
    xc, t = x[1:], res.targets[1:]
    d_cam = M.deletion(xc, res.heatmaps[1:], forward, targets=t, steps=16).auc[0]
    d_rnd = [
        M.deletion(xc, resize_map(np.random.default_rng(s).random((7, 7)), (224, 224))[None], forward,
                   targets=t, steps=16).auc[0]
        for s in range(4)
    ]
    assert d_cam < np.mean(d_rnd)
    assert d_cam < min(d_rnd)
