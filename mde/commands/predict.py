"""`mde predict`: depth maps for image files, folders and globs (options here, the work in `mde.runtime.predict`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mde.commands.options import backend_help, check_backend, providers_option
from mde.errors import CheckFailed
from mde.memory import memory_ceiling, runs_on_cpu_only
from mde.runtime.predict import PredictConfig, run_predict


def predict(
    artifact: Path = typer.Argument(..., help="Model: .onnx, .engine, or a .pt checkpoint (PyTorch)."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    out: Path = typer.Option(PredictConfig.out, "--out", "-o", help="Output folder."),
    backend: str = typer.Option(PredictConfig.backend, help="auto, or a registered backend."),
    format: str = typer.Option(
        PredictConfig.format, "--format",
        help="color (turbo PNG), png16 (uint16 millimetres, up to 65.535 m) or npy (float32 metres).",
    ),
    threads: int = typer.Option(PredictConfig.threads,
                                help="CPU threads for ONNX Runtime or PyTorch (0 = its default)."),
    providers: list[str] = providers_option(),
    force: bool = typer.Option(PredictConfig.force, "--force",
                               help="Replace files of the same names in --out (a rerun's depth maps)."),
    native_resolution: bool = typer.Option(
        PredictConfig.native_resolution, "--native-resolution",
        help="Run each image at its own size, rounded to multiples of 32, instead of the model's input size: "
             "sharper, slower, and outside the size parity checked. Needs a model exported with --dynamic-size."),
) -> None:
    """Write a depth map for each input image, at the image's own resolution (turned upright as its EXIF says)."""
    from mde.console import info

    check_backend(backend)
    cfg = PredictConfig(artifact, list(inputs), out, backend, format, threads, providers or None, force,
                        native_resolution)
    with memory_ceiling(runs_on_cpu_only([artifact], cfg.providers)):  # a huge image: exit 2, not killed
        counts = run_predict(cfg)
    info(f"wrote {counts['written']} of {counts['images']} depth maps to {out}")
    if counts["failed"]:
        raise CheckFailed(f"{counts['failed']} of {counts['images']} images failed (listed above)")


def register(app: typer.Typer) -> None:
    backend_help(predict)
    app.command("predict")(predict)
