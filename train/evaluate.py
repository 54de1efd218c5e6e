"""Evaluate a PyTorch model exactly as every exported artifact is: preprocess -> model -> postprocess -> metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mde.runtime.evaluate import PredictBatch, average, metric_sums
from mde.runtime.preprocess import postprocess, preprocess
from mde.train.config import input_hw
from mde.train.runner import fp32_math


def torch_predictor(model: torch.nn.Module, image_size: int | tuple[int, int], max_depth: float,
                    device: str | torch.device = "cpu") -> PredictBatch:
    """A `predict_batch` callable for an eval-mode model run at `image_size` (N, or (H, W)): RGB images -> depth at
    each image's resolution."""
    size = input_hw(image_size)

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(preprocess(images, size)).to(device)
        with torch.inference_mode(), fp32_math(torch, str(device)):  # FP32 as the artifacts are held to, not TF32
            out = model(x).float().cpu().numpy()
        return [postprocess(o, img.shape[:2], max_depth) for o, img in zip(out, images)]

    return predict


def evaluate_model(model: torch.nn.Module, dataset: Any, image_size: int | tuple[int, int], max_depth: float,
                   device: str | torch.device = "cpu", **options: Any) -> dict[str, float]:
    """Mean metrics of `model` on `dataset`, plus `images`; `options` are `model_metric_sums`'s
    (batch_size, data_range — 0 uses `max_depth` —, indices, progress)."""
    return average(*model_metric_sums(model, dataset, image_size, max_depth, device, **options))


def model_metric_sums(
    model: torch.nn.Module,
    dataset: Any,
    image_size: int | tuple[int, int],
    max_depth: float,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    data_range: float = 0.0,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    advance: Callable[[], None] | None = None,
) -> tuple[dict[str, float], int]:
    """`metric_sums` for a PyTorch model (the model is put in eval mode and restored after)."""
    was_training = model.training
    model.eval()
    try:
        predict = torch_predictor(model, image_size, max_depth, device)
        return metric_sums(predict, dataset, data_range or max_depth, indices, batch_size, progress, advance)
    finally:
        model.train(was_training)
