"""Make docs/synth_samples.png: a few procedural samples, RGB above turbo-coloured metric depth.

    python benchmarks/make_sample_figure.py [--out docs/synth_samples.png] [--count 4] [--seed 0]
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from cli_common import Parser, can_write_in, run_main

from mde.data.synth import MAX_DEPTH, render_scene, scene_rng
from mde.data.world import KINDS
from mde.io import atomic_path


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "synth_samples.png")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    if not 1 <= args.count <= 16:
        parser.error(f"--count must be 1 to 16 (one figure row), got {args.count}")
    if not 16 <= args.size <= 1024:
        parser.error(f"--size must be 16 to 1024 pixels, got {args.size}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out.suffix.lower() != ".png" or args.out.is_dir() or not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: expected a .png file name in an existing folder")
    if not can_write_in(args.out.parent):  # found now, not after the work
        parser.error(f"--out {args.out}: its folder is not writable")
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
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
