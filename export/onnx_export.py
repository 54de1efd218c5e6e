"""DepthNet -> FP32 ONNX (dynamic batch, optional H/W), metadata, checks, ORT comparison.

Exporter choice: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), not the
TorchScript exporter. Measured on torch 2.14.1 with this network (resnet18, opset 18):
- dynamo=True: Conv, ConvTranspose, Relu, Add, MaxPool, Sub, Div, Sigmoid, Mul only. The
  onnxscript optimizer folds every BatchNorm (including the decoder's BatchNorm after
  ConvTranspose) into the weights and leaves no Identity/Constant nodes.
- dynamo=False: the same ops plus 4 un-folded BatchNormalization nodes (the TorchScript
  exporter folds BatchNorm only into Conv), 28 Identity and 3 Constant nodes.
Both parse in TensorRT, but the dynamo graph is the smaller, cleaner one, it is the exporter
torch maintains (TorchScript export is deprecated), and its `dynamic_shapes` can express
"H and W are multiples of 32" (`32 * Dim`), which `dynamic_axes` cannot.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import CheckFailed
from mde.printed import printed_by_this_thread
from mde.runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata, stamp

# ONNX ops the FP32 graph may contain: anything else means the exporter changed behaviour
# (an unfolded BatchNorm, a decomposition TensorRT may not like) and is worth a look.
# Resize and Concat come from the skip-connection decoder (`--decoder unet`).
EXPECTED_OPS = frozenset(
    {"Conv", "ConvTranspose", "Relu", "Add", "MaxPool", "Sub", "Div", "Sigmoid", "Mul", "Resize", "Concat"}
)
DIM_NAMES = ("batch", None, "height", "width")


def export_fp32(
    model: Any, path: Path, input_size: tuple[int, int], opset: int, dynamic_size: bool
) -> None:
    """Export `model` (eval mode, CPU) to `path` as FP32 ONNX: `image` N x 3 x H x W -> `depth` N x 1 x H x W.

    Args:
        model: the DepthNet.
        path: where to write the ONNX (a temporary name; the caller renames it).
        input_size: (height, width) of the example input (multiples of 32).
        opset: ONNX opset (>= 17).
        dynamic_size: also make H and W dynamic (multiples of 32); the batch is always dynamic.
    """
    import onnx
    import torch
    from torch.export import Dim

    dims: dict[int, Any] = {0: Dim("batch", min=1)}
    if dynamic_size:
        dims[2] = 32 * Dim("h32", min=1, max=256)
        dims[3] = 32 * Dim("w32", min=1, max=256)
    # torch.export fixes a dimension whose example is 1 (`32 * 1`): a dynamic model traced at a side of 32 px failed
    # ("Not all values of 32*h32 ... satisfy the generated guard"); its example is at least 64 a side, as the batch 2
    example = torch.rand(2, 3, *(max(side, 64) if dynamic_size else side for side in input_size))
    quiet = _quiet_loggers("torch.onnx", "onnxscript")  # --opset 17's version conversion: 2 long lines
    with warnings.catch_warnings(), printed_by_this_thread(), quiet:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes={"x": dims},
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:  # the exporter converts from its lowest own opset, and keeps that where it cannot
        from mde.console import info

        info(f"note: --opset {opset}: the exporter could not convert the graph; it is opset {written}")
    _rename_dims(proto)
    onnx.save_model(proto, str(path))


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from these loggers (and their children) inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _rename_dims(proto: Any) -> None:
    """Name the symbolic I/O dimensions `batch`, `height`, `width` (torch.export calls them `32*h32`)."""
    renames: dict[str, str] = {}
    for value in (*proto.graph.input, *proto.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, DIM_NAMES):
            if name and dim.HasField("dim_param"):
                renames[dim.dim_param] = name
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def set_metadata(path: Path, meta: ModelMetadata) -> None:
    """Write `meta` into the ONNX at `path` (in place), through the contract's one writer."""
    import onnx

    proto = onnx.load_model(str(path))
    stamp(proto, meta)
    proto.producer_name = "mde"
    onnx.save_model(proto, str(path))


def check_graph(
    path: Path, allowed_ops: frozenset[str] | None = None, shown: str | Path | None = None
) -> list[str]:
    """`onnx.checker` (full check) and strict shape inference; return the graph's op types.

    Args:
        path: the ONNX to check.
        allowed_ops: op types the graph may contain (None: any).
        shown: the name to put in error messages (the final artifact name, not a temp path).

    Raises:
        CheckFailed: the checker or shape inference rejects the model, the I/O is not
            `image`/`depth` float32, or an op outside `allowed_ops` appears.
    """
    import onnx

    shown = path if shown is None else shown
    try:
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.shape_inference.infer_shapes(
            onnx.load_model(str(path)), check_type=True, strict_mode=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckFailed(f"ONNX check failed ({first})", shown) from None
    io_types = [
        (v.name, v.type.tensor_type.elem_type) for v in (*proto.graph.input, *proto.graph.output)
    ]
    want = [(INPUT_NAME, onnx.TensorProto.FLOAT), (OUTPUT_NAME, onnx.TensorProto.FLOAT)]
    if io_types != want:
        raise CheckFailed(f"expected float32 I/O {want}, found {io_types}", shown)
    ops = sorted({node.op_type for node in proto.graph.node})
    if allowed_ops is not None and (odd := sorted(set(ops) - allowed_ops)):
        raise CheckFailed(f"unexpected ONNX ops {odd} (expected only {sorted(allowed_ops)})", shown)
    return ops


def run_onnxruntime(path: Path, image: np.ndarray) -> np.ndarray:
    """Run the ONNX at `path` with the runtime's ONNX Runtime runner on the CPU provider; return `depth`."""
    from mde.runtime.backends.base import open_runner
    from mde.runtime.backends.onnxruntime import CPU_EP

    with open_runner(path, "onnxruntime", providers=[CPU_EP]) as runner:
        return runner.infer({INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})[OUTPUT_NAME]
