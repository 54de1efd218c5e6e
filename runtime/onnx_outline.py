"""An ONNX file's outline, read without the onnx package: its nodes (operator, inputs, integer attributes) and its
initializers' names and element types, which say what the graph computes in (`artifact.graph_precision`).

The runtime alone (a robot's install) has no onnx package, and trusted an artifact's precision label there: an FP32
graph labelled int8 passed `mde parity --golden` as a checked INT8 model. The outline is read from the protobuf
wire format directly (the fields below are fixed by onnx.proto), skipping every tensor's data, and has the
attribute names of onnx's own classes, so code that reads `model.graph.node` reads either.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mde.errors import ModelError

# onnx.proto's field numbers, and TensorProto.DataType's values used here
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_INPUT, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 4, 5
ATTRIBUTE_NAME, ATTRIBUTE_I = 1, 3
TENSOR_DATA_TYPE, TENSOR_NAME = 2, 8
UINT8, FLOAT16 = 2, 10
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types


@dataclass
class Attribute:
    name: str = ""
    i: int = 0  # an INT attribute's value (0 for the others, as onnx's default)


@dataclass
class Node:
    op_type: str = ""
    input: list[str] = field(default_factory=list)
    attribute: list[Attribute] = field(default_factory=list)


@dataclass
class Tensor:
    name: str = ""
    data_type: int = 0


@dataclass
class Graph:
    node: list[Node] = field(default_factory=list)
    initializer: list[Tensor] = field(default_factory=list)


@dataclass
class Outline:
    """What `onnx.load(path, load_external_data=False)` gives, as far as `graph.node` and `graph.initializer` go."""

    graph: Graph = field(default_factory=Graph)


def read_outline(path: str | Path) -> Outline:
    """The outline of the ONNX file at `path`.

    Raises:
        ModelError: a file that is not a well-formed ONNX protobuf (cut short, or not one at all).
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            if not file.seek(0, 2):
                raise ModelError("not an ONNX model (empty file)", path)
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _outline(memoryview(data), path)
    except OSError as err:
        raise ModelError(f"cannot read the model ({err.strerror or err})", path) from None


def _outline(data: memoryview, path: Path) -> Outline:
    outline = Outline()
    try:
        for number, _, value in _fields(data, 0, len(data)):
            if number == MODEL_GRAPH:
                _graph(data, *value, outline.graph)
    except (IndexError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"not an ONNX model ({err})", path) from None
    finally:
        data.release()
    return outline


def _graph(data: memoryview, start: int, end: int, graph: Graph) -> None:
    for number, _, (begin, stop) in _fields(data, start, end, LENGTH):
        if number == GRAPH_NODE:
            graph.node.append(_node(data, begin, stop))
        elif number == GRAPH_INITIALIZER:
            tensor = Tensor()
            for n, wire, value in _fields(data, begin, stop):
                if n == TENSOR_DATA_TYPE and wire == VARINT:
                    tensor.data_type = value
                elif n == TENSOR_NAME and wire == LENGTH:
                    tensor.name = _text(data, value)
            graph.initializer.append(tensor)


def _node(data: memoryview, start: int, end: int) -> Node:
    node = Node()
    for number, wire, value in _fields(data, start, end):
        if number == NODE_INPUT and wire == LENGTH:
            node.input.append(_text(data, value))
        elif number == NODE_OP_TYPE and wire == LENGTH:
            node.op_type = _text(data, value)
        elif number == NODE_ATTRIBUTE and wire == LENGTH:
            attribute = Attribute()
            for n, kind, item in _fields(data, *value):
                if n == ATTRIBUTE_NAME and kind == LENGTH:
                    attribute.name = _text(data, item)
                elif n == ATTRIBUTE_I and kind == VARINT:
                    attribute.i = item - (1 << 64) if item >> 63 else item  # int64, two's complement
            node.attribute.append(attribute)
    return node


def _fields(data: memoryview, start: int, end: int, only: int | None = None) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message's fields in `data[start:end]`: an int for a varint, the
    (start, end) of its bytes for the others; `only`: skip fields of other wire types."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire in (FIXED64, FIXED32, LENGTH):
            size = 8 if wire == FIXED64 else 4 if wire == FIXED32 else None
            if size is None:
                size, pos = _varint(data, pos)
            value, pos = (pos, pos + size), pos + size
        else:  # groups (3, 4) are not in onnx.proto; 6 and 7 are no wire type
            raise ValueError(f"wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError(f"a field runs past its message's end at byte {end}")
        if only is None or wire == only:
            yield number, wire, value


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end: a file cut short
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"a varint longer than 10 bytes at byte {pos}")


def _text(data: memoryview, span: object) -> str:
    start, end = span  # type: ignore[misc]
    return bytes(data[start:end]).decode()
