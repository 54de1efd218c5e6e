"""mde: monocular depth estimation from training to a depth map on a robot."""

__version__ = "0.1.0"


def entry() -> None:
    """The `mde` console script: Ctrl-C while the CLI is still importing says so in one line, like later."""
    import sys

    try:
        from mde.cli import main
    except KeyboardInterrupt:
        print("mde: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    try:
        main()
    finally:
        _outcome_is_final()


def _outcome_is_final() -> None:
    """The command has ended and said how: Ctrl-C or SIGTERM during the interpreter's shutdown (about a second
    with torch loaded) would kill the process without a word and make a finished command look killed."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
