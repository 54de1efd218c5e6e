"""`mde train`: train the depth network (CyclicLR, augmentation, AMP, DDP under torchrun, resumable)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer

from mde.commands.options import depth_scale_option, given_options, print_json
from mde.errors import InputError
from mde.io import claim_output
from mde.train.config import (
    BACKBONE_CHOICES,
    CYCLE_MODES,
    DECODER_CHOICES,
    LOSS_CHOICES,
    SCHEDULES,
    TrainConfig,
    parse_image_size,
    resume_folder,
)

D = TrainConfig()


PATH = "<path>"  # as typer shows a Path option's type: these are strings, "" meaning "not given"


def train_command(
    ctx: typer.Context,
    data: str = typer.Option(
        "", "--data", metavar=PATH,
        help="Dataset folder ({train,val}/{rgb,depth}); with --resume, the run's own by default."),
    out: str = typer.Option(
        "", "--out", metavar=PATH,
        help="Run folder: best.pt, last.pt, config.json, metrics.jsonl, curves.png, samples.png; with --resume, the "
             "checkpoint's folder by default."
    ),
    backbone: str = typer.Option(D.backbone, help=f"Encoder: {', '.join(BACKBONE_CHOICES)}."),
    decoder: str = typer.Option(
        D.decoder, help=f"Decoder: {', '.join(DECODER_CHOICES)} (report: the source report's transposed convs)."
    ),
    image_size: str = typer.Option(
        str(D.image_size), help="Network input size: N (square) or HxW (height x width), multiples of 32."),
    epochs: int = typer.Option(D.epochs, help="Training epochs."),
    batch_size: int = typer.Option(D.batch_size, help="Images per batch per process."),
    lr_min: float = typer.Option(D.lr_min, help="Learning-rate floor (CyclicLR lower bound, one-cycle start)."),
    lr_max: float = typer.Option(D.lr_max, help="Learning-rate peak."),
    schedule: str = typer.Option(
        D.schedule, help=f"LR schedule: {', '.join(SCHEDULES)} (cyclic: the report's CyclicLR)."
    ),
    cycle_mode: str = typer.Option(D.cycle_mode, help=f"CyclicLR mode: {', '.join(CYCLE_MODES)}."),
    step_size_up: int = typer.Option(D.step_size_up, help="CyclicLR half-cycle, in batches."),
    optimizer: str = typer.Option(D.optimizer, help="adamw or sgd."),
    weight_decay: float = typer.Option(D.weight_decay, help="Weight decay."),
    loss: str = typer.Option(D.loss, help=f"Loss: {', '.join(LOSS_CHOICES)}."),
    freeze_stages: int = typer.Option(
        D.freeze_stages,
        help="Freeze the stem + first K-1 residual stages; -1 = auto (3 with pretrained weights, 0 from scratch).",
    ),
    pretrained: bool = typer.Option(
        D.pretrained,
        "--pretrained/--no-pretrained",
        help="Start the encoder from torchvision ImageNet weights (downloads).",
    ),
    backbone_weights: str = typer.Option(
        D.backbone_weights, metavar=PATH,
        help="Local torchvision ResNet state dict for the encoder (with --no-pretrained)."
    ),
    augment: bool = typer.Option(
        D.augment, "--augment/--no-augment", help="Horizontal flips (and --scale-crop, --color-jitter where on)."
    ),
    scale_crop: bool = typer.Option(
        D.scale_crop, "--scale-crop/--no-scale-crop", help="With --augment: random zoom-in crops, depth scaled along."
    ),
    color_jitter: bool = typer.Option(
        D.color_jitter, "--color-jitter/--no-color-jitter", help="With --augment: random brightness, contrast, "
        "saturation."
    ),
    object_weight: float = typer.Option(
        D.object_weight, help="Loss weight of object pixels (needs train/mask/); >1 lowers object error, "
        "raises the rest's."
    ),
    max_depth: float = typer.Option(
        D.max_depth, help="Output range in metres; 0 = the dataset's max_depth (meta.json; required without one)."),
    depth_scale: float | None = depth_scale_option(D.depth_scale),
    device: str = typer.Option(D.device, help="auto, cpu or cuda."),
    amp: bool = typer.Option(D.amp, "--amp/--no-amp", help="Mixed precision on CUDA (bf16 where supported)."),
    channels_last: bool = typer.Option(
        D.channels_last, "--channels-last/--no-channels-last", help="channels_last memory format."
    ),
    compile: bool = typer.Option(D.compile, "--compile/--no-compile", help="torch.compile the model."),
    workers: int = typer.Option(D.workers, help="Data loader worker processes."),
    seed: int = typer.Option(D.seed, help="Seed of initialisation, shuffling and augmentation."),
    resume: str = typer.Option(D.resume, metavar=PATH, help="Continue from RUN/last.pt (its config is used)."),
    force: bool = typer.Option(D.force, "--force", help="Allow a non-empty --out."),
    val_every: int = typer.Option(D.val_every, help="Validate every N epochs (and always after the last)."),
    log_interval: int = typer.Option(D.log_interval, help="Progress update every N batches."),
    checkpoint_every: int = typer.Option(
        D.checkpoint_every, help="Also save last.pt every N batches (0 = epoch ends only)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Train the depth network; writes RUN/{best,last}.pt, config.json, metrics.jsonl, curves.png, samples.png."""
    values = dict(locals())
    del values["ctx"], values["json_out"]
    if not resume:
        for name in ("data", "out"):
            if not values[name]:
                raise InputError(f"missing option '--{name}' (only --resume may leave it out)")
    cfg = TrainConfig(**{**values, "image_size": parse_image_size(image_size)})
    if not resume:
        cfg.validate()  # before importing torch: bad flags fail fast
    from mde.train.trainer import train

    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the run folder for all
    with claim_output(resume_folder(out, resume)) if rank0 else contextlib.nullcontext():
        result = train(cfg, given=given_options(ctx, values))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    if json_out:
        print_json(result)
    elif result.get("best"):
        best = result["best"]
        best_pt = Path(result["run"]) / "best.pt"
        if not best_pt.exists() and resume:  # resumed into another folder, and no later epoch did better
            best_pt = Path(resume).parent / "best.pt"
        kept = f"-> {best_pt}" if best_pt.exists() else \
            "(its weights are in no best.pt: the resumed run's was not found)"
        typer.echo(
            f"best epoch {best.get('epoch')}: rmse {best.get('rmse', float('nan')):.4f} "
            f"ssim {best.get('ssim', float('nan')):.4f} {kept}"
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
