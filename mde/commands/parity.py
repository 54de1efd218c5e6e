"""`mde parity`: the CI gate that proves every artifact scores like the PyTorch checkpoint it came from.

A preprocessing mismatch (an artifact whose metadata gives another input size or max depth
than the checkpoint) is a FAILED check for that artifact (exit 1, failing metric "preprocess",
the reason printed), not bad input: the other artifacts are still checked in the same run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from mde.commands.options import check_backend, providers_option
from mde.runtime.parity import ParityConfig

_D = ParityConfig.__dataclass_fields__


def parity_command(
    paths: list[Path] = typer.Argument(..., help="CKPT ARTIFACT... (with --golden: ARTIFACT... only)."),
    data: Path = typer.Option(None, "--data", help="Dataset folder (checkpoint mode)."),
    split: str = typer.Option(_D["split"].default, "--split", help="Dataset split."),
    limit: int = typer.Option(_D["limit"].default, "--limit", help="At most N images (0 = all)."),
    tolerances: Path = typer.Option(None, "--tolerances", help="TOML file overriding the tolerance table."),
    json_path: Path = typer.Option(None, "--json", help="Write the results as one JSON object to FILE."),
    report: Path = typer.Option(None, "--report", help="Write a Markdown report (+ worst-image PNGs)."),
    backend: str = typer.Option(_D["backend"].default, "--backend", help="auto, onnxruntime or tensorrt."),
    golden: Path = typer.Option(None, "--golden", help="golden.npz: torch-free check of ARTIFACT..."),
    providers: list[str] = providers_option(),
) -> None:
    """Compare artifacts with PyTorch on the same images and preprocessing; exit 1 if any is out of tolerance."""
    from mde.errors import InputError

    check_backend(backend)
    if golden is None:
        if len(paths) < 2:
            raise InputError("expected CKPT and at least one ARTIFACT (or --golden FILE ARTIFACT...)")
        if data is None:
            raise InputError("--data is required with a checkpoint (or use --golden FILE)")
        cfg = ParityConfig(checkpoint=paths[0], artifacts=tuple(paths[1:]), data=data)
    else:
        if data is not None:
            raise InputError("--golden and --data are exclusive: golden mode uses the saved inputs")
        cfg = ParityConfig(artifacts=tuple(paths), golden=golden)
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    cfg.split, cfg.limit, cfg.tolerances, cfg.backend = split, limit, tolerances, backend
    cfg.json_path, cfg.report, cfg.providers = json_path, report, providers or None
    run(cfg)


def run(cfg: ParityConfig) -> list[Any]:
    """Run parity, print the table, write --json / --report; raise `CheckFailed` when any artifact fails."""
    from mde.errors import CheckFailed
    from mde.io import write_json_atomic
    from mde.runtime.parity import DEFAULT_TOLERANCES, check_golden, load_tolerances
    from mde.runtime.parity_report import print_regions, print_table, write_markdown

    tolerances = load_tolerances(cfg.tolerances) if cfg.tolerances else None
    for artifact in cfg.artifacts:
        if not Path(artifact).is_file():
            from mde.errors import ModelError

            raise ModelError("artifact not found", artifact)
    pngs: dict[str, str] = {}
    if cfg.golden is not None:
        results = [check_golden(cfg.golden, a, cfg.backend, tolerances, cfg.providers) for a in cfg.artifacts]
        header: dict[str, Any] = {"mode": "golden", "golden": str(cfg.golden)}
    else:
        results, header, pngs = _run_checkpoint(cfg, tolerances or dict(DEFAULT_TOLERANCES))
    print_table(results, f"parity vs {'golden outputs' if cfg.golden else 'PyTorch'}")
    if header.get("regions"):
        print_regions(results, header["regions"])
    passed = all(r.passed for r in results)
    if cfg.json_path is not None:
        write_json_atomic(cfg.json_path, {**header, "passed": passed,
                                          "artifacts": [r.to_dict() for r in results]})
    if cfg.report is not None:
        write_markdown(cfg.report, results, header, pngs)
    if not passed:
        failed = "; ".join(f"{r.artifact} ({', '.join(r.failed)})" for r in results if not r.passed)
        raise CheckFailed(f"parity failed: {failed}")
    return results


def _run_checkpoint(cfg: ParityConfig, tolerances: dict) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    """PyTorch and every artifact on the same preprocessed images; per-artifact comparison."""
    import numpy as np
    import torch

    from mde.console import track
    from mde.errors import DataError
    from mde.runtime.backends.base import open_runner
    from mde.runtime.metadata import INPUT_NAME, OUTPUT_NAME
    from mde.runtime.parity import compare, gt_metrics, mismatch
    from mde.runtime.preprocess import postprocess, preprocess
    from mde.train.checkpoint import load_model
    from mde.train.data import dataset_max_depth, open_dataset

    model, state = load_model(cfg.checkpoint, "cpu")
    args = state["model_args"]
    size, max_depth = (int(args["image_size"]),) * 2, float(args["max_depth"])
    dataset = open_dataset(cfg.data, split=cfg.split)
    count = len(dataset) if cfg.limit == 0 else min(cfg.limit, len(dataset))
    if count == 0:
        raise DataError(f"no images in the {cfg.split} split", cfg.data)
    names = list(dataset.names)[:count]
    data_range = dataset_max_depth(cfg.data)

    results: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        runners = []
        for i, path in enumerate(cfg.artifacts):
            runner = stack.enter_context(open_runner(path, cfg.backend, providers=cfg.providers))
            meta = runner.metadata
            if tuple(meta.input_size) != size or abs(meta.max_depth - max_depth) > 1e-6:
                results[i] = mismatch(
                    Path(path).name, meta.precision, runner.label,
                    f"preprocessing mismatch: artifact input size {tuple(meta.input_size)}, max depth "
                    f"{meta.max_depth:g}; checkpoint {size}, {max_depth:g}")
            else:
                runners.append((i, runner))
        reference, gts, masks, outputs = [], [], [], {i: [] for i, _ in runners}
        with torch.inference_mode():
            for index in track(range(count), "parity", total=count):
                sample = dataset[index]
                x = preprocess(sample.rgb, size)
                reference.append(model(torch.from_numpy(x)).numpy()[0])
                gts.append(sample.depth)
                masks.append(sample.mask)
                for i, runner in runners:
                    outputs[i].append(runner.infer({INPUT_NAME: x})[OUTPUT_NAME][0])
    ref_metrics = gt_metrics(reference, gts, max_depth, data_range)
    for i, runner in runners:
        meta = runner.metadata
        results[i] = compare(reference, outputs[i], gts, tolerance=tolerances[meta.precision],
                             max_depth=max_depth, data_range=data_range, names=names,
                             label=Path(cfg.artifacts[i]).name, precision=meta.precision,
                             backend=runner.label, reference_metrics=ref_metrics, masks=masks)
    ordered = [results[i] for i in range(len(cfg.artifacts))]
    header = {"mode": "checkpoint", "checkpoint": str(cfg.checkpoint), "data": str(cfg.data),
              "split": cfg.split, "images": count, "input_size": list(size), "max_depth": max_depth,
              "data_range": data_range,
              "reference": {"rmse": float(np.mean([m["rmse"] for m in ref_metrics])),
                            "ssim": float(np.mean([m["ssim"] for m in ref_metrics]))}}
    if any(m is not None for m in masks):  # region figures: information, not gates
        header["regions"] = _region_figures(cfg, reference, gts, masks, max_depth)
    pngs: dict[str, str] = {}
    if cfg.report is not None:
        from mde.runtime.parity_report import panel, write_png

        for i, _ in runners:
            r = results[i]
            k = r.worst_index
            gt_size = gts[k].shape
            image = panel(dataset[k].rgb, postprocess(reference[k], gt_size, max_depth),
                          postprocess(outputs[i][k], gt_size, max_depth), max_depth)
            name = f"{cfg.report.stem}.{Path(r.artifact).stem}.worst.png"
            write_png(cfg.report.parent / name, image)
            pngs[r.artifact] = name
    return ordered, header, pngs


def _region_figures(cfg: ParityConfig, reference: list, gts: list, masks: list, max_depth: float) -> dict:
    """Per-region figures of PyTorch and of the per-pixel mean depth map of the train split (when there is one)."""
    from mde.runtime.evaluate import pixel_mean_map
    from mde.runtime.parity import region_means
    from mde.train.data import open_dataset

    figures = {"reference": region_means(reference, gts, masks, max_depth)}
    if (Path(cfg.data) / "train").is_dir():
        pixmap = pixel_mean_map(open_dataset(cfg.data, split="train"))[None]
        figures["pixel_mean_map"] = region_means([pixmap] * len(gts), gts, masks, max_depth)
    return figures


def register(app: typer.Typer) -> None:
    app.command("parity")(parity_command)
