"""mde: monocular depth estimation from training to a depth map on a robot."""

__version__ = "0.1.0"


def _find_checkout_subpackages() -> None:
    """In a checkout, mde's subpackages are the folders beside this one (runtime/, train/, ...: pyproject's
    package-dir), which an editable install maps. `python -m mde` or `import mde.runtime` run from the checkout's
    root with a regular install in the environment imports this folder instead, and found no mde.runtime there: map
    those five folders then, and nothing else (the checkout's tests/ or benchmarks/ are no part of mde)."""
    import importlib.abc
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    folders = {f"mde.{name}": os.path.join(os.path.dirname(here), name)
               for name in ("data", "train", "export", "calibration", "runtime")}
    if os.path.isdir(os.path.join(here, "runtime")) or not os.path.isfile(os.path.join(folders["mde.runtime"],
                                                                                       "__init__.py")):
        return  # an installed mde (its subpackages inside it), or no checkout around it
    if importlib.util.find_spec("mde.runtime") is not None:
        return  # an editable install's finder maps them

    class CheckoutFolders(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> object:
            folder = folders.get(name)
            return None if folder is None else importlib.util.spec_from_file_location(
                name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])

    sys.meta_path.append(CheckoutFolders())


_find_checkout_subpackages()


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
