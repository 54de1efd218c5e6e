"""What the benchmark scripts share on their command line: an error is one line with exit 2, Ctrl-C is one
line with exit 130 (as the `mde` commands do), never a usage block or a traceback for the user's mistake."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mde.errors import MdeError


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, `SCRIPT: error: MESSAGE`, exit 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's `main`: mde's errors and what the file system refuses (a path that cannot be written,
    a folder where a file goes) as one line with exit 2 (or the error's own code), Ctrl-C as exit 130."""
    prog = Path(sys.argv[0]).name
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except MdeError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except OSError as err:
        if err.filename is None:  # not about a path the user gave: a real failure, with its traceback
            raise
        print(f"{prog}: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def default_decoder() -> str:
    """The decoder `mde train` builds unless told otherwise: the network the speed and GPU figures are of."""
    from mde.train.config import TrainConfig

    return TrainConfig.decoder


def decoder_choices() -> tuple[str, ...]:
    from mde.train.config import DECODER_CHOICES

    return DECODER_CHOICES


def can_write_in(folder: Path) -> bool:
    """Whether a file can be made in `folder` (tried: root passes every permission check, not a read-only
    mount or /proc), so an output is refused before the work, not after it."""
    try:
        fd, name = tempfile.mkstemp(prefix=".bench-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what 8-bit and float kernels use


def machine() -> dict[str, Any]:
    """The CPU a benchmark ran on: its model name, cores and the vector extensions that set its figures (Linux's
    /proc/cpuinfo; `platform.processor()` says only "x86_64" there)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            cpu = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "python": platform.python_version()}
