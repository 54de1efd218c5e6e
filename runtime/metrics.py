"""Depth metrics (numpy only), the one implementation used by training, eval, calibration and parity.

A pixel is valid when the ground truth is finite and > 0. Metrics are computed per image over
its valid pixels, then averaged over images (`MetricAccumulator`).

- rmse and sq_rel in metres, abs_rel a fraction; rmse_log on natural logs; delta1..3 = share of pixels with
  max(pred/gt, gt/pred) < 1.25, 1.25^2, 1.25^3. Predictions are clipped to `EPS` for the logs
  and ratios only.
- silog = 100 * sqrt(mean(d^2) - mean(d)^2), d = log(pred) - log(gt) (KITTI benchmark).
- ssim: Wang et al. 2004, 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 0.01,
  K2 0.03, population covariance, data range = the dataset's max depth; identical to
  `skimage.metrics.structural_similarity(pred, gt, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R)` when every pixel is valid (the mean of the SSIM map
  with a 5-pixel border cropped). With invalid pixels, gt is replaced there by pred (the window
  statistics then see no error at those pixels; a NaN/inf prediction there is taken as 0) and the map
  is averaged over the valid pixels of the cropped region (over all valid pixels when the crop holds none).
- Regions (`region_metrics`): where the dataset has a mask (0 structure, 1 object, other values
  invalid), rmse, abs_rel and delta1 over each region's valid pixels, as `objects_rmse`, ...;
  each is averaged over the images that have pixels of that region (`objects_images` of them).
- A prediction containing NaN/inf at a valid pixel gives NaN for every metric of that image (and
  region); never a number, never silently skipped. Ground truth without any valid pixel raises
  `DataError`; mismatched shapes, data_range <= 0 and integer maps (millimetres, not metres) raise
  `InputError`.
- Images smaller than the 11 x 11 window: SSIM is the mean of the whole map (edges reflected), as
  no border can be cropped; scikit-image refuses such images.
- Sparse ground truth (KITTI's LiDAR) changes SSIM, either way: the replaced pixels agree perfectly, so
  with few valid pixels most of each window sees no error (SSIM rises), while the border between a hole
  and a measured pixel where the model is wrong is a new edge (SSIM falls). Compare SSIM only between
  models on the same data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mde.errors import DataError, InputError

METRIC_NAMES = ("rmse", "ssim", "abs_rel", "sq_rel", "rmse_log", "delta1", "delta2", "delta3", "silog")
EPS = 1e-6
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID = 0, 1, 255  # region mask values (docs/reference.md)
REGIONS = {"structure": MASK_STRUCTURE, "objects": MASK_OBJECT}  # region name -> mask value
REGION_METRIC_NAMES = ("rmse", "abs_rel", "delta1")


def _gaussian_kernel(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """The normalized 1-D Gaussian of scipy.ndimage (radius int(truncate * sigma + 0.5))."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


_KERNEL = _gaussian_kernel()
RADIUS = (len(_KERNEL) - 1) // 2


def _filter(maps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of a stack (..., H, W), edges mirrored like scipy's 'reflect'."""
    r = RADIUS
    pad = [(0, 0)] * (maps.ndim - 2) + [(r, r), (r, r)]
    x = np.pad(maps, pad, mode="symmetric")
    h, w = maps.shape[-2:]
    rows = _KERNEL[0] * x[..., :, 0:w]
    for k in range(1, len(_KERNEL)):
        rows += _KERNEL[k] * x[..., :, k : k + w]
    out = _KERNEL[0] * rows[..., 0:h, :]
    for k in range(1, len(_KERNEL)):
        out += _KERNEL[k] * rows[..., k : k + h, :]
    return out


def checked_data_range(data_range: Any) -> float:
    """SSIM's data range as a float, or `InputError`: a positive, finite number (a numpy scalar or 0-d array
    too), not a bool ("True" is no range) nor a string."""
    try:
        value = None if isinstance(data_range, (bool, np.bool_, str, bytes)) else float(data_range)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < np.inf:
        raise InputError(f"expected a positive, finite SSIM data range, got {data_range!r}")
    return value


def ssim_map(pred: np.ndarray, gt: np.ndarray, data_range: float) -> np.ndarray:
    """Per-pixel SSIM of two H x W maps (same values as scikit-image's full SSIM image)."""
    data_range = checked_data_range(data_range)
    pred, gt = _check_maps(pred, gt)
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(gt, dtype=np.float64)
    ux, uy, uxx, uyy, uxy = _filter(np.stack([x, y, x * x, y * y, x * y]))
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Mean SSIM (see the module docstring for the exact definition and the masking rule).

    Args:
        pred: H x W prediction.
        gt: H x W ground truth.
        data_range: the dataset's depth range (max depth).
        mask: valid pixels (default: all).
    """
    pred, gt = _check_maps(pred, gt)
    if mask is not None:  # a non-finite prediction where gt is invalid is 0 there, not spread by the window
        mask = _as_map(np.asarray(mask, dtype=bool))
        if mask.shape != gt.shape:
            raise InputError(f"expected a mask of the maps' H x W shape {gt.shape}, got {mask.shape}")
        pred = np.where(mask | np.isfinite(pred), pred, 0.0)
        gt = np.where(mask, gt, pred)
    smap = ssim_map(pred, gt, data_range)
    r = RADIUS
    inner = smap[r:-r, r:-r] if min(smap.shape) > 2 * r else smap[:0, :0]
    if mask is None:
        return float(inner.mean(dtype=np.float64)) if inner.size else float(smap.mean())
    inner_mask = mask[r:-r, r:-r] if inner.size else mask[:0, :0]
    if inner_mask.any():
        return float(inner[inner_mask].mean(dtype=np.float64))
    if not mask.any():
        raise DataError("no valid ground-truth pixel for SSIM")
    return float(smap[mask].mean(dtype=np.float64))


def _as_map(array: np.ndarray) -> np.ndarray:
    """An H x W map from H x W, H x W x 1, 1 x H x W or 1 x 1 x H x W (a 1 x W image stays 1 x W)."""
    array = np.asarray(array)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _check_maps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two H x W maps of one shape, in floating-point metres (every public metric checks its maps here)."""
    pred, gt = _as_map(pred), _as_map(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InputError(f"expected prediction and ground truth of the same H x W shape, got "
                         f"{pred.shape} and {gt.shape}")
    for name, array in (("prediction", pred), ("ground truth", gt)):  # as to_points and colorize refuse them
        if array.dtype.kind in "uib":
            raise InputError(f"expected the {name} in floating-point metres, got {array.dtype} values (a depth "
                             "camera's millimetres: divide by 1000)")
    return pred, gt


def compute_metrics(pred: np.ndarray, gt: np.ndarray, data_range: float) -> dict[str, float]:
    """All metrics of one image (keys `METRIC_NAMES`), over pixels where gt is finite and > 0.

    Args:
        pred: H x W predicted depth in metres.
        gt: H x W ground-truth depth in metres (0, negative or NaN = invalid).
        data_range: SSIM data range, the dataset's max depth.
    """
    pred, gt = _check_maps(pred, gt)
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > 0)
    if not valid.any():
        raise DataError("ground truth has no valid pixel (finite and > 0)")
    p, g = pred[valid], gt[valid]
    if not np.isfinite(p).all():  # not a number to average: every metric says so
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    diff = p - g
    pc = np.maximum(p, EPS)
    dlog = np.log(pc) - np.log(g)
    ratio = np.maximum(pc / g, g / pc)
    return {
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "ssim": ssim(pred, np.where(valid, gt, 0.0), data_range, mask=None if valid.all() else valid),
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse_log": float(np.sqrt(np.mean(dlog**2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "silog": float(100.0 * np.sqrt(max(np.mean(dlog**2) - np.mean(dlog) ** 2, 0.0))),
    }


def region_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """rmse, abs_rel and delta1 of one image per region of `mask` (keys `objects_rmse`, ...).

    A region without valid pixels (gt finite and > 0) in this image has no keys.

    Args:
        pred: H x W predicted depth in metres.
        gt: H x W ground-truth depth in metres.
        mask: H x W region mask (`REGIONS` values; anything else is ignored).
    """
    pred, gt = _check_maps(pred, gt)
    mask = _as_map(mask)
    if mask.shape != gt.shape:
        raise InputError(f"expected a region mask of shape {gt.shape}, got {mask.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > 0)
    out: dict[str, float] = {}
    for name, value in REGIONS.items():
        sel = valid & (mask == value)
        if not sel.any():
            continue
        p, g = pred[sel].astype(np.float64), gt[sel].astype(np.float64)
        if not np.isfinite(p).all():
            out.update({f"{name}_{metric}": float("nan") for metric in REGION_METRIC_NAMES})
            continue
        pc = np.maximum(p, EPS)
        out[f"{name}_rmse"] = float(np.sqrt(np.mean((p - g) ** 2)))
        out[f"{name}_abs_rel"] = float(np.mean(np.abs(p - g) / g))
        out[f"{name}_delta1"] = float(np.mean(np.maximum(pc / g, g / pc) < 1.25))
    return out


def average_sums(sums: dict[str, float], count: int) -> dict[str, float]:
    """Means of summed per-image metrics: region metrics over `REGION_images` images, the rest over `count`.

    Also returns `images` (= count) and each region's image count. Where images had masks (`REGION_images`
    summed, 0 included), every region has its keys: one that no image shows has NaN figures (null in JSON).
    """
    if count == 0:
        raise DataError("no images were scored")
    out = {}
    for key, value in sums.items():
        region = key.split("_", 1)[0]
        if key.endswith("_images"):
            out[key] = int(value)
        elif region in REGIONS:
            out[key] = value / max(sums.get(f"{region}_images", 0), 1)
        else:
            out[key] = value / count
    for region in REGIONS:
        if f"{region}_images" in sums:
            out.update({f"{region}_{metric}": float("nan") for metric in REGION_METRIC_NAMES
                        if f"{region}_{metric}" not in out})
    return {**out, "images": count}


class MetricAccumulator:
    """Per-image metrics, averaged over images: `add(pred, gt[, mask])` per image, then `result()`."""

    def __init__(self, data_range: float):
        self.data_range = checked_data_range(data_range)  # at once, not at the first image
        self.sums = dict.fromkeys(METRIC_NAMES, 0.0)
        self.count = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
        """Score one image (and its regions, given a mask); return its metrics."""
        metrics = compute_metrics(pred, gt, self.data_range)
        if mask is not None:
            metrics |= region_metrics(pred, gt, mask)
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for region in REGIONS:
            if mask is not None:  # a region no masked image shows still has its keys, with 0 images
                self.sums[f"{region}_images"] = self.sums.get(f"{region}_images", 0) + (f"{region}_rmse" in metrics)
        self.count += 1
        return metrics

    def result(self) -> dict[str, float]:
        """Mean of each metric over the images added, plus `images` (their count)."""
        return average_sums(self.sums, self.count)
