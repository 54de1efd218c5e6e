"""`mde.runtime.onnx_outline`: an ONNX file's nodes and initializer types, read without the onnx package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from mde.errors import ModelError
from mde.runtime.onnx_outline import read_outline


def _seen(model) -> tuple[list, list]:
    nodes = [(n.op_type, list(n.input), [(a.name, a.i) for a in n.attribute]) for n in model.graph.node]
    return nodes, [(t.name, t.data_type) for t in model.graph.initializer]


def test_the_outline_is_what_onnx_reads(tiny_export, tiny_int8):
    from mde.runtime.artifact import graph_precision, int8_target

    for path, precision in ((tiny_export / "model.onnx", "fp32"), (tiny_export / "model.fp16.onnx", "fp16"),
                            (tiny_int8[0], "int8")):
        outline, model = read_outline(path), onnx.load(str(path), load_external_data=False)
        assert _seen(outline) == _seen(model) and outline.graph.node
        assert graph_precision(outline) == graph_precision(model) == precision
    assert int8_target(read_outline(tiny_int8[0])) == int8_target(onnx.load(str(tiny_int8[0]))) == "tensorrt"


def test_negative_integer_attributes_are_read_as_int64(tmp_path):
    node = onnx.helper.make_node("Concat", ["a", "b"], ["c"], axis=-1)
    graph = onnx.helper.make_graph([node], "g", [], [])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "m.onnx")
    assert _seen(read_outline(tmp_path / "m.onnx"))[0] == [("Concat", ["a", "b"], [("axis", -1)])]


def test_a_file_that_is_no_onnx_is_a_model_error(tiny_export, tmp_path):
    data = (tiny_export / "model.onnx").read_bytes()
    for name, content, said in (("cut.onnx", data[: len(data) // 2], "not an ONNX model"),
                                ("empty.onnx", b"", "not an ONNX model \\(empty file\\)"),
                                ("long.onnx", b"\x08" + b"\xff" * 12, "not an ONNX model")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError, match=rf"{name}: {said}"):
            read_outline(tmp_path / name)
    with pytest.raises(ModelError, match="cannot read the model"):
        read_outline(tmp_path / "missing.onnx")


def test_a_mislabelled_precision_is_found_without_onnx(tiny_export, tmp_path):
    """A robot's install has no onnx package, and the graph was not read there: an FP32 graph labelled int8 passed
    `mde parity --golden` as a checked INT8 model."""
    model = onnx.load(str(tiny_export / "model.onnx"))
    next(p for p in model.metadata_props if p.key == "mde.precision").value = json.dumps("int8")
    fake = tmp_path / "fake.int8.onnx"
    onnx.save(model, str(fake))
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'onnx'): sys.modules[m] = None\n"
            "from mde.cli import main\n"
            f"main(['parity', '--golden', {str(tiny_export / 'golden.npz')!r}, {str(fake)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "fake.int8.onnx (precision)" in done.stderr, done.stderr[-2000:]
    assert Path(fake).is_file()
