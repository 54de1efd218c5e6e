"""`mde info`: what an artifact is (metadata, precision, I/O, size, hash) and what can run it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mde.commands.options import emit


def artifact_info(path: Path) -> dict[str, Any]:
    """A JSON-able description of an `.onnx` or `.engine` artifact and of this machine's backends."""
    from mde.io import sha256_file
    from mde.runtime.artifact import inspect_artifact, precision_mismatch

    desc = inspect_artifact(path)
    meta = desc["metadata"]
    info: dict[str, Any] = {
        "path": str(path),
        "kind": desc["kind"],
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "precision": meta.precision,
        # The label checked against the graph, as parity does: an FP32 graph labelled int8 is said so here too.
        "precision_mismatch": precision_mismatch(path, meta.precision,
                                                 target=(meta.calibration or {}).get("target")) or None,
        "target": (meta.calibration or {}).get("target"),  # INT8: the runtime it was calibrated for
        "metadata": meta.to_dict(),
        "inputs": [s.to_dict() for s in desc["inputs"]],
        "outputs": [s.to_dict() for s in desc["outputs"]],
    }
    if desc["kind"] == "onnx":
        from mde.runtime.backends.ort_providers import cuda_device_count, default_providers, import_ort

        ort = import_ort()
        info["machine"] = {
            "onnxruntime": ort.__version__,
            "providers_available": ort.get_available_providers(),
            "providers_usable": default_providers(ort.get_available_providers()),
            "cuda_devices": cuda_device_count(),
        }
    else:
        from mde.runtime.backends.tensorrt import tensorrt_version

        sidecar = desc["sidecar"]
        info["engine"] = {k: v for k, v in sidecar.items() if k != "metadata"}
        info["machine"] = {"tensorrt": tensorrt_version()}
    return info


def print_info(info: dict[str, Any]) -> None:
    from rich.table import Table

    from mde.console import stdout_console
    from mde.errors import one_line

    meta = info["metadata"]
    table = Table(title=one_line(info["path"]), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("kind", info["kind"]),
        ("precision", info["precision"]),
        *([("warning", f"precision: {info['precision_mismatch']}")] if info.get("precision_mismatch") else []),
        *([("target", info["target"])] if info.get("target") else []),
        ("backbone", f"{meta['backbone']} ({meta['parameters']:,} parameters)"),
        ("decoder", meta.get("decoder", "report")),
        ("input size", f"{meta['input_size'][0]}x{meta['input_size'][1]} (dynamic H/W: {meta['dynamic_size']})"),
        ("max depth", f"{meta['max_depth']} m"),
        ("checkpoint's val", _figures(meta["metrics"])),  # what the source scored, not this artifact
        *([("source", _source(meta["source"]))] if meta.get("source") else []),
        ("mde version", meta["version"]),
        ("size", f"{info['size_bytes']:,} bytes"),
        ("sha256", info["sha256"]),
    ]
    for spec in info["inputs"]:
        rows.append(("input", f"{spec['name']}: {spec['dtype']} {_shape(spec['shape'])}"))
    for spec in info["outputs"]:
        rows.append(("output", f"{spec['name']}: {spec['dtype']} {_shape(spec['shape'])}"))
    if meta.get("calibration"):
        rows.append(("calibration", json.dumps(meta["calibration"])))
    for key, value in info.get("engine", {}).items():
        rows.append((f"engine {key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    for key, value in info["machine"].items():
        rows.append(
            (
                f"here: {key}",
                ", ".join(value) if isinstance(value, list) else ("not installed" if value is None else str(value)),
            )
        )
    for key, value in rows:  # names and metadata come from the artifact: no escape code reaches the terminal
        table.add_row(one_line(key), one_line(str(value)))
    console = stdout_console()
    if not console.is_terminal:
        console = stdout_console(160)
    console.print(table)


def _figures(metrics: dict) -> str:
    """`rmse 1.8095, ssim 0.8256` (the checkpoint's validation, which export stamps on every artifact), or -."""
    return ", ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {'-' if value is None else value}"
                     for name, value in metrics.items()) or "-"


def _source(source: dict) -> str:
    """`best.pt, epoch 8, opset 18, sha256 61563e13593b…`: which checkpoint the artifact was exported from (`best.pt`
    or `last.pt`, and which golden.npz is its), where the table said nothing of it."""
    parts = [str(source.get("checkpoint", "?"))]
    parts += [f"{key} {source[key]}" for key in ("epoch", "opset") if source.get(key) is not None]
    if source.get("checkpoint_sha256"):
        parts.append(f"sha256 {str(source['checkpoint_sha256'])[:12]}…")
    return ", ".join(parts)


def _shape(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def info(
    artifact: Path = typer.Argument(..., help="Model artifact: .onnx or .engine (with its .engine.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show an artifact's metadata, precision, inputs/outputs, size, sha256 and this machine's backends."""
    emit(artifact_info(artifact), as_json, print_info)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
