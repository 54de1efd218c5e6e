"""The `mde` command line: one typer app; each command lives in `mde.commands.<name>`.

Command modules import heavy libraries (torch, onnx) inside their functions, so
`mde --help` stays fast and torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import shlex
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator

import typer

from mde import __version__
from mde.errors import STDOUT_CLOSED, MdeError, OutOfMemory, allocation_failed, missing_module_hint, one_line
from mde.io import UNWRITABLE

COMMANDS = ("data", "train", "eval", "export", "calibrate", "parity", "predict", "bench", "info")

app = typer.Typer(
    name="mde",
    help="Monocular depth estimation: data -> train -> export -> calibrate -> parity -> robot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}
# click's exception base, for command-line errors (typer exports BadParameter, one of them, not the base)
CommandLineError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mde {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["verbose"] = verbose


for _name in COMMANDS:
    importlib.import_module(f"mde.commands.{_name}").register(app)


def _flag_type_shown(option: typer.core.TyperOption, ctx: typer.Context) -> str | None:
    """The help's type column: none for an on/off flag. typer shows `<bool>` there, as if the flag took a value
    (`--json true` is then refused)."""
    return None if option.is_flag else _typer_type_shown(option, ctx)


_typer_type_shown = getattr(typer.core.TyperOption, "display_type_rich", None)  # typer 0.28+; older ones show none
if _typer_type_shown is not None:
    typer.core.TyperOption.display_type_rich = _flag_type_shown


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (tests swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Library log lines (e.g. "grayscale image converted to RGB") go to stderr, prefixed `mde:`."""
    logger = logging.getLogger("mde")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(_OneLineFormatter("mde: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


class _OneLineFormatter(logging.Formatter):
    """A log line stays one line, and printable, whatever file name it shows (a newline, bytes that are not
    UTF-8): escaped as in error messages. A traceback (`--verbose`) is added below it as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return one_line(super().formatMessage(record))


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a job scheduler), raised where Python runs next, so every cleanup that
    runs on Ctrl-C runs too: temporary files and half-made folders are removed."""


SAME_STOP_S = 1.0  # SIGTERMs this close together are one stop: GNU timeout signals the process, then its group


def _raise_terminated(signum: int, _frame: object) -> None:
    # Python runs this only between bytecodes, so a long native call (a TensorRT build) finishes first.
    # A second SIGTERM stops the process at once, even inside native code, but not the copy of the first
    # that `timeout` sends right after it (that one used to kill the run before it could clean up).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    timer = threading.Timer(SAME_STOP_S, _default_sigterm)
    timer.daemon = True  # an ending process does not wait for it
    timer.start()
    _state["sigterm_timer"] = timer  # cancelled when the command ends: not the embedding program's business
    _state["terminated"] = True
    _quiet_shutdown()
    raise Terminated


def _default_sigterm() -> None:
    """SIGTERM's default action back, from a helper thread: at the C level, as `signal.signal` is for the main
    thread only (which may be inside a long native call)."""
    import ctypes

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # the command has ended (its handler is back)
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no C library (Windows): SIGTERM stays ignored
        ctypes.CDLL(None).signal(signal.SIGTERM, 0)  # 0: SIG_DFL


def _quiet_shutdown() -> None:
    """The process is stopping: what breaks on the way out (a DataLoader whose workers the same signal
    reached, in its `__del__`) says nothing; the one line of `_stopped` says why the run ended."""
    sys.unraisablehook = lambda _unraisable: None


@contextlib.contextmanager
def _stop_through_python_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`. Only from the main thread, and over the default
    action (an embedding program's own handler is kept); the default comes back afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        timer = _state.pop("sigterm_timer", None)
        if timer is not None:  # and one already running finishes first: its C-level change must come before ours
            timer.cancel()
            timer.join()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stopped(code: int = 130) -> SystemExit:
    """The line and exit status of a run stopped by Ctrl-C (130) or SIGTERM (143). Under torchrun, rank 0 says
    it for the run: Ctrl-C reaches every process, and torchrun stops the others with SIGTERM."""
    _quiet_shutdown()
    said, code = ("terminated", 128 + signal.SIGTERM) if _state.get("terminated") else ("interrupted", code)
    if not _torchrun_rank() and not (said == "terminated" and _a_peer_said_its_error()):
        sys.stderr.write(f"mde: {said}\n")
    return SystemExit(code)


_STARTED = time.time()


def _peer_failure_note() -> str:
    """Where a torchrun process that says its own error notes it for rank 0 ("" outside torchrun): torchrun then
    stops rank 0 with SIGTERM too, which is no user's stop to say. One file per user and rendezvous, in the temporary
    folder, so processes of one machine share it (on another machine rank 0 still says `terminated`)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")  # torchrun sets it; WORLD_SIZE alone is no torchrun of ours
    if not run or not _torchrun_world():
        return ""
    rendezvous = f"{run}-{os.environ.get('MASTER_PORT', '')}"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in rendezvous)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"mde-torchrun-{uid}-{name}.failed")


def _note_own_failure() -> None:
    note = _peer_failure_note()
    if note:
        with contextlib.suppress(OSError):  # never through a link planted at that name in a shared folder
            os.close(os.open(note, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
            os.utime(note)  # a note left by an earlier run of the same name is this run's now


def _a_peer_said_its_error() -> bool:
    """Whether another process of this torchrun run said its error since this one started (`_note_own_failure`)."""
    note = _peer_failure_note()
    if not note:
        return False
    try:
        said = os.stat(note, follow_symlinks=False).st_mtime >= _STARTED - 1  # an older run's is not this run's
    except OSError:
        return False
    with contextlib.suppress(OSError):  # read once, by rank 0: not left behind
        os.remove(note)
    return said


RANK_GRACE_S = 10.0  # how long a torchrun process other than rank 0 waits before it says its error


def _torchrun_rank() -> int:
    """This process's rank among torchrun's training processes (0 elsewhere: another command, even one a rank's
    script runs, speaks for itself)."""
    if not _torchrun_world():
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _torchrun_world() -> bool:
    """Whether this is `mde train` in one of several torchrun processes."""
    try:
        return _state.get("command") == "train" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        return False


def _stopped_within_grace() -> bool:
    """Wait `RANK_GRACE_S` for torchrun to stop this process (SIGTERM, raised as `Terminated`), as it does once
    another process has failed; True when it did (the process is ending: nothing it breaks on the way out is said)."""
    try:
        time.sleep(RANK_GRACE_S)
    except KeyboardInterrupt:
        _quiet_shutdown()
        return True
    return False


def _stop_status() -> int:
    return 128 + signal.SIGTERM if _state.get("terminated") else 130


def _say_error(message: str, kind: str = "error") -> None:
    """`mde: error: MESSAGE` on stderr, in one write: torchrun's processes share one terminal, and a line written
    in two parts came out spliced with another process's ("...not foundmde: error: ...").

    Under torchrun a process other than rank 0 waits first. Bad input stops every process alike, and rank 0 says
    it; torchrun then stops this one (SIGTERM), which ends in silence, so the error is said once. Still running
    after the wait, the error is this process's own, and it says so with its rank."""
    rank = _torchrun_rank()
    if rank:
        if _stopped_within_grace():  # torchrun stopping the others after a failure rank 0 has said
            raise SystemExit(_stop_status()) from None
        message = f"rank {rank}: {message}"
        _note_own_failure()  # the stop torchrun now sends rank 0 is this error's, said here
    sys.stderr.write(f"mde: {kind}: {one_line(message)}\n")  # a file's name in it, raw, could break the line
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; `MdeError` becomes one line on stderr and its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if sys.stderr is None:  # started with stderr closed (`2>&-`): print(file=None) would write to stdout
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    # before anything imports onnxruntime: its telemetry writes a device ID under ~/.cache, and where it cannot (a
    # service user with no home) it warns on stderr, a second line beside mde's one; the user's setting stands
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    _state["verbose"] = "--verbose" in args or "-v" in args
    _state["command"] = next((arg for arg in args if not arg.startswith("-")), "")
    _state["terminated"] = False
    if _torchrun_rank():  # only rank 0 reports (train's result, --help, --version): N processes printed N copies
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    _setup_logging(_state["verbose"])
    with _stop_through_python_on_sigterm():
        _run(args)


def _empty_argument(args: list[str]) -> str:
    """What is said of an empty argument (`--out ""`, `--out=`, a bare "": an unset shell variable, as a rule), or ""
    where there is none: a path read from "" is the current folder, and a command would write there."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and arg.endswith("=") and arg.count("=") == 1 and len(arg) > 3:
            return f"{arg[:-1]} is given an empty value"
        if arg == "":  # the argument before it names the place (an option there may take no value: not blamed)
            return f"an empty argument ('') comes after {one_line(shlex.quote(args[i - 1]))}" if i else \
                "an empty argument ('') comes first"
    return ""


# Commands whose results go to stdout whatever their options (`train` and `parity` only with `--json` / `--json -`,
# which they check): refused at once where stdout is closed, not after minutes of work whose outputs are then written
RESULTS_ON_STDOUT = ("eval", "export", "calibrate", "bench", "info")


def _run(args: list[str]) -> None:
    empty = _empty_argument(args)
    if empty:
        _say_error(f"{empty}; give it a value (an unset shell variable?)")
        raise SystemExit(2)
    if sys.stdout is None and _state.get("command") in RESULTS_ON_STDOUT and not {"-h", "--help"} & set(args):
        _say_error(STDOUT_CLOSED)
        raise SystemExit(2)
    try:
        code = app(args=args, prog_name="mde", standalone_mode=False)  # an exit code when a command exits early
    except CommandLineError as err:  # unknown option, bad value, missing argument: one line too
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `mde`: rich has printed the help, plain text has not
            if err.format_message().strip():
                print(err.format_message())
        else:
            _say_error(_command_line_message(err))
        raise SystemExit(err.exit_code) from None
    except typer.Abort:
        print("mde: aborted", file=sys.stderr)
        raise SystemExit(1) from None
    except MdeError as err:
        if _state["terminated"]:  # e.g. a write SIGTERM cut short, reported as one
            raise _stopped() from None
        if _state["verbose"]:
            traceback.print_exc()
        _say_error(f"{err}; {_less_memory()}" if isinstance(err, OutOfMemory) else str(err))
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        raise _stopped() from None
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a traceback
        if _state["terminated"]:  # what SIGTERM broke on its way out (a DataLoader's worker it also reached)
            raise _stopped() from None
        if _state["verbose"]:
            traceback.print_exc()
        if isinstance(err, OSError) and err.errno in UNWRITABLE:  # no space left, read-only, no permission
            _say_error(_unwritable_message(err))
            raise SystemExit(2) from None
        msg = str(err).splitlines()[0] if str(err) else ""
        if allocation_failed(err):  # what this command asks of this machine; the allocator's own line says how much
            said = msg if len(msg) <= 160 else f"{msg[:150]} ..."
            _say_error(f"out of memory ({said or type(err).__name__}); {_less_memory()}")
            raise SystemExit(2) from None
        missing = missing_module_hint(err)
        if missing:  # the runtime-only install, asked for training or export
            _say_error(missing)
            raise SystemExit(2) from None
        if _lost_peer(err):  # torchrun: another training process stopped first
            # rank 0 waits as the others do (`_say_error`): where that process said its error, that line is the run's
            if not _torchrun_rank() and _stopped_within_grace() and _a_peer_said_its_error():
                raise SystemExit(_stop_status()) from None
            _say_error("another training process stopped, so this one cannot go on (its own line, or torchrun's "
                       "summary where it was killed, says why)")
            raise SystemExit(1) from None
        _say_error(f"{type(err).__name__}: {msg} (run with --verbose for the traceback)", kind="internal error")
        raise SystemExit(1) from None
    if code == 130:  # typer turns Ctrl-C (and so `Terminated`) into exit code 130
        raise _stopped()
    if isinstance(code, int) and code:
        raise SystemExit(code)


# What asks for less memory, by command (out of memory is exit 2, like any input this machine cannot take)
LESS_MEMORY = {
    "train": "a smaller --batch-size or --image-size, or fewer --workers, needs less",
    "eval": "a smaller --batch-size, or smaller images, needs less",
    "bench": "a smaller --batch or --image-size needs less",
    "predict": "smaller images, or predict without --native-resolution, need less",
    "": "smaller images or a smaller model need less",
}


def _less_memory() -> str:
    """What asks for less memory in the command that ran out (`LESS_MEMORY`)."""
    return LESS_MEMORY.get(_state.get("command", ""), LESS_MEMORY[""])


def _unwritable_message(err: OSError) -> str:
    """A failed write's line, naming the file, or standard output where that is what is full (`mde info >
    /dev/full`, or a redirect onto a full disk: a table's write carries no file name)."""
    reason = err.strerror or str(err)
    if err.filename:
        return f"{err.filename}: {reason}"
    if err.errno == errno.ENOSPC and sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor (a captured stream)
            fd = sys.stdout.fileno()
            if (os.path.realpath(f"/proc/self/fd/{fd}") == "/dev/full"
                    or stat.S_ISREG(os.fstat(fd).st_mode) and os.fstatvfs(fd).f_bavail == 0):
                return f"cannot write to standard output ({reason})"
    return reason


def _lost_peer(err: Exception) -> bool:
    """Whether `err` is a collective that failed because another torchrun process went away."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or isinstance(err, OSError):  # OSError: a pipe, a disk
        return False
    return type(err).__name__ == "DistBackendError" or any(  # NCCL's, or gloo's words
        sign in str(err) for sign in ("Connection closed by peer", "Connection reset by peer"))


ROOT_OPTIONS = ("--verbose", "-v", "--version")  # `mde`'s own, before the command


def _command_line_message(err: Exception) -> str:
    """click's message on one line, with where to look: "No such option: --x (see 'mde eval --help')"."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    own = getattr(err, "option_name", None)
    if own in ROOT_OPTIONS and ctx is not None and ctx.parent is not None:  # `mde eval -v ...`
        usage = "mde --version" if own == "--version" else ctx.command_path.replace("mde", f"mde {own}", 1) + " ..."
        return f"{own} is mde's own option, given before the command: {usage}"
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message
