"""`mde parity`: the CI gate that proves every artifact scores like the PyTorch checkpoint it came from.

Options only; the work is `mde.runtime.parity_run.run_parity`. A preprocessing mismatch (an
artifact whose metadata gives another input size or max depth than the checkpoint) is a FAILED
check for that artifact (exit 1, failing metric "preprocess", the reason printed), not bad input:
the other artifacts are still checked in the same run. So is an artifact exported from another
checkpoint (failing metric "source"), and one whose graph computes in another precision than its
metadata declares (failing metric "precision").
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from mde.commands.options import (
    DEPTH_SCALE_HELP,
    SPLIT_HELP,
    backend_help,
    check_backend,
    check_split,
    depth_scale_option,
    providers_option,
)
from mde.errors import InputError
from mde.runtime.parity_run import ParityConfig, run_parity

_D = ParityConfig.__dataclass_fields__
STDOUT = Path("/dev/stdout")  # a stream `atomic_path` appends to once the content is whole (Linux, macOS)


def parity_command(
    paths: list[Path] = typer.Argument(..., help="CKPT ARTIFACT... (with --golden: ARTIFACT... only)."),
    data: Path = typer.Option(None, "--data", help="Dataset folder (checkpoint mode)."),
    split: str = typer.Option(_D["split"].default, "--split", help=SPLIT_HELP),
    limit: int = typer.Option(_D["limit"].default, "--limit", help="At most N images (0 = all)."),
    tolerances: Path = typer.Option(None, "--tolerances", help="TOML file overriding the tolerance table."),
    json_path: str = typer.Option(None, "--json",
                                   help="Write the results as one JSON object to FILE ('-': standard output)."),
    report: str = typer.Option(None, "--report", help="Write a Markdown report (+ worst-image PNGs, checkpoint "
                                "mode) to FILE ('-': standard output, no pictures)."),
    backend: str = typer.Option(_D["backend"].default, "--backend", help="auto, or a registered backend."),
    golden: Path = typer.Option(None, "--golden", help="golden.npz: torch-free check of ARTIFACT..."),
    providers: list[str] = providers_option(),
    depth_scale: float | None = depth_scale_option(help_=f"With --data: {DEPTH_SCALE_HELP}"),
    device: str = typer.Option(_D["device"].default, "--device",
                               help="Where the PyTorch reference runs: cpu, cuda or cuda:N."),
) -> None:
    """Compare artifacts with PyTorch on the same images and preprocessing; exit 1 if any is out of tolerance."""
    outputs = _output_path("--json", json_path), _output_path("--report", report)  # first: `--json --data D`
    if json_path == report == "-":
        raise InputError("--json - and --report - both name standard output; give one of them a file")
    check_backend(backend, leave_out=("golden",))
    if backend == "golden":  # it was offered, and refused whatever the artifact
        raise InputError("--backend golden is the reference's, not an artifact's: give the golden.npz as --golden")
    if golden is None:
        if len(paths) < 2:
            raise InputError("expected CKPT and at least one ARTIFACT (or --golden FILE ARTIFACT...)")
        if data is None:
            raise InputError("--data is required with a checkpoint (or use --golden FILE)")
        cfg = ParityConfig(checkpoint=paths[0], artifacts=tuple(paths[1:]), data=data, depth_scale=depth_scale)
    else:
        given = [name for name, value, default in (("--data", data, None), ("--depth-scale", depth_scale, None),
                                                    ("--split", split, _D["split"].default),
                                                    ("--limit", limit, _D["limit"].default),
                                                    ("--device", device, _D["device"].default)) if value != default]
        if given:
            raise InputError(f"--golden and {given[0]} are exclusive: golden mode uses the saved inputs "
                             "and outputs")
        cfg = ParityConfig(artifacts=tuple(paths), golden=golden)
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    check_split(split)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    cfg.split, cfg.limit, cfg.tolerances, cfg.backend = split, limit, tolerances, backend
    cfg.json_path, cfg.report = outputs
    cfg.providers, cfg.device = providers or None, device
    run_parity(cfg)


def _output_path(option: str, text: str | None) -> Path | None:
    """'-' is standard output, as tools read it; taken as text, since Path("./-") == Path("-") names a file."""
    if text is not None and text.startswith("-") and text != "-":  # `--json --data D`: the flag of other commands
        raise InputError(f"{option} takes a FILE here ('-' for standard output), not {text!r} (a file of that name: "
                         f"./{text})")
    return None if text is None else STDOUT if text == "-" else Path(text)


def register(app: typer.Typer) -> None:
    backend_help(parity_command, leave_out=("golden",))
    app.command("parity")(parity_command)
