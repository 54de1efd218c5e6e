"""`mde bench`: latency percentiles and throughput of artifacts (and optionally PyTorch eager), side by side."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from mde.commands.options import backend_help, check_backend, providers_option
from mde.errors import InputError


@dataclass
class BenchConfig:
    """`mde bench` options."""

    artifacts: list[Path] = field(default_factory=list)
    torch_checkpoint: Path | None = None
    backend: str = "auto"
    batch: int = 1
    iterations: int = 50
    warmup: int = 5
    threads: int = 0
    image_size: str = "model"  # "HxW" of the synthetic camera images, or the model's input size
    seed: int = 0
    providers: list[str] | None = None


def latency_stats(times_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    import numpy as np

    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


def parse_size(text: str, default: tuple[int, int]) -> tuple[int, int]:
    if text == "model":
        return default
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size must be 'model' or HxW like 480x640, got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"--image-size must be at least 8x8, got {text!r}")
    return h, w


def time_pipeline(
    images: list,
    size: tuple[int, int],
    max_depth: float,
    forward: Callable[[Any], Any],
    iterations: int,
    warmup: int,
) -> dict[str, Any]:
    """Time preprocess -> forward -> postprocess `iterations` times (after `warmup` untimed runs)."""
    from mde.runtime.preprocess import postprocess, preprocess

    pre, inf, post, total = [], [], [], []
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        batch = preprocess(images, size)
        t1 = time.perf_counter()
        out = forward(batch)
        t2 = time.perf_counter()
        for j, img in enumerate(images):
            postprocess(out[j], img.shape[:2], max_depth)
        t3 = time.perf_counter()
        if i >= warmup:
            pre.append(t1 - t0), inf.append(t2 - t1), post.append(t3 - t2), total.append(t3 - t0)
    e2e = latency_stats(total)
    return {
        "latency_ms": latency_stats(inf),
        "end_to_end_ms": e2e,
        "preprocess_ms": latency_stats(pre)["mean"],
        "postprocess_ms": latency_stats(post)["mean"],
        "images_per_s": len(images) * 1e3 / e2e["mean"],
    }


def bench_artifact(path: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark one artifact through its runner with the shared pre/postprocessing."""
    import numpy as np

    from mde.runtime import DepthEstimator

    with DepthEstimator.open(path, backend=cfg.backend, threads=cfg.threads, providers=cfg.providers) as est:
        size = tuple(est.metadata.input_size)
        h, w = parse_size(cfg.image_size, size)
        rng = np.random.default_rng(cfg.seed)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(cfg.batch)]
        limit = est.runner.max_batch()
        if limit is not None and limit < cfg.batch:
            raise InputError(f"model takes batches of at most {limit}, --batch is {cfg.batch}", path)
        timing = time_pipeline(images, size, est.metadata.max_depth, est.infer, cfg.iterations, cfg.warmup)
        return {
            "name": path.name,
            "artifact": str(path),
            "backend": est.backend,
            "providers": est.providers,
            "precision": est.metadata.precision,
            **timing,
        }


def bench_torch(path: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark the PyTorch checkpoint in eager mode (CPU, `torch.inference_mode`, same threads)."""
    import torch

    from mde.train.checkpoint import load_model

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _bench_torch_model(path, cfg, load_model(path, "cpu")[0])
    finally:
        torch.set_num_threads(threads)  # leave the process as we found it


def _bench_torch_model(path: Path, cfg: BenchConfig, model: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    size = (model.args.image_size, model.args.image_size)
    h, w = parse_size(cfg.image_size, size)
    rng = np.random.default_rng(cfg.seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(cfg.batch)]

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    timing = time_pipeline(images, size, model.args.max_depth, forward, cfg.iterations, cfg.warmup)
    return {
        "name": f"{path.name} (torch eager)",
        "artifact": str(path),
        "backend": "torch",
        "providers": [f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads"],
        "precision": "fp32",
        **timing,
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark every artifact (and the checkpoint) in one process; return one JSON-able dict."""
    if not cfg.artifacts and cfg.torch_checkpoint is None:
        raise InputError("nothing to benchmark: give artifacts and/or --torch CKPT")
    for name, value, low in (
        ("--batch", cfg.batch, 1),
        ("--iterations", cfg.iterations, 1),
        ("--warmup", cfg.warmup, 0),
        ("--threads", cfg.threads, 0),
    ):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    results = [bench_artifact(Path(p), cfg) for p in cfg.artifacts]
    if cfg.torch_checkpoint is not None:
        results.append(bench_torch(Path(cfg.torch_checkpoint), cfg))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["artifacts"] = [str(p) for p in cfg.artifacts]
    return {"config": config, "results": results}


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = report["config"]
    table = Table(
        title=f"mde bench: batch {cfg['batch']}, {cfg['iterations']} iterations, "
        f"threads {cfg['threads'] or 'default'} (inference ms; pre/post ms separate)"
    )
    text_columns = ("artifact", "backend", "runs on", "precision")
    for col in (*text_columns, "p50", "p90", "p99", "mean", "pre", "post", "img/s"):
        table.add_column(col, justify="left" if col in text_columns else "right")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(
            r["name"],
            r["backend"],
            r["providers"][0].removesuffix("ExecutionProvider") if r["providers"] else "?",
            r["precision"],
            *(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "mean")),
            f"{r['preprocess_ms']:.2f}",
            f"{r['postprocess_ms']:.2f}",
            f"{r['images_per_s']:.1f}",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def bench(
    artifacts: list[Path] = typer.Argument(None, help="Artifacts (.onnx, .engine) to time."),
    torch_ckpt: Path = typer.Option(None, "--torch", help="Also time this checkpoint in PyTorch eager (CPU)."),
    backend: str = typer.Option(BenchConfig.backend, help="auto, or a registered backend."),
    batch: int = typer.Option(BenchConfig.batch, help="Images per call."),
    iterations: int = typer.Option(BenchConfig.iterations, help="Timed iterations."),
    warmup: int = typer.Option(BenchConfig.warmup, help="Untimed warm-up iterations."),
    threads: int = typer.Option(BenchConfig.threads, help="CPU threads for ORT and torch (0 = default)."),
    image_size: str = typer.Option(BenchConfig.image_size, help="Synthetic image size HxW, or 'model'."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    providers: list[str] = providers_option(),
) -> None:
    """Time artifacts side by side: latency p50/p90/p99/mean, images/s, pre/postprocessing."""
    check_backend(backend)
    cfg = BenchConfig(list(artifacts or []), torch_ckpt, backend, batch, iterations, warmup, threads, image_size,
                      providers=providers or None)
    report = run_bench(cfg)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        print_table(report)


def register(app: typer.Typer) -> None:
    backend_help(bench)
    app.command("bench")(bench)
