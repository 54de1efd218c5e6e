"""Process-group set-up for `torchrun` (gloo on CPU, NCCL on CUDA) and the few collectives the trainer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mde.errors import BackendError, InputError
from mde.train.runner import check_device


@dataclass
class DistEnv:
    """Where this process runs: its rank among `world_size` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, local_rank: int = 0, source: Path | None = None) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU, or "cuda:N" (one GPU of several, as
    `eval` and parity's reference take it) without that GPU, is a `BackendError` (naming `source`)."""
    if choice.startswith("cuda:") and choice[5:].isdigit():
        check_device(torch, choice, source)
        return torch.device(choice)
    if choice not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown --device {choice!r}; choose from auto, cpu, cuda, cuda:N")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if choice == "cuda":
        raise BackendError("--device cuda: no CUDA GPU is visible to PyTorch (use --device cpu)")
    return torch.device("cpu")


def setup(device_choice: str) -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        # When one rank fails, torchrun stops the others with SIGTERM; `mde.cli` (every entry point,
        # `-m mde.train` included) turns it into an exit through Python, so rank 0 still removes a run
        # folder it made and left empty. A rank blocked in a collective that never completes runs no
        # Python until torchrun's later SIGKILL.
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            check_one_gpu_per_process(torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistEnv(rank, world, local_rank, device)


def check_one_gpu_per_process(gpus: int) -> None:
    """NCCL takes one GPU per process: two ranks on one GPU fail in its first collective ("Duplicate GPU
    detected"), after the data has loaded. Refused before the process group forms, in torchrun's own terms."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return
    if local > gpus:
        raise BackendError(f"torchrun starts {local} processes on this machine, and it has {gpus} CUDA GPU(s); "
                           f"DDP on CUDA (NCCL) needs one GPU per process: use --nproc-per-node {gpus}, or "
                           "--device cpu")


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity in a single process)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
