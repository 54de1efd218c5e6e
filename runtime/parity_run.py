"""Running parity (Polygraphy's `Comparator.run`): a reference runner and the artifact runners on the same feeds.

Two modes, one shape: the reference is the `torch` runner on a checkpoint (checkpoint mode, over a
dataset split) or the `golden` runner replaying `golden.npz` (golden mode, torch-free). Every
artifact's outputs are then compared with the reference's by `mde.runtime.parity.compare`, with
the tolerances passed in.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import CheckFailed, DataError, InputError, ModelError, shown_path
from mde.io import RUN_FILES, resolved, sha256_file
from mde.runtime.artifact import artifact_labels, precision_mismatch
from mde.runtime.backends.base import Runner, open_runner, providers_refused, runs_on_onnxruntime
from mde.runtime.parity import (
    GOLDEN_TABLE_NOTES,
    ArtifactResult,
    Tolerance,
    compare,
    gt_metrics,
    mismatch,
    read_tolerance_table,
    region_means,
    shown_regions,
    tolerances_from_dict,
)


@dataclass
class ParityConfig:
    """Settings of `mde parity` (the CLI options map one to one onto these fields).

    Args:
        checkpoint: the PyTorch checkpoint (None in golden mode).
        artifacts: .onnx / .engine files to check.
        data: dataset folder (checkpoint mode).
        split: dataset split.
        limit: at most this many images (0 = all).
        tolerances: TOML file of tolerance overrides.
        json_path: write the results as one JSON object here.
        report: write a Markdown report (and worst-image PNGs beside it) here.
        backend: runtime backend for every artifact ("auto": from the file suffix).
        golden: golden.npz for the torch-free mode.
        providers: ONNX Runtime providers for every .onnx artifact (None: the best this machine can run).
        device: where the PyTorch reference runs in checkpoint mode ("cpu", "cuda", "cuda:1").
        depth_scale: 16-bit depth PNG units per metre in `data`; None: the format's own (1000, KITTI 256).
    """

    checkpoint: Path | None = None
    artifacts: tuple[Path, ...] = ()
    data: Path | None = None
    split: str = "val"
    limit: int = 0
    tolerances: Path | None = None
    json_path: Path | None = None
    report: Path | None = None
    backend: str = "auto"
    golden: Path | None = None
    providers: list[str] | None = None
    device: str = "cpu"
    depth_scale: float | None = None


def run_all(runners: Sequence[Runner], feeds: Iterable[np.ndarray], total: int | None = None,
            description: str = "parity") -> list[list[np.ndarray]]:
    """Every runner on the same preprocessed feeds: outputs[runner][image].

    Each feed is one 1 x 3 x H x W image; each output is that image's raw 1 x h x w depth.
    """
    from mde.console import track
    from mde.runtime.metadata import OUTPUT_NAME

    inputs = [next(iter(runner.input_specs)) for runner in runners]  # a graph's one input, named as it likes
    outputs: list[list[np.ndarray]] = [[] for _ in runners]
    for feed in track(feeds, description, total=total):
        for runner, name, out in zip(runners, inputs, outputs):
            out.append(runner.infer({name: feed})[OUTPUT_NAME][0])
    return outputs


def size_mismatch(runner: Runner, reference: Runner) -> str:
    """Why `runner`'s preprocessing differs from the reference's (input size, depth range), or ""."""
    meta, ref = runner.metadata, reference.metadata
    if meta is None or ref is None:
        return "no mde metadata"
    same_size = meta.dynamic_size or tuple(meta.input_size) == tuple(ref.input_size)
    if same_size and abs(meta.max_depth - ref.max_depth) <= 1e-6:
        return ""
    return (f"preprocessing mismatch: artifact input size {tuple(meta.input_size)}, max depth {meta.max_depth:g}; "
            f"reference {tuple(ref.input_size)}, {ref.max_depth:g}")


SOURCE_KEYS = ("weights_sha256", "checkpoint_sha256")  # the model's weights first; the file where no more is known


def source_mismatch(runner: Runner, reference: dict[str, str], name: str) -> str:
    """Why `runner` was not exported from the reference model, or "".

    Its `mde.source` records the checkpoint it came from: the SHA-256 of the model's weights
    (`train.checkpoint.weights_sha256`: best.pt and last.pt of one epoch agree) and of the file.
    Comparing another model's export measures the difference between two models, which loose
    (INT8) tolerances may call a PASS. A checkpoint given as an artifact is its own source: its weights'
    digest. Where either side records neither, it is compared as before.
    """
    source = runner.metadata.source if runner.metadata is not None else {}
    checkpoint = not source and callable(getattr(runner, "weights_sha256", None))  # a .pt among the artifacts
    if checkpoint:
        source = {"weights_sha256": runner.weights_sha256()}
    for key in SOURCE_KEYS:
        exported, expected = str(source.get(key) or ""), str(reference.get(key) or "")
        if exported and expected:
            what = "the checkpoint of another model" if checkpoint else "exported from another model"
            return "" if exported == expected else (
                f"{what} ({key.split('_')[0]} sha256 {exported[:12]}…), not from {name} ({expected[:12]}…)")
    return ""


def refusal(runner: Runner, path: str | Path, backend: str, reference: Runner, source: dict[str, str],
            source_name: str) -> tuple[str, str] | None:
    """The first check that keeps the artifact at `path` (open in `runner`, by the `backend` named) from being
    compared with the reference, as (check, reason): `preprocess` (`size_mismatch`), `source` (`source_mismatch`
    against the reference's `source` digests, from the file `source_name`) or `precision` (`precision_mismatch`);
    None when it may be compared."""
    checks = (("preprocess", lambda: size_mismatch(runner, reference)),
              ("source", lambda: source_mismatch(runner, source, source_name)),
              ("precision", lambda: precision_mismatch(path, runner.metadata.precision, backend,
                                                       (runner.metadata.calibration or {}).get("target"))))
    return next(((check, reason) for check, find in checks if (reason := find())), None)


def check_golden(
    golden: str | Path,
    artifact: str | Path,
    backend: str = "auto",
    overrides: dict[str, Any] | None = None,
    providers: Sequence[str] | None = None,
    label: str | None = None,
) -> ArtifactResult:
    """Run `artifact` on `golden.npz`'s inputs and compare with its saved PyTorch outputs (no torch needed).

    When the golden inputs came from a dataset (`mde export --golden-data`), their ground truth
    is in the file too, and RMSE/SSIM and their deltas to PyTorch are reported and gated as in
    checkpoint mode.

    Args:
        golden: the export's golden.npz.
        artifact: an .onnx or .engine file.
        backend: runtime backend name, or "auto".
        overrides: {precision: {field: value}} (`read_tolerance_table`) over the golden file's own table
            (over `DEFAULT_TOLERANCES` where it has none).
        providers: ONNX Runtime providers (None: the best this machine can run).
        label: the artifact's name in the results (default: its file name).
    """
    from mde.runtime.backends.golden import GoldenRunner

    providers = providers if runs_on_onnxruntime(artifact, backend) else None  # an engine beside ONNX models
    with GoldenRunner(golden) as reference, open_runner(artifact, backend, providers=providers) as runner:
        saved = reference.golden
        # every row is checked, as a --tolerances file is: a damaged one was skipped for the defaults
        table = {p: row for p, row in saved["tolerances"].items() if p not in GOLDEN_TABLE_NOTES}
        tolerances = tolerances_from_dict(overrides or {}, base=tolerances_from_dict(table, source=golden))
        meta, label, backend_label = runner.metadata, label or Path(artifact).name, runner.label
        if meta is None:
            raise ModelError("artifact has no mde metadata", artifact)
        source = {"checkpoint_sha256": str(saved.get("checkpoint_sha256", "")),
                  "weights_sha256": str(saved["meta"].get("weights_sha256", ""))}
        refused = refusal(runner, artifact, backend, reference, source, Path(golden).name)
        if refused:
            return mismatch(label, meta.precision, runner.label, refused[1], check=refused[0],
                            tolerance=tolerances.get(meta.precision))
        images = saved["image"]
        ref_out, art_out = run_all([reference, runner], [images[i:i + 1] for i in range(len(images))],
                                   len(images))
    count = len(images)
    gts = [saved[f"gt_{i}"] for i in range(count)] if all(f"gt_{i}" in saved for i in range(count)) else None
    masks = [saved.get(f"mask_{i}") for i in range(count)] if gts is not None else None
    data_range = float(saved["meta"].get("data_range") or meta.max_depth)
    return compare(ref_out, art_out, gts, tolerance=tolerances[meta.precision], max_depth=meta.max_depth,
                   data_range=data_range, label=label, precision=meta.precision, backend=backend_label,
                   masks=masks)


def check_checkpoint(cfg: ParityConfig, tolerances: dict[str, Tolerance]
                     ) -> tuple[list[ArtifactResult], dict[str, Any], dict[str, tuple[Path, np.ndarray]]]:
    """The checkpoint (torch runner) and every artifact on the same preprocessed images of `cfg.data`.

    Returns (one result per artifact, the report header, {artifact: (path, picture)} of the worst-image
    pictures for --report, drawn but not yet written).
    """
    from mde.data.readers import check_depth_units, dataset_max_depth, note_trained_depth_scale, open_dataset
    from mde.runtime.preprocess import preprocess

    dataset = open_dataset(cfg.data, split=cfg.split, depth_scale=cfg.depth_scale)
    count = len(dataset) if cfg.limit == 0 else min(cfg.limit, len(dataset))
    if count == 0:
        raise DataError(f"no images in the {cfg.split} split", cfg.data)
    names = list(dataset.names)[:count]
    artifact_names = artifact_labels(cfg.artifacts)
    results: dict[int, ArtifactResult] = {}
    gts: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    with contextlib.ExitStack() as stack:
        if Path(cfg.checkpoint).suffix.lower() in (".onnx", ".engine"):  # the first path is the reference
            raise InputError("the first path is the PyTorch checkpoint (.pt) the artifacts were exported from; "
                             "this is an artifact", cfg.checkpoint)
        reference = stack.enter_context(open_runner(cfg.checkpoint, "torch", device=cfg.device))
        size, max_depth = tuple(reference.metadata.input_size), reference.metadata.max_depth
        note_trained_depth_scale(cfg.checkpoint, getattr(reference, "trained_depth_scale", None),
                                 getattr(dataset, "depth_scale", None), cfg.data)
        data_range = dataset_max_depth(cfg.data, max_depth)
        check_depth_units(dataset, data_range)
        reference_source = {"checkpoint_sha256": sha256_file(cfg.checkpoint),
                            "weights_sha256": reference.weights_sha256()}
        runners = []
        for i, path in enumerate(cfg.artifacts):
            providers = cfg.providers if runs_on_onnxruntime(path, cfg.backend) else None  # an engine beside them
            runner = stack.enter_context(open_runner(path, cfg.backend, providers=providers))
            refused = refusal(runner, path, cfg.backend, reference, reference_source, Path(cfg.checkpoint).name)
            if refused:
                results[i] = mismatch(artifact_names[i], runner.metadata.precision, runner.label, refused[1],
                                      check=refused[0], tolerance=tolerances.get(runner.metadata.precision))
            else:
                runners.append((i, runner))

        def feeds() -> Iterator[np.ndarray]:
            for index in range(count):
                sample = dataset[index]
                gts.append(sample.depth)
                masks.append(sample.mask)
                yield preprocess(sample.rgb, size)

        ref_out, *art_outs = run_all([reference, *(r for _, r in runners)], feeds(), count)
        labels = {i: runner.label for i, runner in runners}  # what each ran on: known while it is open
    ref_metrics = gt_metrics(ref_out, gts, max_depth, data_range, masks)
    for (i, runner), outputs in zip(runners, art_outs):
        meta = runner.metadata
        results[i] = compare(ref_out, outputs, gts, tolerance=tolerances[meta.precision],
                             max_depth=max_depth, data_range=data_range, names=names,
                             label=artifact_names[i], precision=meta.precision,
                             backend=labels[i], reference_metrics=ref_metrics, masks=masks)
    header: dict[str, Any] = {
        "mode": "checkpoint", "checkpoint": str(cfg.checkpoint), "data": str(cfg.data), "split": cfg.split,
        "images": count, "input_size": list(size), "max_depth": max_depth, "data_range": data_range,
        "reference": {"rmse": float(np.mean([m["rmse"] for m in ref_metrics])),
                      "ssim": float(np.mean([m["ssim"] for m in ref_metrics])), "device": cfg.device},
    }
    if any(m is not None for m in masks):  # region figures: information, not gates
        figures = _region_figures(cfg, ref_metrics, gts, masks, max_depth, data_range)
        if figures["reference"]:
            header["regions"] = figures
        else:
            from mde.console import info

            info(f"{cfg.data}: the {cfg.split} masks mark no object or structure pixel; no region figures")
    pictures = {}
    if with_pictures(cfg):
        paths = worst_png_paths(cfg.report, artifact_names)
        for (i, _), outputs in zip(runners, art_outs):
            pictures[results[i].artifact] = (paths[results[i].artifact],
                                             *_worst_panel(dataset, results[i], ref_out, outputs, gts, max_depth))
    return [results[i] for i in range(len(cfg.artifacts))], header, pictures


def _worst_panel(dataset: Any, result: ArtifactResult, reference: list[np.ndarray],
                 outputs: list[np.ndarray], gts: list[np.ndarray], max_depth: float) -> tuple[np.ndarray, float]:
    """RGB | PyTorch | artifact | difference of the artifact's worst image, as one picture, and the difference
    in metres that its last panel shows as white."""
    from mde.runtime.parity_report import difference_scale, panel
    from mde.runtime.preprocess import postprocess

    k = result.worst_index
    shape = gts[k].shape
    reference_map, artifact_map = postprocess(reference[k], shape, max_depth), postprocess(outputs[k], shape, max_depth)
    return (panel(dataset[k].rgb, reference_map, artifact_map, max_depth),
            difference_scale(reference_map, artifact_map))


def with_pictures(cfg: ParityConfig) -> bool:
    """Whether the report gets worst-image pictures: against a checkpoint, and written to a file (not a stream)."""
    from mde.io import written_in_place

    return cfg.report is not None and cfg.golden is None and not written_in_place(cfg.report)


def _stale_pictures(report: str | Path, kept: Sequence[Path]) -> list[Path]:
    """The worst-image pictures the report now at `report` shows beside it that this run does not write again:
    left, they stood beside a report that no longer names them. Only an earlier parity report's own are taken
    (the file starts as `write_markdown` starts it, and the picture is named as `worst_png_paths` names it): a
    `--report notes.md` over the user's own Markdown removes none of the pictures that it links."""
    from mde.io import written_in_place
    from mde.runtime.parity_report import REPORT_TITLE

    report = Path(report)
    if written_in_place(report) or not report.is_file():
        return []
    try:
        text = report.read_text(errors="replace")
    except OSError:
        return []
    if not text.startswith(REPORT_TITLE + "\n"):
        return []
    names = {name for name in re.findall(r"^!\[.*\]\((.+\.worst\.png)\)$", text, re.MULTILINE)
             if "/" not in name and "\\" not in name  # a picture beside the report, as `worst_png_paths` puts it
             and name.startswith(f"{report.stem}.")}
    return [report.parent / name for name in sorted(names - {path.name for path in kept})
            if (report.parent / name).is_file()]


def worst_png_paths(report: str | Path, labels: Sequence[str]) -> dict[str, Path]:
    """Where each artifact's worst-image picture goes, beside the Markdown report, one file each: `model.onnx`
    gives `REPORT.model.worst.png`; where two labels make one name (`model.onnx` and `model.engine`, or
    `x y/m.onnx` and `x_y/m.onnx`) they keep their suffix, and then a number."""
    def clean(text: str) -> str:
        return re.sub(r"[^\w.-]+", "_", text).strip("_.")  # a path label: one file name

    stems = [clean(label.rsplit(".", 1)[0]) for label in labels]
    names = [stem if stems.count(stem) == 1 else clean(label) for stem, label in zip(stems, labels)]
    paths: dict[str, Path] = {}
    used: set[str] = set()
    for label, name in zip(labels, names):
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name}-{n}"
        used.add(unique)
        paths[label] = Path(report).parent / f"{Path(report).stem}.{unique}.worst.png"
    return paths


def _region_figures(cfg: ParityConfig, reference: list[dict[str, float]], gts: list, masks: list,
                    max_depth: float, data_range: float) -> dict:
    """Per-region figures of PyTorch (from its per-image figures) and of the per-pixel mean depth map of
    the train split (when there is one)."""
    from mde.runtime.evaluate import fixed_map_prediction, pixel_mean_map, train_split_baseline
    from mde.runtime.metrics import region_metrics

    figures = {"reference": shown_regions(region_means(reference))}
    if not figures["reference"]:
        return figures
    pixmap = train_split_baseline(cfg.data, cfg.split, cfg.depth_scale, data_range, pixel_mean_map)
    if pixmap is not None:
        figures["pixel_mean_map"] = region_means([
            region_metrics(fixed_map_prediction(pixmap, gt.shape, max_depth), gt, mask)
            for gt, mask in zip(gts, masks) if mask is not None])
    return figures


def run_parity(cfg: ParityConfig) -> list[ArtifactResult]:
    """`mde parity`: run either mode, print the table, write --json / --report; `CheckFailed` when any fails."""
    from mde.io import atomic_paths, check_output_file, deferred_signals, file_identity, is_stdout, json_document
    from mde.runtime.parity_report import print_regions, print_table, write_markdown, write_png

    if (cfg.golden is None) == (cfg.checkpoint is None):
        raise InputError("parity needs either a checkpoint (with --data) or --golden FILE")
    overrides = read_tolerance_table(cfg.tolerances) if cfg.tolerances else None
    for artifact in cfg.artifacts:
        if not Path(artifact).is_file():
            raise ModelError("artifact not found" if not Path(artifact).exists() else
                             "a folder, not an artifact; give its model files (model.onnx, model.engine ...)"
                             if Path(artifact).is_dir() else "not a regular file (a pipe, socket or device)",
                             artifact)
        if Path(artifact).suffix.lower() == ".npz":  # golden outputs compared with themselves would always pass
            raise InputError("a golden.npz holds the reference, it is not an artifact to check; give it as "
                             "--golden FILE", artifact)
    if cfg.providers is not None and cfg.artifacts and not any(runs_on_onnxruntime(a, cfg.backend)
                                                               for a in cfg.artifacts):
        raise providers_refused(cfg.artifacts[0], cfg.backend)  # engines only: they would be ignored
    targets = [file_identity(a) for a in cfg.artifacts]  # one file: by links, hard ones too
    if cfg.checkpoint is not None and Path(cfg.checkpoint).is_file() and file_identity(cfg.checkpoint) in targets:
        raise InputError("the checkpoint is the reference, not an artifact to check against it; give the models "
                         "exported from it", cfg.checkpoint)
    again = next((i for i, r in enumerate(targets) if r in targets[:i]), None)  # the second name, the one to drop
    if again is not None:
        first = cfg.artifacts[targets.index(targets[again])]
        raise InputError(f"artifact given twice (it is {shown_path(first)}); each file is checked once",
                         cfg.artifacts[again])
    inputs = [*cfg.artifacts, *(p for p in (cfg.checkpoint, cfg.golden, cfg.data, cfg.tolerances) if p)]
    if cfg.checkpoint is not None:  # the run it came from: `--json run/config.json` would cost its --resume
        inputs += [Path(cfg.checkpoint).parent / name for name in RUN_FILES]
    for option, out in (("--json", cfg.json_path), ("--report", cfg.report)):
        if out is not None:
            check_output_file(out, option, inputs)
    # the worst-image pictures beside the report are outputs too; they are drawn against a checkpoint only, and
    # not for a report sent to a stream (/dev/stdout): no folder to put them in
    pictures = list(worst_png_paths(cfg.report, artifact_labels(cfg.artifacts)).values()) if with_pictures(cfg) else []
    for picture in pictures:
        check_output_file(picture, "--report's picture", inputs)
    if cfg.json_path and cfg.report:
        if resolved(cfg.json_path) in (resolved(cfg.report), *map(resolved, pictures)):
            raise InputError("--json names a file the report writes (the report, or an artifact's worst-image "
                             "picture); one would replace the other", cfg.json_path)
    pictures: dict[str, tuple[Path, np.ndarray, float]] = {}  # artifact: path, picture, white in metres
    if cfg.golden is not None:
        results = [check_golden(cfg.golden, a, cfg.backend, overrides, cfg.providers, label)
                   for a, label in zip(cfg.artifacts, artifact_labels(cfg.artifacts))]
        header: dict[str, Any] = {"mode": "golden", "golden": str(cfg.golden)}
    else:
        results, header, pictures = check_checkpoint(cfg, tolerances_from_dict(overrides or {}))  # checked when read
    to_stderr = any(p is not None and is_stdout(p) for p in (cfg.json_path, cfg.report))  # stdout: one file only
    print_table(results, f"parity vs {'golden outputs' if cfg.golden else 'PyTorch'}", to_stderr)
    if header.get("regions") or any(r.regions for r in results):  # a golden file: the artifacts' own figures
        print_regions(results, header.get("regions", {}), to_stderr)
    passed = all(r.passed for r in results)
    writes: list[tuple[Path, Callable[[Path], None]]] = [
        (path, functools.partial(write_png, image=picture)) for path, picture, _ in pictures.values()]
    if cfg.json_path is not None:
        document = json_document({**header, "passed": passed, "artifacts": [r.to_dict() for r in results]})
        writes.append((cfg.json_path, lambda tmp: tmp.write_bytes(document)))
    if cfg.report is not None:
        names = {a: (path.name, white) for a, (path, _, white) in pictures.items()}
        writes.append((cfg.report, lambda tmp: write_markdown(tmp, results, header, names)))
    # one set: new pictures must not stand beside an earlier run's report. A first stop waits for the whole set, a
    # failed write (a full disk) leaves the earlier set as it was; a second stop ends the wait (a --json into a
    # pipe nobody reads would block)
    stale = _stale_pictures(cfg.report, [path for path, *_ in pictures.values()]) if cfg.report is not None else []
    with deferred_signals(second_stops=True), atomic_paths(path for path, _ in writes) as temporary:
        for tmp, (_, write) in zip(temporary, writes, strict=True):
            write(tmp)
    for picture in stale:  # the earlier report's, which the new one does not show
        with contextlib.suppress(OSError):
            picture.unlink()
    if not passed:
        failed = "; ".join(f"{r.artifact} ({', '.join(r.failed)})" for r in results if not r.passed)
        raise CheckFailed(f"parity failed: {failed}")
    return results
