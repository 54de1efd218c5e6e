"""`mde calibrate`: FP32 ONNX -> INT8 Q/DQ ONNX (seeded train images, saved ranges, automatic float fallback)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mde.calibration.config import METHODS, TARGETS, CalibrationConfig
from mde.commands.options import depth_scale_option, print_json
from mde.io import claim_output

if TYPE_CHECKING:  # the calibration module imports onnx: only for the annotations
    from mde.calibration.calibrate import CalibrationReport

_D = CalibrationConfig.__dataclass_fields__


def _default(name: str):
    return _D[name].default


def calibrate_command(
    model: Path = typer.Argument(..., help="FP32 ONNX exported by `mde export` (model.onnx)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (images from its train split), or a folder of "
                              "images without depth (a robot's own frames: no RMSE/SSIM vs ground truth then)."),
    depth_scale: float | None = depth_scale_option(_default("depth_scale")),
    out: Path = typer.Option(
        ..., "--out", help="INT8 Q/DQ ONNX to write; its ranges go beside it (FILE.onnx -> FILE.ranges.json)."),
    target: str = typer.Option(
        _default("target"), "--target",
        help=f"Runtime the INT8 model is for: {', '.join(TARGETS)} (tensorrt: symmetric INT8 Q/DQ, float "
             "biases; cpu: the fastest form for ONNX Runtime's CPU provider)."),
    method: str = typer.Option(_default("method"), "--method", help=f"Range method: {', '.join(METHODS)}."),
    num_images: int = typer.Option(_default("num_images"), "--num-images", help="Calibration images."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the image draw."),
    max_float_nodes: int = typer.Option(
        _default("max_float_nodes"), "--max-float-nodes",
        help="Most layers the fallback keeps float (a weighted layer each; on --target cpu a rewritten "
             "ConvTranspose is one, its four phase convolutions together; the depth head, always float, is not "
             "counted)."),
    target_ssim_drop: float = typer.Option(
        _default("target_ssim_drop"), "--target-ssim-drop",
        help="Accepted 1 - SSIM(INT8, FP32) on held-out train images."),
    holdout_images: int = typer.Option(
        _default("holdout_images"), "--holdout-images",
        help="Held-out train images for the accuracy check (at most a quarter of the train split)."),
    allow_few: bool = typer.Option(_default("allow_few"), "--allow-few", help="Accept fewer than 32 images."),
    reuse_ranges: bool = typer.Option(
        _default("reuse_ranges"), "--reuse-ranges/--recalibrate",
        help="Reuse the ranges file beside --out (FILE.ranges.json) when it matches."),
    force: bool = typer.Option(_default("force"), "--force", help="Overwrite OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Calibrate and quantize an FP32 ONNX to INT8 Q/DQ for TensorRT or for ONNX Runtime's CPU provider."""
    from mde.calibration.calibrate import calibrate
    from mde.errors import InputError
    from mde.io import resolved
    from mde.runtime.metadata import ranges_path

    for path in (Path(out), ranges_path(out)):  # checked here: export's INT8, staged in its --out, is moved out
        if resolved(data) in resolved(path).parents:  # a dataset holds data: its readers would meet these files
            raise InputError(f"the output would lie inside the dataset {data}; choose a file outside it", path)
    cfg = CalibrationConfig(
        model=model, data=data, out=out, target=target, method=method, num_images=num_images, seed=seed,
        allow_few=allow_few, max_float_nodes=max_float_nodes, target_ssim_drop=target_ssim_drop,
        holdout_images=holdout_images, force=force, reuse_ranges=reuse_ranges, depth_scale=depth_scale,
    )
    with claim_output(out):
        report = calibrate(cfg)
    if as_json:
        print_json(report.to_dict(), sort_keys=True)
    else:
        _print(report)
    _check_result(report)


def _check_result(report: CalibrationReport) -> None:
    """Exit 1 (a check that failed) when the written model misses its accuracy target or holds no INT8 layer."""
    from mde.errors import CheckFailed

    if report.quantized_nodes == 0:
        raise CheckFailed("every weighted layer (convolution, matrix product) was kept float, so the model gains "
                          "almost nothing from INT8 (only unweighted operations such as Add and pooling stay "
                          "quantized); allow a larger --target-ssim-drop or fewer --max-float-nodes", report.out)
    if not report.target_met:
        more = ("raise --target-ssim-drop (the search tried every layer that could lower the drop; a larger "
                "--max-float-nodes cannot help)" if report.search_exhausted else
                "raise --max-float-nodes or --target-ssim-drop")
        raise CheckFailed(f"SSIM drop {report.after['drop']:.3g} is above the target {report.target_ssim_drop:g} "
                          f"with {len(report.float_nodes)} layer(s) kept float (written anyway); {more}, or calibrate "
                          "on more images", report.out)


def _print(report: CalibrationReport) -> None:
    from rich.table import Table

    from mde.calibration.subpixel import count_layers
    from mde.console import stdout_console

    table = Table(title=f"INT8 calibration ({report.target}): {report.out}")
    for col in ("model", "float layers", "1-SSIM vs FP32", "RMSE vs FP32 (m)", "RMSE vs GT (m)", "SSIM vs GT"):
        table.add_column(col)
    def vs_gt(value: float) -> str:  # images without depth: not measured
        return "-" if math.isnan(value) else f"{value:.4f}"

    table.add_row("FP32", "-", "0", "0", vs_gt(report.fp32["rmse"]), vs_gt(report.fp32["ssim"]))
    head = count_layers(report.float_head)  # layers, as the search counts its own: a rewritten ConvTranspose is one
    for label, m, n in (("INT8 (all but the head)", report.before, head),
                        ("INT8 (written)", report.after, head + len(report.float_nodes))):
        table.add_row(label, str(n), f"{m['drop']:.2e}", f"{m['rmse_vs_fp32']:.4f}",
                      vs_gt(m["rmse"]), vs_gt(m["ssim"]))
    console = stdout_console(120)
    console.print(table)
    console.print(
        f"{report.num_images} images ({report.method}, seed {report.seed}), ranges "
        f"{'reused from' if report.ranges_reused else 'saved to'} {report.ranges}; "
        f"target {report.target_ssim_drop:g} {'met' if report.target_met else 'NOT met'}; "
        f"kept float by the search: {', '.join(report.float_nodes) or 'none'}"
        f"{f' (tried and left INT8, no lower drop: {len(report.rejected)})' if report.rejected else ''}; the head's "
        f"{head} layer(s) are always float"
    )
    kernels = report.integer_kernels
    if kernels:
        console.print(f"ONNX Runtime CPU: {kernels['integer']} of {kernels['convolutions']} convolutions run as "
                      f"integer kernels ({len(kernels['unfused'])} quantized ones left in float)")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
