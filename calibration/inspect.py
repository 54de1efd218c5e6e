"""What ONNX Runtime's CPU provider actually runs: the share of convolutions that became integer kernels.

A quantized model is only fast on the CPU when ONNX Runtime fuses each DequantizeLinear ->
Conv -> QuantizeLinear group into an integer kernel (QLinearConv, possibly in its NHWC form).
A group it cannot fuse still runs, in float, between the dequantize and quantize steps, and
is slower than the FP32 model. The only reliable way to know is to let ONNX Runtime optimize
the graph (`SessionOptions.optimized_model_filepath`, level "all", CPU provider) and read
the graph it wrote back.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

INTEGER_CONVS = ("QLinearConv", "ConvInteger", "QLinearConvTranspose", "NhwcQLinearConv")
FLOAT_CONVS = ("Conv", "ConvTranspose", "FusedConv", "NhwcFusedConv", "ConvTransposeWithDynamicPads")
# Nodes that only move or re-lay-out data between a DequantizeLinear and the convolution reading it.
_LAYOUT = ("ReorderInput", "ReorderOutput", "Transpose", "Reshape", "Identity")


def optimized_graph(model: str | Path | bytes, out: str | Path, threads: int = 1) -> onnx.ModelProto:
    """Let ONNX Runtime (CPU provider, all optimizations) write the graph it runs to `out`; return it."""
    from mde.runtime.backends.onnxruntime import create_session

    create_session(model, providers=["CPUExecutionProvider"], threads=threads, optimization="all",
                   optimized_model_path=out, source=None if isinstance(model, bytes) else model)
    return onnx.load(str(out))


def _dequantized(name: str, producers: dict[str, onnx.NodeProto], depth: int = 4) -> bool:
    """True when `name` is a DequantizeLinear output, possibly through layout-only nodes."""
    node = producers.get(name)
    while node is not None and depth > 0:
        if node.op_type == "DequantizeLinear":
            return True
        if node.op_type not in _LAYOUT or not node.input:
            return False
        node, depth = producers.get(node.input[0]), depth - 1
    return False


def _requantized(name: str, readers: dict[str, list[onnx.NodeProto]], depth: int = 4) -> bool:
    """True when every reader of `name` is a QuantizeLinear, possibly through layout-only nodes."""
    nodes = readers.get(name, [])
    return bool(nodes) and depth > 0 and all(
        node.op_type == "QuantizeLinear" or (node.op_type in _LAYOUT and node.output
                                             and _requantized(node.output[0], readers, depth - 1))
        for node in nodes)


def float_islands(graph: onnx.GraphProto) -> list[str]:
    """Nodes other than convolutions that run in float on quantized data: they read a DequantizeLinear output and
    all they write goes to a QuantizeLinear (a Relu, MaxPool or Resize between a dequantize and a quantize step
    that ONNX Runtime could not drop), each "op_type name"."""
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    skip = ("DequantizeLinear", "QuantizeLinear", *_LAYOUT, *INTEGER_CONVS, *FLOAT_CONVS)
    return [f"{node.op_type} {node.name}" for node in graph.node
            if node.op_type not in skip and node.input and node.output
            and _dequantized(node.input[0], producers) and _requantized(node.output[0], readers)]


def conv_kernels(graph: onnx.GraphProto) -> dict[str, Any]:
    """Classify the convolutions of an optimized graph: integer kernels, float ones, and unfused quantized ones;
    and list the other nodes that run in float on quantized data (`float_islands`).

    A float convolution is "unfused" when its weight is a DequantizeLinear output: it was
    quantized, but runs in float between dequantize and quantize steps. A float convolution
    with float weights was kept float on purpose (the fallback's, or an op not quantized).
    """
    producers = {o: n for n in graph.node for o in n.output}
    integer, floats, unfused = [], [], []
    for node in graph.node:
        if node.op_type in INTEGER_CONVS:
            integer.append(node.name)
        elif node.op_type in FLOAT_CONVS:
            floats.append(node.name)
            if len(node.input) > 1 and _dequantized(node.input[1], producers):
                unfused.append(node.name)
    total = len(integer) + len(floats)
    return {
        "convolutions": total,
        "integer": len(integer),
        "float": len(floats),
        "share": round(len(integer) / total, 4) if total else 0.0,
        "float_nodes": floats,
        "unfused": unfused,
        "float_islands": float_islands(graph),
        "op_counts": dict(sorted(Counter(
            f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node).items())),
    }


def integer_kernel_share(model: str | Path | bytes, optimized_path: str | Path | None = None) -> dict[str, Any]:
    """Optimize `model` with ONNX Runtime's CPU provider and classify the convolutions it runs.

    Args:
        model: an ONNX file or serialized model.
        optimized_path: where to keep the optimized graph (default: a temporary file).

    Returns:
        `conv_kernels` of the optimized graph: counts, `share` of convolutions running as
        integer kernels, the float convolutions and the `unfused` (quantized but float) ones.
    """
    if optimized_path is not None:
        return conv_kernels(optimized_graph(model, optimized_path).graph)
    with tempfile.TemporaryDirectory(prefix="mde-inspect-") as tmp:
        return conv_kernels(optimized_graph(model, Path(tmp) / "optimized.onnx").graph)
