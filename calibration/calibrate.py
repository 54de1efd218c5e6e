"""`calibrate(cfg)`: FP32 ONNX -> INT8 Q/DQ ONNX from seeded train images, with accuracy-driven float fallback."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mde.calibration.config import METHODS, MIN_IMAGES, SEED_LIMIT, TARGETS, WEIGHTED_OPS, CalibrationConfig
from mde.calibration.inspect import integer_kernel_share
from mde.calibration.ranges import load_ranges, save_ranges
from mde.calibration.subpixel import one_per_layer, phase_layers, rewritable, rewrite_conv_transpose
from mde.console import info, make_progress
from mde.errors import DataError, InputError, ModelError, counted, shown_path
from mde.io import (
    atomic_path,
    check_can_write_beside,
    check_not_under_file,
    is_utf8,
    require_file,
    resolved,
    temp_scratch,
    written_in_place,
)
from mde.runtime.backends.onnxruntime import create_session
from mde.runtime.images import IMAGE_SUFFIXES, list_images, notes_once_per_folder, read_rgb
from mde.runtime.metadata import ModelMetadata, check_graph_input, check_graph_output, read_props, stamp
from mde.runtime.preprocess import preprocess

log = logging.getLogger(__name__)
QUANTIZER_PROPS = ("onnx.infer", "onnx.quant.pre_process")  # ONNX Runtime's notes in the models it writes


@dataclass
class CalibrationReport:
    """What `calibrate` did: images, ranges (computed or reused), float nodes, accuracy before/after."""

    model: str
    out: str
    target: str
    ranges: str
    ranges_reused: bool
    method: str
    seed: int
    num_images: int
    holdout_images: int
    quantized_nodes: int
    qdq: dict[str, int]
    target_ssim_drop: float
    target_met: bool
    float_nodes: list[str]               # kept float by the fallback search
    fp32: dict[str, float]               # FP32 RMSE/SSIM vs ground truth on the held-out images
    before: dict[str, float]             # every quantizable node INT8 but the head
    after: dict[str, float]              # with `float_nodes` kept float (the written model)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)
    rejected: list[tuple[str, float]] = field(default_factory=list)  # tried float, no lower drop: left INT8
    search_exhausted: bool = False  # no layer left that could lower the drop: more --max-float-nodes cannot help
    seconds: float = 0.0
    integer_kernels: dict[str, Any] = field(default_factory=dict)  # cpu: `inspect.integer_kernel_share`
    float_head: list[str] = field(default_factory=list)  # the depth head's nodes, never quantized (`head_nodes`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_config(cfg: CalibrationConfig) -> None:
    from mde.calibration.quantize import external_data_files

    if cfg.target not in TARGETS:
        raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {cfg.target!r}")
    if cfg.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    for name, value in (("--num-images", cfg.num_images), ("--holdout-images", cfg.holdout_images)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if cfg.max_float_nodes < 0:
        raise InputError(f"--max-float-nodes must be >= 0, got {cfg.max_float_nodes}")
    if not 0.0 <= cfg.target_ssim_drop <= 1.0:  # NaN fails too
        raise InputError(f"--target-ssim-drop must be in [0, 1], got {cfg.target_ssim_drop}")
    if not 0.0 < cfg.percentile <= 100.0:
        raise InputError(f"percentile must be in (0, 100], got {cfg.percentile}")
    if Path(cfg.out).suffix.lower() != ".onnx":  # as every reader takes it: UP.ONNX too
        raise InputError("expected an output file name ending in .onnx", cfg.out)
    if not is_utf8(Path(cfg.out).absolute()):  # ONNX Runtime opens no such path: every later command would refuse it
        raise InputError("ONNX Runtime opens a path as UTF-8 text only, and this one is not; choose another name",
                         cfg.out)
    inputs = {resolved(cfg.model)}  # the model, and the files beside it that hold its weights
    if Path(cfg.model).is_file() and Path(cfg.model).suffix.lower() == ".onnx":
        with contextlib.suppress(Exception):  # a model ONNX cannot read is refused by its own check, later
            inputs.update(resolved(p) for p in external_data_files(Path(cfg.model)))
    for path in (Path(cfg.out), cfg.ranges_path):  # found now, not after the whole calibration
        if path.is_dir():
            raise InputError("the output is a folder; expected a file name", path)
        if path.exists() and not path.is_file() and not path.is_symlink():  # a link is replaced (`written_in_place`)
            raise InputError("the output is no regular file (a FIFO or a device?); expected a file name", path)
        if resolved(path) in inputs:
            raise InputError("the output would overwrite the input model" if resolved(path) == resolved(cfg.model)
                             else "the output would overwrite the input model's weights file", path)
    check_not_under_file(cfg.out, "--out")
    for path in (Path(cfg.out), cfg.ranges_path):  # a stream or /dev, /sys, a read-only disk
        if written_in_place(path):
            raise InputError("the output is a stream; expected a file name", path)
        check_can_write_beside(path)
    if Path(cfg.out).exists() and not cfg.force:
        raise InputError("output exists (use --force to overwrite)", cfg.out)
    if not 0 <= cfg.seed <= SEED_LIMIT:
        raise InputError(f"--seed must be in 0..{SEED_LIMIT}, got {cfg.seed}")


def _quiet_onnxruntime() -> Any:
    """onnxruntime, its default logger at errors only: the quantizer opens sessions of its own, and their
    warnings would stand beside the one error line (ours are opened at that level)."""
    from mde.runtime.backends.onnxruntime import import_ort

    ort = import_ort()
    ort.set_default_logger_severity(3)
    return ort


def _check_golden_beside(cfg: CalibrationConfig, meta: ModelMetadata) -> None:
    """Refuse, without --force, an output beside a golden.npz of another checkpoint than the model's (as export
    refuses such a mix): `mde parity --golden` on the folder would fail it, named only then."""
    from mde.export.golden import golden_digests
    from mde.runtime.metadata import GOLDEN_NAME

    golden = Path(cfg.out).parent / GOLDEN_NAME
    ours = meta.source.get("checkpoint_sha256")
    if cfg.force or not ours or not golden.is_file():
        return
    theirs, their_weights = golden_digests(golden)
    same_weights = bool(their_weights) and meta.source.get("weights_sha256") == their_weights  # best.pt, last.pt
    if theirs and theirs != ours and not same_weights:
        raise InputError(f"would put a model of checkpoint {ours[:12]} beside {GOLDEN_NAME} of checkpoint "
                         f"{theirs[:12]}, whose torch-free parity check it would fail; choose another folder, or "
                         "use --force", cfg.out)


def _dims(tensor: Any) -> tuple[int | None, ...]:
    """An ONNX tensor type's shape, None for a dimension without a fixed value."""
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _np_dtype(elem_type: int) -> Any:
    """An ONNX element type as numpy's (void where numpy has none)."""
    from onnx import helper

    try:
        return helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        return np.void


def load_source(path: Path) -> tuple[Any, ModelMetadata]:
    """Load the FP32 ONNX and its `mde.*` metadata; refuse non-ONNX, metadata-less, FP16 or quantized models."""
    import onnx
    from google.protobuf.message import DecodeError

    from mde.runtime.artifact import graph_precision

    path = require_file(path, "ONNX model")
    if path.suffix.lower() != ".onnx":  # onnx and its quantizer choose a text format by the suffix (.json, .onnxtxt)
        raise ModelError(f"expected an .onnx model, got {path.suffix or 'no suffix'}", path)
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as err:  # external data missing or outside the model's folder
        raise ModelError(f"cannot load ONNX model ({str(err).strip().splitlines()[0][:300]})", path) from None
    except (DecodeError, ValueError, OSError, RuntimeError) as err:
        raise ModelError(f"not an ONNX model ({type(err).__name__})", path) from None
    if not model.ir_version or not model.graph.node:
        raise ModelError("not an ONNX model (no graph)", path)
    meta = ModelMetadata.from_props(read_props(model), path)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ModelError(f"graph has {len(inputs)} inputs; expected one image input", path)
    tensor = inputs[0].type.tensor_type
    check_graph_input(np.float32 if tensor.elem_type == onnx.TensorProto.FLOAT else np.void, _dims(tensor), meta, path)
    # as the runtime opens the model: an INT8 file every other command refuses is not written
    check_graph_output({o.name: (_np_dtype(o.type.tensor_type.elem_type), _dims(o.type.tensor_type))
                        for o in model.graph.output}, path, None if meta.dynamic_size else tuple(meta.input_size))
    found = graph_precision(model)
    if found == "int8":
        raise ModelError("already quantized (has QuantizeLinear/DequantizeLinear or integer nodes); "
                         "calibrate the FP32 model.onnx", path)
    if meta.precision != "fp32":
        raise ModelError(f"expected an FP32 model, found precision {meta.precision}", path)
    if found == "fp16":  # an FP16 conversion that kept model.onnx's metadata: the quantizer would keep them half
        half = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        raise ModelError(f"its metadata says fp32, but {counted(half, 'weight tensor')} in the graph are float16; "
                         "calibrate the FP32 model.onnx", path)
    if not any(n.op_type in WEIGHTED_OPS for n in model.graph.node):
        raise ModelError(f"nothing to quantize: the graph has no {', '.join(WEIGHTED_OPS[:-1])} or "
                         f"{WEIGHTED_OPS[-1]} layer", path)
    # found now, not by the quantizer's sessions on a scratch copy (with a traceback); opened from its bytes, as
    # ONNX Runtime opens no path that is not UTF-8 (weights kept beside the model are in `model` already)
    create_session(model.SerializeToString(), source=path, providers=["CPUExecutionProvider"], optimization="disable")
    return model, meta


def name_nodes(model: Any) -> int:
    """Give each unnamed node of `model` a name of its own (ONNX allows none; the float fallback finds layers by
    name, and two unnamed nodes would be taken for one). Returns how many were named."""
    taken = {n.name for n in model.graph.node}
    named = 0
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def select_images(names: list[str], cfg: CalibrationConfig, source: Path,
                  allow_few_option: str = "--allow-few", notice: bool = True,
                  pool: str = "train split") -> tuple[list[int], list[int]]:
    """Seeded draw: held-out indices first (min(holdout, N//4)), then up to `num_images` calibration indices.

    Args:
        allow_few_option: the option that accepts fewer images, as the command being run names it.
        notice: say when fewer images than asked are held out (off for a check before the real draw).
        pool: what the images are, for messages: a dataset's "train split", or a "folder" of images.
    """
    train = "train " if pool == "train split" else ""
    perm = np.random.default_rng(cfg.seed).permutation(len(names)).tolist()
    n_hold = min(cfg.holdout_images, len(names) // 4)
    if n_hold == 0:
        raise DataError(f"{pool} has {counted(len(names), 'image')}; need at least 4 (calibration + held-out)",
                        source)
    holdout, calib = perm[:n_hold], perm[n_hold:n_hold + cfg.num_images]
    if len(calib) < MIN_IMAGES and not cfg.allow_few:
        raise DataError(
            f"{len(calib)} calibration images ({pool}: {len(names)}, {n_hold} held out); "
            f"expected at least {MIN_IMAGES} (use {allow_few_option} to accept fewer)", source)
    if notice and n_hold < cfg.holdout_images:
        info(f"{source}: holding out {n_hold} of its {len(names)} {train}images for the accuracy check, "
             f"not {cfg.holdout_images} (at most a quarter)")
    if notice and len(calib) < cfg.num_images:
        info(f"{source}: calibrating on {len(calib)} images, all its {pool} has besides the held-out ones, "
             f"not {cfg.num_images}")
    return holdout, calib


@dataclass
class Frame:
    """An image without a depth map."""

    name: str
    rgb: np.ndarray
    depth: None = None


class UnlabelledImages:
    """A folder of images with no depth maps (a robot's own camera frames): enough to calibrate, since the ranges
    and the accuracy check compare INT8 with FP32; RMSE and SSIM against ground truth are then not measured."""

    def __init__(self, folder: Path):
        from mde.data.readers import refuse_odd_entries, subfolders

        refuse_odd_entries(folder, IMAGE_SUFFIXES)  # as a dataset's split: an image left out changes the calibration
        self.folder = folder
        self.paths = list_images(folder)
        nested = subfolders(folder)
        if nested:  # a sequence per folder: not read, and said (the dataset reader says it too)
            log.warning("%s: the images in subfolders (%s/%s) are not read: calibration reads the folder's own "
                        "images", folder, "/, ".join(nested[:3]), ", ..." if len(nested) > 3 else "")
        self.names = [path.name for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Frame:
        with notes_once_per_folder(self.folder):  # a camera's grey frames: one note, as for a dataset's
            return Frame(self.names[index], read_rgb(self.paths[index]))


def loose_images(data: Path) -> bool:
    """Whether `data` is to be read as a folder of images: a folder without a dataset's layout (train/, val/, a
    split's rgb/; KITTI's selection, whose reader says what it lacks). A look at its entries, not a listing."""
    from mde.data.readers import kitti_selection

    return data.is_dir() and not any((data / name).exists() for name in ("train", "val", "rgb")) \
        and kitti_selection(data) is None


def open_train_split(cfg: CalibrationConfig, allow_few_option: str = "--allow-few",
                     notice: bool = True) -> tuple[Any, list[int], list[int]]:
    """The images to calibrate on, the train split of a dataset or a folder of images (`UnlabelledImages`), and
    their held-out and calibration indices (`select_images`).

    Raises:
        DataError: no usable train split, or too few images in it.
    """
    from mde.data.readers import open_dataset

    data = Path(cfg.data)
    pool, dataset = "train split", None
    if data.name in ("depth", "mask") and (data.parent / "rgb").is_dir():  # its PNGs would pass for grey frames
        kind = "depth maps" if data.name == "depth" else "region masks"
        dataset = shown_path(data.parents[1] if len(data.parts) > 2 else resolved(data).parents[1])  # as typed
        raise InputError(f"a dataset split's {kind}, not camera images; give the dataset ({dataset}), or the split's "
                         "rgb/ folder", data)
    if data.name in ("groundtruth_depth", "velodyne_raw") and (data.parent / "image").is_dir():  # KITTI's, alike
        raise InputError(f"KITTI's {data.name}/ holds depth maps, not camera images; give its image/ folder "
                         f"({shown_path(data.parent / 'image')})", data)
    if loose_images(data):
        pool, dataset = "folder", UnlabelledImages(data)
        if not len(dataset):
            raise DataError("no images here, and no train/ split of a dataset; expected a dataset folder or a "
                            "folder of images", data)
        if cfg.depth_scale is not None:
            raise InputError("--depth-scale reads a dataset's PNG depth; a folder of images has none", data)
    else:
        if (data / "rgb").is_dir() and (data / "depth").is_dir() and not (data / "train").is_dir():
            raise InputError(f"a dataset split's folder; give the dataset ({data.parent}, with train/), or a folder "
                             "of images", data)
        # as training reads it: the calibration images need no depth, and the held-out check skips a map of none
        dataset = open_dataset(data, split="train", depth_scale=cfg.depth_scale, empty_depth_ok=True)
    holdout, calib = select_images(list(dataset.names), cfg, data, allow_few_option, notice, pool)
    return dataset, holdout, calib


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with make_progress() as progress:
        yield progress


def calibrate(cfg: CalibrationConfig) -> CalibrationReport:
    """Calibrate `cfg.model` on train images, quantize to Q/DQ INT8, fall back to float where needed, write `cfg.out`.

    Raises:
        InputError, ModelError, DataError: bad model, dataset or options (exit 2).
    """
    import onnx

    from mde.calibration import fallback, float_layers
    from mde.calibration import quantize as qz
    from mde.data.readers import check_depth_units, dataset_max_depth, note_trained_depth_scale, trained_png_scale

    started = time.perf_counter()
    cfg.model, cfg.data, cfg.out = Path(cfg.model), Path(cfg.data), Path(cfg.out)
    _check_config(cfg)
    source, meta = load_source(cfg.model)
    _check_golden_beside(cfg, meta)
    labelled = not loose_images(cfg.data)
    # a bad meta.json refused now, not after calibrating; a folder of images: the FP32 predictions' own range
    data_range = dataset_max_depth(cfg.data, meta.max_depth) if labelled else None
    dataset, hold_idx, calib_idx = open_train_split(cfg)
    if data_range is not None:
        note_trained_depth_scale(cfg.model, trained_png_scale(meta.source.get("config")),
                                 getattr(dataset, "depth_scale", None), cfg.data)
        check_depth_units(dataset, data_range)  # the accuracy check's ground truth
    size = tuple(meta.input_size)
    # ONNX Runtime's own temporary folders within ours, so that a Ctrl-C anywhere leaves none of them behind
    with temp_scratch("mde-calibrate-") as tmp, _progress(cfg.progress) as progress:
        # first: a bad file among them is found before the calibration pass
        holdout = _read(dataset, hold_idx, lambda frame: frame, progress, "read held-out")
        pre_path, named = tmp / "pre.onnx", tmp / "named.onnx"
        # what the float fallback can tell apart: the named graph is quantized; and ONNX Runtime's pre-processing
        # opens no path that is not UTF-8 (it logged a traceback and skipped its optimization): a copy is given
        if name_nodes(source) or not is_utf8(cfg.model):
            onnx.save(source, str(named))
        qz.pre_process(named if named.exists() else cfg.model, pre_path, shown=cfg.model)
        pre = onnx.load(str(pre_path))
        if cfg.spec.phase_convs and rewritable(pre):
            pre = rewrite_conv_transpose(pre)
            onnx.save(pre, str(pre_path))
        initializers = {t.name for t in source.graph.initializer}
        input_name = next(i.name for i in source.graph.input if i.name not in initializers)  # as it likes: "x" too
        inputs = np.concatenate([preprocess(s.rgb, size) for s in holdout])
        # first: it checks the FP32 model's outputs, so a broken model leaves no ranges file either
        evaluator = fallback.Evaluator(source.SerializeToString(), inputs, [s.depth for s in holdout if labelled],
                                       meta.max_depth, data_range=data_range, input_name=input_name,
                                       source=cfg.model)
        ranges, reused = _ranges(cfg, pre_path, dataset, calib_idx, size, progress, input_name)
        qdq = qz.quantize(pre, ranges, cfg.method, cfg.spec)
        head = float_layers.head_nodes(qdq, cfg.op_types)
        qdq = float_layers.with_float_nodes(qdq, pre, head, cfg.op_types)  # the depth head is never quantized
        before = evaluator.measure(qdq)
        candidates = one_per_layer(qz.quantizable_nodes(qdq, cfg.fallback_op_types), phase_layers(qdq.graph))
        search = _fallback_search(cfg, pre, qdq, candidates, evaluator, before.drop, progress)
        final, after = qdq, before
        if search.float_nodes:  # the very graph the search measured
            final = float_layers.with_float_nodes(qdq, pre, search.float_nodes, cfg.op_types)
            after = evaluator.measure(final)
    record = {"images": len(calib_idx), "holdout_images": len(hold_idx), "float_nodes": search.float_nodes,
              "float_head": head, "ssim_drop": fallback.significant(after.drop),
              "ssim_drop_all_int8": fallback.significant(before.drop),  # every layer INT8 but the head's
              "drop_definition": "1 - SSIM(int8 prediction, fp32 prediction) on held-out "
                                 + ("train images" if labelled else "images of the folder")}
    kernels = _write(cfg, final, meta, record)
    return CalibrationReport(
        model=str(cfg.model), out=str(cfg.out), target=cfg.target, ranges=str(cfg.ranges_path),
        ranges_reused=reused,
        method=cfg.method, seed=cfg.seed, num_images=len(calib_idx), holdout_images=len(hold_idx),
        quantized_nodes=len(candidates) - len(search.float_nodes), qdq=qz.qdq_summary(final),
        target_ssim_drop=cfg.target_ssim_drop, target_met=after.drop <= cfg.target_ssim_drop,
        float_nodes=list(search.float_nodes),
        fp32={"rmse": fallback.significant(evaluator.fp32[0]), "ssim": fallback.significant(evaluator.fp32[1])},
        before=before.to_dict(), after=after.to_dict(),
        ranking=[(n, fallback.significant(d)) for n, d in search.ranking], steps=search.steps,
        rejected=[(n, fallback.significant(d)) for n, d in search.rejected], search_exhausted=search.exhausted,
        seconds=round(time.perf_counter() - started, 2),
        integer_kernels={k: v for k, v in kernels.items() if k != "op_counts"}, float_head=head,
    )


def _ranges(cfg: CalibrationConfig, pre_path: Path, dataset: Any, calib_idx: list[int], size: tuple[int, int],
            progress: Any, input_name: str) -> tuple[dict[str, tuple[float, float]], bool]:
    """The activation ranges: the saved ones when they were computed for this very key, else calibrated and saved.

    Returns (ranges, whether they were reused).
    """
    from mde.calibration import quantize as qz

    onnxruntime = _quiet_onnxruntime()

    batches = _read(dataset, calib_idx, lambda frame: preprocess(frame.rgb, size), progress, "read")
    pixels = hashlib.sha256()  # the images themselves: another dataset's files may have the same names
    for batch in batches:
        pixels.update(batch.tobytes())
    key = {
        "model_sha256": qz.model_sha256(Path(cfg.model)), "method": cfg.method, "seed": cfg.seed,
        "images": [dataset.names[i] for i in calib_idx], "images_sha256": pixels.hexdigest(),
        "input_size": list(size), "op_types": list(cfg.op_types),
        "percentile": cfg.percentile if cfg.method == "percentile" else None,
        "onnxruntime": onnxruntime.__version__, "target": cfg.target,
    }
    if cfg.method in qz.HISTOGRAMS:  # entropy's was ONNX Runtime's default once: ranges of another search
        key["histogram"] = qz.HISTOGRAMS[cfg.method]
    ranges = None
    if cfg.reuse_ranges and cfg.ranges_path.exists():  # validating it costs a shape inference
        ranges = load_ranges(cfg.ranges_path, key, qz.calibrated_tensors(pre_path, cfg.op_types))
    if ranges is not None:
        info(f"reusing calibration ranges from {cfg.ranges_path}")
        return ranges, True
    task = progress.add_task("calibrate", total=len(calib_idx), info=cfg.method) if progress else None
    try:
        ranges = qz.collect_ranges(
            pre_path, batches, cfg.method, cfg.op_types, cfg.percentile, input_name=input_name,
            on_batch=(lambda: progress.advance(task)) if progress else None,
            symmetric=cfg.spec.activation_type == "int8",
            on_search=_search_task(progress) if progress else None)
    except qz.NonFiniteActivations as err:
        raise ModelError(f"computes NaN or infinite values (tensor {err}) on the calibration images: a diverged or "
                         "damaged model has no range to quantize with", cfg.model) from None
    save_ranges(cfg.ranges_path, key, ranges)
    return ranges, False


def _read(dataset: Any, indices: list[int], keep: Callable[[Any], Any], progress: Any, label: str) -> list[Any]:
    """`keep(dataset[i])` for each of `indices`, with a bar: a few hundred camera frames take a minute to decode."""
    task = progress.add_task(label, total=len(indices), info="") if progress else None
    kept = []
    for index in indices:
        kept.append(keep(dataset[index]))  # what `keep` takes of it: calibration images are kept preprocessed
        if progress:
            progress.advance(task)
    return kept


def _search_task(progress: Any) -> Callable[[int], Callable[[], None]]:
    """The entropy method's threshold search as a task of `progress`: a bar over the calibrated tensors."""
    def start(total: int) -> Callable[[], None]:
        task = progress.add_task("thresholds", total=total, info="entropy")
        return lambda: progress.advance(task)
    return start


def _fallback_search(cfg: CalibrationConfig, pre: Any, qdq: Any, candidates: list[str], evaluator: Any,
                     drop: float, progress: Any) -> Any:
    """Which layers to keep in float: none when the all-INT8 `drop` meets the target, else the sensitivity search."""
    from mde.calibration import fallback, float_layers

    if not (drop > cfg.target_ssim_drop and cfg.max_float_nodes > 0 and candidates):
        return fallback.SearchResult(steps=[(0, drop)])
    task = progress.add_task("sensitivity", total=len(candidates), info="") if progress else None

    def build(nodes: list[str]) -> Any:
        return float_layers.with_float_nodes(qdq, pre, nodes, cfg.op_types)

    ranking = fallback.rank_nodes(
        build, candidates, evaluator,
        on_node=(lambda n: progress.update(task, advance=1, info=n[-40:])) if progress else None)
    return fallback.greedy_fallback(build, ranking, evaluator, cfg.target_ssim_drop, cfg.max_float_nodes, drop)


def _write(cfg: CalibrationConfig, final: Any, meta: ModelMetadata, record: dict[str, Any]) -> dict[str, Any]:
    """Check the model for its target, stamp the INT8 metadata (`record` + settings), save atomically.

    Returns the integer-kernel inspection of the CPU form ({} for TensorRT).
    """
    import onnx

    from mde.calibration import quantize as qz

    onnxruntime = _quiet_onnxruntime()

    kernels: dict[str, Any] = {}
    if cfg.target == "tensorrt":
        qz.check_tensorrt_qdq(final, cfg.out)
    else:
        qz.fold_byte_moves(final)
        kernels = integer_kernel_share(final.SerializeToString())
        if kernels["unfused"]:
            log.warning("%s: %d quantized convolutions run in float on ONNX Runtime's CPU provider: %s",
                        cfg.out, len(kernels["unfused"]), ", ".join(kernels["unfused"][:4]))
    calibration = {
        "target": cfg.target, "method": cfg.method, "seed": cfg.seed, **record,
        "target_ssim_drop": cfg.target_ssim_drop,
        "tool": f"onnxruntime.quantization {onnxruntime.__version__} ({cfg.spec.describe()})",
    }
    if kernels:
        calibration["integer_kernel_share"] = kernels["share"]
    _drop_quantizer_leftovers(final)
    stamp(final, replace(meta, precision="int8", calibration=calibration))
    with atomic_path(cfg.out) as tmp_out:
        onnx.save(final, str(tmp_out))
    return kernels


def _drop_quantizer_leftovers(model: Any) -> None:
    """Remove what ONNX Runtime's pre-processing and quantizer leave that the INT8 model does not use: their own
    metadata entries (`onnx.infer`, `onnx.quant.pre_process`) and the opset imports of domains no node is in."""
    for index in reversed(range(len(model.metadata_props))):
        if model.metadata_props[index].key in QUANTIZER_PROPS:
            del model.metadata_props[index]
    used = _domains(model.graph) | {"", "ai.onnx"}
    for function in model.functions:
        used |= {function.domain, *_domains(function)}
    for index in reversed(range(len(model.opset_import))):
        if model.opset_import[index].domain not in used:
            del model.opset_import[index]


def _domains(graph: Any) -> set[str]:
    """The operator domains of `graph`'s nodes (a GraphProto or FunctionProto), subgraphs (If, Loop, Scan) too."""
    import onnx

    found = set()
    for node in graph.node:
        found.add(node.domain)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found |= _domains(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for body in attribute.graphs:
                    found |= _domains(body)
    return found
