"""A ceiling on this process's memory while `mde bench` and `mde predict` run a model at a size the user chose.

Past what the machine can give, the kernel's out-of-memory killer ended the command with no word (exit 137), and on
a shared machine it may take another process instead. Under the ceiling (RLIMIT_AS: the address space this process
holds now, plus the memory the machine has available, plus room for thread arenas) the allocation fails inside
ONNX Runtime, numpy or PyTorch instead, which the command says in one line with the options that ask for less
(exit 2). Linux only, and CPU runs only: CUDA reserves address space far beyond what it uses, so a GPU run keeps
no ceiling. A ceiling the user set lower already (`ulimit -v`) stands.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOM = 1 << 30                 # libraries loaded under the ceiling (onnxruntime's, torch's) and the run's own small
ARENA_RESERVE = 64 << 20       # address space glibc reserves per malloc arena (HEAP_MAX_SIZE on 64-bit)
ARENAS_PER_CPU = 8             # glibc's most arenas per CPU on 64-bit


def _kib_field(path: str, key: str) -> int | None:
    """A `Key:  N kB` line of a /proc file, in bytes."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What this process's cgroup (v2) still allows, where it sets a limit (a container's `--memory`)."""
    try:
        relative = Path("/proc/self/cgroup").read_text(encoding="ascii").strip().split("::", 1)[1]
        group = Path("/sys/fs/cgroup") / relative.lstrip("/")
        limit = (group / "memory.max").read_text(encoding="ascii").strip()
        used = (group / "memory.current").read_text(encoding="ascii").strip()
        return int(limit) - int(used) if limit != "max" else None
    except (OSError, ValueError, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes the machine can still give this process (MemAvailable, or its cgroup's room where smaller); None
    where it cannot be read (not Linux)."""
    sizes = [size for size in (_kib_field("/proc/meminfo", "MemAvailable"), _cgroup_room()) if size is not None]
    return max(min(sizes), 0) if sizes else None


def ceiling() -> int | None:
    """The address-space limit `memory_ceiling` sets now, or None where the machine does not say its memory."""
    available, held = available_memory(), _kib_field("/proc/self/status", "VmSize")
    if available is None or held is None:
        return None
    return held + available + ROOM + ARENA_RESERVE * ARENAS_PER_CPU * (os.cpu_count() or 1)


@contextlib.contextmanager
def memory_ceiling(enabled: bool = True) -> Iterator[None]:
    """Hold the process's address space under `ceiling()` for the block (the limit before it comes back after)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        resource = None
    limit = ceiling() if enabled and resource is not None else None
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:  # the user's own ceiling is lower
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def runs_on_cpu_only(artifacts: list[Path], providers: list[str] | None) -> bool:
    """Whether every model of the run computes on the CPU for certain: no engine, no checkpoint (PyTorch takes a
    GPU where there is one), and ONNX Runtime's providers (those named, or those this machine would choose) the
    CPU's alone."""
    suffixes = {Path(a).suffix.lower() for a in artifacts}
    if suffixes & {".engine", ".plan", ".pt", ".pth"}:
        return False
    if ".onnx" not in suffixes:
        return True
    from mde.runtime.backends import ort_providers as eps

    chosen = providers if providers is not None else eps.default_providers(
        eps.import_ort().get_available_providers(), say=False)
    return all(p == eps.CPU_EP for p in chosen)
