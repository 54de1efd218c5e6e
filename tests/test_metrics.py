"""Depth metrics: SSIM against scikit-image, hand-checked values, invalid pixels, NaN, constant maps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mde.data.synth import render_scene
from mde.errors import DataError, InputError
from mde.runtime.metrics import (
    MASK_OBJECT,
    METRIC_NAMES,
    MetricAccumulator,
    compute_metrics,
    region_metrics,
    ssim,
    ssim_map,
)

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the SSIM reference")
R = 20.0


def _sk(pred, gt, data_range=R, full=False):
    return skimage_metrics.structural_similarity(
        pred, gt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=data_range, full=full)


@pytest.mark.parametrize("shape", [(11, 11), (16, 40), (64, 64), (97, 131)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ssim_matches_skimage_on_random_maps(shape, dtype):
    rng = np.random.default_rng(shape[0])
    gt = rng.uniform(0.5, R, shape).astype(dtype)
    pred = (gt + rng.normal(0, 2.0, shape)).astype(dtype)
    assert ssim(pred, gt, R) == pytest.approx(_sk(pred, gt), abs=1e-4)
    smooth = np.cumsum(np.cumsum(rng.normal(size=shape), 0), 1).astype(dtype)
    assert ssim(smooth, gt, R) == pytest.approx(_sk(smooth, gt), abs=1e-4)


def test_ssim_matches_skimage_on_synthetic_depth_maps():
    worst = 0.0
    for i in range(4):
        _, gt, _ = render_scene(np.random.default_rng(i), 96)
        _, other, _ = render_scene(np.random.default_rng(100 + i), 96)
        blurred = (gt + np.roll(gt, 2, 0) + np.roll(gt, 3, 1)) / 3  # a plausible prediction
        for pred in (other, blurred, gt * 1.1):
            ours = compute_metrics(pred, gt, R)["ssim"]
            worst = max(worst, abs(ours - _sk(pred.astype(np.float32), gt)))
    assert worst < 1e-4


def test_ssim_map_equals_skimage_full_map():
    rng = np.random.default_rng(5)
    gt = rng.uniform(1, R, (40, 50))
    pred = gt + rng.normal(0, 1, gt.shape)
    _, full = _sk(pred, gt, full=True)
    np.testing.assert_allclose(ssim_map(pred, gt, R), full, atol=1e-9)


def test_hand_checked_values():
    gt = np.full((4, 4), 2.0)
    pred = gt.copy()
    pred[0] = 3.0  # 4 of 16 pixels 50 % too far
    m = compute_metrics(pred, gt, R)
    log15 = math.log(1.5)
    assert m["rmse"] == pytest.approx(0.5)
    assert m["abs_rel"] == pytest.approx(0.125)
    assert m["sq_rel"] == pytest.approx(0.125)
    assert m["rmse_log"] == pytest.approx(0.5 * log15)
    assert m["delta1"] == pytest.approx(0.75)
    assert m["delta2"] == m["delta3"] == pytest.approx(1.0)
    assert m["silog"] == pytest.approx(100 * log15 * math.sqrt(0.25 - 0.0625))
    assert set(m) == set(METRIC_NAMES)


def test_perfect_prediction():
    gt = np.random.default_rng(1).uniform(0.5, R, (32, 32))
    m = compute_metrics(gt, gt, R)
    assert m["rmse"] == m["abs_rel"] == m["sq_rel"] == m["rmse_log"] == m["silog"] == 0.0
    assert m["delta1"] == 1.0 and m["ssim"] == pytest.approx(1.0)


def test_invalid_pixels_are_ignored():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, R, (32, 32))
    pred = gt + rng.normal(0, 0.5, gt.shape)
    bad_gt = gt.copy()
    bad_gt[:5] = 0.0
    bad_gt[10, 10:20] = np.nan
    bad_gt[20, :4] = -1.0
    valid = np.isfinite(bad_gt) & (bad_gt > 0)
    garbage = pred.copy()
    garbage[~valid] = 1e6  # predictions at invalid pixels must not matter
    m = compute_metrics(garbage, bad_gt, R)
    diff = pred[valid] - gt[valid]
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(diff**2)))
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(diff) / gt[valid]))
    # SSIM rule: gt := pred at invalid pixels, average the map over the valid cropped pixels.
    filled = np.where(valid, gt, garbage)
    _, full = _sk(garbage, filled, full=True)
    assert m["ssim"] == pytest.approx(full[5:-5, 5:-5][valid[5:-5, 5:-5]].mean(), abs=1e-9)
    assert ssim(garbage, np.where(valid, gt, 0.0), R, mask=valid) == pytest.approx(m["ssim"])


def test_nan_prediction_gives_nan_not_a_silent_skip():
    gt = np.full((16, 16), 5.0)
    pred = gt.copy()
    pred[3, 3] = np.nan
    for bad in (np.nan, np.inf):
        pred[3, 3] = bad
        m = compute_metrics(pred, gt, R)
        assert all(math.isnan(v) for v in m.values()), m  # delta1 was 0.996 and RMSE inf
    mask = np.zeros((16, 16), np.uint8)
    mask[:4, :4] = MASK_OBJECT
    regions = region_metrics(pred, gt, mask)
    assert math.isnan(regions["objects_rmse"]) and math.isnan(regions["objects_delta1"])
    assert regions["structure_rmse"] == 0.0  # the region without the bad pixel keeps its figure


def test_a_nan_prediction_where_gt_is_invalid_is_ignored_by_ssim_too():
    """SSIM's window spread a NaN predicted at an invalid pixel: SSIM NaN beside every other metric's number."""
    rng = np.random.default_rng(3)
    gt = rng.uniform(1, R, (32, 32))
    pred = gt + rng.normal(0, 0.5, gt.shape)
    gt[16, 16] = 0.0  # invalid
    zero_there = compute_metrics(np.where(gt > 0, pred, 0.0), gt, R)
    for bad in (np.nan, np.inf, -np.inf):
        pred[16, 16] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nor a numpy warning
            m = compute_metrics(pred, gt, R)
        assert m == zero_there, (bad, m)
        assert 0 < m["ssim"] < 1


def test_a_one_row_image_is_scored_not_refused():
    gt = np.linspace(1.0, 5.0, 30)[None, :]
    m = compute_metrics(gt[None] * 1.1, gt, R)  # 1 x 1 x W against 1 x W: the leading axis only
    assert m["abs_rel"] == pytest.approx(0.1) and m["delta1"] == 1.0


def test_constant_maps():
    a, b = np.full((20, 20), 4.0), np.full((20, 20), 6.0)
    m = compute_metrics(a, b, R)
    c1 = (0.01 * R) ** 2
    assert m["ssim"] == pytest.approx((2 * 4 * 6 + c1) / (16 + 36 + c1))
    assert m["ssim"] == pytest.approx(_sk(a, b), abs=1e-6)
    assert m["rmse"] == pytest.approx(2.0) and m["delta1"] == 0.0 and m["delta2"] == 1.0
    assert compute_metrics(a, a, R)["ssim"] == pytest.approx(1.0)
    z = compute_metrics(np.zeros((20, 20)), b, R)  # a zero prediction: finite logs via EPS
    assert np.isfinite(z["rmse_log"]) and z["delta3"] == 0.0


@pytest.mark.parametrize(
    ("pred", "gt", "data_range", "error", "match"),
    [(np.ones((8, 8)), np.zeros((8, 8)), R, DataError, "no valid pixel"),
     (np.ones((8, 8)), np.full((8, 8), np.nan), R, DataError, "no valid pixel"),
     (np.ones((8, 8)), np.ones((8, 9)), R, InputError, "same H x W shape"),
     (np.ones((2, 8, 8)), np.ones((2, 8, 8)), R, InputError, "same H x W shape"),
     (np.ones((8, 8)), np.ones((8, 8)), 0.0, InputError, "positive, finite SSIM data range"),
     (np.ones((8, 8)), np.ones((8, 8)), "20", InputError, "positive, finite SSIM data range"),  # was a TypeError
     (np.ones((8, 8)), np.ones((8, 8)), True, InputError, "positive, finite SSIM data range"),
     (np.ones((8, 8)), np.ones((8, 8)), np.inf, InputError, "positive, finite SSIM data range")],  # was NaN SSIM
)
def test_bad_inputs(pred, gt, data_range, error, match):
    with pytest.raises(error, match=match):
        compute_metrics(pred, gt, data_range)


def test_a_data_range_of_any_numeric_type_is_read():
    gt = np.linspace(1.0, 5.0, 256).reshape(16, 16)
    expected = compute_metrics(gt * 1.1, gt, 20.0)["ssim"]
    for data_range in (20, np.float32(20), np.int64(20), np.array(20.0)):
        assert compute_metrics(gt * 1.1, gt, data_range)["ssim"] == pytest.approx(expected)
    assert ssim(gt * 1.1, gt, 20.0, mask=(gt > 2).astype(np.float32)) == pytest.approx(  # a 0/1 float mask
        ssim(gt * 1.1, gt, 20.0, mask=gt > 2))


def test_accumulator_averages_per_image():
    rng = np.random.default_rng(3)
    acc = MetricAccumulator(R)
    per = []
    for _ in range(3):
        gt = rng.uniform(1, R, (24, 24))
        per.append(acc.add(gt + rng.normal(0, 1, gt.shape), gt))
    res = acc.result()
    assert res["images"] == 3
    for name in METRIC_NAMES:
        assert res[name] == pytest.approx(np.mean([p[name] for p in per]))
    with pytest.raises(DataError, match="no images"):
        MetricAccumulator(R).result()
    # refused at once, as ssim refuses them: "20" and None were TypeErrors, True a 1 m range, inf an error only
    # at the first image
    for bad in (0.0, "20", None, True, float("inf"), float("nan")):
        with pytest.raises(InputError, match="positive, finite SSIM data range"):
            MetricAccumulator(bad)



def test_region_metrics_hand_checked():
    gt = np.array([[2.0, 4.0], [5.0, 0.0], [7.0, 8.0]])
    pred = np.array([[3.0, 4.0], [4.5, 9.0], [1.0, 1.0]])
    # objects: top row; structure: (1, 0) and (1, 1) whose gt is invalid; 255 (sky): bottom row
    mask = np.array([[1, 1], [0, 0], [255, 255]], np.uint8)
    got = region_metrics(pred, gt, mask)
    assert set(got) == {f"{r}_{m}" for r in ("objects", "structure") for m in ("rmse", "abs_rel", "delta1")}
    assert got["objects_rmse"] == pytest.approx(math.sqrt((1 + 0) / 2))
    assert got["objects_abs_rel"] == pytest.approx((0.5 + 0) / 2)
    assert got["objects_delta1"] == pytest.approx(0.5)  # 3 / 2 = 1.5 fails, 4 / 4 passes
    assert got["structure_rmse"] == pytest.approx(0.5)
    assert got["structure_abs_rel"] == pytest.approx(0.1)
    assert got["structure_delta1"] == pytest.approx(1.0)
    assert region_metrics(pred, gt, np.full((3, 2), 255, np.uint8)) == {}
    with pytest.raises(InputError, match="region mask"):
        region_metrics(pred, gt, mask[:2])


def test_accumulator_averages_regions_over_the_images_having_them():
    rng = np.random.default_rng(4)
    acc = MetricAccumulator(R)
    gts = [rng.uniform(1, R, (16, 16)) for _ in range(3)]
    preds = [g + rng.normal(0, 1, g.shape) for g in gts]
    masks = [np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), None]
    masks[1][4:8, 4:8] = 1  # only image 1 has objects; image 2 has no mask at all
    for p, g, m in zip(preds, gts, masks):
        acc.add(p, g, m)
    res = acc.result()
    assert res["images"] == 3 and res["objects_images"] == 1 and res["structure_images"] == 2
    assert res["objects_rmse"] == pytest.approx(np.sqrt(np.mean((preds[1] - gts[1])[4:8, 4:8] ** 2)))
    structure = [region_metrics(p, g, m)["structure_rmse"] for p, g, m in zip(preds[:2], gts[:2], masks[:2])]
    assert res["structure_rmse"] == pytest.approx(np.mean(structure))
    assert res["rmse"] == pytest.approx(np.mean([compute_metrics(p, g, R)["rmse"] for p, g in zip(preds, gts)]))


def test_ssim_refuses_a_mask_or_maps_of_other_shapes_as_input_errors():
    """The module promises InputError for mismatched shapes: a mask of another shape, and ssim_map's two maps, were
    numpy's broadcast ValueError."""
    from mde.errors import InputError
    from mde.runtime.metrics import ssim, ssim_map

    ones = np.ones((48, 64))
    with pytest.raises(InputError, match=r"mask of the maps' H x W shape \(48, 64\), got \(3, 3\)"):
        ssim(ones, ones, 20.0, mask=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="same H x W shape"):
        ssim_map(ones, np.ones((10, 64)), 20.0)
    assert ssim(ones, ones, 20.0, mask=np.ones((1, 48, 64), bool)) == pytest.approx(1.0)  # as the maps are taken


def test_integer_maps_are_refused_as_to_points_refuses_them():
    """Millimetres from a depth camera as ground truth scored an RMSE of thousands of 'metres' without a word."""
    from mde.errors import InputError
    from mde.runtime.metrics import compute_metrics, region_metrics, ssim, ssim_map

    gt_mm = np.full((16, 16), 2500, np.uint16)
    metres = np.full((16, 16), 2.5, np.float32)
    scorers = {"compute_metrics": lambda p, g: compute_metrics(p, g, 20.0),  # region_metrics, ssim and ssim_map
               "region_metrics": lambda p, g: region_metrics(p, g, np.zeros((16, 16), np.uint8)),  # scored them
               "ssim": lambda p, g: ssim(p, g, 20.0), "ssim_map": lambda p, g: ssim_map(p, g, 20.0)}
    for score in scorers.values():
        with pytest.raises(InputError, match=r"ground truth in floating-point metres, got uint16 values .*divide by "
                                             r"1000"):
            score(metres, gt_mm)
        with pytest.raises(InputError, match=r"the prediction in floating-point metres, got int64 values"):
            score(np.full((16, 16), 2, np.int64), metres)
        score(metres, gt_mm / 1000.0)  # in metres: scored
    assert compute_metrics(np.full((16, 16), 2.5, np.float32), gt_mm / 1000.0, 20.0)["rmse"] == pytest.approx(0.0)
