"""`mde export CKPT --out DIR`: ONNX FP32/FP16/INT8 and TensorRT engines, each checked against PyTorch."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from mde.commands.options import DEPTH_SCALE_HELP, depth_scale_option, given_options, print_json
from mde.export.config import MAX_OPSET, MIN_OPSET, Artifact, ExportConfig
from mde.io import claim_output

_D = ExportConfig(checkpoint=Path("CKPT"), out=Path("DIR"))  # the defaults, for --help


TIMING_CACHE_HELP = ("Timing cache, reused across builds (default ~/.cache/mde/tensorrt-timing.cache); the TensorRT "
                     "version, GPU architecture and model are added to its name "
                     "(tensorrt-timing-11.4.0.106-sm90-NVIDIA-H100.cache).")


def _engine_option(field: str, help: str):  # noqa: A002 - typer's name
    """A TensorRT build option `--field-name` defaulting to ExportConfig's value, in its own --help panel."""
    return typer.Option(getattr(_D, field), "--" + field.replace("_", "-"), help=help,
                        rich_help_panel="TensorRT engine")


ENGINE_OPTIONS = ("min_batch", "opt_batch", "max_batch", "min_size", "max_size", "workspace_mib", "timing_cache")


def refuse_unused_engine_options(ctx: typer.Context, engine: bool, dynamic_size: bool) -> None:
    """TensorRT profile options given without --engine (or sizes without --dynamic-size) would shape nothing: say
    so rather than ignore them."""
    from mde.errors import InputError

    given = [name for name in ENGINE_OPTIONS if name in given_options(ctx, ENGINE_OPTIONS)]
    sizes = [name for name in given if name in ("min_size", "max_size")]
    for unused, needs, what in ((given, engine, "the TensorRT engine"), (sizes, dynamic_size, "a dynamic-size engine")):
        if unused and not needs:
            names = ", ".join("--" + name.replace("_", "-") for name in unused)
            flag = "--engine" if what == "the TensorRT engine" else "--dynamic-size"
            raise InputError(f"{names} shape{'s' if len(unused) == 1 else ''} {what}; add {flag} "
                             f"(or drop {'it' if len(unused) == 1 else 'them'})")


def export(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt), e.g. RUN/best.pt."),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder."),
    precision: list[str] = typer.Option(
        list(_D.precisions),
        "--precision",
        "-p",
        help="fp32 (model.onnx), fp16 (model.fp16.onnx), int8 (model.int8.onnx); repeatable.",
    ),
    engine: bool = typer.Option(
        _D.engine,
        "--engine",
        help="Also build model.engine (TensorRT 10.3+ or 11, needs a GPU) from the first --precision.",
    ),
    calib_data: Path | None = typer.Option(
        None, "--calib-data",
        help="Dataset for int8 calibration (its train split: a folder, or an NYU .mat), or a folder of images."
    ),
    calib_images: int = typer.Option(
        _D.calib_images, "--calib-images", help="Calibration images for int8."
    ),
    calib_allow_few: bool = typer.Option(
        _D.calib_allow_few,
        "--calib-allow-few",
        help="Accept fewer calibration images than the calibration stage's minimum.",
    ),
    opset: int = typer.Option(
        _D.opset, "--opset",
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (or the newest the installed onnx and ONNX Runtime load).",
    ),
    dynamic_size: bool = typer.Option(
        _D.dynamic_size,
        "--dynamic-size",
        help="Dynamic H and W (multiples of 32) besides the batch.",
    ),
    force: bool = typer.Option(_D.force, "--force", help="Overwrite existing artifacts."),
    golden_images: int = typer.Option(
        _D.golden_images, "--golden-images", show_default=False,
        help="Golden inputs checked and saved in golden.npz (default: 4, or all of --golden-data's val split "
             "where it holds fewer).",
    ),
    golden_data: Path = typer.Option(
        _D.golden_data, "--golden-data",
        help="Dataset whose val images and ground truth become the golden inputs (default: seeded noise).",
    ),
    depth_scale: float | None = depth_scale_option(
        _D.depth_scale, f"Of --golden-data and --calib-data: {DEPTH_SCALE_HELP}"),
    min_batch: int = _engine_option("min_batch", "Profile: smallest batch."),
    opt_batch: int = _engine_option("opt_batch", "Profile: batch tuned for."),
    max_batch: int = _engine_option("max_batch", "Profile: largest batch."),
    min_size: int = _engine_option("min_size", "Profile: smallest H/W with --dynamic-size."),
    max_size: int = _engine_option("max_size", "Profile: largest H/W with --dynamic-size."),
    workspace_mib: int = _engine_option("workspace_mib", "Workspace memory-pool limit."),
    timing_cache: Path = _engine_option("timing_cache", TIMING_CACHE_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print the artifacts as one JSON object on stdout."
    ),
) -> None:
    """Export a checkpoint to ONNX (FP32/FP16/INT8) and optionally a TensorRT engine.

    Every artifact is checked against PyTorch and written only when all pass."""
    import torch  # noqa: F401 - first: a runtime-only install hears it needs the train extra, not onnx alone

    from mde.export.exporter import export_checkpoint, folder_files

    refuse_unused_engine_options(ctx, engine, dynamic_size)
    cfg = ExportConfig(
        checkpoint=checkpoint,
        out=out,
        precisions=tuple(precision),
        engine=engine,
        calib_data=calib_data,
        calib_images=calib_images,
        calib_allow_few=calib_allow_few,
        opset=opset,
        dynamic_size=dynamic_size,
        force=force,
        golden_images=golden_images,
        golden_data=golden_data,
        depth_scale=depth_scale,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        min_size=min_size,
        max_size=max_size,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    with contextlib.ExitStack() as claims:  # the folder, and each file in it an export writes or removes, which a
        for path in (out, *folder_files(out)):  # calibrate may be writing (`--out OUT/model.int8.onnx`)
            claims.enter_context(claim_output(path))
        artifacts = export_checkpoint(cfg)
    if as_json:
        print_json({"artifacts": [a.to_dict() for a in artifacts]}, sort_keys=True)
        return
    width = max((len(str(a.path)) for a in artifacts), default=0)
    for a in artifacts:
        typer.echo(f"{str(a.path):<{width}}  {a.precision:<4}  {a.size_bytes / 2**20:8.1f} MiB  {_checked(a)}".rstrip())


def _checked(a: Artifact) -> str:
    """What the self-check measured against PyTorch (nothing for an engine, checked on its GPU by parity)."""
    said = ""
    if a.p99_abs_diff is not None:
        said = (f"p99 |diff| {a.p99_abs_diff:.3g} m = {a.p99_over_range:.2e} of range "
                f"(tolerance {a.tolerance:g} of range; max {a.max_abs_diff:.3g} m)")
    if a.d_rmse is not None:  # golden images with ground truth: these gate too, as in `mde parity`
        said += f"  dRMSE {a.d_rmse:+.2e} m  dSSIM {a.d_ssim:+.2e}"
    return said


def register(app: typer.Typer) -> None:
    app.command("export")(export)
