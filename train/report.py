"""Run-folder figures: `curves.png` (loss and validation metrics per epoch) and `samples.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mde.io import atomic_path


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
