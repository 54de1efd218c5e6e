"""`mde eval MODEL --data DIR`: score a checkpoint (.pt, PyTorch) or an artifact (.onnx/.engine, the runtime)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import typer

from mde.commands.options import SPLIT_HELP, check_split, depth_scale_option, emit, providers_option
from mde.errors import InputError, ModelError

METRIC_ORDER = ("rmse", "ssim", "abs_rel", "sq_rel", "rmse_log", "delta1", "delta2", "delta3",
                "silog", "images")
REGION_ORDER = tuple(f"{region}_{name}" for region in ("objects", "structure")
                     for name in ("rmse", "abs_rel", "delta1", "images"))


DEVICE_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # --device for an .onnx
DEVICE_HELP = ("Where the model runs: auto, cpu, cuda or cuda:N (a .pt: PyTorch's device; an .onnx: ONNX Runtime's "
               "CPU or CUDA provider, or name them with --providers).")


def eval_command(
    model: str = typer.Argument(..., help="A .pt checkpoint, .onnx model or .engine."),
    data: str = typer.Option(..., "--data", help="Dataset folder."),
    split: str = typer.Option("val", "--split", help=SPLIT_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per inference call."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    providers: list[str] = providers_option(),
    backend: str = typer.Option("auto", "--backend", help="The model's runtime: auto (from the file suffix), "
                                 "onnxruntime or tensorrt (an .onnx or .engine), or torch (a .pt)."),
    depth_scale: float | None = depth_scale_option(),
) -> None:
    """Mean RMSE, SSIM, AbsRel, SqRel, RMSE log, delta1-3 and SILog over a split.

    Where the split has region masks, also RMSE / AbsRel / delta1 on objects and on structure.

    Beside the model, the train split's per-pixel mean depth map is scored (RMSE / AbsRel / delta1, per region too).

    Not when scoring the train split itself (or NYU's all); where the train split cannot be read, a note says why.
    """
    from mde.data import readers
    from mde.io import require_file
    from mde.runtime.evaluate import evaluate

    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise InputError(f"unknown --device {device!r}; choose from auto, cpu, cuda, cuda:N")
    check_split(split)
    if backend == "golden":  # offered by the help once: nothing it runs has depth to score
        raise InputError("--backend golden replays a golden.npz's saved outputs, for its own images only; score "
                         "the model itself, or check an artifact against it with mde parity --golden")
    path = require_file(model, "model")
    dataset = readers.open_dataset(data, split=split, depth_scale=depth_scale)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        if backend not in ("auto", "torch"):  # a checkpoint runs in PyTorch; another backend would be ignored
            raise InputError(f"--backend {backend}: a .pt checkpoint runs in PyTorch; export it first", path)
        if providers:
            raise InputError("--providers names ONNX Runtime's providers; a .pt checkpoint runs in PyTorch "
                             "(choose where with --device)", path)
        predict, model_range, trained_scale = _torch_predict(path, device)
    elif suffix in (".onnx", ".engine", ".plan"):
        from mde.runtime.estimator import DepthEstimator

        estimator = DepthEstimator.open(path, backend=backend, batch_size=batch_size,
                                        providers=_artifact_providers(path, device, providers or None))
        predict, model_range = estimator.predict_batch, estimator.metadata.max_depth
        trained_scale = readers.trained_png_scale(estimator.metadata.source.get("config"))
    else:
        raise InputError("expected a .pt, .onnx or .engine file", path)
    readers.note_trained_depth_scale(path, trained_scale, getattr(dataset, "depth_scale", None), data)
    data_range = float(readers.dataset_max_depth(data, model_range))
    readers.check_depth_units(dataset, data_range)
    try:
        metrics = evaluate(predict, dataset, data_range, batch_size, progress=True)  # progress is on stderr
    except ModelError as err:  # the model's fault: name it
        raise ModelError(str(err), path) if err.path is None else err from None
    regions = any(metrics.get(f"{region}_images") for region in ("objects", "structure"))  # both keys, or none
    if not regions and getattr(dataset, "masks", None):
        from mde.console import info

        info(f"{data}: the {split} masks mark no object or structure pixel; no region figures")
    metrics = {k: metrics[k] for k in METRIC_ORDER + (REGION_ORDER if regions else ()) if k in metrics}
    baseline = _pixel_mean_map_figures(data, split, dataset, data_range, model_range, depth_scale, regions)
    if baseline is not None:
        metrics["pixel_mean_map"] = baseline
    emit(metrics, json_out, lambda m: _print_table(path, split, m))


def _artifact_providers(path: Path, device: str, providers: list[str] | None) -> list[str] | None:
    """ONNX Runtime's providers for `--device` / `--providers` (None: the best this machine runs)."""
    if device == "auto":
        return providers
    if providers:
        raise InputError(f"--device {device} and --providers both choose where the model runs; give one of them")
    if path.suffix.lower() != ".onnx":  # an engine runs on the GPU it was built for: cuda says that, no more
        if device == "cuda":
            return None
        raise InputError(f"--device {device}: a TensorRT {path.suffix} runs on the GPU it was built for", path)
    if device.startswith("cuda:"):  # ONNX Runtime's CUDA provider takes the first visible GPU
        raise InputError(f"--device {device} picks a PyTorch GPU; for an .onnx give --device cuda with "
                         f"CUDA_VISIBLE_DEVICES={device.partition(':')[2]}", path)
    return [DEVICE_PROVIDERS[device]]


def _pixel_mean_map_figures(data: str, split: str, dataset, data_range: float, max_depth: float,
                            depth_scale: float | None, regions: bool) -> dict[str, float] | None:
    """The image-blind baseline on the same split: the train split's per-pixel mean depth map, in the model's
    range (None where there is none: `train_split_baseline`), with region figures where the model has them."""
    from mde.runtime.evaluate import pixel_mean_map_metrics, train_split_baseline

    figures = train_split_baseline(data, split, depth_scale, data_range,
                                   lambda train: pixel_mean_map_metrics(train, dataset, data_range, max_depth))
    keys = ("rmse", "abs_rel", "delta1") + (REGION_ORDER if regions else ())
    return None if figures is None else {k: figures[k] for k in keys if k in figures}


def _torch_predict(path: Path, device: str):
    from mde.data.readers import trained_png_scale
    from mde.train.checkpoint import load_model
    from mde.train.distributed import resolve_device
    from mde.train.evaluate import torch_predictor

    dev = resolve_device(device, source=path)
    net, state = load_model(path, dev)
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    return (torch_predictor(net, net.args.image_size, net.args.max_depth, dev), float(net.args.max_depth),
            trained_png_scale(config))


def _print_table(path: Path, split: str, metrics: dict[str, float]) -> None:
    from rich.table import Table

    from mde.console import stdout_console

    console = stdout_console()
    console.print(f"{path.name} on {split}: {metrics.get('images', 0)} images")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    baseline = metrics.get("pixel_mean_map", {})
    if baseline:
        table.add_column("per-pixel mean map", justify="right")
    for name, value in metrics.items():
        if name == "pixel_mean_map":
            continue
        cells = [_cell(name, value)] + ([_cell(name, baseline[name]) if name in baseline else ""] if baseline else [])
        table.add_row(name, *cells)
    console.print(table)


def _cell(name: str, value: float) -> str:
    """A figure as the table shows it: "-" for a region no image shows (null in --json)."""
    return str(int(value)) if name.endswith("images") else "-" if math.isnan(value) else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
