"""What a run folder records besides checkpoints: `metrics.jsonl` (one line per epoch), the epoch
summary line, and the figures `curves.png` (loss and validation metrics per epoch) and `samples.png`."""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import InputError
from mde.io import RUN_FILES, atomic_path, json_text, write_bytes_atomic

log = logging.getLogger(__name__)


def summary(record: dict[str, Any]) -> str:
    """An epoch's `metrics.jsonl` record as one progress line."""
    text = f"loss {record['train_loss']:.4f}  {record['images_per_s']:.1f} img/s"
    if "val_rmse" in record:
        text += f"  val rmse {record['val_rmse']:.3f} ssim {record['val_ssim']:.3f}"
    objects = record.get("val_objects_rmse")
    if objects is not None and math.isfinite(objects):  # NaN (null in metrics.jsonl): no val image shows one
        text += f" objects rmse {objects:.3f}"
    return text


def remove_partial_writes(out: Path) -> None:
    """Delete the temporary copies (`.last.pt.*.tmp`, ...) that a run killed mid-write left in `out`."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def check_run_files(out: Path) -> None:
    """Refuse a folder (or a FIFO) at one of the run's file names: found now, not at the first epoch's end."""
    for name in RUN_FILES:
        path = out / name
        if path.exists() and not path.is_symlink() and not path.is_file():  # a link is replaced, not followed
            raise InputError("the run writes a file of this name, and this is no file (a folder?); remove it "
                             "or choose another --out", path)


def check_room(out: Path, needed: int) -> None:
    """Before `--force` removes an old run: refuse, keeping it whole, when even its removal leaves less than
    `needed` bytes free (the new run's checkpoints)."""
    import shutil

    old = [p for p in (out / name for name in RUN_FILES) if p.is_file() and not p.is_symlink()]
    if not old:  # no old run: a full disk is the first write's own one-line error, with nothing to keep
        return
    room = shutil.disk_usage(out).free + sum(p.stat().st_size for p in old)
    if room < needed:
        raise InputError(f"too little free space for this run's checkpoints (about {needed / 2**20:.0f} MiB; "
                         f"{room / 2**20:.0f} MiB once the old run's files are removed); the old run is kept", out)


def check_free_space(out: Path, needed: int) -> None:
    """Before training: refuse a run whose checkpoints (`needed` bytes, less the run files they replace) cannot
    fit where they go; found after the first epoch, the run could not save, resume or start again unforced."""
    import shutil

    replaced = sum(p.stat().st_size for p in (out / name for name in RUN_FILES) if p.is_file() and not p.is_symlink())
    free = shutil.disk_usage(out).free
    if free + replaced < needed:
        raise InputError(f"too little free space for this run's checkpoints: about {needed / 2**20:.0f} MiB, and "
                         f"{(free + replaced) / 2**20:.0f} MiB is free there", out)


def remove_run_files(out: Path) -> None:
    """Delete a run's own files (`RUN_FILES`) from `out`; anything else there stays."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def read_records(path: Path, upto: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines of the epochs a resumed checkpoint had completed (later ones are redone)."""
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("epoch", 0) <= upto]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    write_bytes_atomic(path, "".join(json_text(r) + "\n" for r in records).encode())  # NaN as null


@functools.cache
def can_plot() -> bool:
    """matplotlib draws the run folder's figures; without it (a bare GPU image) training goes on without them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: no curves.png or samples.png (pip install matplotlib)")
        return False
    return True


def write_curves(records: list[dict[str, Any]], out: Path) -> None:
    """OUT/curves.png, where matplotlib is installed."""
    if can_plot():
        plot_curves(records, out / "curves.png")


def write_samples(model: Any, val_set: Any, image_size: int | tuple[int, int], max_depth: float, device: Any, out: Path,
                  count: int = 4) -> None:
    """OUT/samples.png of the first `count` validation images, where matplotlib is installed."""
    from mde.train.evaluate import torch_predictor

    if not can_plot():
        return
    model.eval()
    samples = [val_set[i] for i in range(min(count, len(val_set)))]
    preds = torch_predictor(model, image_size, max_depth, device)([s.rgb for s in samples])
    plot_samples([(s.rgb, s.depth, p) for s, p in zip(samples, preds)], max_depth, out / "samples.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Train loss, validation RMSE and SSIM against the epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = (("train_loss", "train loss"), ("val_rmse", "val RMSE (m)"), ("val_ssim", "val SSIM"))
    for ax, (key, title) in zip(axes, panels):
        points = [(r["epoch"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_samples(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_depth: float,
                 path: Path) -> None:
    """One row per image: RGB | ground truth | prediction | absolute error (turbo colours)."""
    from mde.runtime.colormap import colorize

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    titles = ("RGB", "ground truth", "prediction", "|error|")
    for r, (rgb, gt, pred) in enumerate(rows):
        valid = np.isfinite(gt) & (gt > 0)
        err = np.where(valid, np.abs(pred - np.nan_to_num(gt)), 0)
        err_range = max(float(err.max()), 1e-3)
        images = (rgb, colorize(gt, max_depth), colorize(pred, max_depth),
                  colorize(np.where(valid, err_range - err + 1e-6, 0), err_range))
        for c, image in enumerate(images):
            axes[r, c].imshow(image)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(titles[c])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
