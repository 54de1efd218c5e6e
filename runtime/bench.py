"""Latency percentiles and throughput of artifacts and checkpoints, through their runners (what `mde bench` runs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mde.errors import InputError
from mde.runtime.artifact import artifact_labels, precision_mismatch
from mde.runtime.backends.base import providers_refused, runs_on_onnxruntime
from mde.runtime.metadata import MAX_INPUT_SIDE

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 << 30  # one benchmark batch's float32 input: more is a typo, not a robot's workload
MAX_RUNS = 1_000_000  # --iterations, --warmup: more is a typo (and past what a progress bar counts)


@dataclass
class BenchConfig:
    """`mde bench` options."""

    artifacts: list[Path] = field(default_factory=list)
    torch_checkpoint: Path | None = None
    backend: str = "auto"
    batch: int = 1
    iterations: int = 100  # p99 is given from 100 runs on (`PERCENTILE_RUNS`)
    warmup: int = 5
    threads: int = 0
    image_size: str = "model"  # "HxW" of the synthetic camera images, or the model's input size
    seed: int = 0
    providers: list[str] | None = None
    native_resolution: bool = False  # dynamic-size models run at the images' own size, rounded to 32


# A percentile is given from this many runs on: p99 of 20 runs interpolated between the two slowest, a figure no
# run measured (p90 of 10 is the slowest run's neighbourhood, as p99 of 100 is)
PERCENTILE_RUNS = {"p90": 10, "p99": 100}


def latency_stats(times_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean in milliseconds; p90 and p99 None from fewer runs than `PERCENTILE_RUNS` asks."""
    import numpy as np

    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    stats: dict[str, float | None] = {"p50": float(np.percentile(ms, 50))}
    for name, runs in PERCENTILE_RUNS.items():
        stats[name] = float(np.percentile(ms, float(name[1:]))) if len(ms) >= runs else None
    return {**stats, "mean": float(ms.mean())}


def parse_size(text: str, default: tuple[int, int]) -> tuple[int, int]:
    """`--image-size`: "HxW" as (H, W), as the images `predict` takes (at least 8 a side, at most MAX_PIXELS in all:
    a side may pass MAX_INPUT_SIDE, a panorama's), or `default` for "model". The side limit of a native-resolution run
    is the estimator's to say (`check_size`)."""
    if text == "model":
        return default
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size must be 'model' or HxW like 480x640, got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"--image-size must be at least 8x8, got {text!r}")
    from mde.runtime.images import MAX_PIXELS

    if h * w > MAX_PIXELS:
        raise InputError(f"--image-size must hold at most {MAX_PIXELS} pixels ({MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}), "
                         f"as the images predict takes; got {text!r}")
    return h, w


def time_pipeline(
    images: list,
    size: tuple[int, int],
    max_depth: float,
    forward: Callable[[Any], Any],
    iterations: int,
    warmup: int,
    progress: str | None = None,
) -> dict[str, Any]:
    """Time preprocess -> forward -> postprocess `iterations` times (after `warmup` untimed runs).

    progress: a description for a progress bar on stderr over warm-up and timed runs (None: none).
    """
    from mde.runtime.preprocess import postprocess, preprocess

    runs: Iterable[int] = range(warmup + iterations)
    if progress is not None:
        from mde.console import track

        runs = track(runs, progress)
    pre, inf, post, total = [], [], [], []
    for i in runs:
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


def _models(cfg: BenchConfig) -> list[tuple[Path, BenchConfig]]:
    """Each model to time with the options it is timed under: the artifacts, then `--torch`'s checkpoint
    (PyTorch eager through the torch runner, same pipeline)."""
    models = [(Path(p), cfg) for p in cfg.artifacts]
    if cfg.torch_checkpoint is not None:
        models.append((Path(cfg.torch_checkpoint), replace(cfg, backend="torch", providers=None)))
    return models


def _open(path: Path, cfg: BenchConfig):
    from mde.runtime import DepthEstimator

    providers = cfg.providers if runs_on_onnxruntime(path, cfg.backend) else None  # an engine beside ONNX models
    return DepthEstimator.open(path, backend=cfg.backend, threads=cfg.threads, providers=providers)


def _run_shape(est, path: Path, cfg: BenchConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the model's input size, the camera images' size), once this model can take this run's batch."""
    if est.backend == "golden":
        raise InputError("golden.npz replays the outputs saved for its own images, so there is nothing to "
                         "time; bench the ONNX models or the engine next to it", path)
    size = tuple(est.metadata.input_size)
    h, w = parse_size(cfg.image_size, size)
    if cfg.native_resolution:
        est.require_native_resolution()
        size = est.check_size(h, w, cfg.batch)  # an engine's profile, the side limit: refused before any timing
    batch_bytes = cfg.batch * 3 * max(h * w, size[0] * size[1]) * 4  # the network's float32 input at least
    if batch_bytes > MAX_BATCH_BYTES:
        raise InputError(f"--batch {cfg.batch} of {h}x{w} images needs {batch_bytes / 2**30:.1f} GiB of input "
                         f"alone; at most {MAX_BATCH_BYTES // 2**30} GiB")
    limit = est.runner.max_batch()
    if limit is not None and limit < cfg.batch:
        raise InputError(f"model takes batches of at most {limit}, --batch is {cfg.batch}", path)
    return size, (h, w)


def bench_artifact(path: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark one artifact through its runner with the shared pre/postprocessing."""
    import numpy as np

    with _open(path, cfg) as est:
        size, (h, w) = _run_shape(est, path, cfg)
        mismatch = precision_mismatch(path, est.metadata.precision, cfg.backend,
                                      target=(est.metadata.calibration or {}).get("target"))
        if mismatch:  # the table's precision column is the label: said, as `mde info` says it
            log.warning("%s: %s", path, mismatch)
        rng = np.random.default_rng(cfg.seed)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(cfg.batch)]
        timing = time_pipeline(images, size, est.metadata.max_depth, est.infer, cfg.iterations, cfg.warmup,
                               progress=f"{path.name}: {cfg.warmup} warm-up + {cfg.iterations} timed runs")
        return {
            "name": path.name,
            "artifact": str(path),
            "backend": est.backend,
            "providers": est.providers,
            "precision": est.metadata.precision,
            "image_size": [h, w],  # the camera images timed (--image-size, "model": the model's own input size)
            "input_size": list(size),  # what the network ran at, after the resize
            **timing,
        }


def check_inputs(cfg: BenchConfig) -> None:
    """Every model given once, and each one opened and closed again with this run's options (readable, its
    backend installed, the batch within its limits): a refusal comes before the first model is timed, not
    after the minutes of timing it would throw away."""
    from mde.io import file_identity, require_file

    if cfg.native_resolution and cfg.image_size == "model":  # the model's own size: nothing would change
        raise InputError("--native-resolution times the images of --image-size HxW (a camera's) at that size; "
                         "give it")
    if cfg.torch_checkpoint is not None and Path(cfg.torch_checkpoint).suffix.lower() in (".onnx", ".engine",
                                                                                           ".plan", ".npz"):
        raise InputError("--torch takes a PyTorch checkpoint (.pt); give exported models as arguments",
                         cfg.torch_checkpoint)
    if cfg.backend not in ("auto", "torch") and not cfg.artifacts and cfg.torch_checkpoint is not None:  # unused
        raise InputError(f"--backend {cfg.backend} picks how the artifacts run, and none is given; --torch's "
                         "checkpoint runs in PyTorch", cfg.torch_checkpoint)
    seen: set[tuple[int, int]] = set()
    for path, _ in _models(cfg):
        key = file_identity(require_file(path, "model file"))  # one file by any name, hard links too
        if key in seen:
            raise InputError("model given twice (as an argument and --torch, or by two names); each file is "
                             "timed once", path)
        seen.add(key)
    models = _models(cfg)
    if cfg.providers is not None and not any(runs_on_onnxruntime(p, c.backend) for p, c in models):
        raise providers_refused(*next((p, c.backend) for p, c in models))  # for the ONNX models among them only
    for path, model_cfg in models:
        with _open(path, model_cfg) as est:
            _run_shape(est, path, model_cfg)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark every artifact (and the checkpoint) in one process; return one JSON-able dict."""
    if not cfg.artifacts and cfg.torch_checkpoint is None:
        raise InputError("nothing to benchmark: give artifacts and/or --torch CKPT")
    for name, value, low, high in (
        ("--batch", cfg.batch, 1, None),  # the model's own limit is checked when it opens
        ("--iterations", cfg.iterations, 1, MAX_RUNS),
        ("--warmup", cfg.warmup, 0, MAX_RUNS),
    ):
        if value < low or (high is not None and value > high):
            raise InputError(f"{name} must be in {low}..{high}, got {value}" if high is not None
                             else f"{name} must be >= {low}, got {value}")
    from mde.runtime.backends.onnxruntime import check_threads_option

    check_threads_option(cfg.threads)
    parse_size(cfg.image_size, (0, 0))  # a bad --image-size fails before any model loads
    check_inputs(cfg)
    models = _models(cfg)
    results = [bench_artifact(path, model_cfg) for path, model_cfg in models]
    for row, label in zip(results, artifact_labels([path for path, _ in models])):  # two best.pt: by folder
        row["name"] = label
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["artifacts"] = [str(p) for p in cfg.artifacts]
    return {"config": config, "results": results}
