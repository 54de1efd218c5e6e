"""mde: monocular depth estimation from training to a depth map on a robot."""

__version__ = "0.1.0"


def entry() -> None:
    """The `mde` console script: Ctrl-C while the CLI is still importing says so in one line, like later."""
    import atexit
    import sys

    atexit.register(_ignore_late_stops)  # registered first, so it runs last
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


_ended = False  # the command has said how it ended (`_outcome_is_final`)


def _outcome_is_final(status: int) -> None:
    """The command has ended and said how. Ctrl-C or SIGTERM during the interpreter's shutdown (about a second
    with torch loaded) killed the process without a word, so a finished command looked killed: now either
    ends the process at once with the command's own exit status (a shutdown that hangs can still be stopped)."""
    import os
    import signal
    import sys

    def leave(_signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second one, should the flush below block, kills
            signal.signal(sig, signal.SIG_DFL)
        for stream in (sys.stdout, sys.stderr):  # what the command printed (`--json` into a pipe) still goes out
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    global _ended
    _ended = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave)


def _ignore_late_stops() -> None:
    """The last exit handler: Ctrl-C and SIGTERM are ignored for the rest of the shutdown, once the command has
    ended. Python gives the signals their default action back after the exit handlers, before it tears down its
    modules (torch's and ONNX Runtime's take a second), so `leave` above no longer ran: a stop then killed the
    finished command without a word, 130 or 143. Python leaves an ignored signal ignored."""
    import signal

    if _ended:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
