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
    main()
