"""`mde data ...`: dataset tools (the procedural virtual-world generator)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mde.data.synth import SynthConfig

_D = SynthConfig()
data_app = typer.Typer(
    help="Datasets: synthesize the procedural virtual world.", no_args_is_help=True
)


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder (created; must be empty unless --force)."),
    train: int = typer.Option(_D.train, "--train", min=0, help="Training pairs."),
    val: int = typer.Option(_D.val, "--val", min=0, help="Validation pairs."),
    size: int = typer.Option(_D.size, "--size", min=16, max=4096, help="Image height and width (px)."),
    seed: int = typer.Option(_D.seed, "--seed",
                             help="Dataset seed, 0 to 2^32-1 (same seed, same bytes on one machine)."),
    workers: int = typer.Option(_D.workers, "--workers", min=0,
                                help="Rendering processes, at most one per CPU (0: two from 64 images up, else one)."),
    force: bool = typer.Option(False, "--force", help="Replace train/ and val/ (whole: files of your own in them "
                               "go too), meta.json and cameras.json in OUT; other files in OUT are kept."),
) -> None:
    """Write a procedural RGB + metric depth dataset in the folder format, plus meta.json."""
    from mde.console import info
    from mde.data.synth import synthesize
    from mde.errors import shown_path

    start = time.perf_counter()
    meta = synthesize(out, train=train, val=val, size=size, seed=seed, force=force,
                      workers=workers or None)
    elapsed = time.perf_counter() - start
    total = train + val
    info(  # a status line on stderr, as other commands' are: a stdout nobody reads cannot fail a finished dataset
        f"wrote {meta['counts']['train']} train + {meta['counts']['val']} val pairs "
        f"({size}x{size}, seed {seed}, max depth {meta['max_depth']:g} m) to {shown_path(out)} "
        f"in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} images/s)"
    )


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the CLI."""
    app.add_typer(data_app, name="data")
