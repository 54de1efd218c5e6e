"""Progress bars and tables on stderr (rich, which typer brings), so `--json` stdout stays clean."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mde.errors import STDOUT_CLOSED, InputError, one_line

T = TypeVar("T")

# soft_wrap: a long line (an error naming a deep path) stays one line in logs and terminals alike.
# markup=False on every console: paths and names are printed as they are ("runs/[v2]" is no style tag);
# styles are given as rich Text styles, never as markup inside a string.
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
PLAIN_INTERVAL_S = 10.0


class PlainProgress:
    """Progress for a stderr that is not a terminal (CI logs, `make demo > log`): plain, whole lines.

    The subset of `rich.progress.Progress` that mde uses. A task prints a line at most every
    `interval` seconds and one when it completes: `export: 3/5 (60%) 0:00:04 fp16`.
    """

    def __init__(self, interval: float = PLAIN_INTERVAL_S, write: Callable[[str], None] | None = None):
        self.interval = interval
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to start: lines are written as tasks advance."""

    def stop(self) -> None:
        """Write the last state of every task that did not complete (an interrupted run shows where it was)."""
        for task_id, task in self._tasks.items():
            if not task["finished"] and task["completed"]:
                self._emit(task_id)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 **_fields: Any) -> int:
        task_id = len(self._tasks)
        now = time.monotonic()
        self._tasks[task_id] = {"description": description, "total": total, "completed": completed, "info": info,
                                "started": now, "last": now, "finished": False}
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, info: str | None = None,
               **_fields: Any) -> None:
        task = self._tasks[task_id]
        for key, value in (("completed", completed), ("total", total), ("description", description), ("info", info)):
            if value is not None:
                task[key] = value
        if advance:
            task["completed"] += advance
        done = task["total"] is not None and task["completed"] >= task["total"]
        if done and not task["finished"]:
            task["finished"] = True
            self._emit(task_id)
        elif not done and time.monotonic() - task["last"] >= self.interval:
            self._emit(task_id)

    def _emit(self, task_id: int) -> None:
        task = self._tasks[task_id]
        task["last"] = now = time.monotonic()
        done, total = task["completed"], task["total"]
        count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - task["started"])).removeprefix("00:")
        self._write(" ".join(part for part in (f"{task['description']}:", count, elapsed, task["info"]) if part))


def make_progress(transient: bool = False) -> Progress | PlainProgress:
    """Progress on stderr: rich's live bar on a terminal, plain whole lines elsewhere (`PlainProgress`)."""
    if not err_console.is_terminal:
        return PlainProgress()
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=err_console,
        transient=transient,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` with a progress bar on stderr."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(one_line(description), total=total, info="")  # it may hold a file's name
        for item in items:
            yield item
            progress.advance(task)


class _StdoutConsole(Console):
    """A console on stdout whose broken pipe (`mde info M | true`) is one line and exit 2, as `--json`'s is: rich's
    own handler exits 1, which says a check failed."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # the interpreter's last flush: nowhere to fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise InputError("cannot write the results to standard output (Broken pipe: its reader stopped)")


def stdout_console(width: int | None = None) -> Console:
    """A console for tables and results on stdout; text is printed as it is (no markup). A stdout closed at start
    (`>&-`) is refused: rich would print the table nowhere, and exit 0."""
    if sys.stdout is None:
        raise InputError(STDOUT_CLOSED)
    return _StdoutConsole(width=width, markup=False)


def info(message: str) -> None:
    """A status line on stderr; one line, whatever file name it shows (a newline, bytes that are not UTF-8)."""
    err_console.print(one_line(message))
