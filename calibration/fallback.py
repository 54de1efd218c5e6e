"""Accuracy-driven float fallback: measure INT8 against FP32 on held-out images, rank nodes by sensitivity.

The accuracy measure ("drop") is `1 - mean SSIM(INT8 prediction, FP32 prediction)` over the
held-out images at the model's resolution, with SSIM's data range = the dataset's max depth
(as parity scores SSIM; a model's range far beyond its scenes would make every error look
small). It needs no ground truth, is 0 for a perfect INT8 model,
and grows with quantization error, so it ranks nodes reliably even for an untrained model;
RMSE/SSIM against ground truth are reported beside it.

Sensitivity: for each quantized weighted node, the node alone is put back in float (its
inputs rewired to the float tensors, see `float_layers.with_float_nodes`) and the drop is
re-measured; the nodes whose float version lowers the drop most are the most sensitive.
Greedy search then tries the top-ranked nodes float one at a time, re-checking the drop and keeping
each that lowers it, until it meets the target or `max_float_nodes` is reached. Cost: one ONNX Runtime session
and one pass over the held-out images per candidate (resnet18 at 64 px: ~25 candidates,
a few seconds on two cores), no re-calibration and no re-quantization.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mde.runtime.preprocess import postprocess


def significant(value: float) -> float:
    """A recorded figure to 6 significant digits: drops are tiny (5.42e-06 stays that, not 5e-06)."""
    return float(f"{float(value):.6g}")


@dataclass
class Measurement:
    """INT8 (or partly float) model vs the FP32 model and vs ground truth, averaged over held-out images."""

    drop: float            # 1 - SSIM(prediction, FP32 prediction)
    rmse_vs_fp32: float    # metres, at the model's resolution
    max_abs_vs_fp32: float
    rmse: float            # vs ground truth, at the ground truth's resolution
    ssim: float            # vs ground truth

    def to_dict(self) -> dict[str, float]:
        return {k: significant(v) for k, v in asdict(self).items()}


@dataclass
class SearchResult:
    """The fallback's outcome: the ranking, the nodes kept float, the drop after each step that kept one."""

    ranking: list[tuple[str, float]] = field(default_factory=list)   # (node, drop with it float)
    float_nodes: list[str] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)      # (float node count, drop)
    rejected: list[tuple[str, float]] = field(default_factory=list)   # (node, drop with it added): left INT8
    exhausted: bool = False  # stopped with no candidate left that could lower the drop (not by target or limit)


def _session(model: onnx.ModelProto | bytes, threads: int = 0):
    from mde.runtime.backends.onnxruntime import create_session

    data = model if isinstance(model, bytes) else model.SerializeToString()
    return create_session(data, providers=["CPUExecutionProvider"], threads=threads, source="calibration model")


class Evaluator:
    """Runs candidate models on the held-out inputs and compares them with the FP32 model's outputs.

    Args:
        fp32: the FP32 model (bytes or proto).
        inputs: preprocessed held-out images, N x 3 x h x w float32.
        gts: their ground-truth depth maps (H x W metres, 0 = invalid); none for images without depth, whose
            RMSE and SSIM against ground truth are then NaN.
        max_depth: the model's max depth, the postprocess clip.
        data_range: SSIM's data range, the dataset's max depth; None (images without depth): the deepest FP32
            prediction, the scenes' range as the model sees them. The drop is 1 - SSIM against FP32: with a
            model's range far beyond the scenes' (300 m for 20 m scenes) SSIM's constants would swamp any error.
        input_name: the model's input name.
    """

    def __init__(self, fp32: onnx.ModelProto | bytes, inputs: np.ndarray, gts: Sequence[np.ndarray],
                 max_depth: float, data_range: float | None, input_name: str = "image",
                 source: str | Path = "calibration model"):
        from mde.runtime.estimator import check_depth_output

        self.inputs, self.gts, self.max_depth, self.input_name = inputs, list(gts), max_depth, input_name
        self.reference = self.run(fp32)
        for depth in self.reference:  # as the runtime checks it: an INT8 copy of a broken model is not written
            if np.isfinite(depth).all():  # NaN: the ranges pass names the tensor it starts in
                check_depth_output(depth, max_depth, source)
        self.data_range = data_range if data_range is not None else max(float(r.max()) for r in self.reference)
        self.fp32 = self._gt_metrics(self.reference)

    def run(self, model: onnx.ModelProto | bytes) -> list[np.ndarray]:
        """The model's raw outputs (1 x h x w each): one batch when the batch axis is dynamic."""
        session = _session(model)
        batch_dim = session.get_inputs()[0].shape[0]
        if not isinstance(batch_dim, int):
            return list(session.run(None, {self.input_name: self.inputs})[0])
        return [session.run(None, {self.input_name: x[None]})[0][0] for x in self.inputs]

    def _gt_metrics(self, outputs: list[np.ndarray]) -> tuple[float, float]:
        from mde.runtime.metrics import compute_metrics

        if not self.gts:
            return math.nan, math.nan
        rmse, ssim = [], []
        for out, gt in zip(outputs, self.gts):
            if not np.any(np.isfinite(gt) & (gt > 0)):  # a train map with no valid pixel: nothing to score it on
                continue
            pred = postprocess(out, gt.shape, self.max_depth)
            metrics = compute_metrics(pred, gt, self.data_range)
            rmse.append(metrics["rmse"])
            ssim.append(metrics["ssim"])
        if not rmse:
            return math.nan, math.nan
        return float(np.mean(rmse)), float(np.mean(ssim))

    def measure(self, model: onnx.ModelProto | bytes) -> Measurement:
        """Drop, differences to FP32, and RMSE/SSIM vs ground truth of `model`."""
        from mde.runtime.metrics import compute_metrics

        outputs = self.run(model)
        ssims, rmses, max_abs = [], [], 0.0
        for out, ref in zip(outputs, self.reference):
            # FP32 predictions are > 0 everywhere (sigmoid head), so every pixel counts.
            metrics = compute_metrics(out[0], np.maximum(ref[0], 1e-6), self.data_range)
            ssims.append(metrics["ssim"])
            diff = out.astype(np.float64) - ref
            rmses.append(float(np.sqrt(np.mean(diff**2))))
            max_abs = max(max_abs, float(np.abs(diff).max()))
        rmse, ssim = self._gt_metrics(outputs)
        return Measurement(1.0 - float(np.mean(ssims)), float(np.mean(rmses)), max_abs, rmse, ssim)


def rank_nodes(
    build: Callable[[Sequence[str]], onnx.ModelProto],
    candidates: Sequence[str],
    evaluator: Evaluator,
    on_node: Callable[[str], None] | None = None,
) -> list[tuple[str, float]]:
    """Drop with each candidate alone in float, most sensitive (lowest drop) first.

    Args:
        build: node names -> the model with those nodes in float.
        candidates: quantized node names to try.
        evaluator: the held-out measurement.
        on_node: called after each candidate (progress bar).
    """
    scores = []
    for node in candidates:
        scores.append((node, evaluator.measure(build([node])).drop))
        if on_node is not None:
            on_node(node)
    return sorted(scores, key=lambda item: item[1])


def greedy_fallback(
    build: Callable[[Sequence[str]], onnx.ModelProto],
    ranking: Sequence[tuple[str, float]],
    evaluator: Evaluator,
    target: float,
    max_nodes: int,
    initial_drop: float,
) -> SearchResult:
    """Keep the top-ranked nodes float, one more per step, until the drop meets `target` or `max_nodes` are float.

    A node whose step does not lower the drop is left INT8 (`rejected`; such nodes used to be kept, so the model
    written held float layers that made it no better). The search ends at the first node that, float alone, did
    not lower the all-INT8 drop: the ranking is by that figure, so none after it would either.
    """
    result = SearchResult(ranking=list(ranking), steps=[(0, initial_drop)])
    drop = initial_drop
    for node, alone in ranking:
        if drop <= target or len(result.float_nodes) >= max_nodes:
            return result
        if alone >= initial_drop:
            break
        trial = [*result.float_nodes, node]
        trial_drop = evaluator.measure(build(trial)).drop
        if trial_drop < drop:
            result.float_nodes, drop = trial, trial_drop
            result.steps.append((len(trial), trial_drop))
        else:
            result.rejected.append((node, trial_drop))
    result.exhausted = drop > target
    return result
