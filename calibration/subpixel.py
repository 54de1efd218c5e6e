"""Rewrite strided ConvTranspose as phase convolutions (Conv per output phase, Concat, DepthToSpace).

ONNX Runtime's CPU provider has no integer kernel for ConvTranspose: its QDQ rules fuse only
Conv into QLinearConv, and the QOperator quantizer leaves ConvTranspose in float between a
DequantizeLinear and a QuantizeLinear. A ConvTranspose with stride s whose output is exactly s
times its input (kernel - pad_begin - pad_end == s) is, per output phase r = o mod s, an
ordinary convolution of the input: output pixel s*h + r reads the inputs h - d for the few d
where tap k = r + pad_begin + s*d lies in the kernel. So the layer is s*s small Convs (one per
phase, with the taps of that phase, padded so that output h lines up with input h), a Concat
along channels and a DepthToSpace(s, DCR) that interleaves the phases. The multiply-adds are
exactly those of the ConvTranspose (no zero taps), and every piece has an integer kernel or
moves bytes only, so the whole decoder can run in INT8. A Relu that is the only reader of the
ConvTranspose moves onto each phase Conv (Relu commutes with Concat and DepthToSpace), so the
quantizer folds it into the Convs' output ranges. The rewrite is exact in float.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _phase_taps(kernel: int, stride: int, pad_begin: int) -> list[tuple[list[int], int, int]] | None:
    """Per phase r: (kernel taps in conv order, pad before, pad after), or None when not a plain upsampling."""
    phases = []
    for r in range(stride):
        ds = [d for d in range(-kernel, kernel + 1) if 0 <= r + pad_begin + stride * d < kernel]
        if not ds:
            return None
        d_max, d_min = max(ds), min(ds)
        if d_max < 0 or d_min > 0:  # would need a crop, not a pad
            return None
        phases.append(([r + pad_begin + stride * d for d in range(d_max, d_min - 1, -1)], d_max, -d_min))
    return phases


def _plan(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]):
    """The phase taps of both axes when `node` can be rewritten, else None."""
    a = _attrs(node)
    if node.op_type != "ConvTranspose" or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 4 or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if any(v != 1 for v in a.get("dilations", [1, 1])) or any(a.get("output_padding", [0, 0])) or "output_shape" in a:
        return None
    kernel = list(a.get("kernel_shape", weight.dims[2:]))
    strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
    if len(kernel) != 2 or len(strides) != 2 or len(pads) != 4 or strides[0] != strides[1] or strides[0] < 2:
        return None
    plan = []
    for axis in range(2):
        if kernel[axis] - pads[axis] - pads[axis + 2] != strides[axis]:
            return None
        taps = _phase_taps(kernel[axis], strides[axis], pads[axis])
        if taps is None:
            return None
        plan.append(taps)
    return strides[0], plan


def rewritable(model: onnx.ModelProto) -> list[str]:
    """Names of the ConvTranspose nodes `rewrite_conv_transpose` would replace."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node if _plan(n, inits) is not None]


def rewrite_conv_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every rewritable ConvTranspose replaced by phase Convs + Concat + DepthToSpace.

    The new Conv nodes are named `<ConvTranspose name>/phase<i><j>` (the output's name for an
    unnamed node); nodes it cannot rewrite
    (groups, dilation, output padding, a crop) are left as they are.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    absorbed: set[int] = set()
    for node in graph.node:
        if id(node) in absorbed:
            continue
        planned = _plan(node, inits)
        if planned is None:
            nodes.append(node)
            continue
        relu = readers.get(node.output[0], [])
        relu = relu[0] if len(relu) == 1 and relu[0].op_type == "Relu" and node.output[0] not in graph_outputs else None
        if relu is not None:
            absorbed.add(id(relu))
        stride, (rows, cols) = planned
        base = node.name or node.output[0]
        weight = numpy_helper.to_array(inits[node.input[1]])  # Cin x Cout x kH x kW
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        phase_outputs = []
        for i, (row_taps, top, bottom) in enumerate(rows):
            for j, (col_taps, left, right) in enumerate(cols):
                name = f"{base}/phase{i}{j}"
                w = weight[:, :, row_taps][:, :, :, col_taps].transpose(1, 0, 2, 3)  # Cout x Cin x u x v
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), f"{name}.weight"))
                inputs = [node.input[0], f"{name}.weight"] + ([bias] if bias else [])
                phase_outputs.append(f"{name}_output")
                nodes.append(helper.make_node(
                    "Conv", inputs, [phase_outputs[-1]], name=name,
                    kernel_shape=[len(row_taps), len(col_taps)], pads=[top, left, bottom, right],
                    strides=[1, 1]))
                if relu is not None:
                    nodes.append(helper.make_node("Relu", [phase_outputs[-1]], [f"{name}_relu"],
                                                  name=f"{name}/relu"))
                    phase_outputs[-1] = f"{name}_relu"
        nodes.append(helper.make_node("Concat", phase_outputs, [f"{base}/phases"], name=f"{base}/concat", axis=1))
        nodes.append(helper.make_node(
            "DepthToSpace", [f"{base}/phases"], list((relu or node).output),
            name=f"{base}/depth_to_space", blocksize=stride, mode="DCR"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def phase_layers(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Each node of a rewritten ConvTranspose (`rewrite_conv_transpose`: its phase Convs, their Relus and the Concat
    that gathers them) -> the names of all of them, in graph order. They are one layer: a phase Conv kept float
    whose Concat stays quantized has its output quantized again, so the fallback keeps them float together."""
    layers: dict[str, list[str]] = {}
    for node in graph.node:
        base = node.name.removesuffix("/concat")
        if node.op_type != "Concat" or base == node.name:
            continue
        phase = re.compile(rf"{re.escape(base)}/phase\d+(/relu)?")  # not the quantizer's nodes named after them
        members = [n.name for n in graph.node if n.op_type in ("Conv", "Relu") and phase.fullmatch(n.name)]
        members.append(node.name)
        if len(members) > 1:
            layers.update(dict.fromkeys(members, members))
    return layers


def one_per_layer(names: list[str], layers: dict[str, list[str]]) -> list[str]:
    """`names` with one name (the first) for each rewritten ConvTranspose's nodes (`phase_layers`)."""
    seen: set[str] = set()
    kept = []
    for name in names:
        layer = layers.get(name, [name])[-1]  # its Concat: the same for all of a layer's nodes
        if layer not in seen:
            seen.add(layer)
            kept.append(name)
    return kept


def count_layers(names: list[str]) -> int:
    """How many layers `names` make: a rewritten ConvTranspose's phase Convs, Relus and Concat (named after it by
    `rewrite_conv_transpose`) count once, as `--max-float-nodes` counts them."""
    return len({re.sub(r"/(phase\d+(/relu)?|concat)$", "", name) for name in names})
