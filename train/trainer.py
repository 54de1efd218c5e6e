"""The training loop in torchvision's reference shape: `main` over epochs of `train_one_epoch` and `evaluate`,
`save_checkpoint` for `last.pt`/`best.pt`; data, model, schedule (CyclicLR or one-cycle), AMP, DDP.

`train(cfg)` runs one job; under `torchrun` every rank runs it, rank 0 alone writes.
Checkpoints (`last.pt` every `checkpoint_every` steps and at each epoch end, `best.pt` by
validation RMSE) carry the model arguments, config, step, optimizer/scheduler/scaler and
RNG states, so `--resume RUN/last.pt` continues exactly, even from the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mde.console import info, make_progress
from mde.errors import (
    BackendError,
    CheckFailed,
    DataError,
    InputError,
    MdeError,
    ModelError,
    allocation_failed,
    counted,
    one_line,
    shown_path,
)
from mde.io import (
    RUN_FILES,
    atomic_path,
    check_outside_splits,
    deferred_signals,
    no_empty_new_folder,
    prepare_output_dir,
    resolved,
    write_json_atomic,
)
from mde.runtime.evaluate import average
from mde.train import report
from mde.train.checkpoint import check_training_state, checkpoint_bytes, load_checkpoint, model_from_checkpoint
from mde.train.checkpoint import save_checkpoint as write_checkpoint
from mde.train.config import MAX_DEPTH_LIMIT, TrainConfig, as_typed, check_resume, merge_resume, size_text
from mde.train.distributed import DistEnv, all_reduce_sum, barrier, cleanup, setup
from mde.train.evaluate import model_metric_sums
from mde.train.loader import DepthPairs, batches, epoch_indices, epoch_loader, worker_death
from mde.train.losses import masked_loss, valid_mask
from mde.train.model import ModelArgs, build_model


# -- set-up helpers ---------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states as plain tensors/lists (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [int(x) for x in np_state[1]] + [int(np_state[2])],
            "python": [int(x) for x in py_state[1]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.array(state["numpy"][:-1], dtype=np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy"][-1]), 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule, stepped once per batch.

    `cyclic` (the report's): CyclicLR between lr_min and lr_max. `onecycle`: one warm-up from
    lr_min to lr_max over the first 30 % of the `total_steps`, then cosine annealing to lr_min / 100.
    """
    if cfg.schedule == "onecycle":
        # The warm-up ends at step 0.3 x steps - 1: before the first for 3 steps or fewer, which then ran at --lr-max
        # from the first. There, lr_min, lr_max, then the end (a run of fewer steps stops on the way).
        steps = max(total_steps, 3)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr_max, total_steps=steps, pct_start=0.3 if steps > 3 else 2 / 3,
            div_factor=cfg.lr_max / cfg.lr_min, final_div_factor=100.0,
            cycle_momentum=cfg.optimizer == "sgd")
    return torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=cfg.lr_min, max_lr=cfg.lr_max, step_size_up=cfg.step_size_up,
        mode=cfg.cycle_mode, gamma=0.9995, cycle_momentum=cfg.optimizer == "sgd")


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters, fused: one kernel for all of them instead of
    PyTorch's CPU default of a loop over tensors (AdamW's step 4x faster for resnet18/unet on a CPU). A run
    resumed from a checkpoint written before keeps that checkpoint's unfused setting."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr_min, momentum=0.9, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=cfg.lr_min, weight_decay=cfg.weight_decay, fused=True)


def restore_scaler(scaler: Any, state: dict[str, Any]) -> None:
    """Load a GradScaler's saved state. A run saved with it off (bf16 autocast, or the CPU) saved an empty one,
    which an enabled scaler refuses ("The source state dict is empty"): resumed on a GPU that takes fp16 with a
    scaler, it starts a fresh scale rather than calling the checkpoint damaged."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)


def autocast_dtype(torch: Any) -> Any:
    """bf16 where the GPU computes it natively (compute capability 8.0+, Ampere on), else fp16 with a GradScaler:
    `is_bf16_supported()` also says yes where bf16 is only emulated (a T4, a V100), slow and without cuDNN."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def open_splits(cfg: TrainConfig, env: DistEnv):
    """(train, val) datasets and the SSIM data range; a dataset too small for a batch is an error."""
    from mde.data.readers import check_depth_units, dataset_max_depth, open_dataset

    # a LiDAR frame with no return in view: the loss leaves its pixels out (val, which is scored, refuses one)
    train_set = open_dataset(cfg.data, split="train", depth_scale=cfg.depth_scale, empty_depth_ok=True)
    val_set = open_dataset(cfg.data, split="val", depth_scale=cfg.depth_scale)
    per_rank = len(train_set) // env.world_size
    if per_rank < cfg.batch_size:
        raise DataError(f"the train split has {counted(len(train_set), 'image')}, too few for --batch-size "
                        f"{cfg.batch_size} on {env.world_size} process(es)", cfg.data)
    if len(val_set) == 0:
        raise DataError("the val split has no images", cfg.data)
    if cfg.object_weight != 1 and not getattr(train_set, "masks", None):  # NYU files carry no masks
        raise DataError(f"--object-weight {cfg.object_weight:g} needs region masks, " + (
            "which an NYU file does not hold" if Path(cfg.data).is_file()
            else "and the train split has none (train/mask/NAME.png)"), cfg.data)
    data_range = float(dataset_max_depth(cfg.data, cfg.max_depth or None))
    if not cfg.max_depth and data_range > MAX_DEPTH_LIMIT:  # it would be the model's output range
        raise DataError(f"max_depth {data_range:g} m is beyond what the model's output can hold "
                        f"({MAX_DEPTH_LIMIT:g} m); pass --max-depth METRES", Path(cfg.data) / "meta.json")
    for split in (train_set, val_set):  # millimetres in a .npy would train a model of millimetres, silently
        check_depth_units(split, data_range)
    return train_set, val_set, data_range


def _run_in_folder(last: Path) -> str:
    """What to say of a run folder a new run was pointed at: how its run goes on, if it can, or --force."""
    from mde.train.config import check_resume, one_cycle_end

    said, anew = "the folder holds a run (last.pt)", "or start anew over it with --force"
    try:
        state = load_checkpoint(last)
        saved = TrainConfig.from_dict(state["config"])
        per_epoch = int(state["steps_per_epoch"])
    except Exception:  # noqa: BLE001 - an older or damaged last.pt: the general way on
        return f"{said}: continue it with --resume {shown_path(last)}, {anew}"
    processes = state.get("world_size")
    how = f"--resume {shown_path(last)}"  # on the number of processes it trained on: its batches were dealt for it
    if isinstance(processes, int) and processes > 1:
        how = f"torchrun --nproc-per-node {processes} -m mde.train {how}"
    try:
        check_resume(replace(saved, resume=str(last)), state, per_epoch)
    except InputError:  # its --epochs trained: finished, unless its schedule goes further
        if saved.schedule == "onecycle":
            room = one_cycle_end(state, per_epoch)
            if room is not None and room > int(state["epoch"]):  # stopped short by a smaller --epochs
                return (f"{said}, {state['epoch']} of its one-cycle schedule's {room} epochs trained: continue it "
                        f"with {how} --epochs {room}, {anew}")
            return f"{said}, finished; start anew over it with --force, or choose another --out"
        return f"{said}, finished; train it further with {how} --epochs N (N > {saved.epochs}), {anew}"
    return f"{said}, {state['epoch']} of its {saved.epochs} epochs trained: continue it with {how}, {anew}"


def _own_run_folder(out: Path, checkpoint: Path, force: bool) -> bool:
    """Whether a resume writing into `out` writes over its own run's files: `out` is the folder of `checkpoint`
    and that is the run's last.pt or best.pt (or the folder holds no run file to lose). A checkpoint copied or
    renamed into another run's folder would have replaced that run's best.pt and metrics.jsonl unasked.

    Raises:
        InputError: `out` is the checkpoint's folder, holding run files that may be another run's (not `force`).
    """
    if resolved(out) != resolved(checkpoint).parent:
        return False
    others = [name for name in RUN_FILES if (out / name).exists() and name != checkpoint.name]
    if checkpoint.name in ("last.pt", "best.pt") or not others:
        return True
    if not force:
        raise InputError(f"the resumed checkpoint {checkpoint.name} is not this folder's last.pt or best.pt, so its "
                         f"{', '.join(others)} may be another run's; resume with --out NEW_FOLDER, or with --force "
                         "to replace them", out)
    return False


def read_on_rank0(train_set: Any, val_set: Any, env: DistEnv) -> str:
    """What rank 0 alone reads before training: the first train image, whose notes (a grey dataset's) are said
    once, not by each loader worker every epoch (workers inherit what was said before they start); and every val
    file (a damaged one found now, not after an epoch's work), as the digest that tells a resume whether it
    validates alike (rank 0 alone decides what best.pt holds). After the checks every rank makes: those a rank
    meets while rank 0 reads would be said by that rank, not by rank 0 for all."""
    from mde.data.readers import read_every_sample

    if not env.is_main:
        return ""
    train_set[0]
    if hasattr(train_set, "check_headers"):  # a pair whose sizes or formats differ, found before the run folder
        train_set.check_headers("check train files")
    return read_every_sample(val_set, "check val files")


def inherited_depth_scale(cfg: TrainConfig, trained_on: str = "") -> float | None:
    """A resumed run's --depth-scale on the data its --data names now: kept where that data has PNG depth (the
    same dataset moved, as a rule), dropped with a note where its depth maps are all .npy metres, which no scale
    reads (refused when typed: it would change nothing), and where its meta.json declares a scale, which is then
    read; refused where that declared scale is not the one the run read the same folder (`trained_on`) at."""
    from mde.data.readers import declared_depth_scale, has_png_depth

    if not Path(cfg.data).exists():  # no dataset there: opening it says so
        return cfg.depth_scale
    declared = declared_depth_scale(cfg.data)
    if declared is None and has_png_depth(cfg.data):
        return cfg.depth_scale
    if declared is not None and declared != cfg.depth_scale and trained_on and resolved(trained_on) == \
            resolved(cfg.data):  # the same depth maps, read at another scale from here on
        raise InputError(f"the resumed run read {cfg.data}'s PNG depth at --depth-scale {cfg.depth_scale:g}, and "
                         f"its meta.json now declares {declared:g}: correct meta.json, or start a new run",
                         cfg.resume)
    if declared != cfg.depth_scale and os.environ.get("RANK", "0") == "0":  # once under torchrun (before its group)
        why = (f"its meta.json declares {declared:g} units per metre" if declared is not None
               else "its depth maps are not 16-bit PNGs")
        info(f"note: the resumed run's --depth-scale {cfg.depth_scale:g} is not used on {cfg.data}: {why}")
    return None


def resolve_config(cfg: TrainConfig, given: Collection[str] = ()) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The effective config (the checkpoint's when resuming) and the resume checkpoint, if any.

    `given`: the options the user set, for `merge_resume`.
    """
    if not cfg.resume:
        cfg.validate()
        cfg.check_new_run()
        return with_absolute_data(cfg), None
    if not Path(cfg.resume).exists():
        raise InputError("--resume checkpoint not found", cfg.resume)
    state = load_checkpoint(cfg.resume)
    if "optimizer" not in state or "config" not in state:
        raise ModelError("not a training checkpoint (no optimizer state); cannot resume", cfg.resume)
    check_training_state(state, cfg.resume)
    merged = merge_resume(cfg, TrainConfig.from_dict(state["config"]), given)
    if merged.depth_scale is not None and cfg.depth_scale is None:  # the checkpoint's, not this command's
        merged.depth_scale = inherited_depth_scale(merged, str(state["config"].get("data", "")))
    try:
        merged.validate()
    except InputError as err:  # the saved config, or what the resume changed in it
        raise InputError(str(err), cfg.resume) from None
    if merged.out and merged.data:  # a resume may move the run (--out): not into its dataset's splits either
        check_outside_splits(merged.out, merged.data)
    return with_absolute_data(merged), state


def with_absolute_data(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `--data` and `--backbone-weights` as absolute paths (symlinks kept): a resume from another folder
    reads the same files, and the same command with --resume added matches what was recorded."""
    weights = os.path.abspath(cfg.backbone_weights) if cfg.backbone_weights else cfg.backbone_weights
    return replace(cfg, data=os.path.abspath(cfg.data), backbone_weights=weights)


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Job:
    """What one training run is made of, built once: data, model, optimizer, schedule, AMP."""

    cfg: TrainConfig              # resolved: max_depth and frozen stages filled in
    env: DistEnv
    out: Path
    args: ModelArgs
    model: torch.nn.Module
    forward: Any                  # the model as called for training (DDP-wrapped, compiled)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    train_set: Any
    val_set: Any
    pairs: DepthPairs
    data_range: float
    replaces_a_run: bool = False  # --force over another run's folder: its files go with this run's first write
    # resumed into another folder: the resumed run's best.pt, copied at the first write unless that epoch is better
    inherited_best: Path | None = None
    collapse_said: bool = False   # `say_collapse` has warned: once a run
    val_data: str = ""            # rank 0's digest of the val depth (`read_every_sample`): saved in last.pt, so a
    #                               resume knows whether it validates alike
    steps_per_epoch: int = 0      # saved in last.pt with the number of processes: what a one-cycle schedule was
    #                               laid out for, named when a resume cannot fit it


@dataclass
class TrainState:
    """Where the run is: what `last.pt` saves and `--resume` restores."""

    epoch: int = 0                # epochs completed
    epoch_step: int = 0           # batches done in the current epoch
    step: int = 0
    best_rmse: float = float("inf")
    best_from: int = 0            # epochs before this one validated on other data: they do not compete for best.pt
    loss_sum: float = 0.0         # the current epoch's running train loss
    loss_count: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, given: Collection[str] = ()) -> dict[str, Any]:
    """Train one model; return {"best": val metrics of best.pt, "final": last epoch's, ...}.

    `given` names the options the user set (`mde train` passes them): on `--resume`, a given
    option that contradicts the checkpoint is refused even when it equals the default.
    """
    cfg, resume_state = resolve_config(cfg, given)
    env = setup(cfg.device)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # taskset
    if cfg.workers > cpus and env.is_main:  # said once, in one line (torch warns in many, twice an epoch)
        info(f"note: --workers {cfg.workers} is more than the {cpus} CPUs this process may use; the workers will "
             "share them")
    try:  # no_empty_new_folder: bad data, Ctrl-C leave no empty run folder
        with no_empty_new_folder(cfg.out), warnings.catch_warnings(), torch_settings_restored():
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            return main(cfg, env, resume_state)
    except RuntimeError as err:  # a worker's death torch's SIGCHLD handler raised outside the loader's iteration
        death = worker_death(err)
        if death is None:
            raise
        raise death from None
    finally:
        cleanup(env)


# The process-wide torch settings `build_job` changes besides deterministic mode: (module under torch, attribute).
TORCH_SETTINGS = (("utils.deterministic", "fill_uninitialized_memory"), ("backends.cudnn", "benchmark"),
                  ("backends.cudnn", "allow_tf32"), ("backends.cuda.matmul", "allow_tf32"))
# Loggers `build_job` quiets: inductor's C++ toolchain lookup (`--compile` on a CPU) warns of a CUDA_HOME
# without a CUDA runtime, which a CPU run does not need.
QUIETED_LOGGERS = ("torch.utils.cpp_extension",)


@contextlib.contextmanager
def torch_settings_restored() -> Iterator[None]:
    """Give the process back the torch settings training changes (deterministic mode on the CPU, cuDNN autotuning
    and TF32 on CUDA, the loggers it quiets): a program that calls `train` and then runs its own models runs them
    as before. Only a setting that changed is set back (setting PyTorch 2.9's legacy TF32 flags warns)."""
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    quieted = {name: logging.getLogger(name).level for name in QUIETED_LOGGERS}
    saved = []
    for module, name in TORCH_SETTINGS:
        try:
            owner = operator.attrgetter(module)(torch)
            saved.append((owner, name, getattr(owner, name)))
        except (AttributeError, RuntimeError):  # not in this PyTorch, or unreadable beside its new TF32 API
            pass
    try:
        yield
    finally:
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != deterministic:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        for owner, name, value in saved:
            with contextlib.suppress(AttributeError, RuntimeError):
                if getattr(owner, name) != value:
                    setattr(owner, name, value)
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)


def main(cfg: TrainConfig, env: DistEnv, resume: dict[str, Any] | None) -> dict[str, Any]:
    """The epochs: train, validate, write metrics and checkpoints (rank 0), draw curves and samples."""
    job = build_job(cfg, env, resume)
    state = restore(job, resume)
    cfg, out = job.cfg, job.out
    if env.is_main:
        info(f"training {job.args.backbone}/{job.args.decoder} {size_text(cfg.image_size)} px on {env.device} "
             f"x{env.world_size}: {len(job.train_set)} train / {len(job.val_set)} val images, "
             f"max depth {cfg.max_depth:g} m")
    progress = make_progress() if env.is_main else None
    if progress:
        progress.start()
    try:
        for epoch in range(state.epoch, cfg.epochs):
            record = train_one_epoch(job, state, epoch, progress)
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                record.update({f"val_{k}": v for k, v in evaluate(job, epoch, progress).items()})
                if env.is_main and not job.collapse_said:
                    job.collapse_said = say_collapse(job, epoch)
            state.records.append(record)
            state.epoch, state.epoch_step = epoch + 1, 0
            improved = "val_rmse" in record and record["val_rmse"] < state.best_rmse
            if improved:
                state.best_rmse = record["val_rmse"]
            if env.is_main:  # last.pt, which holds the records, decides what a resume continues from, so it
                # comes last: killed before it, a resume redoes this epoch and rewrites the files before it.
                # Ctrl-C and SIGTERM wait for the set (seconds), so a stopped run's files are one epoch's.
                with deferred_signals():
                    replace_old_run(job)
                    if improved:
                        save_checkpoint(job, state, out / "best.pt", training_state=False)
                    elif job.inherited_best is not None:
                        inherit_best(job.inherited_best, [r for r in state.records if r["epoch"] > state.best_from],
                                     out / "best.pt")
                    job.inherited_best = None
                    report.write_records(out / "metrics.jsonl", state.records)
                    report.write_curves(state.records, out)
                    if epoch + 1 == cfg.epochs:  # before the last.pt that ends the run: it cannot be resumed
                        report.write_samples(job.model, job.val_set, cfg.image_size, cfg.max_depth, env.device, out)
                    save_checkpoint(job, state, out / "last.pt")
                info(f"epoch {epoch + 1}/{cfg.epochs}: {report.summary(record)}")  # also in logs without a TTY
            barrier(env)
    finally:
        if progress:
            progress.stop()
    records = state.records
    best = min((r for r in records if "val_rmse" in r and r["epoch"] > state.best_from), key=lambda r: r["val_rmse"],
               default={})
    return {"run": str(out), "best": _val_metrics(best) | {"epoch": best.get("epoch", 0)},
            "final": _val_metrics(records[-1]) if records else {},
            "images_per_s": records[-1]["images_per_s"] if records else 0.0,
            "epochs": len(records)}


def build_job(cfg: TrainConfig, env: DistEnv, resume: dict[str, Any] | None) -> Job:
    """Data, model (from the checkpoint's arguments and weights when resuming), optimizer, schedule, AMP."""
    out = Path(cfg.out)
    train_set, val_set, data_range = open_splits(cfg, env)  # first: bad data leaves no output folder
    steps_per_epoch = len(train_set) // env.world_size // cfg.batch_size
    if resume is not None:
        check_resume(cfg, resume, steps_per_epoch, env.world_size)
        trained_on = resume.get("world_size")
        if isinstance(trained_on, int) and trained_on != env.world_size and env.is_main:  # at an epoch's end: allowed
            info(f"note: {cfg.resume} trained on {trained_on} process(es), batches of {trained_on * cfg.batch_size}; "
                 f"it goes on on {env.world_size}, batches of {env.world_size * cfg.batch_size} (--batch-size is per "
                 "process)")
    elif env.is_main and not cfg.force and (out / "last.pt").is_file():  # a stopped run: --force would lose it; said
        raise InputError(_run_in_folder(out / "last.pt"), out)  # before a model is built (or its weights downloaded)
    cuda = env.device.type == "cuda"
    torch.manual_seed(cfg.seed + env.rank)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills uninitialised memory (`torch.empty` and the like) with NaN, or an
        # integer's maximum, to expose reads of it: a debugging aid that cost 8 % of a profiled CPU training
        # step and changes no result. Like the mode itself, the setting is the process's.
        torch.utils.deterministic.fill_uninitialized_memory = False
    if resume is not None:
        model = model_from_checkpoint(resume, cfg.resume)
        args = model.args
    else:
        args = ModelArgs(cfg.backbone, cfg.image_size, float(cfg.max_depth or data_range), cfg.decoder)
        model = build_model(args, pretrained=cfg.pretrained, backbone_weights=cfg.backbone_weights or None)
    own_folder = resume is not None and _own_run_folder(out, Path(cfg.resume), cfg.force)
    # what every rank checks (the weights above, the run folder) comes before what rank 0 alone reads, which may
    # take minutes: a check a rank met meanwhile would be said by that rank, and then by rank 0 again
    val_data = read_on_rank0(train_set, val_set, env)
    if env.is_main:  # a resume writes over its own run folder; any other must be empty (or --force)
        if out.is_dir():  # first: a run killed while writing its first checkpoint left only a temporary copy
            report.remove_partial_writes(out)
        prepare_output_dir(out, force=cfg.force or own_folder)
        report.check_run_files(out)
        if cfg.max_depth and cfg.max_depth < data_range and resume is None:
            info(f"note: --max-depth {cfg.max_depth:g} m is below the dataset's {data_range:g} m: the model "
                 f"cannot predict beyond {cfg.max_depth:g} m")
    model.freeze(cfg.frozen_stages)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    if env.is_main:  # found now, not when the first epoch's checkpoints do not fit
        report.check_free_space(out, checkpoint_bytes(model, optimizer, replacing=True))
    amp_dtype = autocast_dtype(torch) if cuda else torch.float16
    forward = model
    if env.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if cuda else None)
    if cfg.compile:
        if not cuda:
            for name in QUIETED_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        forward = said_compile_failures(torch.compile(forward))
    return Job(
        cfg=replace(cfg, max_depth=float(args.max_depth), freeze_stages=cfg.frozen_stages), env=env, out=out,
        args=args, model=model, forward=forward, optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs),
        scaler=torch.amp.GradScaler("cuda", enabled=cfg.amp and cuda and amp_dtype == torch.float16),
        amp_dtype=amp_dtype, train_set=train_set, val_set=val_set,
        pairs=DepthPairs(train_set, cfg.image_size, cfg.augment, cfg.seed, scale_crop=cfg.scale_crop,
                         color_jitter=cfg.color_jitter, object_weight=cfg.object_weight),
        data_range=data_range, replaces_a_run=env.is_main and cfg.force and not own_folder,
        inherited_best=_inherited_best(cfg, out) if resume is not None else None,
        val_data=val_data, steps_per_epoch=steps_per_epoch,
    )


def said_compile_failures(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """`compiled` (torch.compile's), whose compiler failing at the first call is one line naming its cause and
    the way on, not an internal error: inductor needs a working C++ compiler, which a slim image lacks."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except Exception as err:
            if not type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise  # the model's or the data's own error, raised through the compiled call
            inner = getattr(err, "inner_exception", None) or err  # BackendCompilerFailed wraps it, InductorError not
            if allocation_failed(inner):  # out of memory while it compiled: the batch's size, said as such
                raise inner from None
            cause = ("it found no working C++ compiler (install g++, or set CXX to one)"
                     if "InvalidCxxCompiler" in f"{type(inner).__name__} {inner}" else
                     f"{type(inner).__name__}: {one_line(str(inner))[:200]}")
            raise BackendError(f"--compile: torch.compile could not compile the model: {cause}; train without "
                               "--compile") from None

    return forward


def restore(job: Job, resume: dict[str, Any] | None) -> TrainState:
    """A fresh `TrainState`, or the resumed one: optimizer, schedule, scaler and RNG states loaded."""
    if resume is None:
        return TrainState()
    try:
        job.optimizer.load_state_dict(resume["optimizer"])
        job.scheduler.load_state_dict(resume["scheduler"])
        restore_scaler(job.scaler, resume["scaler"])
        set_rng_state(resume["rng"])
    except torch.cuda.OutOfMemoryError:  # the GPU's fault, not the checkpoint's
        raise
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"damaged training checkpoint: cannot restore its training state ({first})",
                         job.cfg.resume) from None
    # the resumed run's history, also when --out is another folder (its best epoch may be an earlier one);
    # checkpoints from before the records were saved in them read the run's metrics.jsonl
    records = resume.get("records")
    if records is None:
        records = report.read_records(Path(job.cfg.resume).parent / "metrics.jsonl", upto=resume["epoch"])
    # the epoch's running loss was summed over every rank when saved: rank 0 carries it on, the others start at 0
    main_rank = job.env.is_main
    best_from, best_rmse = resume.get("best_from", 0), resume.get("best_rmse", float("inf"))
    saved = resume.get("config") if isinstance(resume.get("config"), dict) else {}
    if _validates_elsewhere(resume.get("val_data"), saved, job):  # a val RMSE of other data is no measure to beat
        best_from, best_rmse, job.inherited_best = resume["epoch"], float("inf"), None
        if main_rank:
            info(f"note: the resumed run validated on other val depth than this run reads (it had --data "
                 f"{saved.get('data')}, {as_typed('depth_scale', saved.get('depth_scale'))}); best.pt is chosen "
                 f"again from epoch "
                 f"{resume['epoch'] + 1} on, and the earlier epochs' figures stay in metrics.jsonl")
    trained_range = resume.get("data_range")  # absent from checkpoints before it was saved
    if main_rank and isinstance(trained_range, float) and trained_range != job.data_range:
        info(f"note: this data's depth range (its meta.json's max_depth, else the model's) is {job.data_range:g} m, "
             f"the resumed run's was {trained_range:g} m: SSIM from epoch {resume['epoch'] + 1} on is on another "
             "scale than the earlier epochs' in metrics.jsonl (RMSE and best.pt's choice are not)")
    return TrainState(epoch=resume["epoch"], epoch_step=resume["epoch_step"], step=resume["step"],
                      best_rmse=best_rmse, best_from=best_from,
                      loss_sum=resume.get("loss_sum", 0.0) if main_rank else 0.0,
                      loss_count=resume.get("loss_count", 0) if main_rank else 0, records=list(records))


def _validates_elsewhere(saved_fingerprint: Any, saved: dict[str, Any], job: Job) -> bool:
    """Whether a resumed run validated on other data than this run does (rank 0, which writes best.pt): another
    val set, or its PNGs read at another --depth-scale, by the digest of the val depth both read
    (`read_every_sample`); the same dataset moved or re-encoded is the same. A checkpoint from before the digest
    was saved: by its --data path, where that still exists, and its --depth-scale on PNG depth."""
    if not job.env.is_main:
        return False
    if isinstance(saved_fingerprint, str) and saved_fingerprint:
        return saved_fingerprint != job.val_data
    if "data" not in saved or not Path(str(saved["data"])).exists():  # gone: moved, as a rule
        return False
    from mde.data.readers import has_png_depth

    try:
        other = resolved(Path(saved["data"])) != resolved(Path(job.cfg.data))
    except (OSError, TypeError, ValueError):
        return False
    return other or (saved.get("depth_scale") != job.cfg.depth_scale and has_png_depth(job.cfg.data))


def _inherited_best(cfg: TrainConfig, out: Path) -> Path | None:
    """Where a resumed run's best weights so far are: its best.pt, beside its checkpoint in another folder (in this
    one, --force replaces it); or, with no best.pt in this folder (only last.pt was copied to another machine), the
    resumed checkpoint itself, which holds them when its epoch was the best."""
    resumed = resolved(cfg.resume)
    if resolved(out) != resumed.parent:
        return resumed.parent / "best.pt"
    return None if (out / "best.pt").exists() else resumed


# what best.pt holds of a last.pt: its weights and what they are, not the state to train on from
BEST_KEYS = ("format", "mde_version", "model_args", "model", "config", "epoch", "epoch_step", "step", "metrics")


def inherit_best(source: Path, records: list[dict[str, Any]], target: Path) -> None:
    """A resumed run whose first epoch did not beat the resumed run's best: that run's `best.pt` (or the resumed
    last.pt's weights), where it holds the best epoch of the records (the run folder promises one; the --json names
    it)."""
    best = min((r for r in records if "val_rmse" in r), key=lambda r: r["val_rmse"], default=None)
    if best is None:
        return
    try:
        state = load_checkpoint(source) if source.is_file() else {}
    except MdeError:
        state = {}
    if state.get("epoch") != best["epoch"] or state.get("epoch_step"):  # mid-epoch: not an epoch's weights
        info(f"note: {source} is not the resumed run's best epoch ({best['epoch']}); {target} comes with the "
             "next epoch that does better")
        return
    if "optimizer" in state:  # the resumed last.pt, from an epoch's end
        write_checkpoint(target, {k: v for k, v in state.items() if k in BEST_KEYS})
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def replace_old_run(job: Job) -> None:
    """Before a run's first write into another run's folder (`--force`), remove that run's files: a run that
    fails before it leaves the old run whole, and one stopped after it never leaves a mix of the two."""
    if job.replaces_a_run:
        report.check_room(job.out, checkpoint_bytes(job.model, job.optimizer))
        report.remove_run_files(job.out)
        job.replaces_a_run = False


def save_checkpoint(job: Job, state: TrainState, path: Path, training_state: bool = True) -> None:
    """Save the model and its arguments; with `training_state` (last.pt) also what `--resume` needs.

    A mid-epoch save may be the run's first write: `replace_old_run` first.
    """
    from mde.data.readers import png_scale_read

    replace_old_run(job)
    own = state.epoch_step == 0 and state.records and state.records[-1]["epoch"] == state.epoch
    # png_depth_scale: the units per metre the train PNGs were read at, whether from --depth-scale, meta.json or
    # the default (the option alone left a meta.json's unknown to eval's note on other data)
    config = {**job.cfg.to_dict(), "png_depth_scale": png_scale_read(job.train_set)}
    checkpoint = {"model_args": vars(job.args), "model": job.model.state_dict(), "config": config,
                  "epoch": state.epoch, "epoch_step": state.epoch_step, "step": state.step,
                  # the validation of these weights, or none (mid-epoch, or an epoch --val-every skipped):
                  # export stamps them on the model
                  "metrics": _val_metrics(state.records[-1]) if own else {}}
    if training_state:
        checkpoint |= {"best_rmse": state.best_rmse, "best_from": state.best_from, "val_data": job.val_data,
                       "data_range": job.data_range,  # SSIM's: a resume onto another is said
                       "steps_per_epoch": job.steps_per_epoch, "world_size": job.env.world_size,
                       "loss_sum": state.loss_sum,
                       "loss_count": state.loss_count,
                       "optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(),
                       "scaler": job.scaler.state_dict(), "rng": rng_state(), "records": state.records}
    write_checkpoint(path, checkpoint)
    if training_state:  # the run's config beside its first checkpoint: a run that fails before one leaves none
        # --batch-size is per process: the processes and the batch they make together are what a reader needs
        # to repeat the run (TrainConfig.from_dict ignores both keys)
        write_json_atomic(path.parent / "config.json", {
            **job.cfg.to_dict(), "world_size": job.env.world_size,
            "global_batch_size": job.cfg.batch_size * job.env.world_size})


def train_one_epoch(job: Job, state: TrainState, epoch: int, progress: Any) -> dict[str, Any]:
    """One epoch from `state.epoch_step` on (mid-epoch resume); returns the epoch's record (loss, lr, img/s)."""
    cfg, env = job.cfg, job.env
    cuda = env.device.type == "cuda"
    job.pairs.epoch = epoch
    indices = epoch_indices(len(job.pairs), epoch, cfg.seed, env.rank, env.world_size)
    steps = len(indices) // cfg.batch_size
    loader = epoch_loader(job.pairs, indices[state.epoch_step * cfg.batch_size:], cfg.batch_size, cfg.workers,
                          cuda)
    task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, completed=state.epoch_step,
                             info="") if progress else None
    # the running loss stays on the device: no host sync per step
    loss_sum = torch.full((), state.loss_sum, dtype=torch.float64, device=env.device)
    supervised = torch.zeros((), dtype=torch.float64, device=env.device)  # valid target pixels from here on
    whole = state.epoch_step == 0  # not a resumed epoch's rest, whose first part may have had them
    job.model.train()
    t0, seen, lr = time.perf_counter(), 0, job.scheduler.get_last_lr()[0]
    first = state.epoch_step + 1  # shown too: a log has a line before the 10th batch (minutes with --compile)
    for x, y, w, _ in batches(loader):
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        w = w.to(env.device, non_blocking=True) if w.numel() else None  # empty: unweighted (DepthPairs)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(env.device.type, dtype=job.amp_dtype, enabled=cfg.amp and cuda):
            pred = job.forward(x)
        loss = masked_loss(cfg.loss, pred, y, w)
        job.optimizer.zero_grad(set_to_none=True)
        job.scaler.scale(loss).backward()
        job.scaler.step(job.optimizer)
        job.scaler.update()
        lr = job.scheduler.get_last_lr()[0]  # the rate this step used (after `step()`: the next one's)
        job.scheduler.step()
        state.step, state.epoch_step, seen = state.step + 1, state.epoch_step + 1, seen + len(x)
        loss_sum += loss.detach()
        supervised += valid_mask(y).sum()
        state.loss_count += 1
        if state.epoch_step % cfg.log_interval == 0 or state.epoch_step in (first, steps):
            # the running loss over every rank, as the epoch's line gives it (a collective: all ranks log together)
            shown_sum, shown_count = all_reduce_sum([float(loss_sum), state.loss_count], env)
            if progress:
                ips = seen * env.world_size / (time.perf_counter() - t0)
                progress.update(task, completed=state.epoch_step, info=(
                    f"loss {shown_sum / max(shown_count, 1):.4f}  lr {lr:.2e}  {ips:.1f} img/s"))
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.epoch_step < steps:
            # every rank's running loss, summed (a collective: all ranks reach this step together)
            partial_sum, partial_count = all_reduce_sum([float(loss_sum), state.loss_count], env)
            check_finite(job, partial_sum, epoch)
            if env.is_main:  # held as the epoch's end is: the first one removes an old run (--force) before it
                with deferred_signals():
                    save_checkpoint(job, replace(state, loss_sum=partial_sum, loss_count=int(partial_count)),
                                    job.out / "last.pt")
    images_per_s = seen * env.world_size / max(time.perf_counter() - t0, 1e-9)
    total, count, pixels = all_reduce_sum([float(loss_sum), state.loss_count, float(supervised)], env)
    check_finite(job, total, epoch)
    if whole and seen and not pixels:  # a loss of 0.0000 and checkpoints of a model that learned nothing
        raise DataError(f"epoch {epoch + 1} had no valid depth pixel to learn from in {seen * env.world_size} "
                        f"train images at --image-size {size_text(cfg.image_size)}: the depth maps are empty, or too "
                        "sparse to keep one after the resize (use a larger --image-size, or denser depth)", cfg.data)
    state.loss_sum, state.loss_count = 0.0, 0
    return {"epoch": epoch + 1, "step": state.step, "train_loss": total / max(count, 1),
            "lr": lr, "images_per_s": images_per_s}


def check_finite(job: Job, loss_sum: float, epoch: int) -> None:
    """Stop before a checkpoint holds NaN weights: `CheckFailed` when the running loss (summed over the ranks)
    or a weight (the same on every rank) is not finite, so all ranks stop together."""
    weights = torch.stack([torch.isfinite(p).all() for p in job.model.parameters()]).all()
    if math.isfinite(loss_sum) and bool(weights):
        return
    kept = job.out.is_dir() and any(job.out.iterdir())  # a checkpoint from before; else the folder goes
    raise CheckFailed(f"training diverged: the loss or the weights became NaN or infinite in epoch {epoch + 1}; "
                      f"start again with a lower --lr-max than {job.cfg.lr_max:g}"
                      + (f" or a lower --weight-decay than {job.cfg.weight_decay:g}"
                         if job.cfg.weight_decay > TrainConfig().weight_decay else "")
                      + (" (--force to reuse this folder)" if kept else ""), job.out)


def evaluate(job: Job, epoch: int = 0, progress: Any = None) -> dict[str, float]:
    """Validation metrics over the whole val split, each rank scoring its own shard of the model rank 0 saves;
    `progress` (rank 0's) shows rank 0's shard as it goes."""
    env, cfg = job.env, job.cfg
    _share_rank0_buffers(job.model, env)
    shard = range(env.rank, len(job.val_set), env.world_size)
    advance = None
    if progress is not None:
        task = progress.add_task(f"validate {epoch + 1}/{cfg.epochs}", total=math.ceil(len(shard) / cfg.batch_size),
                                 info="")
        advance = functools.partial(progress.advance, task)
    sums, count = model_metric_sums(job.model, job.val_set, cfg.image_size, cfg.max_depth, env.device,
                                    cfg.batch_size, job.data_range, shard, advance=advance)
    names = _all_names(sorted(sums), env)
    reduced = all_reduce_sum([sums.get(n, 0.0) for n in names] + [count], env)
    return average(dict(zip(names, reduced[:-1])), int(reduced[-1]))


COLLAPSE_IMAGES = 4  # the first val images a saturated output is looked for on
SATURATED_AT = 1e-4  # of the depth range: a prediction this close to 0 or the range is at the head's end
SATURATED_SHARE = 0.9  # of the pixels: the output has saturated


def say_collapse(job: Job, epoch: int) -> bool:
    """Say, and return True, where the model predicts the ends of its range (0 or `max_depth`) at nearly every
    pixel of the first val images: its sigmoid head saturated (a learning rate too high drives it there, and no
    gradient flows back from it). Its figures are then those of a map of one or two values, and the run would
    end as a success with an unusable model."""
    from mde.train.evaluate import torch_predictor

    images = [job.val_set[i].rgb for i in range(min(COLLAPSE_IMAGES, len(job.val_set)))]
    was_training = job.model.training
    job.model.eval()
    try:
        preds = torch_predictor(job.model, job.cfg.image_size, job.cfg.max_depth, job.env.device)(images)
    finally:
        job.model.train(was_training)
    values = np.concatenate([p.ravel() for p in preds])
    near = SATURATED_AT * job.cfg.max_depth
    low, high = values <= near, values >= job.cfg.max_depth - near
    share = float(np.mean(low | high)) if values.size else 0.0
    if share < SATURATED_SHARE:
        return False
    ends = [f"{end:g} m" for end, hit in ((0, low.any()), (job.cfg.max_depth, high.any())) if hit]
    which = "the ends of its range" if len(ends) == 2 else "an end of its range"
    info(f"warning: epoch {epoch + 1}: the model predicts {' or '.join(ends)}, {which}, at {share:.0%} of the "
         f"pixels of the first val images: its output has saturated, and training rarely recovers from that; "
         f"train again with a smaller --lr-max (now {job.cfg.lr_max:g})")
    return True


def _share_rank0_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts them before each training forward,
    so after the last step every rank holds its own batch's update; validation must score the model
    that rank 0 saves."""
    if not env.distributed:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _all_names(names: list[str], env: DistEnv) -> list[str]:
    """The metric names of every rank's shard (a region may appear in one shard only), sorted."""
    if not env.distributed:
        return names
    import torch.distributed as dist

    gathered: list[list[str] | None] = [None] * env.world_size
    dist.all_gather_object(gathered, names)
    return sorted(set().union(*gathered))


def _val_metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k[4:]: v for k, v in record.items() if k.startswith("val_")}
