"""The evaluation loop every backend shares (torch-free): predict in batches, score with the one metrics module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mde.errors import DataError, ModelError
from mde.runtime.preprocess import postprocess, resize_depth

PredictBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


def metric_sums(
    predict_batch: PredictBatch,
    dataset: Any,
    data_range: float,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    advance: Callable[[], None] | None = None,
) -> tuple[dict[str, float], int]:
    """Per-image metrics summed over `indices` of `dataset` (all when None), and the image count.

    Sums (not means; `MetricAccumulator`'s) so shards scored by several processes add up exactly.
    Samples with a region `mask` add per-region sums and region image counts (`average` divides).

    Args:
        predict_batch: RGB images (H x W x 3 uint8) -> depth maps (H x W metres) in order.
        dataset: indexable, items with `.rgb` and `.depth` (see `mde.data.readers`).
        data_range: SSIM data range, the dataset's maximum depth.
        indices: which items to score.
        batch_size: images per `predict_batch` call.
        progress: show a progress bar on stderr.
        advance: called after each batch (a caller's own progress bar: training's, during validation).
    """
    from mde.runtime.metrics import MetricAccumulator

    order = list(range(len(dataset))) if indices is None else list(indices)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from mde.console import track

        chunks = track(chunks, "evaluate", total=len(chunks))
    acc = MetricAccumulator(data_range)
    for chunk in chunks:
        samples = [dataset[i] for i in chunk]
        try:
            preds = predict_batch([s.rgb for s in samples])
        except ModelError as err:  # the runtime refused the model's output (NaN, out of range): say where
            which = (f"image {samples[0].name}" if len(samples) == 1
                     else f"one of images {samples[0].name} to {samples[-1].name}")
            raise ModelError(f"{err.message} ({which})", err.path) from None
        for sample, pred in zip(samples, preds):
            gt = np.asarray(sample.depth, dtype=np.float32)
            pred = np.asarray(pred, dtype=np.float32)
            if not np.isfinite(pred).all():
                raise ModelError(f"the model predicts NaN or infinite depth (image {sample.name}): "
                                 "a diverged or broken model")
            if pred.shape != gt.shape:
                pred = resize_depth(pred, gt.shape)
            acc.add(pred, gt, getattr(sample, "mask", None))
        if advance is not None:
            advance()
    return dict(acc.sums), acc.count


def average(sums: dict[str, float], count: int) -> dict[str, float]:
    """Means of `metric_sums` output (region metrics over the images having that region), plus `images`."""
    from mde.runtime.metrics import average_sums

    if count == 0:
        raise DataError("no images to evaluate")
    return average_sums(sums, count)


def evaluate(
    predict_batch: PredictBatch,
    dataset: Any,
    data_range: float,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Mean per-image metrics (rmse, ssim, abs_rel, ...) of `predict_batch` on `dataset`, plus `images`."""
    return average(*metric_sums(predict_batch, dataset, data_range, None, batch_size, progress))


def pixel_mean_map(train: Any) -> np.ndarray:
    """The training set's per-pixel mean valid depth (H x W float32 at the first image's size)."""
    return _depth_statistics(train)[1]


def train_split_baseline(data: Any, split: str, depth_scale: float | None, data_range: float,
                         compute: Callable[[Any], Any]) -> Any:
    """`compute(train split)`: an image-blind baseline (the per-pixel mean map) from DATA's train split, or None
    where there is none to take: scoring train itself, or NYU's "all", which holds it (the baseline would have
    seen the images it is scored on), or no train split that can be read (none, an empty or damaged one, one whose
    depth is in another unit than metres of `data_range`, as `check_depth_units` judges the scored split), which
    is said in a note. A baseline is information: a damaged train split must not stop the scoring of val."""
    from mde.console import info
    from mde.data.readers import check_depth_units, open_dataset
    from mde.errors import MdeError

    if split in ("train", "all"):
        return None
    try:
        # as training reads it: a map with no valid pixel adds nothing to the mean
        train = open_dataset(data, split="train", depth_scale=depth_scale, empty_depth_ok=True)
        check_depth_units(train, data_range)  # millimetres in its .npy would make a baseline far off, unsaid
        return compute(train)
    except MdeError as err:
        info(f"note: no per-pixel mean map baseline: {err}")
        return None


def pixel_mean_map_metrics(train: Any, val: Any, data_range: float, max_depth: float) -> dict[str, float]:
    """`evaluate` of the image-blind per-pixel mean map of `train` on `val` (per region where val has masks),
    as a model of range `max_depth` would predict it (`fixed_map_prediction`)."""
    return _fixed_map_metrics(pixel_mean_map(train), val, data_range, max_depth)


def fixed_map_prediction(depth_map: np.ndarray, size: tuple[int, int], max_depth: float) -> np.ndarray:
    """An image-blind map as the prediction for an image of `size`: resized and clipped to [0, max_depth] as a
    model's output is (`postprocess`), so it is scored on the terms of the model it is compared with. `mde eval`
    and `mde parity` both score the per-pixel mean map through this."""
    return postprocess(depth_map, size, max_depth)


class GroundTruths:
    """A dataset's samples with their depth maps and masks but not their images (its `ground_truth(i)` where it
    has one): image-blind baselines read no pixel of an image, only its size."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._read = getattr(dataset, "ground_truth", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self._read(index)


def _fixed_map_metrics(depth_map: np.ndarray, val: Any, data_range: float, max_depth: float) -> dict[str, float]:
    """`evaluate` of a predictor that returns `depth_map` for every image (`fixed_map_prediction`)."""
    return evaluate(lambda rgbs: [fixed_map_prediction(depth_map, r.shape[:2], max_depth) for r in rgbs],
                    GroundTruths(val), data_range)


def baselines(train: Any, val: Any, data_range: float) -> dict[str, Any]:
    """Val metrics of two predictors that ignore the image, the floor a trained model must clear.

    `mean_depth` predicts the training set's mean valid depth everywhere; `pixel_mean_map`
    predicts its per-pixel mean depth map (at the first training image's size, resized to
    each ground truth). Both are clipped to [0, data_range], the range of a model trained on it.
    Where val has region masks both carry per-region figures too.
    """
    mean, pixmap = _depth_statistics(train)
    return {
        "train_mean_depth_m": float(mean),
        "mean_depth": _fixed_map_metrics(np.full((1, 1), mean, np.float32), val, data_range, data_range),
        "pixel_mean_map": _fixed_map_metrics(pixmap, val, data_range, data_range),
    }


def _depth_statistics(train: Any) -> tuple[float, np.ndarray]:
    """The mean valid depth of a split and its per-pixel mean map."""
    train = GroundTruths(train)
    shape = train[0].depth.shape
    total, count = 0.0, 0
    pix_sum, pix_count = np.zeros(shape, np.float64), np.zeros(shape, np.int64)
    for i in range(len(train)):
        depth = resize_depth(train[i].depth, shape, nearest=True).astype(np.float64)
        valid = np.isfinite(depth) & (depth > 0)
        total, count = total + depth[valid].sum(), count + int(valid.sum())
        pix_sum += np.where(valid, depth, 0.0)
        pix_count += valid
    if count == 0:
        raise DataError("the training split has no valid depth")
    mean = total / count
    return mean, np.where(pix_count > 0, pix_sum / np.maximum(pix_count, 1), mean).astype(np.float32)
