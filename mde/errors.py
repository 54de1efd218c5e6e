"""The one exception family of mde: every user-facing failure is an `MdeError`."""

from __future__ import annotations

from pathlib import Path

# What to install for training and export (from the checkout: PyPI's `mde` is another project).
TRAIN_EXTRA = "in the mde checkout: pip install -e '.[train]'"


# The optional modules commands import, and how to get them (mde installs from its checkout, not PyPI).
OPTIONAL_MODULES = {"torch": TRAIN_EXTRA, "torchvision": TRAIN_EXTRA, "onnxscript": TRAIN_EXTRA,
                    "onnxconverter_common": TRAIN_EXTRA, "h5py": TRAIN_EXTRA, "matplotlib": TRAIN_EXTRA,
                    "onnx": f"pip install onnx (or {TRAIN_EXTRA})"}


def missing_module_hint(err: Exception) -> str:
    """For a missing optional module (a runtime-only install asked to train or export), what to install."""
    import importlib.util

    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return ""
    name = err.name.split(".")[0]
    if name not in OPTIONAL_MODULES:
        return ""
    if importlib.util.find_spec(name) is not None:  # there, without the part asked for: too old
        return (f"{err.name} is missing from the installed {name} (too old?); in the mde checkout: "
                "pip install -U -e '.[train]'")
    return f"this command needs {name}, which is not installed; {OPTIONAL_MODULES[name]}"


# Control characters a file name may hold (a newline, an escape), shown escaped: a message stays one line. So are
# the bytes of a name that is not UTF-8 (Python holds them as lone surrogates, which no stream can print).
_NOT_UTF8 = {i: f"\\x{i - 0xDC00:02x}" for i in range(0xDC80, 0xDD00)}
_CONTROL = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"} | _NOT_UTF8


def one_line(text: str) -> str:
    """`text` with control characters and bytes that are not UTF-8 escaped: one printable line."""
    return text.translate(_CONTROL)


def valid_unicode(text: str) -> str:
    """`text` with the bytes of a name that is not UTF-8 written as `\\xNN`: a string JSON and UTF-8 can carry."""
    return text if text.isascii() else text.translate(_NOT_UTF8)


def counted(n: int, noun: str) -> str:
    """`n` and `noun`, plural but for one: "1 image", "3 images"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def shown_path(path: str | Path) -> str:
    """`path` as messages show it: as given, with control characters and bytes that are not UTF-8 escaped."""
    return one_line(str(path))


# What a command whose results go to stdout says where stdout is closed (`>&-`): `mde.cli` before the work,
# `mde.console.stdout_console` for those that print a table only with some options.
STDOUT_CLOSED = "standard output is closed; nothing takes the results (redirect it: > FILE, or > /dev/null)"


class MdeError(Exception):
    """A failure the user can act on. The CLI prints it as one line and exits `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.message, self.path = message, None if path is None else Path(path)
        super().__init__(f"{shown_path(path)}: {message}" if path is not None else message)


class InputError(MdeError):
    """Bad input: a missing, unreadable, corrupt or mis-shaped file or argument (exit 2)."""


class DataError(InputError):
    """A dataset problem: unpaired files, bad images, wrong sizes, no valid depth."""


class ModelError(InputError):
    """A checkpoint or artifact that cannot be used: corrupt, wrong architecture, no metadata."""


class BackendError(MdeError):
    """A backend that cannot be used here: not installed, no GPU, incompatible engine."""


class OutOfMemory(BackendError):
    """An allocation the machine or its GPU could not make: the input's size or the batch asked too much, not the
    model. The CLI adds what asks for less."""


# How allocators say they failed: torch's CPU allocator, CUDA through torch and through ONNX Runtime's CUDA
# provider, ONNX Runtime's own arena.
ALLOCATION_FAILED = ("can't allocate memory", "CUDA out of memory", "CUDA error: out of memory",
                     "CUDA failure 2: out of memory", "Failed to allocate memory", "cudaErrorMemoryAllocation",
                     "std::bad_alloc")


def allocation_failed(err: BaseException) -> bool:
    """Whether `err` is an allocation that failed (`ALLOCATION_FAILED`, Python's MemoryError, torch's
    OutOfMemoryError)."""
    if isinstance(err, (MemoryError, OutOfMemory)) or type(err).__name__ == "OutOfMemoryError":
        return True
    return any(sign in str(err) for sign in ALLOCATION_FAILED)


class CheckFailed(MdeError):
    """A check ran and failed (parity or export accuracy out of tolerance): exit 1."""

    exit_code = 1
