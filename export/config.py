"""`ExportConfig` (what `mde export` is asked for), its validation, and the artifact names."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mde.calibration.config import CalibrationConfig
from mde.errors import InputError
from mde.io import check_outside_splits
from mde.runtime.metadata import (  # noqa: F401 - the artifact names are re-exported for the export stage
    ARTIFACT_NAMES,
    DEPTH_SCALE_RANGE,
    ENGINE_NAME,
    EXTRAS,
    GOLDEN_NAME,
    INT8_CPU_NAME,
    MAX_INPUT_SIDE,
    PRECISIONS,
)

MIN_OPSET = 17
MAX_GOLDEN_IMAGES = 64  # golden.npz holds each input and its output: 64 at 224 px is about 50 MB
# The newest opset exported and checked here (ONNX Runtime 1.31 loads up to 26 and refuses newer ones);
# an older onnx or ONNX Runtime, which checks every export, lowers the bound (`max_opset`).
MAX_OPSET = 26
MAX_WORKSPACE_MIB = 1 << 20  # --workspace-mib: 1 TiB, past any GPU's memory (TensorRT takes bytes, MiB << 20)


@dataclass
class ExportConfig:
    """Settings of `mde export` (the CLI options map one to one onto these fields).

    Args:
        checkpoint: the training checkpoint (.pt).
        out: the export folder.
        precisions: ONNX artifacts to write, from fp32, fp16, int8.
        engine: also build `model.engine` (TensorRT 11) from the first precision's ONNX.
        calib_data: dataset for INT8 calibration, a folder or an NYU file, or a folder of images (needed by int8).
        calib_images: calibration images drawn from it.
        calib_allow_few: accept fewer than the calibration stage's minimum number of images.
        opset: ONNX opset (MIN_OPSET to `max_opset()`).
        dynamic_size: make H and W dynamic (multiples of 32) besides the batch.
        force: overwrite existing artifacts.
        golden_images: golden inputs saved in golden.npz and used for the checks (None: `DEFAULT_GOLDEN_IMAGES`,
            or all of `golden_data`'s val split where it holds fewer).
        golden_seed: seed of the random golden inputs (when no `golden_data` is given).
        golden_data: dataset folder whose val images (and ground truth) are the golden inputs; None: noise.
        depth_scale: 16-bit depth PNG units per metre in `golden_data` and `calib_data` (in the one of them that
            has PNG depth, where the other has none: `depth_scale_for`); None: the format's own (1000, KITTI 256).
        min_batch: TensorRT profile minimum batch.
        opt_batch: TensorRT profile batch the kernels are tuned for.
        max_batch: TensorRT profile maximum batch.
        min_size: TensorRT profile smallest H/W with dynamic_size.
        max_size: TensorRT profile largest H/W with dynamic_size.
        workspace_mib: TensorRT workspace memory-pool limit.
        timing_cache: TensorRT timing cache file, reused across builds (None: ~/.cache/mde's).
        progress: show a progress display on stderr.
    """

    checkpoint: Path
    out: Path
    precisions: tuple[str, ...] = ("fp32",)
    engine: bool = False
    calib_data: Path | None = None
    calib_images: int = 256
    calib_allow_few: bool = False
    opset: int = 18
    dynamic_size: bool = False
    force: bool = False
    golden_images: int | None = None
    golden_seed: int = 0
    golden_data: Path | None = None
    depth_scale: float | None = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_size: int = 32
    max_size: int = 1024
    workspace_mib: int = 4096
    timing_cache: Path | None = None  # None: the builder's default_timing_cache, found only when a build needs it
    progress: bool = True


@dataclass
class Artifact:
    """One written artifact and its measured error against PyTorch on the golden inputs."""

    path: Path
    precision: str
    size_bytes: int
    max_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    p99_over_range: float | None = None
    tolerance: float | None = None
    d_rmse: float | None = None  # RMSE against the ground truth, artifact - PyTorch (golden images from a dataset)
    d_ssim: float | None = None
    passed: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@functools.cache
def max_opset() -> int:
    """The newest opset an export may target: MAX_OPSET, or less where the installed onnx stops earlier
    or the installed ONNX Runtime refuses to load it (tried on a one-node model)."""
    import onnx

    newest = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    while newest > MIN_OPSET and not _runtime_loads(newest):
        newest -= 1
    return newest


def _runtime_loads(opset: int) -> bool:
    """Whether ONNX Runtime opens a model stamped with `opset` (an Identity node).

    Only the opset is probed (IR version 8, which every supported ONNX Runtime reads); the export's
    own check still loads the real model. With ALLOW_RELEASED_ONNX_OPSET_ONLY=0 ONNX Runtime only
    warns about unreleased opsets, and MAX_OPSET is then the bound.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT raises its own pybind types
        return False
    return True


def depth_scale_for(cfg: ExportConfig, data: Path | None) -> float | None:
    """`--depth-scale` for one of the export's datasets: as given where it has PNG depth, None where it has none
    but the other one has (one option for two datasets, a KITTI golden set and a .npy calibration set), or where
    its meta.json declares its scale and the other one's PNG depth needs the option; as given where neither has,
    for the dataset reader to refuse."""
    from mde.data.readers import declared_depth_scale, has_png_depth

    if cfg.depth_scale is None or data is None:
        return None
    others = [Path(d) for d in (cfg.golden_data, cfg.calib_data) if d is not None and Path(d) != Path(data)]
    if declared_depth_scale(data) is not None and any(has_png_depth(d) and declared_depth_scale(d) is None
                                                      for d in others):
        return None
    if has_png_depth(data) or not any(has_png_depth(d) for d in others):
        return cfg.depth_scale
    return None


def calibration_config(cfg: ExportConfig, model: Path, out: Path) -> CalibrationConfig:
    """The calibration stage's settings for `--precision int8`: FP32 `model` in, INT8 `out` written."""
    return CalibrationConfig(model=model, data=Path(cfg.calib_data), out=out, num_images=cfg.calib_images,
                             allow_few=cfg.calib_allow_few, force=True, progress=cfg.progress,
                             depth_scale=depth_scale_for(cfg, Path(cfg.calib_data)))


def validate(cfg: ExportConfig) -> None:
    """Reject bad settings, and calibration data int8 cannot use, before any work (exit 2)."""
    if not cfg.precisions:
        raise InputError("no --precision given; choose from " + ", ".join(PRECISIONS))
    for precision in cfg.precisions:
        if precision not in PRECISIONS:
            raise InputError(
                f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
            )
    if len(set(cfg.precisions)) != len(cfg.precisions):
        raise InputError(f"--precision repeated: {', '.join(cfg.precisions)}")
    if "int8" in cfg.precisions:
        if cfg.calib_data is None:
            raise InputError("--precision int8 needs calibration images: pass --calib-data DATASET")
        if not Path(cfg.calib_data).exists():  # a folder, or an NYU file, as `mde calibrate --data` takes
            raise InputError("calibration data not found", cfg.calib_data)
        if cfg.calib_images < 1:
            raise InputError(f"--calib-images must be >= 1, got {cfg.calib_images}")
        from mde.calibration.calibrate import open_train_split

        open_train_split(calibration_config(cfg, Path("model.onnx"), Path("model.int8.onnx")),
                         allow_few_option="--calib-allow-few", notice=False)
    else:  # given for nothing: say so rather than ignore it
        given = [option for option, used in (("--calib-data", cfg.calib_data is not None),
                                             ("--calib-images", cfg.calib_images != ExportConfig.calib_images),
                                             ("--calib-allow-few", cfg.calib_allow_few)) if used]
        if given:
            raise InputError(f"{given[0]} calibrates INT8; add --precision int8 (or drop {given[0]})")
    if not MIN_OPSET <= cfg.opset <= max_opset():
        why = "" if max_opset() == MAX_OPSET else ", the newest the installed onnx and ONNX Runtime load"
        raise InputError(f"--opset must be in {MIN_OPSET}..{max_opset()}{why}, got {cfg.opset}")
    if cfg.golden_images is not None and not 1 <= cfg.golden_images <= MAX_GOLDEN_IMAGES:  # each: an input and output
        raise InputError(f"--golden-images must be 1..{MAX_GOLDEN_IMAGES}, got {cfg.golden_images}")
    # options of the steps they shape, checked even when that step is not asked for (a typo would wait for it)
    if cfg.calib_images < 1:
        raise InputError(f"--calib-images must be >= 1, got {cfg.calib_images}")
    if cfg.depth_scale is not None and not DEPTH_SCALE_RANGE[0] <= cfg.depth_scale <= DEPTH_SCALE_RANGE[1]:
        raise InputError(f"--depth-scale must be {DEPTH_SCALE_RANGE[0]:g} to {DEPTH_SCALE_RANGE[1]:g} PNG units "
                         f"per metre, got {cfg.depth_scale}")
    if cfg.depth_scale is not None and cfg.golden_data is None and cfg.calib_data is None:  # given for nothing
        raise InputError("--depth-scale reads the depth maps of --golden-data and --calib-data; add one "
                         "(or drop --depth-scale)")
    if not 1 <= cfg.workspace_mib <= MAX_WORKSPACE_MIB:
        raise InputError(f"--workspace-mib must be 1..{MAX_WORKSPACE_MIB}, got {cfg.workspace_mib}")
    if not 32 <= cfg.min_size <= cfg.max_size <= MAX_INPUT_SIDE:
        raise InputError(f"--min-size/--max-size must satisfy 32 <= min <= max <= {MAX_INPUT_SIDE}, got "
                         f"{cfg.min_size}/{cfg.max_size}")
    from mde.export.tensorrt_build import profile_size_problem

    problem = profile_size_problem(cfg.min_size, cfg.max_size)
    if problem:
        raise InputError(f"--min-size/--max-size: {problem}")
    for data in (cfg.golden_data, cfg.calib_data):
        if data is not None:
            check_outside_splits(cfg.out, data)
    if not 1 <= cfg.min_batch <= cfg.opt_batch <= cfg.max_batch:
        raise InputError(
            f"--min-batch/--opt-batch/--max-batch must satisfy 1 <= min <= opt <= max, got "
            f"{cfg.min_batch}/{cfg.opt_batch}/{cfg.max_batch}"
        )
    if cfg.engine:
        from mde.export.tensorrt_build import require_tensorrt

        require_tensorrt()


def planned_names(cfg: ExportConfig) -> list[str]:
    """File names this export writes into `cfg.out`."""
    names = [ARTIFACT_NAMES[p] for p in cfg.precisions]
    if cfg.engine:
        names += [ENGINE_NAME, ENGINE_NAME + ".json"]
    return names
