"""`CalibrationConfig`: every setting of the INT8 calibration stage, with its real defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("entropy", "percentile", "minmax")
MIN_IMAGES = 32


@dataclass
class CalibrationConfig:
    """Settings of `mde calibrate` (the CLI options map one to one onto these fields).

    Args:
        model: the FP32 ONNX exported by `mde export` (with `mde.*` metadata).
        data: dataset folder; calibration and held-out images come from its train split.
        out: the INT8 Q/DQ ONNX to write; `OUT` with suffix `.ranges.json` holds the ranges.
        method: activation range method (entropy = KL divergence, percentile, minmax).
        num_images: calibration images drawn (seeded) from the train split.
        seed: seed of the image draw.
        allow_few: accept fewer than 32 calibration images.
        max_float_nodes: at most this many quantizable nodes are kept in float by the fallback.
        target_ssim_drop: accepted drop, 1 - SSIM(INT8 prediction, FP32 prediction) on held-out images.
        holdout_images: held-out train images (never used for calibration) for the accuracy check.
        percentile: the percentile of the `percentile` method.
        force: overwrite an existing output.
        reuse_ranges: reuse `OUT.ranges.json` when it matches the model, images, seed and method.
        progress: show progress bars on stderr.
    """

    model: Path
    data: Path
    out: Path
    method: str = "entropy"
    num_images: int = 256
    seed: int = 0
    allow_few: bool = False
    max_float_nodes: int = 8
    target_ssim_drop: float = 0.01
    holdout_images: int = 16
    percentile: float = 99.999
    force: bool = False
    reuse_ranges: bool = True
    progress: bool = True
    # Ops whose inputs get Q/DQ: the weighted layers TensorRT runs in INT8, the residual Add
    # and pooling (so TensorRT can fuse them). The ImageNet normalization (Sub/Div) and the
    # head (Sigmoid, Mul by max_depth) stay float: quantizing the head would round every depth
    # to max_depth/127 steps for no speed gain.
    op_types: tuple[str, ...] = field(
        default=("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool")
    )
    # Ops the sensitivity search may keep in float (the weighted layers).
    fallback_op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")

    @property
    def ranges_path(self) -> Path:
        """`FILE.ranges.json` beside the output `FILE.onnx`."""
        return self.out.with_suffix(".ranges.json")
