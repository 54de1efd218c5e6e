"""`CalibrationConfig`: every setting of the INT8 calibration stage, with its real defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("percentile", "minmax", "entropy")  # the first is the default
SEED_LIMIT = 2**32 - 1  # numpy's seeds (the image draw)
MIN_IMAGES = 32
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers INT8 is for: a model without one has nothing


@dataclass(frozen=True)
class Target:
    """How the INT8 model is written for one runtime (the measurements behind it: calibration/quantize.py).

    Args:
        name: "tensorrt" or "cpu".
        op_types: ops whose inputs get Q/DQ.
        activation_type: "int8" (symmetric, zero point 0) or "uint8" (asymmetric).
        quantize_bias: biases as INT32 DequantizeLinear (ONNX Runtime's QLinearConv needs them)
            or float (TensorRT's IDequantizeLayer takes INT8 only).
        keep_relu: keep Relu explicit between Q/DQ pairs (TensorRT fuses it) instead of
            folding it into the activation range.
        phase_convs: rewrite strided ConvTranspose as phase Convs + DepthToSpace (calibration/subpixel.py).
    """

    name: str
    op_types: tuple[str, ...]
    activation_type: str
    quantize_bias: bool
    keep_relu: bool
    phase_convs: bool

    def describe(self) -> str:
        """What a model quantized for this target holds (its `mde.calibration` metadata's tool)."""
        parts = ["QDQ", "symmetric int8 activations" if self.activation_type == "int8"
                 else f"{self.activation_type} activations", "per-channel int8 weights",
                 "int32 bias" if self.quantize_bias else "float bias"]
        if self.phase_convs:
            parts.append("ConvTranspose as phase Convs")
        return ", ".join(parts)


TARGETS: dict[str, Target] = {
    # Ops whose inputs get Q/DQ: the weighted layers TensorRT runs in INT8, the residual Add
    # and pooling (so TensorRT can fuse them). The ImageNet normalization (Sub/Div) is not among
    # them, and the depth head (its last convolutions, Sigmoid, Mul by max_depth) is put back in
    # float after quantizing (`float_layers.head_nodes`): quantized logits would give at most 256
    # depths per map, for no speed gain (those convolutions make one output channel).
    "tensorrt": Target("tensorrt", ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool"),
                       activation_type="int8", quantize_bias=False, keep_relu=True, phase_convs=False),
    # ONNX Runtime CPU: only ops with integer kernels (QLinearConv, QLinearAdd, QLinearConcat,
    # uint8 MaxPool, Resize and DepthToSpace); ConvTranspose has none, so it is rewritten into
    # Convs first. Relu is among them so that the quantizer folds it into the convolution before it
    # (its output takes the convolution's quantization): a Relu left out stayed float before a Resize, and
    # the MaxPool after the stem's ran in float between two scales. A bilinear Resize still runs in float
    # between its Q/DQ pair: ONNX Runtime keeps them on purpose, as interpolating the bytes rounds
    # otherwise. The head stays float here too.
    "cpu": Target("cpu", ("Conv", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "Concat", "Resize", "Relu"),
                  activation_type="uint8", quantize_bias=True, keep_relu=False, phase_convs=True),
}


@dataclass
class CalibrationConfig:
    """Settings of `mde calibrate` (the CLI options map one to one onto these fields).

    Args:
        model: the FP32 ONNX exported by `mde export` (with `mde.*` metadata).
        data: dataset folder; calibration and held-out images come from its train split.
        out: the INT8 Q/DQ ONNX to write; `OUT` with its suffix replaced by `.ranges.json` holds the ranges.
        target: the runtime the INT8 model is written for: tensorrt (Q/DQ, symmetric INT8, float
            biases) or cpu (ONNX Runtime's CPU provider: U8 activations, integer kernels throughout).
        method: activation range method: percentile (of |x|, `percentile`), minmax, or entropy (the clipping
            threshold of least KL divergence, as TensorRT's entropy calibrator; it clips more, and on the
            model the README measures its INT8 drop was 7x percentile's).
        num_images: calibration images drawn (seeded) from the train split.
        seed: seed of the image draw.
        allow_few: accept fewer than 32 calibration images.
        max_float_nodes: at most this many quantizable nodes are kept in float by the fallback.
        target_ssim_drop: accepted drop, 1 - SSIM(INT8 prediction, FP32 prediction) on held-out images.
        holdout_images: held-out train images (never used for calibration) for the accuracy check.
        percentile: the percentile of the `percentile` method.
        force: overwrite an existing output.
        reuse_ranges: reuse that ranges file when it matches the model, images, seed and method.
        depth_scale: 16-bit depth PNG units per metre in `data` (the ground truth of the report's GT
            columns); None: the format's own (1000, KITTI 256).
        progress: show progress bars on stderr.
    """

    model: Path
    data: Path
    out: Path
    target: str = "tensorrt"
    method: str = "percentile"
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
    depth_scale: float | None = None
    # Ops the sensitivity search may keep in float (the weighted layers).
    fallback_op_types: tuple[str, ...] = WEIGHTED_OPS

    @property
    def spec(self) -> Target:
        """The `Target` named by `target` (validated by `calibrate`)."""
        return TARGETS[self.target]

    @property
    def op_types(self) -> tuple[str, ...]:
        """Ops whose inputs get Q/DQ for this target."""
        return self.spec.op_types

    @property
    def ranges_path(self) -> Path:
        """`FILE.ranges.json` beside the output `FILE.onnx`."""
        from mde.runtime.metadata import ranges_path

        return ranges_path(self.out)
