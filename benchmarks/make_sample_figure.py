"""Make docs/synth_samples.png: a few procedural samples, RGB above turbo-coloured metric depth.

    python benchmarks/make_sample_figure.py [--out docs/synth_samples.png] [--count 4] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mde.data.synth import MAX_DEPTH, render_scene, scene_rng
from mde.data.world import KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "synth_samples.png")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    if args.size < 16:
        parser.error(f"--size must be >= 16 (the world's smallest image), got {args.size}")
    if args.out.suffix.lower() != ".png" or args.out.is_dir() or not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: expected a .png file name in an existing folder")
    # The first train images of `mde data synth --seed S`, one of each scene kind first.
    samples = []
    for i in range(10 * args.count):
        samples.append((i, *render_scene(scene_rng(args.seed, "train", i), args.size)))
    chosen: list = []
    for kind in KINDS:
        chosen += [s for s in samples if s[3]["scene"] == kind][:1]
    chosen += [s for s in samples if s not in chosen]
    chosen = sorted(chosen[: args.count], key=lambda s: s[0])
    fig, axes = plt.subplots(2, args.count, figsize=(2.6 * args.count, 5.6), squeeze=False)
    for col, (i, rgb, depth, intr) in enumerate(chosen):
        axes[0, col].imshow(rgb)
        axes[0, col].set_title(f"train/{i:06d} ({intr['scene']})", fontsize=9)
        im = axes[1, col].imshow(depth, cmap="turbo", vmin=0, vmax=MAX_DEPTH)
        axes[1, col].set_title(f"depth {depth.min():.1f}-{depth.max():.1f} m", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01, label="metres")
    fig.suptitle("mde data synth: procedural RGB (top) and exact z-depth (bottom)", fontsize=11)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
