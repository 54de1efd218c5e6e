"""`golden.npz`: golden inputs, PyTorch outputs and tolerances, for later torch-free checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class GoldenInputs:
    """Golden inputs (N x 3 x H x W in [0, 1]) and, when they come from a dataset, its ground truth."""

    image: np.ndarray
    source: str                                   # "dataset DIR/split (N images)" or "uniform noise, seed K"
    gts: list[np.ndarray] = field(default_factory=list)      # metres, at each image's own resolution
    masks: list[np.ndarray | None] = field(default_factory=list)
    data_range: float | None = None               # SSIM's data range: the dataset's max depth


DEFAULT_GOLDEN_IMAGES = 4


def golden_inputs(data: Path | None, size: tuple[int, int], count: int | None, seed: int, split: str = "val",
                  depth_scale: float | None = None, model_range: float | None = None,
                  trained: tuple[Path, object] | None = None) -> GoldenInputs:
    """`count` golden inputs: the first images of `data`'s `split` with their depth (and masks), or, only
    when no dataset is given, seeded uniform noise. `model_range` is the SSIM data range of a dataset
    without one (`dataset_max_depth`). `count` None: `DEFAULT_GOLDEN_IMAGES`, or the whole split where it holds
    fewer (asked for, more than the split holds is refused). `trained`: the checkpoint and the --depth-scale it
    trained with, noted before the units check where the dataset is read at another (`note_trained_depth_scale`).

    Raises:
        DataError: the dataset cannot be read, or has fewer than `count` images in `split`.
    """
    if data is None:
        rng = np.random.default_rng(seed)
        return GoldenInputs(rng.random((count or DEFAULT_GOLDEN_IMAGES, 3, *size), dtype=np.float32),
                            f"uniform noise, seed {seed}")
    from mde.data.readers import check_depth_units, dataset_max_depth, note_trained_depth_scale, open_dataset
    from mde.errors import DataError, counted
    from mde.runtime.preprocess import preprocess

    dataset = open_dataset(data, split=split, depth_scale=depth_scale)
    if count is None:
        count = min(DEFAULT_GOLDEN_IMAGES, len(dataset)) or DEFAULT_GOLDEN_IMAGES  # an empty split: refused below
    if len(dataset) < count:
        raise DataError(f"the {split} split has {counted(len(dataset), 'image')}; --golden-images asks for {count}",
                        data)
    if trained is not None:  # its ground truth goes into golden.npz: read at the scale it trained with?
        note_trained_depth_scale(trained[0], trained[1], getattr(dataset, "depth_scale", None), data)
    data_range = dataset_max_depth(data, model_range)
    check_depth_units(dataset, data_range)
    samples = [dataset[i] for i in range(count)]
    return GoldenInputs(
        image=preprocess([s.rgb for s in samples], size),
        source=f"dataset {data}/{split} ({count} images)",
        gts=[s.depth.astype(np.float32) for s in samples],
        masks=[s.mask for s in samples],
        data_range=data_range,
    )


def kept_golden_inputs(path: Path, size: tuple[int, int]) -> GoldenInputs | None:
    """The dataset inputs and ground truth of the `golden.npz` at `path` where it carries ground truth (an earlier
    `--golden-data` export into this folder), to keep, not replace with noise: a precision added later, or a
    retrained checkpoint exported over it with --force, would take the torch-free check's RMSE/SSIM gates away.
    The inputs are the dataset's, whatever checkpoint ran them; the outputs are made again. None otherwise (no
    such file, noise inputs, another input size, a file the runtime's reader refuses)."""
    from mde.errors import MdeError
    from mde.runtime.backends.golden import read_golden

    if not path.is_file():
        return None
    try:
        golden = read_golden(path)
    except MdeError:  # a damaged or foreign file is not kept: the export writes its own
        return None
    image = golden["image"]
    if not golden["meta"].get("ground_truth") or tuple(image.shape[2:]) != tuple(size):
        return None
    return GoldenInputs(image=image, source=str(golden.get("source", golden["meta"].get("inputs", ""))),
                        gts=[golden[f"gt_{i}"].astype(np.float32) for i in range(len(image))],
                        masks=[golden.get(f"mask_{i}") for i in range(len(image))],
                        data_range=float(golden["meta"]["data_range"]))


def golden_digests(path: Path) -> tuple[str, str]:
    """The SHA-256 of the checkpoint and of the weights whose outputs the golden.npz at `path` holds; "" for what
    it does not say (an older file) or cannot be read (a damaged file is simply "another one")."""
    try:
        with np.load(path) as data:
            weights = json.loads(str(data["meta"])).get("weights_sha256") if "meta" in data else None
            return str(data["checkpoint_sha256"]), str(weights or "")
    except Exception:  # noqa: BLE001 - an unreadable golden file is simply "another one"
        return "", ""


def write_golden(
    path: Path,
    inputs: GoldenInputs,
    reference: np.ndarray,
    depth_range: float,
    checkpoint_sha: str,
    weights_sha: str,
    model: dict[str, str],
) -> None:
    """`golden.npz`, atomically: inputs `image`, PyTorch outputs `depth`, the tolerance table (JSON),
    `meta` (JSON: where the inputs came from, depth and data ranges, model), and with a dataset
    the ground truth `gt_I` (and region `mask_I`) of each image, so a torch-free parity reports
    RMSE/SSIM and their deltas to PyTorch."""
    from dataclasses import asdict

    from mde.io import atomic_path
    from mde.runtime.parity import DEFAULT_TOLERANCES, GOLDEN_TABLE_NOTES

    metric, range_key = GOLDEN_TABLE_NOTES
    tolerances = {
        metric: "p99(|artifact - torch|) / depth_range",
        range_key: depth_range,
        **{precision: {k: v for k, v in asdict(row).items() if v is not None}
           for precision, row in DEFAULT_TOLERANCES.items()},
    }
    meta = {"inputs": inputs.source, "ground_truth": bool(inputs.gts), "max_depth": depth_range,
            "data_range": inputs.data_range or depth_range, "model": model, "weights_sha256": weights_sha}
    extra = {f"gt_{i}": gt for i, gt in enumerate(inputs.gts)}
    extra.update({f"mask_{i}": m for i, m in enumerate(inputs.masks) if m is not None})
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            image=inputs.image,
            depth=reference,
            tolerances=np.array(json.dumps(tolerances, sort_keys=True)),
            meta=np.array(json.dumps(meta, sort_keys=True)),
            checkpoint_sha256=np.array(checkpoint_sha),
            source=np.array(inputs.source),
            **extra,
        )
