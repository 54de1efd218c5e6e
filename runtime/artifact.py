"""What an artifact is, without running it: metadata and I/O specs of an `.onnx` or `.engine` file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mde.errors import InputError, ModelError
from mde.io import as_path
from mde.runtime.backends.base import AUTO_BACKENDS, TensorSpec, check_graph_io
from mde.runtime.metadata import ModelMetadata


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
    from mde.runtime.metadata import sidecar_path

    sidecar = read_sidecar(path)
    meta = sidecar_metadata(sidecar, sidecar_path(path))
    inputs = []
    for name, prof in (sidecar.get("profile") or {}).items():
        lo, hi = prof.get("min", []), prof.get("max", [])
        shape = tuple(int(a) if a == b else None for a, b in zip(lo, hi))
        inputs.append(TensorSpec(name, "float32", shape))
    return {"kind": "engine", "metadata": meta, "inputs": inputs, "outputs": [], "sidecar": sidecar}


def artifact_labels(paths: Sequence[str | Path]) -> list[str]:
    """How each artifact is named in tables, JSON and reports (`mde parity`, `mde bench`): its file name, or its
    path where two share a name (`exp/model.int8.onnx`, `fallback/model.int8.onnx`), so no row stands for two."""
    names = [Path(p).name for p in paths]
    return [name if names.count(name) == 1 else str(p) for name, p in zip(names, paths)]
