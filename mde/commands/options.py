"""Options shared by several commands: --backend and --providers (`predict`, `bench`, `parity`), --depth-scale,
--split."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

import typer

from mde.errors import InputError
from mde.io import json_text

PROVIDERS_HELP = (
    "ONNX Runtime execution providers in order of preference (repeat the option, e.g. "
    "--providers CUDAExecutionProvider --providers CPUExecutionProvider). One that cannot run here is an "
    "error, never a silent CPU run. Default: the best this machine can run."
)


SPLIT_HELP = "Which split to score: train or val (an NYU file, or KITTI's selection: also all)."


def check_split(split: str) -> None:
    """`--split` (`eval`, `parity`): a split's name, not a path into another folder (`--split ../other/val` read
    that folder, and a report written there went past the check that keeps outputs out of the dataset)."""
    from mde.data.readers import NYUDataset  # the names open_dataset takes (train, val; an NYU file: also all)

    if split not in NYUDataset.SPLITS:
        raise InputError(f"unknown --split {split!r}; choose from train, val (an NYU file, or KITTI's selection: "
                         "also all)")


def emit(report: dict[str, Any], as_json: bool, show: Callable[[dict[str, Any]], None]) -> None:
    """`--json`: the report as one JSON object on stdout; otherwise `show` it (a table on stdout)."""
    if as_json:
        print_json(report)
    else:
        show(report)


def print_json(obj: Any, **options: Any) -> None:
    """`--json`: `obj` as one JSON object on stdout; a closed or full stdout is one line (exit 2), not lost."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): click would drop the JSON without a word
        raise InputError("standard output is closed; nothing takes the --json output")
    try:
        typer.echo(json_text(obj, **options))
    except OSError as err:  # a full disk (/dev/full), a closed pipe
        raise InputError(f"cannot write the --json output to standard output ({err.strerror or err})") from None


DEPTH_SCALE_HELP = "16-bit depth PNG units per metre (default: 1000, millimetres; KITTI's layout: 256)."


def depth_scale_option(default: float | None = None, help_: str = DEPTH_SCALE_HELP) -> Any:
    """`--depth-scale`: how the dataset's 16-bit depth PNGs encode metres (None: the dataset format's own)."""
    return typer.Option(default, "--depth-scale", help=help_, show_default=False)


USER_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # click's ParameterSource names; not DEFAULT(_MAP)


def given_options(ctx: typer.Context, names: Iterable[str]) -> set[str]:
    """The options set on the command line or through the environment, even to their default value."""
    return {name for name in names if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") in USER_SOURCES}


def providers_option() -> Any:
    """`--providers NAME` (repeatable); None when not given."""
    return typer.Option(None, "--providers", help=PROVIDERS_HELP)


def check_backend(backend: str, leave_out: tuple[str, ...] = ()) -> None:
    """Raise `InputError` listing the registered backends (but `leave_out`, those the command refuses with a
    message of its own) unless `backend` is "auto" or one of them."""
    from mde.runtime.backends.base import backend_names

    if backend != "auto" and backend not in backend_names():
        names = [name for name in backend_names() if name not in leave_out]
        raise InputError(f"unknown --backend {backend!r}; choose from: auto, {', '.join(names)}")


def backend_help(command: Callable[..., Any], leave_out: tuple[str, ...] = ()) -> None:
    """Put the registered backend names into `command`'s --backend help (the registry is light), each one the
    error for an unknown name lists, but those the command refuses (`leave_out`); `golden` says what it is."""
    from mde.runtime.backends.base import backend_names

    option = inspect.signature(command).parameters["backend"].default
    names = [name if name != "golden" else "golden (a golden.npz's saved outputs)" for name in backend_names()
             if name not in leave_out]
    option.help = f"auto (from the file suffix) or one of: {', '.join(names)}."
