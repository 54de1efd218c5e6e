"""`TrainConfig`: every training option with its default, and the rules of a resume (torch-free: fast `--help`)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mde.errors import InputError
from mde.io import check_outside_splits
from mde.runtime.metadata import MAX_INPUT_SIDE, MIN_DEPTH_RANGE

BACKBONE_CHOICES = ("resnet18", "resnet34", "resnet50")
# The registered decoders (mde.train.model.DECODERS); kept here so `mde --help` needs no torch.
# tests/test_model.py checks that the two lists agree.
DECODER_CHOICES = ("report", "unet")
SCHEDULES = ("cyclic", "onecycle")
CYCLE_MODES = ("triangular", "triangular2", "exp_range")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
LOSS_CHOICES = ("l1", "berhu", "silog", "ssim_l1")
OBJECT_WEIGHT_RANGE = (1e-3, 1e3)  # float32 weights: far outside it they round to 0 or inf
MAX_DEPTH_LIMIT = 10_000.0  # metres: the output head computes in float32 (and FP16 after export)
SEED_LIMIT = 2**32 - 1  # numpy's and torch's seeds
CYCLIC_ONLY = ("cycle_mode", "step_size_up")  # options that shape CyclicLR and nothing else

# What a config written before an option existed meant (an absent key is not today's default).
LEGACY_DEFAULTS = {"decoder": "report", "schedule": "cyclic", "scale_crop": True, "color_jitter": True}
LEGACY_DEPTH_SCALE = 1000.0
MAX_EPOCHS = 100_000  # one-cycle spreads its warm-up over the run: beyond, it would never leave --lr-min
# Values that mean "work it out" (the dataset's maximum depth; 3 or 0 frozen stages): a saved
# config holds what they resolved to, so giving them again on --resume is no conflict.
AUTO_VALUES = {"max_depth": 0.0, "freeze_stages": -1}
# Options a resumed run may change; everything else comes from the checkpoint's config.
RESUME_OVERRIDES = ("data", "depth_scale", "out", "resume", "epochs", "device", "workers", "log_interval",
                    "val_every", "checkpoint_every", "force", "compile")


def input_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An `--image-size` as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def as_image_size(size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """The one form of an input size: an int when square, else (height, width) (a JSON config holds a list)."""
    h, w = input_hw(size)
    return h if h == w else (h, w)


def size_text(size: int | tuple[int, int] | list[int]) -> str:
    """An input size as `--image-size` takes it: `224`, or `352x1216` (height x width)."""
    size = as_image_size(size)
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def same_size(a: Any, b: Any) -> bool:
    """Whether two saved input sizes are one: N and [N, N] alike, a tuple (a checkpoint) and a list (JSON) alike;
    a damaged value only equals itself."""
    try:
        return input_hw(a) == input_hw(b)
    except (TypeError, ValueError, IndexError):
        return a == b


def parse_image_size(text: str) -> int | tuple[int, int]:
    """`--image-size`: N for a square input, or HxW (height x width, as the image arrays are)."""
    parts = text.strip().lower().split("x")
    if len(parts) > 2 or not all(re.fullmatch(r"[0-9]+", p.strip()) for p in parts):  # not "²", which int() refuses
        raise InputError(f"--image-size must be N (square) or HxW like 352x1216, multiples of 32, got {text!r}")
    return as_image_size((int(parts[0]), int(parts[-1])))


@dataclass
class TrainConfig:
    """One training run. Defaults follow the source report where it says something, except the
    decoder, the LR schedule and the augmentation (flips only), chosen by measurement
    (`--decoder report --schedule cyclic` is the report's network and schedule).

    `max_depth` 0 means "the dataset's maximum depth" (read from the data folder).
    `freeze_stages` K freezes the stem and the first K-1 residual stages; -1 (auto) means the
    report's 3 when the encoder starts from ImageNet weights or --backbone-weights, and 0 when
    training from scratch (frozen random layers only hurt). An explicit K > 0 from scratch is refused.
    """

    data: str = ""
    out: str = ""
    backbone: str = "resnet50"
    decoder: str = "unet"  # better than the report's on every benchmark figure (README, issue 13)
    image_size: int | tuple[int, int] = 224  # N (square) or (height, width): `parse_image_size`
    epochs: int = 20
    batch_size: int = 16
    lr_min: float = 2e-4
    lr_max: float = 2e-3
    schedule: str = "onecycle"  # better than CyclicLR at short budgets; "cyclic" is the report's
    cycle_mode: str = "triangular2"
    step_size_up: int = 250
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    loss: str = "berhu"  # lowest val RMSE of the four on the synthetic benchmark
    freeze_stages: int = -1
    pretrained: bool = True
    backbone_weights: str = ""
    augment: bool = True  # flips; the two below add to it (off: they cost accuracy at 8 epochs, README)
    scale_crop: bool = False
    color_jitter: bool = False
    object_weight: float = 1.0  # >1 trades whole-image RMSE for object RMSE (README, "Quality per region")
    max_depth: float = 0.0
    depth_scale: float | None = None  # None: the dataset format's own (1000; KITTI 256)
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    workers: int = 2
    seed: int = 0
    resume: str = ""
    force: bool = False
    val_every: int = 1
    log_interval: int = 10
    checkpoint_every: int = 200

    def validate(self) -> None:
        """Raise `InputError` for values no run can use."""
        choices = {"backbone": BACKBONE_CHOICES, "decoder": DECODER_CHOICES, "schedule": SCHEDULES,
                   "cycle_mode": CYCLE_MODES,
                   "optimizer": OPTIMIZERS, "device": DEVICES, "loss": LOSS_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; "
                                 f"choose from {', '.join(allowed)}")
        if not self.data:
            raise InputError("--data is required")
        if not self.out:
            raise InputError("--out is required")
        positive = ("epochs", "batch_size", "step_size_up", "val_every", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        h, w = input_hw(self.image_size)
        if any(side < 32 or side % 32 or side > MAX_INPUT_SIDE for side in (h, w)):
            raise InputError(f"--image-size must be multiples of 32 from 32 to {MAX_INPUT_SIDE} (N, or HxW), got "
                             f"{size_text(self.image_size)}")
        if self.batch_size * (h // 32) * (w // 32) < 2:  # the encoder's last stage sees 1 x 1 per image
            raise InputError(f"--batch-size {self.batch_size} at --image-size {size_text(self.image_size)} gives "
                             "BatchNorm one value per channel at the encoder's last stage, which it cannot train on; "
                             "use --batch-size 2 or more, or --image-size 64 or more")
        if not 0 < self.lr_min <= self.lr_max:
            raise InputError(f"need 0 < --lr-min <= --lr-max, got {self.lr_min} and {self.lr_max}")
        for name in ("lr_min", "lr_max", "weight_decay", "max_depth", "depth_scale"):  # object_weight: its range
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        for name in ("workers", "checkpoint_every", "max_depth", "weight_decay"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise InputError(f"--epochs must be at most {MAX_EPOCHS}, got {self.epochs}")
        if self.depth_scale is not None and self.depth_scale <= 0:
            raise InputError(f"--depth-scale must be > 0, got {self.depth_scale}")
        if self.max_depth > MAX_DEPTH_LIMIT or 0 < self.max_depth < MIN_DEPTH_RANGE:
            raise InputError(f"--max-depth must be {MIN_DEPTH_RANGE:g} to {MAX_DEPTH_LIMIT:g} m (0: the dataset's), "
                             f"got {self.max_depth:g}")
        if not 0 <= self.seed <= SEED_LIMIT:
            raise InputError(f"--seed must be in 0..{SEED_LIMIT}, got {self.seed}")
        if not self.augment and (self.scale_crop or self.color_jitter):
            raise InputError("--scale-crop and --color-jitter add to --augment; drop them or drop --no-augment")
        if not OBJECT_WEIGHT_RANGE[0] <= self.object_weight <= OBJECT_WEIGHT_RANGE[1]:  # NaN fails too
            raise InputError(f"--object-weight must be in {OBJECT_WEIGHT_RANGE[0]:g}..{OBJECT_WEIGHT_RANGE[1]:g}, "
                             f"got {self.object_weight}")
        if not -1 <= self.freeze_stages <= 5:
            raise InputError(f"--freeze-stages must be -1 (auto) or 0..5, got {self.freeze_stages}")
        if self.pretrained and self.backbone_weights:
            raise InputError("--pretrained and --backbone-weights conflict; pass --no-pretrained "
                             "with --backbone-weights FILE")
        if self.freeze_stages > 0 and not self.from_weights:
            raise InputError(f"--freeze-stages {self.freeze_stages} would freeze randomly initialised "
                             "layers when training from scratch; pass --freeze-stages 0 "
                             "(or use --pretrained / --backbone-weights FILE)")

    def check_new_run(self) -> None:
        """Refuse options a new run would record but not use (a resumed run keeps what it saved)."""
        if self.schedule != "cyclic":
            default = TrainConfig()
            unused = [name for name in CYCLIC_ONLY if getattr(self, name) != getattr(default, name)]
            if unused:
                flag = f"--{unused[0].replace('_', '-')}"
                raise InputError(f"{flag} shapes the cyclic schedule; with --schedule {self.schedule} it would do "
                                 f"nothing: drop it, or add --schedule cyclic")
        if self.lr_max * self.weight_decay >= 1:  # AdamW shrinks each weight by their product a step: all of it
            raise InputError(f"--lr-max {self.lr_max:g} x --weight-decay {self.weight_decay:g} = "
                             f"{self.lr_max * self.weight_decay:g}: AdamW would shrink each weight by all of itself "
                             "or more every step; their product must be below 1 (weight decay is typically 1e-4 to "
                             "0.1, --lr-max 1e-4 to 1e-2)")
        if self.out and self.data:
            check_outside_splits(self.out, self.data)

    @property
    def from_weights(self) -> bool:
        """Whether the encoder starts from trained weights (ImageNet or a local file)."""
        return self.pretrained or bool(self.backbone_weights)

    @property
    def frozen_stages(self) -> int:
        """`freeze_stages` with auto (-1) resolved: 3 from trained weights, 0 from scratch."""
        if self.freeze_stages >= 0:
            return self.freeze_stages
        return 3 if self.from_weights else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output, ignoring unknown keys (older/newer checkpoints).

        Keys an older config lacks take `LEGACY_DEFAULTS` (e.g. its decoder was the report's); the
        crop and jitter of a run without augmentation read as off (older configs said on), and a
        saved depth scale of 1000 reads as unset (older configs wrote the default out).
        """
        names = {f.name for f in fields(cls)}
        merged = {k: v for k, v in {**LEGACY_DEFAULTS, **values}.items() if k in names}
        if isinstance(merged.get("image_size"), (list, tuple)):  # HxW: a list once through config.json
            merged["image_size"] = as_image_size(merged["image_size"])
        if merged.get("depth_scale") == LEGACY_DEPTH_SCALE:  # older configs saved the folder default as 1000
            merged["depth_scale"] = None  # what it meant: the format's own (the same 1000 on folders; NYU has none)
        if not merged.get("augment", True):
            merged.update(scale_crop=False, color_jitter=False)
        return cls(**merged)


def resume_folder(out: str, resume: str) -> str:
    """Where a run writes: `out` when given, else (a resume) the folder its checkpoint is in, wherever the
    run folder is now, not where the saved config says it was."""
    return out or str(Path(resume).parent)


def as_typed(name: str, value: object) -> str:
    """An option and its value as the command line writes them: `--no-scale-crop`, `--lr-max 0.5`."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    if value is None or value == "":  # --backbone-weights' "" is none
        return f"--{flag} unset"
    if name == "image_size":
        return f"--{flag} {size_text(value)}"
    return f"--{flag} {value:g}" if isinstance(value, float) else f"--{flag} {value}"


def _refuse_unusable(saved: TrainConfig, name: str, value: object) -> None:
    """Raise `validate`'s own error for an option value no run could use (`--object-weight nan`), as a new run
    says it, rather than call it a conflict with the checkpoint. The value is tried beside the defaults, not the
    checkpoint's options: what only clashes with those (`--freeze-stages 2` on a run from scratch) is left to the
    conflict message, whose advice a resume can follow."""
    try:
        replace(TrainConfig(data=saved.data or "data", out=saved.out or "run"), **{name: value}).validate()
    except InputError as err:
        if re.match(rf"(unknown )?--{name.replace('_', '-')} ", str(err)):
            raise InputError(str(err)) from None


def merge_resume(cli: TrainConfig, saved: TrainConfig, given: Collection[str] = ()) -> TrainConfig:
    """The config of a resumed run: the checkpoint's, with the few options a resume may change.

    An option counts as set when it differs from its default or is named in `given` (the CLI
    passes what was typed, even a default value). A set option that contradicts the checkpoint
    is an error rather than silently ignored, except at its "auto" value (`AUTO_VALUES`): the
    checkpoint holds what auto resolved to.
    """
    default = TrainConfig()

    def is_set(name: str) -> bool:
        return name in given or getattr(cli, name) != getattr(default, name)

    for f in fields(TrainConfig):
        if f.name in RESUME_OVERRIDES:
            continue
        mine, theirs = getattr(cli, f.name), getattr(saved, f.name)
        if f.name == "backbone_weights" and mine and theirs and _same_file(mine, theirs):  # as typed, and absolute
            continue
        if is_set(f.name) and mine != theirs and mine != AUTO_VALUES.get(f.name):
            _refuse_unusable(saved, f.name, mine)
            raise InputError(f"{as_typed(f.name, mine)} conflicts with the resumed checkpoint's "
                             f"{as_typed(f.name, theirs)}; drop it when using --resume", cli.resume)
    # an override applies when the user set it: a plain `--resume RUN/last.pt` continues the
    # saved run to its own number of epochs
    changed = {k: getattr(cli, k) for k in RESUME_OVERRIDES if k == "resume" or is_set(k)}  # no --data: the saved
    for name, value in changed.items():  # a typed value no run can use is the option's fault, not the checkpoint's
        if name not in ("resume", "data", "out"):
            _refuse_unusable(saved, name, value)
    changed.setdefault("out", resume_folder(cli.out, cli.resume))
    changed["force"] = cli.force  # this command's choice: the saved run's --force must not empty another folder
    if "data" not in changed and saved.data and not Path(saved.data).exists():
        raise InputError(f"the run's dataset {saved.data} (its --data, saved in the checkpoint) is not found "
                         "from here; give --data", cli.resume)
    return replace(saved, **changed)  # `saved` was read once (from_dict); what is typed now stands as typed


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file from here (a run records --backbone-weights absolute; older ones as typed)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def one_cycle_end(resume: dict[str, Any], steps_per_epoch: int) -> int | None:
    """The epoch a one-cycle run's schedule, saved in its checkpoint `resume`, runs to (a run stopped short of it by a
    smaller --epochs may go on to it); None where the checkpoint holds no such schedule."""
    scheduler = resume.get("scheduler")
    planned = scheduler.get("total_steps") if isinstance(scheduler, dict) else None
    if not isinstance(planned, int) or isinstance(planned, bool):
        return None
    return int(resume["epoch"]) + (planned - int(resume["step"])) // max(steps_per_epoch, 1)


def check_resume(cfg: TrainConfig, resume: dict[str, Any], steps_per_epoch: int, world_size: int | None = None
                 ) -> None:
    """Refuse a resume with nothing left to train, one that runs past a one-cycle schedule's end or, at another
    number of steps per epoch, stops before it, or one stopped mid-epoch and resumed on other data or another
    number of processes than `world_size` (None: not known yet).

    A one-cycle schedule's length is fixed when its run starts (its learning rate anneals to the
    floor over the saved number of steps): a resume may stop earlier by a smaller --epochs, not go on longer,
    and not lay its epochs out anew (more data or fewer processes: past the end; less or more: cut short, the
    rate still high). CyclicLR has no end. An epoch's batches are dealt to the processes it started on, from
    its data: on another number or other data, the rest of the epoch would train some images twice and skip
    others.
    """
    changed = ("the dataset or the number of processes (torchrun --nproc-per-node) changed since; resume it as it "
               "was trained, or start a new run")
    planned = resume["scheduler"].get("total_steps") if cfg.schedule == "onecycle" else None
    left = None if planned is None else planned - resume["step"]  # steps the one-cycle schedule has left
    if resume["epoch"] >= cfg.epochs:
        more = "give more --epochs to train on"
        room = one_cycle_end(resume, steps_per_epoch) if left is not None else None
        if room is not None:  # a run stopped short by a smaller --epochs may go on to its schedule's end
            more = (f"its one-cycle schedule runs to epoch {room}: --epochs {room} continues it"
                    if room > resume["epoch"] else "a finished one-cycle run cannot go on: start a new run")
        raise InputError(f"this run has already trained {resume['epoch']} of --epochs {cfg.epochs}; nothing to "
                         f"resume ({more})", cfg.resume)
    if resume.get("epoch_step", 0) > steps_per_epoch:  # stopped mid-epoch: the rest of that epoch is gone
        raise InputError(f"this run stopped at step {resume['epoch_step']} of an epoch, and its data now gives "
                         f"{steps_per_epoch} steps per epoch: {changed}", cfg.resume)
    trained_on = resume.get("world_size")  # absent from older checkpoints
    if resume.get("epoch_step", 0) and isinstance(trained_on, int) and world_size is not None \
            and trained_on != world_size:
        raise InputError(f"this run stopped at step {resume['epoch_step']} of an epoch on {trained_on} "
                         f"process{'' if trained_on == 1 else 'es'}, whose batches the rest of that epoch is; resume "
                         f"it on {trained_on} (torchrun --nproc-per-node {trained_on}; 1: plain mde train), not "
                         f"{world_size}", cfg.resume)
    needed = (cfg.epochs - resume["epoch"]) * steps_per_epoch - resume.get("epoch_step", 0)
    saved, processes = resume.get("steps_per_epoch"), resume.get("world_size")  # absent from older checkpoints
    on = f" on {processes} process{'' if processes == 1 else 'es'}" if isinstance(processes, int) else ""
    if resume.get("epoch_step", 0) and isinstance(saved, int) and saved != steps_per_epoch:
        # the rest of the epoch is its order's, dealt for another count: some images twice, others never
        raise InputError(f"this run stopped at step {resume['epoch_step']} of an epoch of {saved} steps{on}, and its "
                         f"data now gives {steps_per_epoch}: {changed}", cfg.resume)
    if left is not None and isinstance(saved, int) and saved != steps_per_epoch and needed != left:
        # the schedule was laid out for other epochs: it would be cut short, or run past its end
        why = (f"too many for the {left} steps its schedule has left" if needed > left else
               f"so its epochs would end {left - needed} steps before its schedule does, the learning rate not yet "
               "annealed")
        raise InputError(f"this one-cycle run trained at {saved} steps per epoch{on}, and its data now gives "
                         f"{steps_per_epoch}, {why}: {changed}", cfg.resume)
    if left is not None and needed > left:
        raise InputError(f"--epochs {cfg.epochs} needs {needed} more steps ({steps_per_epoch} per epoch), more than "
                         f"this one-cycle run's schedule has left ({left} of {planned}); resume it to at most its "
                         "own length, or start a new run", cfg.resume)
