"""`mde export`: checkpoint -> ONNX FP32/FP16/INT8 and a TensorRT engine, each checked vs PyTorch.

Every artifact is written under a temporary folder inside the output folder, checked
(onnx.checker, shape inference, ONNX Runtime vs PyTorch on the golden inputs), and only
when every requested artifact passes are they all renamed into place: an export leaves
either all of its artifacts or none.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import CheckFailed, InputError, ModelError
from mde.export.config import (  # noqa: F401 - ExportConfig and Artifact are this module's API too
    ARTIFACT_NAMES,
    ENGINE_NAME,
    EXTRAS,
    GOLDEN_NAME,
    INT8_CPU_NAME,
    Artifact,
    ExportConfig,
    calibration_config,
    depth_scale_for,
    planned_names,
    validate,
)
from mde.export.golden import GoldenInputs, golden_digests, golden_inputs, kept_golden_inputs, write_golden
from mde.io import (
    RENAME_REFUSED,
    UNWRITABLE,
    check_can_write_beside,
    check_not_under_file,
    is_utf8,
    no_empty_new_folder,
    parse_json,
    read_small_text,
    refuse_broken_link,
    remove_stale_scratch,
    replace_together,
    resolved,
    scratch_folder,
)
from mde.runtime.metadata import read_props, sidecar_path
from mde.train.config import same_size, size_text

SCRATCH_PREFIX = ".mde-export-"  # the staging folder inside the output folder


def folder_files(out: Path) -> list[Path]:
    """Every file an export into `out` may write or remove (`--force` removes another checkpoint's artifacts):
    `mde export` holds each, beside the folder, against a `mde calibrate --out` into the folder meanwhile."""
    names = [*ARTIFACT_NAMES.values(), INT8_CPU_NAME, ENGINE_NAME, GOLDEN_NAME]
    return [out / name for name in [*names, *(extra for name in names for extra in EXTRAS.get(name, ()))]]


def _check_out(cfg: ExportConfig, checkpoint_sha: str) -> Path:
    """Check the output folder (creating nothing); refuse existing artifacts unless `force`, and a folder where
    an output file goes."""
    from mde.runtime.predict import check_outside_dataset

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a directory", out)
    if not is_utf8(out.absolute()):  # found now, not by the ONNX checker after the export (an internal error)
        raise InputError("the ONNX tools take a path as UTF-8 text only, and this one is not; choose another "
                         "folder name", out)
    check_outside_dataset(out, "the artifacts")
    if resolved(cfg.checkpoint) in {resolved(p) for p in folder_files(out)}:  # --force would replace what it reads
        raise InputError("the checkpoint is in --out under the name of a file export writes or removes; move it "
                         "or rename it to .pt", cfg.checkpoint)
    check_not_under_file(out, "--out")  # found now, not after the checkpoint was loaded and run
    check_can_write_beside(out / GOLDEN_NAME)
    written = [*planned_names(cfg), GOLDEN_NAME]
    written += [extra for name in written for extra in EXTRAS.get(name, ())]
    blocked = [name for name in written if (out / name).exists() and not (out / name).is_file()]
    if blocked:  # found now: a rename onto a folder would fail only after every artifact was made
        raise InputError(f"{', '.join(blocked)} in the output folder is not a file (a folder?); remove it", out)
    if out.is_dir() and not cfg.force:
        existing = [name for name in planned_names(cfg) if (out / name).exists()]
        golden = out / GOLDEN_NAME
        digest = golden_digests(golden)[0] if golden.exists() else checkpoint_sha
        if digest != checkpoint_sha:  # "": it names no checkpoint (damaged, or an older mde's)
            existing.append(f"{GOLDEN_NAME} ({'from another checkpoint' if digest else 'unreadable, or an older mde'})")
        others = _other_checkpoints(out, checkpoint_sha, set(planned_names(cfg)))
        if existing:  # and what --force removes besides: it is said before, not only after
            also = f", which also removes {', '.join(others)}, made from another checkpoint" if others else ""
            raise InputError(f"would overwrite {', '.join(existing)} (use --force{also})", out)
        if others:
            raise InputError(f"would leave {', '.join(others)}, made from another checkpoint, beside this one's "
                             f"{GOLDEN_NAME} (use --force to remove them)", out)
    return out


def _other_checkpoints(out: Path, checkpoint_sha: str, written: set[str]) -> list[str]:
    """The artifacts in `out` (by this project's names) that an export writing `written` leaves, made
    from another checkpoint than `checkpoint_sha`. Files whose metadata cannot be read are not counted."""
    return _made_elsewhere(_left_sources(out, written), checkpoint_sha)


def _made_elsewhere(sources: dict[str, str | None], checkpoint_sha: str) -> list[str]:
    """The names among `_left_sources`' whose metadata says another checkpoint than `checkpoint_sha`."""
    return [name for name, sha in sources.items() if sha is not None and sha != checkpoint_sha]


def _left_sources(out: Path, written: set[str]) -> dict[str, str | None]:
    """{name: its checkpoint's SHA-256, or None where its metadata cannot be read} of the artifacts in `out` (by
    this project's names) that an export writing `written` leaves."""
    import json

    found: dict[str, str | None] = {}
    for name in (*ARTIFACT_NAMES.values(), INT8_CPU_NAME, ENGINE_NAME):
        path = out / name
        if name in written or not path.is_file():
            continue
        try:
            if name == ENGINE_NAME:
                props = parse_json(read_small_text(sidecar_path(path)))["metadata"]
            else:
                import onnx

                props = read_props(onnx.load(str(path), load_external_data=False))
            found[name] = str(json.loads(props["mde.source"])["checkpoint_sha256"])
        except Exception:  # noqa: BLE001 - not readable as an mde artifact: not ours to judge, but said
            found[name] = None
    return found


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """Create `out` and a temporary folder in it (always removed); an `out` it created and left empty goes too."""
    refuse_broken_link(out)
    with no_empty_new_folder(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"output folder is not writable ({err.strerror or err})", out) from None
        remove_stale_scratch(out, SCRATCH_PREFIX)  # an export killed with SIGKILL left its staging folder
        made = False
        try:
            with scratch_folder(out, SCRATCH_PREFIX) as stage:
                made = True
                yield stage
        except OSError as err:
            if not made:
                raise InputError(f"output folder is not writable ({err.strerror or err})", out) from None
            if err.errno not in UNWRITABLE | RENAME_REFUSED:  # RENAME_REFUSED: a bind-mounted model.onnx, say
                raise
            raise InputError(f"cannot write the export ({err.strerror})", out) from None


class _Steps:
    """A progress display: one line per step on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.total, self.done = enabled, total, 0
        self._progress: Any = None

    def __enter__(self) -> _Steps:
        if self.enabled:
            from mde.console import make_progress

            self._progress = make_progress()
            self._progress.__enter__()
            self._task = self._progress.add_task("export", total=self.total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def step(self, description: str) -> None:
        if self._progress is not None:
            if self.done:
                self._progress.advance(self._task)
            self._progress.update(self._task, description=description)
        self.done += 1

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.total, description="export done")


def _checked_record(state: dict[str, Any], image_size: int | tuple[int, int], checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's training config ({} when it has none), after checking what the metadata copies from it:
    an edited or damaged `epoch` or `config` went into every artifact's `mde.source` as it was.

    Raises:
        ModelError: `epoch` is not a count, `metrics` not an object of numbers, `config` not an object, or its
            image_size not the network's.
    """
    epoch, config, metrics = state.get("epoch"), state.get("config"), state.get("metrics")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise ModelError(f"damaged checkpoint: its epoch is {epoch!r}, not a count of epochs", checkpoint)
    if metrics is not None and not (isinstance(metrics, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in metrics.values())):
        raise ModelError("damaged checkpoint: its metrics are not an object of numbers", checkpoint)
    if config is not None and not isinstance(config, dict):
        raise ModelError(f"damaged checkpoint: its config is a {type(config).__name__}, not an object", checkpoint)
    trained = (config or {}).get("image_size", image_size)
    if not same_size(trained, image_size):
        raise ModelError(f"damaged checkpoint: its config.image_size {trained!r} is not its network's "
                         f"{size_text(image_size)}", checkpoint)
    return config or {}


def _metadata(
    cfg: ExportConfig, state: dict[str, Any], model: Any, checkpoint_sha: str, weights_sha: str, precision: str
) -> Any:
    from mde.train.runner import checkpoint_metadata

    return checkpoint_metadata(
        model,
        state,
        precision=precision,
        dynamic_size=cfg.dynamic_size,
        source={
            "checkpoint": Path(cfg.checkpoint).name,
            "checkpoint_sha256": checkpoint_sha,
            "weights_sha256": weights_sha,
            "epoch": state.get("epoch"),
            "config": state.get("config") or {},
            "opset": cfg.opset,
        },
    )


def _check(path: Path, precision: str, ctx: _Context, started: float) -> Artifact:
    """Graph checks + ONNX Runtime CPU vs PyTorch; `CheckFailed` (nothing renamed) when out of tolerance."""
    from mde.export.onnx_export import EXPECTED_OPS, check_graph, run_onnxruntime

    allowed = EXPECTED_OPS if precision == "fp32" else None
    check_graph(path, allowed, shown=ARTIFACT_NAMES[precision])
    output = run_onnxruntime(path, ctx.image)
    return _within_tolerance(path, precision, output, ctx, started, "ONNX Runtime output", ARTIFACT_NAMES[precision])


def _within_tolerance(path: Path, precision: str, output: np.ndarray, ctx: _Context, started: float, what: str,
                      shown: str) -> Artifact:
    """The `Artifact` for `path` when `output` (of the first golden images) matches PyTorch's within the parity
    tolerance.

    The comparison and the table are parity's own (`mde.runtime.parity`): with golden inputs from a
    dataset (`--golden-data`) dRMSE and dSSIM against its ground truth gate too, as in `mde parity`;
    with noise inputs only the tensor statistic p99 |diff| / depth range does, as in golden mode.

    Raises:
        CheckFailed: out of tolerance (nothing is renamed into place).
    """
    from mde.runtime.parity import DEFAULT_TOLERANCES, compare

    tolerance = DEFAULT_TOLERANCES[precision]
    count = len(output)
    gts = ctx.golden.gts[:count] or None
    result = compare(list(ctx.reference[:count]), list(output), gts, tolerance=tolerance, max_depth=ctx.depth_range,
                     data_range=ctx.golden.data_range or ctx.depth_range, label=shown, precision=precision)
    if not result.passed:
        why = []
        if "p99" in result.failed or "nan" in result.failed:
            why.append(f"p99 |diff| / depth range = {result.p99_over_range:.3g} > {tolerance.p99_over_range:g} "
                       f"(max |diff| {result.max_abs_diff:.4g} m)")
        if "rmse" in result.failed:
            why.append(f"|dRMSE| against the ground truth = {abs(result.d_rmse):.3g} m > "
                       f"{tolerance.rmse_limit(result.rmse - result.d_rmse):.3g} m")
        if "ssim" in result.failed:
            why.append(f"|dSSIM| = {abs(result.d_ssim):.3g} > {tolerance.ssim_abs:g}")
        raise CheckFailed(f"{precision} {what} differs from PyTorch: {'; '.join(why)}; no artifact written", shown)
    return Artifact(
        path=path,
        precision=precision,
        size_bytes=path.stat().st_size,
        max_abs_diff=result.max_abs_diff,
        p99_abs_diff=result.p99_abs_diff,
        p99_over_range=result.p99_over_range,
        tolerance=tolerance.p99_over_range,
        d_rmse=result.d_rmse,
        d_ssim=result.d_ssim,
        passed=True,
        seconds=time.perf_counter() - started,
    )


def export_fp32_onnx(ctx: _Context, dst: Path) -> Artifact:
    """`model.onnx`: FP32, dynamic batch (and H/W with dynamic_size), metadata, checked."""
    from mde.export.onnx_export import set_metadata

    started = time.perf_counter()
    shutil.copyfile(ctx.base_onnx, dst)
    set_metadata(dst, ctx.metadata("fp32"))
    return _check(dst, "fp32", ctx, started - ctx.base_seconds)


def export_fp16_onnx(ctx: _Context, dst: Path) -> Artifact:
    """`model.fp16.onnx`: FP16 compute, FP32 I/O, metadata precision fp16, checked."""
    from mde.export.fp16 import convert_fp16
    from mde.export.onnx_export import set_metadata

    started = time.perf_counter()
    convert_fp16(ctx.base_onnx, dst)
    set_metadata(dst, ctx.metadata("fp16"))
    return _check(dst, "fp16", ctx, started)


def export_int8_onnx(ctx: _Context, dst: Path) -> Artifact:
    """`model.int8.onnx`: delegates to the calibration stage, then the same checks."""
    from mde.calibration.calibrate import calibrate
    from mde.console import info
    from mde.export.onnx_export import set_metadata

    started = time.perf_counter()
    fp32 = dst.with_name("int8-source.onnx")
    shutil.copyfile(ctx.base_onnx, fp32)
    set_metadata(fp32, ctx.metadata("fp32"))
    report = calibrate(calibration_config(ctx.cfg, fp32, dst))
    if not report.target_met:  # parity below decides; say why it may fail
        info(f"{dst.name}: INT8 SSIM drop {report.after['drop']:.3g} is above the calibration target "
             f"{report.target_ssim_drop:g} with {len(report.float_nodes)} layer(s) kept float")
    return _check(dst, "int8", ctx, started)


def export_engine(ctx: _Context, onnx_path: Path, dst: Path, precision: str) -> Artifact:
    """`model.engine` + sidecar from `onnx_path` (TensorRT 11); compared with PyTorch on the GPU."""
    from mde.export.tensorrt_build import BuildConfig, build_engine, run_engine

    started = time.perf_counter()
    cfg = ctx.cfg
    build_engine(
        onnx_path,
        dst,
        BuildConfig(
            min_batch=cfg.min_batch,
            opt_batch=cfg.opt_batch,
            max_batch=cfg.max_batch,
            dynamic_size=cfg.dynamic_size,
            input_size=ctx.input_size,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            workspace_mib=cfg.workspace_mib,
            timing_cache=cfg.timing_cache,
            precision=precision,
        ),
    )
    batch = ctx.image[: cfg.max_batch]
    return _within_tolerance(dst, precision, run_engine(dst, batch), ctx, started, "TensorRT engine output",
                             ENGINE_NAME)


EXPORTERS: dict[str, Callable[[_Context, Path], Artifact]] = {
    "fp32": export_fp32_onnx,
    "fp16": export_fp16_onnx,
    "int8": export_int8_onnx,
}


def _publish(staged: list[Artifact], stage: Path, out: Path, stale: list[str]) -> list[Artifact]:
    """Rename every checked artifact, the files that travel with it and golden.npz from the staging folder
    into `out`, and remove the `stale` artifacts of another checkpoint: all of it or none of it (a failed
    rename, a Ctrl-C, leaves the old export whole), by `replace_together`."""
    moves: list[tuple[Path | None, Path]] = []
    for artifact in staged:
        for extra in EXTRAS.get(artifact.path.name, ()):
            if (stage / extra).exists():
                moves.append((stage / extra, out / extra))
        moves.append((artifact.path, out / artifact.path.name))
    moves += [(None, out / extra) for name in stale for extra in (name, *EXTRAS.get(name, ()))]
    replace_together([*moves, (stage / GOLDEN_NAME, out / GOLDEN_NAME)], stage / "old")
    for artifact in staged:
        artifact.path = out / artifact.path.name
    return staged


@dataclass
class _Context:
    """What every per-format exporter needs: the base FP32 graph, golden inputs and references."""

    cfg: ExportConfig
    base_onnx: Path
    base_seconds: float
    image: np.ndarray
    reference: np.ndarray
    depth_range: float
    input_size: tuple[int, int]
    metadata: Callable[[str], Any]
    golden: GoldenInputs  # the inputs `image` came from, with their ground truth when from a dataset


def export_checkpoint(cfg: ExportConfig) -> list[Artifact]:
    """Export `cfg.checkpoint` to every requested artifact in `cfg.out`; all or nothing.

    Raises:
        InputError: bad settings, checkpoint or output folder (exit 2), before anything is written.
        BackendError: `engine` without TensorRT or a CUDA GPU (exit 2), before anything is written.
        CheckFailed: an artifact failed a check or is out of tolerance (exit 1); nothing is written.
    """
    validate(cfg)
    from mde.data.readers import trained_png_scale
    from mde.io import require_file, sha256_file

    checkpoint = require_file(cfg.checkpoint, "checkpoint")
    checkpoint_sha = sha256_file(checkpoint)
    out = _check_out(cfg, checkpoint_sha)
    steps = 3 + len(cfg.precisions) + int(cfg.engine)
    with _Steps(steps, cfg.progress) as progress:
        progress.step("loading checkpoint")
        import torch

        from mde.export.onnx_export import export_fp32
        from mde.train.checkpoint import load_model, weights_sha256

        model, state = load_model(checkpoint, "cpu")
        if sha256_file(checkpoint) != checkpoint_sha:  # replaced meanwhile: the digest would name other weights
            raise InputError("the checkpoint changed while it was read (a training run still writing it?); export "
                             "it once it is done", checkpoint)
        weights_sha = weights_sha256(model)
        size = model.args.input_hw
        from mde.export.tensorrt_build import profile_size_problem

        problem = profile_size_problem(cfg.min_size, cfg.max_size, size) if cfg.engine and cfg.dynamic_size else None
        if problem:  # the engine's profile is built around the model's size: said before the export, not after
            raise InputError(f"--min-size/--max-size: {problem}", checkpoint)
        config = _checked_record(state, model.args.image_size, checkpoint)
        kept = None if cfg.golden_data is not None or cfg.golden_images is not None else \
            kept_golden_inputs(out / GOLDEN_NAME, size)
        if kept is not None:  # a noise golden.npz would take the torch-free check's RMSE/SSIM gates away
            from mde.console import info

            info(f"{GOLDEN_NAME}: keeping its {kept.source} with their ground truth (--golden-data chooses others)")
        golden = kept or golden_inputs(cfg.golden_data, size, cfg.golden_images, cfg.golden_seed,
                                       depth_scale=depth_scale_for(cfg, cfg.golden_data),
                                       model_range=float(model.args.max_depth),
                                       trained=(checkpoint, trained_png_scale(config)))
        image = golden.image
        with torch.no_grad():
            reference = model(torch.from_numpy(image)).numpy()
        if not np.isfinite(reference).all():  # not a parity failure of the artifact: nothing to export
            raise ModelError("PyTorch predicts NaN or infinite depth from this checkpoint (a diverged or damaged "
                             "model); nothing to export", checkpoint)

        with _staging(out) as stage:
            progress.step("exporting FP32 graph (torch.onnx, dynamo)")
            started = time.perf_counter()
            base = stage / "base.onnx"
            export_fp32(model, base, size, cfg.opset, cfg.dynamic_size)
            ctx = _Context(
                cfg=cfg,
                base_onnx=base,
                base_seconds=time.perf_counter() - started,
                image=image,
                reference=reference,
                depth_range=float(model.args.max_depth),
                input_size=size,
                metadata=lambda p: _metadata(cfg, state, model, checkpoint_sha, weights_sha, p),
                golden=golden,
            )
            staged: list[Artifact] = []
            for precision in cfg.precisions:
                progress.step(f"{precision}: convert + check against PyTorch")
                staged.append(EXPORTERS[precision](ctx, stage / ARTIFACT_NAMES[precision]))
            if cfg.engine:
                precision = cfg.precisions[0]
                progress.step(f"TensorRT engine from {ARTIFACT_NAMES[precision]}")
                staged.append(export_engine(ctx, staged[0].path, stage / ENGINE_NAME, precision))

            progress.step("writing artifacts")
            write_golden(stage / GOLDEN_NAME, golden, reference, ctx.depth_range, checkpoint_sha, weights_sha,
                         {"backbone": model.args.backbone, "decoder": model.args.decoder})
            # --force: what this export does not rewrite and another checkpoint made would not match golden.npz
            left = _left_sources(out, {a.path.name for a in staged})
            stale = _made_elsewhere(left, checkpoint_sha) if cfg.force else []
            artifacts = _publish(staged, stage, out, stale)  # renames only: a full disk cannot split them
            progress.finish()
    from mde.console import info

    if stale:
        info(f"--force: removed {', '.join(stale)} from {out}, made from another checkpoint")
    unknown = [name for name, sha in left.items() if sha is None]
    if unknown:  # kept, and said: whether it matches the new golden.npz cannot be told
        info(f"note: kept {', '.join(unknown)} in {out}: its metadata cannot be read, so whether it is this "
             f"checkpoint's, as {GOLDEN_NAME} is, is unknown; remove it if it is not")
    return artifacts
