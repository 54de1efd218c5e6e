"""`mde bench`: latency percentiles and throughput side by side (options and table here, the work in
`mde.runtime.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mde.commands.options import backend_help, check_backend, emit, providers_option
from mde.memory import memory_ceiling, runs_on_cpu_only
from mde.runtime.bench import BenchConfig, run_bench

NOT_TIMED = ("golden",)  # saved outputs: nothing to time (refused, saying so, when a golden.npz is given)


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    from mde.console import stdout_console
    from mde.errors import one_line

    cfg = report["config"]
    sizes = sorted({f"{r['image_size'][0]}x{r['image_size'][1]} run at {r['input_size'][0]}x{r['input_size'][1]}"
                    for r in report["results"]})
    table = Table(
        title=f"mde bench: batch {cfg['batch']}, {'; '.join(sizes)} (HxW), {cfg['iterations']} iterations, "
        f"threads {cfg['threads'] or 'default'} (p50 to mean: inference ms per call; pre, post: ms per call; img/s: "
        "end to end, pre and post included; p90 needs 10 iterations and p99 100, '-' where fewer)"
    )
    text_columns = ("artifact", "backend", "runs on", "precision")
    for col in (*text_columns, "p50", "p90", "p99", "mean", "pre", "post", "img/s"):
        table.add_column(col, justify="left" if col in text_columns else "right")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(
            one_line(r["name"]),  # a file's name: one printable line, whatever its bytes
            r["backend"],
            r["providers"][0].removesuffix("ExecutionProvider") if r["providers"] else "?",
            r["precision"],
            *("-" if lat[k] is None else f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "mean")),
            f"{r['preprocess_ms']:.2f}",
            f"{r['postprocess_ms']:.2f}",
            f"{r['images_per_s']:.1f}",
        )
    console = stdout_console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = stdout_console(160)
    console.print(table)


def bench(
    artifacts: list[Path] = typer.Argument(None, help="Models to time: .onnx, .engine, or a .pt checkpoint (PyTorch)."),
    torch_ckpt: Path = typer.Option(None, "--torch", help="Also time this checkpoint in PyTorch eager (CPU)."),
    backend: str = typer.Option(BenchConfig.backend, help="auto, or a registered backend."),
    batch: int = typer.Option(BenchConfig.batch, help="Images per call."),
    iterations: int = typer.Option(BenchConfig.iterations, help="Timed iterations."),
    warmup: int = typer.Option(BenchConfig.warmup, help="Untimed warm-up iterations."),
    threads: int = typer.Option(BenchConfig.threads, help="CPU threads for ORT and torch (0 = default)."),
    image_size: str = typer.Option(BenchConfig.image_size, help="Synthetic image size HxW, or 'model'."),
    native_resolution: bool = typer.Option(
        BenchConfig.native_resolution, "--native-resolution",
        help="Run dynamic-size models at --image-size itself (rounded to multiples of 32), as predict "
             "--native-resolution does, not at their input size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    providers: list[str] = providers_option(),
) -> None:
    """Time artifacts side by side: latency p50/p90/p99/mean, images/s, pre/postprocessing."""
    check_backend(backend, leave_out=NOT_TIMED)
    if torch_ckpt is not None:  # before timing anything: a missing checkpoint, a runtime-only install
        import importlib.util

        from mde.errors import TRAIN_EXTRA, BackendError
        from mde.io import require_file

        require_file(torch_ckpt, "model file")
        if importlib.util.find_spec("torch") is None:
            raise BackendError(f"--torch needs PyTorch, which is not installed; {TRAIN_EXTRA}", torch_ckpt)
    cfg = BenchConfig(list(artifacts or []), torch_ckpt, backend, batch, iterations, warmup, threads, image_size,
                      providers=providers or None, native_resolution=native_resolution)
    with memory_ceiling(runs_on_cpu_only(cfg.artifacts, cfg.providers)):  # a size too large: exit 2, not killed
        report = run_bench(cfg)
    emit(report, as_json, print_table)


def register(app: typer.Typer) -> None:
    backend_help(bench, leave_out=NOT_TIMED)
    app.command("bench")(bench)
