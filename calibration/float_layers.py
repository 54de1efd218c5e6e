"""Putting quantized layers back in float: the depth head, always, and the layers the fallback search chooses.

Both edit the Q/DQ model in place of re-quantizing (`with_float_nodes`), so the model the
search measures is the model written.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from mde.calibration.quantize import BYTE_MOVES
from mde.calibration.subpixel import phase_layers
from mde.runtime.artifact import QDQ_OPS

HEAD_OUTPUT = "Sigmoid"  # the depth head: max_depth * sigmoid(logits)
# Ops that only gather values between the last convolutions and the head (the report decoder's
# last ConvTranspose, rewritten for the CPU, is 4 phase Convs -> Concat -> DepthToSpace).
_HEAD_PATH = (*BYTE_MOVES, "Concat", "Reshape", "Transpose", "Identity")


def head_nodes(qdq: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """The quantized nodes that compute the depth logits: the last convolutions before the Sigmoid head and
    the gathering ops (`_HEAD_PATH`, e.g. a Concat) between them, in graph order.

    Quantizing these rounds every depth to one of 256 logit levels (a posterized depth map) for
    almost no time (each makes one output channel), so `with_float_nodes` keeps them float.
    """
    producers = {o: n for n in qdq.graph.node for o in n.output}
    found: set[str] = set()
    pending = [t for n in qdq.graph.node if n.op_type == HEAD_OUTPUT for t in n.input[:1]]
    while pending:
        node = producers.get(pending.pop())
        if node is not None and node.op_type == "DequantizeLinear":  # an activation's Q/DQ pair: look behind it
            quantize = producers.get(node.input[0])
            node = producers.get(quantize.input[0]) if quantize is not None and quantize.op_type == "QuantizeLinear" \
                else None
        if node is None or node.name in found:
            continue
        if node.op_type in _HEAD_PATH:
            pending.extend(node.input if node.op_type == "Concat" else node.input[:1])
            if node.op_type in op_types:
                found.add(node.name)
        elif node.op_type in ("Conv", "ConvTranspose"):
            found.add(node.name)
    return [n.name for n in qdq.graph.node if n.name in found]


def with_float_nodes(
    qdq: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Sequence[str], op_types: Sequence[str]
) -> onnx.ModelProto:
    """`qdq` with those nodes in float: the model the fallback search measures, and the one written.

    Each named node (with the rest of its layer, where it is a phase Conv of a rewritten ConvTranspose:
    `subpixel.phase_layers`) reads its original float inputs again (the activation before its Q/DQ pair,
    the float weight and bias copied from `fp32`); Q/DQ on its outputs stays only where a
    quantized node (`op_types`, not float) reads it. Re-quantizing with
    `QDQQuantizer(nodes_to_exclude=...)` is not the same: an excluded node whose input activation
    another, quantized node also reads keeps reading the dequantized tensor, and ONNX Runtime
    then quantizes its weights again, so a "float" node would not be float.
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    float_nodes = {n.name: n for n in fp32.graph.node}
    float_inits = {i.name: i for i in fp32.graph.initializer}
    present = {i.name for i in model.graph.initializer}
    layers = phase_layers(model.graph)  # a rewritten ConvTranspose's phase Convs and Concat: float together
    wanted = {member for name in nodes for member in layers.get(name, [name])}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        inputs = []
        for name in float_nodes[node.name].input:
            if name in float_inits:
                # The quantizer names a weight's DequantizeLinear output after the weight: use a copy.
                copy_name = f"{name}_mde_float"
                if copy_name not in present:
                    init = model.graph.initializer.add()
                    init.CopyFrom(float_inits[name])
                    init.name = copy_name
                    present.add(copy_name)
                name = copy_name
            inputs.append(name)
        del node.input[:]
        node.input.extend(inputs)
    _drop_orphan_output_qdq(model, wanted, op_types)
    _prune(model)
    _restore_folded_relus(model, fp32)
    return model


def _restore_folded_relus(model: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
    """Put back each Relu the quantizer folded away (the CPU form) whose output a float node now reads unquantized.

    The CPU form folds a Relu into the layer before it: that layer's output takes the Relu's name, and its
    uint8 QuantizeLinear, whose range starts at 0, is the clamp. A float layer reading that tensor, or a float
    layer's output whose Q/DQ pair `_drop_orphan_output_qdq` bypassed, skips the clamp: every layer put back in
    float lost a ReLU, and the fallback search made the model worse the more layers it kept float.
    """
    graph = model.graph
    kept = {n.name for n in graph.node}
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    restored: dict[int, onnx.NodeProto] = {}  # after the node at this index: the Relu it had
    for relu in fp32.graph.node:
        if relu.op_type != "Relu" or relu.name in kept:
            continue
        tensor = relu.output[0]
        at = producers.get(tensor)
        if at is None or graph.node[at].op_type == "Relu":
            continue
        if all(r.op_type == "QuantizeLinear" for r in readers.get(tensor, [])):  # clamped by its Q: as quantized
            continue
        folded_into = graph.node[at]
        raw = f"{tensor}_mde_prerelu"
        folded_into.output[list(folded_into.output).index(tensor)] = raw
        restored[at] = onnx.helper.make_node("Relu", [raw], [tensor], name=f"{relu.name}_mde_float")
    if not restored:
        return
    nodes = [n for i, node in enumerate(graph.node) for n in (node, *([restored[i]] if i in restored else []))]
    del graph.node[:]
    graph.node.extend(nodes)


def _prune(model: onnx.ModelProto) -> None:
    """Remove the Q/DQ nodes and initializers nothing reads any more (ONNX Runtime warns about each)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        kept = [n for n in graph.node if n.op_type not in QDQ_OPS or any(o in read for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:
        graph.initializer.remove(init)


def _drop_orphan_output_qdq(model: onnx.ModelProto, float_nodes: set[str], op_types: Sequence[str]) -> None:
    """Bypass Q/DQ pairs on float nodes' outputs that no quantized consumer needs (as the quantizer does)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.name not in float_nodes:
            continue
        for tensor in node.output:
            for q in [c for c in consumers.get(tensor, []) if c.op_type == "QuantizeLinear"]:
                dqs = [c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]
                users = [u for dq in dqs for u in consumers.get(dq.output[0], [])]
                if any(dq.output[0] in outputs for dq in dqs) or any(
                    u.op_type in op_types and u.name not in float_nodes for u in users
                ):
                    continue
                for dq in dqs:
                    for user in consumers.get(dq.output[0], []):
                        for i, name in enumerate(user.input):
                            if name == dq.output[0]:
                                user.input[i] = tensor
