"""mde: monocular depth estimation from training to a depth map on a robot."""

import os as _os

__version__ = "0.1.0"

# In a checkout, mde's subpackages are the folders beside this one (runtime/, train/, ...: pyproject's package-dir).
# An editable install maps them; but `python -m mde` or `import mde.runtime` run from the checkout's root, with a
# regular install in the environment, imports this folder and then found no mde.runtime. Look beside it there too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "runtime")) and \
        _os.path.isfile(_os.path.join(_os.path.dirname(_here), "runtime", "__init__.py")):
    __path__.append(_os.path.dirname(_here))  # noqa: F821 - a package's own __path__
del _here


def entry() -> None:
    """The `mde` console script: Ctrl-C while the CLI is still importing says so in one line, like later."""
    import atexit
    import sys

    atexit.register(_exit_when_ended)  # registered first, so it runs last
    try:
        from mde.cli import main
    except KeyboardInterrupt:
        print("mde: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    status = 0
    try:
        main()
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else int(done.code is not None)
        raise
    finally:
        _outcome_is_final(status)


_status: int | None = None  # the exit status of a command that has ended (`_outcome_is_final`), else None


def _outcome_is_final(status: int) -> None:
    """The command has ended and said how. Ctrl-C or SIGTERM during the interpreter's shutdown (about a second
    with torch loaded) killed the process without a word, so a finished command looked killed: now either
    ends the process at once with the command's own exit status (a shutdown that hangs can still be stopped)."""
    import signal

    def leave(_signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second one, should the flush block, kills
            signal.signal(sig, signal.SIG_DFL)
        _flush_and_exit(status)

    global _status
    _status = status
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave)


def _exit_when_ended() -> None:
    """The last exit handler: a command that has ended leaves here, with its own status, rather than through the
    interpreter's teardown of its modules (torch's and ONNX Runtime's take a second). Python gives the signals their
    default action back before that teardown, so `leave` no longer ran there: a stop then killed the finished
    command without a word, 130 or 143. The teardown does nothing a finished command needs."""
    if _status is not None:
        _flush_and_exit(_status)


def _flush_and_exit(status: int) -> None:
    """End the process at once with `status`, after what the command printed (`--json` into a pipe) goes out."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or None (started with it closed)
            pass
    os._exit(status)
