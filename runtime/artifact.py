"""What an artifact is, without running it: metadata and I/O specs of an `.onnx` or `.engine` file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import InputError, ModelError
from mde.io import as_path
from mde.runtime.backends.base import AUTO_BACKENDS, TensorSpec, check_graph_io, runs_on_onnxruntime
from mde.runtime.metadata import ModelMetadata
from mde.runtime.onnx_outline import FLOAT16, UINT8, read_outline


def _require_model(path: str | Path) -> Path:
    path = as_path(path, "model")
    if not path.is_file():
        raise ModelError("model file not found" if not path.exists() else "expected a model file", path)
    if path.stat().st_size == 0:
        raise ModelError("model file is empty (0 bytes)", path)
    return path


def _kind(path: Path) -> str:
    backend = AUTO_BACKENDS.get(path.suffix.lower())
    if backend not in ("onnxruntime", "tensorrt"):
        raise InputError(f"expected an .onnx or .engine file, got {path.suffix or 'no suffix'}", path)
    return backend


def read_metadata(path: str | Path) -> ModelMetadata:
    """The `mde.*` metadata of an artifact: ONNX metadata_props (via onnxruntime) or the engine sidecar."""
    return inspect_artifact(path)["metadata"]


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """{"kind", "metadata": ModelMetadata, "inputs"/"outputs": [TensorSpec], "sidecar": dict | None}.

    Engines are described from their sidecar (no TensorRT or GPU needed).
    """
    path = _require_model(path)
    if _kind(path) == "onnxruntime":
        from mde.runtime.backends.onnxruntime import read_onnx_metadata

        meta, inputs, outputs = read_onnx_metadata(path)
        check_graph_io(inputs, outputs, meta, path)  # what every runner refuses, `mde info` refuses too
        return {"kind": "onnx", "metadata": meta, "inputs": list(inputs.values()),
                "outputs": list(outputs.values()), "sidecar": None}
    from mde.runtime.backends.tensorrt import read_sidecar, sidecar_metadata
    from mde.runtime.metadata import check_graph_input, sidecar_path

    sidecar = read_sidecar(path)
    meta = sidecar_metadata(sidecar, sidecar_path(path))
    inputs = []
    for name, prof in (sidecar.get("profile") or {}).items():
        lo, hi = prof.get("min", []), prof.get("max", [])
        shape = tuple(int(a) if a == b else None for a, b in zip(lo, hi))
        inputs.append(TensorSpec(name, np.dtype(np.float32), shape))  # as an ONNX input reads: a numpy dtype
    if len(inputs) != 1:  # what the runner refuses of the engine itself, `mde info` refuses of its sidecar
        raise ModelError(f"the engine's profile has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "expected one image input", sidecar_path(path))
    check_graph_input(inputs[0].dtype, inputs[0].shape, meta, sidecar_path(path))
    return {"kind": "engine", "metadata": meta, "inputs": inputs, "outputs": [], "sidecar": sidecar}


def artifact_labels(paths: Sequence[str | Path]) -> list[str]:
    """How each artifact is named in tables, JSON and reports (`mde parity`, `mde bench`): its file name, or its
    path where two share a name (`exp/model.int8.onnx`, `fallback/model.int8.onnx`), so no row stands for two."""
    names = [Path(p).name for p in paths]
    return [name if names.count(name) == 1 else str(p) for name, p in zip(names, paths)]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def graph_precision(model: Any) -> str:
    """What an ONNX model (`onnx.load`'s, or `read_outline`'s) computes in, read from its graph: int8
    (QuantizeLinear/DequantizeLinear nodes, or the integer kernels, QLinear* and *Integer, of ONNX Runtime's
    operator-oriented form), fp16 (float16 weights, as `mde export --precision fp16` writes), or fp32."""
    if any(n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")
           for n in model.graph.node):
        return "int8"
    if any(t.data_type == FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def int8_target(model: Any) -> str:
    """Which INT8 form an ONNX model's graph is (`mde calibrate --target`): cpu where its activations are uint8
    (asymmetric, as ONNX Runtime's integer kernels take them) or it holds QLinear operators, else tensorrt
    (symmetric int8 activations)."""
    if any(n.op_type.startswith("QLinear") for n in model.graph.node):
        return "cpu"
    zero_points = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # its output_dtype (opset 21), its zero point's, or ONNX's default
            kind = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), 0) or (
                zero_points.get(node.input[2]) if len(node.input) > 2 and node.input[2] else UINT8)
            if kind == UINT8:
                return "cpu"
    return "tensorrt"


def precision_mismatch(path: str | Path, declared: str, backend: str = "auto", target: str | None = None) -> str:
    """Why the ONNX at `path` (what ONNX Runtime runs, whatever its suffix) does not compute in the precision its
    metadata declares, or is not the INT8 form of its declared calibration `target`; "" where it is (engines are
    not read: TensorRT records what it built in the sidecar). Parity gates each artifact by its declared
    precision, so an FP32 graph labelled int8 would pass as a checked INT8 model; and a TensorRT-form INT8 labelled
    cpu runs slower than FP32 on the CPU provider. The graph is read without the onnx package (`read_outline`): the
    runtime alone, a robot's install, checks it too."""
    if not runs_on_onnxruntime(path, backend):
        return ""
    model = read_outline(path)
    found = graph_precision(model)
    if found != declared:
        return (f"its metadata says {declared}, but the graph computes in {found}; each precision has its own "
                "tolerances")
    form = int8_target(model) if found == "int8" and target in ("tensorrt", "cpu") else target
    if form != target:
        return (f"its metadata says it was calibrated for {target}, but the graph is the {form} form "
                f"({'uint8' if form == 'cpu' else 'symmetric int8'} activations); calibrate it with --target {target}")
    return ""
