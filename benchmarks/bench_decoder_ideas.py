"""What else might make objects visible: recipe and decoder ideas beyond `--decoder unet`, and where the error is.

    python benchmarks/bench_decoder_ideas.py --data D --runs R [--epochs 4] [--device cuda] [--variants NAME ...]
    python benchmarks/bench_decoder_ideas.py --data D --anatomy R/report R/unet-onecycle
    python benchmarks/bench_decoder_ideas.py --world fixed-camera --data DF --runs RF --variants report unet-onecycle
    python benchmarks/bench_decoder_ideas.py --world small-objects --data DS --runs RS \\
        --variants report-flips unet-flips

(1) variants: each idea trained like bench_train.py's decoder variants (resnet18 from scratch, 96 px,
    one-cycle, same data and seed; runs kept in R and reused), then the per-region table with
    `unet-onecycle` as the reference; `report-128` and `unet-128` are the two decoders at 128 px.
    The ideas were measured with scale-crop and colour jitter on (the default then), and keep them;
    `unet-prototype` is the decoder issue's prototype (nearest upsampling, one Conv-BN-ReLU per
    stage) with today's flips-only default, and `*-nojitter` / `*-nocrop` / `*-flips` split the
    augmentation; `unet-flips-coordall` (row and column channels joined at every stride) and
    `*-flips-silog` (the SILog loss) start from the flips-only default too.
    The decoder and loss ideas are patched in here (none is a product option);
    `batch_size`/`lr_max`/`image_size`/`object_weight`/`seed` are ordinary `mde train` options.
    `--device cuda` trains them on the GPU (bf16 autocast, 4 loader workers): its figures differ from
    the CPU's, so compare ratios only between runs of one device (the saved settings keep them apart).
(2) anatomy: for trained runs, where the val error is (error_anatomy.py says what it splits by).
(3) --world fixed-camera: the same world with every image taken by one camera (hfov 70 deg, pitch
    10 deg down, no roll, 1.2 m up; only where it stands and looks varies), so in every image a
    floor pixel's depth follows from its row alone, and a standing object's from the row where it
    meets the floor. Against the built-in world (camera height, pitch, roll and field of view
    drawn per image) it shows how much of the decoder comparison the varying camera hides. The
    set is made at --data when missing (in one process: the patch does not reach spawned workers).
(4) --world small-objects: the same scenes with every object at half its size, standing where it
    stood (12.6 % of val pixels are objects, against 30.3 %; the far buildings keep their size). The
    decoder issue's held-out world, where the report decoder did no better than the per-pixel mean
    map on objects, may have had smaller objects than the built-in one; this shows whether the
    skip decoder's lead grows as objects shrink. Made like (3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from bench_train import PATCHES, VARIANTS, decoders, ensure_data, load_run, require_masks
from cli_common import Parser, run_main
from error_anatomy import anatomy
from worlds import WORLDS, make_world_data

from mde.errors import InputError, MdeError
from mde.io import require_file


# -- the ideas ---------------------------------------------------------------------------------
def gradient_loss(pred, target, pixel_weight=None, scales: int = 1, grad_weight: float = 1.0):
    """berHu (weighted per pixel like the trainer's loss) plus `grad_weight` x the mean |d/dx, d/dy of
    (pred - target)| over valid neighbour pairs, at `scales` resolutions (each half the previous:
    MiDaS's multi-scale gradient matching)."""
    from mde.train.losses import masked_loss, valid_mask

    total = masked_loss("berhu", pred, target, pixel_weight)
    diff, mask = (pred - target).float(), valid_mask(target)
    for scale in range(scales):
        if scale:
            diff, mask = diff[..., ::2, ::2], mask[..., ::2, ::2]
        mx, my = mask[..., :, 1:] & mask[..., :, :-1], mask[..., 1:, :] & mask[..., :-1, :]
        gx = (diff[..., :, 1:] - diff[..., :, :-1]).abs()[mx]
        gy = (diff[..., 1:, :] - diff[..., :-1, :]).abs()[my]
        total = total + grad_weight * (gx.sum() + gy.sum()) / (mx.sum() + my.sum()).clamp_min(1)
    return total


def _loss_patch(scales: int):
    from unittest import mock

    import mde.train.trainer as trainer

    return mock.patch.object(trainer, "masked_loss",
                             lambda _name, pred, target, weight=None: gradient_loss(pred, target, weight, scales))


def _decoder_patch(factory):
    from unittest import mock

    import mde.train.model as model

    return mock.patch.dict(model.DECODERS, {"unet": factory})


def _wide_unet(encoder_channels):
    from mde.train.model import UNetDecoder

    return UNetDecoder(encoder_channels, (256, 256, 128, 64))


def _coords_like(x):
    """Two channels, row and column in [-1, 1], the size of `x`."""
    import torch

    n, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([rows, cols], 1)


def _coord_unet(encoder_channels):
    """The unet with two coordinate channels (row, column in [-1, 1]) joined to the stride-32 features."""
    import torch

    from mde.train.model import UNetDecoder

    class CoordUNet(UNetDecoder):
        def forward(self, features):
            return super().forward([*features[:-1], torch.cat([features[-1], _coords_like(features[-1])], 1)])

    return CoordUNet((*encoder_channels[:-1], encoder_channels[-1] + 2))


def _coord_all_unet(encoder_channels):
    """The unet with the two coordinate channels joined to the features at every stride (CoordConv in
    each fusion): a pixel's row, with the horizon, is where it meets the floor."""
    import torch

    from mde.train.model import UNetDecoder

    class CoordAllUNet(UNetDecoder):
        def forward(self, features):
            return super().forward([torch.cat([f, _coords_like(f)], 1) for f in features])

    return CoordAllUNet(tuple(c + 2 for c in encoder_channels))


def _vertical_unet(encoder_channels):
    """The unet with a residual 9x1 Conv-BN-ReLU after the stride-16, 8 and 4 blocks: context along each
    image column, the path from an object's ground contact up through the object."""
    from torch import nn

    from mde.train.model import UNetDecoder

    class VerticalUNet(UNetDecoder):
        def __init__(self, encoder_channels):
            super().__init__(encoder_channels)
            self.vertical = nn.ModuleList(
                nn.Sequential(nn.Conv2d(block.conv2[0].out_channels, block.conv2[0].out_channels, (9, 1),
                                        padding=(4, 0), bias=False),
                              nn.BatchNorm2d(block.conv2[0].out_channels), nn.ReLU(inplace=True))
                for block in self.blocks[:3])

        def forward(self, features):
            x = self.bottleneck(features[-1])
            for i, (block, skip) in enumerate(zip(self.blocks, features[-2::-1])):
                x = block(x, skip)
                if i < len(self.vertical):
                    x = x + self.vertical[i](x)
            return self.head(nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))

    return VerticalUNet(encoder_channels)


_AUX: list = []  # the auxiliary depth maps of the last training forward (deep supervision)


def _deep_unet(encoder_channels):
    """The unet with a 3x3 logit head on the stride-16, 8 and 4 blocks, each upsampled to full size."""
    import torch.nn.functional as F
    from torch import nn

    from mde.train.model import UNET_CHANNELS, UNetDecoder

    class DeepUNet(UNetDecoder):
        def __init__(self, encoder_channels):
            super().__init__(encoder_channels)
            self.aux_heads = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in UNET_CHANNELS[:-1])

        def forward(self, features):
            x, self.aux = self.bottleneck(features[-1]), []
            size = tuple(2 * s for s in features[0].shape[-2:])
            for i, (block, skip) in enumerate(zip(self.blocks, features[-2::-1])):
                x = block(x, skip)
                if self.training and i < len(self.aux_heads):
                    self.aux.append(F.interpolate(self.aux_heads[i](x), size=size, mode="bilinear",
                                                  align_corners=False))
            return self.head(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))

    return DeepUNet(encoder_channels)


def _deep_forward_head(self, features):
    import torch

    logits = self.decoder(features)
    _AUX[:] = [self.args.max_depth * torch.sigmoid(a) for a in getattr(self.decoder, "aux", [])]
    return self.args.max_depth * torch.sigmoid(logits)


def deep_supervision_loss(name, pred, target, weight=None):
    """The loss of `pred` plus half the mean loss of the auxiliary full-resolution maps (`_AUX`)."""
    from mde.train.losses import masked_loss

    total = masked_loss(name, pred, target, weight)
    if _AUX:
        total = total + 0.5 * sum(masked_loss(name, a, target, weight) for a in _AUX) / len(_AUX)
    return total


def _deep_supervision_patch():
    import contextlib
    from unittest import mock

    import mde.train.model as model
    import mde.train.trainer as trainer

    stack = contextlib.ExitStack()
    stack.enter_context(_decoder_patch(_deep_unet))
    stack.enter_context(mock.patch.object(model.DepthNet, "forward_head", _deep_forward_head))
    stack.enter_context(mock.patch.object(trainer, "masked_loss", deep_supervision_loss))
    return stack


def _prototype_unet(encoder_channels):
    """The issue's quick prototype: nearest x2 upsampling, concatenate, one Conv-BN-ReLU per stage."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mde.train.model import UNET_CHANNELS, conv_bn_relu

    class PrototypeUNet(nn.Module):
        def __init__(self, encoder_channels):
            super().__init__()
            skips = encoder_channels[-2::-1]
            self.bottleneck = conv_bn_relu(encoder_channels[-1], UNET_CHANNELS[0], kernel_size=1)
            ins = (UNET_CHANNELS[0], *UNET_CHANNELS[:-1])
            self.blocks = nn.ModuleList(conv_bn_relu(i + s, o) for i, s, o in zip(ins, skips, UNET_CHANNELS))
            self.head = nn.Conv2d(UNET_CHANNELS[-1], 1, kernel_size=3, padding=1)

        def forward(self, features):
            x = self.bottleneck(features[-1])
            for block, skip in zip(self.blocks, features[-2::-1]):
                x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
            return self.head(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    return PrototypeUNet(encoder_channels)


PATCHES.update({
    "prototype": lambda: _decoder_patch(_prototype_unet),
    "vertical_unet": lambda: _decoder_patch(_vertical_unet),
    "deep_supervision": _deep_supervision_patch,
    "gradient_loss": lambda: _loss_patch(1),
    "gradient_loss4": lambda: _loss_patch(4),
    "wide_unet": lambda: _decoder_patch(_wide_unet),
    "coord_unet": lambda: _decoder_patch(_coord_unet),
    "coord_all_unet": lambda: _decoder_patch(_coord_all_unet),
})
UNET = VARIANTS["unet-onecycle"]
IDEAS = {
    "unet-gradloss": {**UNET, "patch": "gradient_loss"},
    "unet-gradloss4": {**UNET, "patch": "gradient_loss4"},
    "unet-batch8": {**UNET, "batch_size": 8},
    "unet-lr1e-3": {**UNET, "lr_max": 1e-3},
    "unet-wide": {**UNET, "patch": "wide_unet"},
    "unet-coord": {**UNET, "patch": "coord_unet"},
    "unet-flips-coordall": {**VARIANTS["unet-flips"], "patch": "coord_all_unet"},
    **{f"{name}-silog": {**VARIANTS[name], "loss": "silog"} for name in ("unet-flips", "report-flips")},
    "unet-vertical": {**UNET, "patch": "vertical_unet"},
    # `mde train --object-weight`: object pixels weigh 2x / 4x in the loss (both decoders at 4x)
    "unet-objw4": {**UNET, "object_weight": 4.0},
    "unet-objw2": {**UNET, "object_weight": 2.0},
    "report-objw4": {**VARIANTS["report"], "object_weight": 4.0},
    "unet-flips-objw2": {**VARIANTS["unet-flips"], "object_weight": 2.0},
    "unet-flips-objw4": {**VARIANTS["unet-flips"], "object_weight": 4.0},
    # auxiliary depth heads at strides 16, 8, 4: a direct gradient to the deep encoder stages
    "unet-deepsup": {**UNET, "patch": "deep_supervision"},
    # the same two recipes from other seeds (initialisation, order, augmentation): how much the ratio moves
    **{f"{name}-seed{k}": {**VARIANTS[name], "seed": k} for name in ("report", "unet-onecycle") for k in (1, 2)},
    # both decoders at the data's own 128 px: does the skip decoder gain where there is more detail?
    "report-128": {**VARIANTS["report"], "image_size": 128},
    "unet-128": {**UNET, "image_size": 128},
    # the prototype recipe (its decoder, one-cycle, flips only, as the defaults now are), and
    # which of the scale-crop and the colour jitter costs accuracy at this budget
    "unet-prototype": {**VARIANTS["unet-flips"], "patch": "prototype"},
    "unet-nojitter": {**UNET, "color_jitter": False},
    "report-nojitter": {**VARIANTS["report"], "color_jitter": False},
    **{f"{name}-seed1": {**VARIANTS[name], "seed": 1}
       for name in ("unet-flips", "report-flips", "unet-onecycle-nocrop")},
    "unet-prototype-seed1": {**VARIANTS["unet-flips"], "patch": "prototype", "seed": 1},
    **{f"{name}-seed2": {**VARIANTS[name], "seed": 2} for name in ("unet-flips", "report-flips")},
}
# Both decoders from an encoder that has already learned this task (--encoder-from RUN, its weights
# written to R/task_encoder.pth): does the decoder gap open once the encoder knows how far things are?
TASK_ENCODER = {"backbone_weights": "", "freeze_stages": 0}  # the path is filled in by --encoder-from
TASK_ENCODER_VARIANTS = {
    "report-taskenc": {**VARIANTS["report"], **TASK_ENCODER},
    "unet-taskenc": {**UNET, **TASK_ENCODER},
}
# Both decoders from torchvision's ImageNet encoder (the source report's start; the first two stages and
# the stem frozen, as `mde train --pretrained` does): torchvision downloads the weights, or finds them in
# its cache (~/.cache/torch/hub/checkpoints), so these need network or a filled cache.
IMAGENET_VARIANTS = {f"{name}-imagenet": {**VARIANTS[name], "pretrained": True}
                     for name in ("report-flips", "unet-flips")}
VARIANTS.update(IDEAS)
VARIANTS.update(TASK_ENCODER_VARIANTS)
VARIANTS.update(IMAGENET_VARIANTS)


def write_task_encoder(run_dir: Path, out: Path) -> Path:
    """A trained run's encoder as a torchvision ResNet state dict, the form `--backbone-weights` reads."""
    import torch

    names = {"stem.0.": "conv1.", "stem.1.": "bn1.", **{f"stages.{i}.": f"layer{i + 1}." for i in range(4)}}
    state = {}
    for key, value in load_run(run_dir).state_dict().items():
        for ours, torchvision_name in names.items():
            if key.startswith(ours):
                state[torchvision_name + key[len(ours):]] = value
    torch.save(state, out)
    return out


def run(opts: argparse.Namespace) -> dict:
    """What `main`'s options ask for (checked, and any --world set made): the variants' table, or the
    anatomy of trained runs."""
    if opts.encoder_from:
        opts.runs.mkdir(parents=True, exist_ok=True)
        path = write_task_encoder(opts.encoder_from, opts.runs / "task_encoder.pth")
        for name in TASK_ENCODER_VARIANTS:
            VARIANTS[name]["backbone_weights"] = str(path)
    if opts.anatomy is not None:
        data = ensure_data(opts.data, opts.quick)
        require_masks(data)
        world = WORLDS.get(opts.world, contextlib.nullcontext)
        return {str(run_dir): anatomy(data, run_dir, world) for run_dir in opts.anatomy}
    reference = "unet-onecycle" if "unet-onecycle" in opts.variants else None  # else the first variant
    return decoders(opts.data, opts.quick, opts.runs, tuple(opts.variants), epochs=opts.epochs,
                    reference=reference, device=opts.device)


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the synthetic set (made here when missing)")
    parser.add_argument("--runs", type=Path, default=None, help="keep (and reuse) the runs here")
    parser.add_argument("--variants", nargs="*", default=["unet-onecycle", *IDEAS], choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of every variant (default 4; "
                        "with --quick, the quick settings' 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="train the variants here (cuda: bf16 autocast and 4 loader workers; compare "
                             "ratios only between runs on one device)")
    parser.add_argument("--anatomy", nargs="*", type=Path, default=None, metavar="RUN",
                        help="only the error anatomy of these trained runs")
    parser.add_argument("--encoder-from", type=Path, default=None, metavar="RUN",
                        help="the *-taskenc variants start from this trained run's encoder (needs --runs)")
    parser.add_argument("--world", choices=("builtin", *WORLDS), default="builtin",
                        help="fixed-camera / small-objects: make D with one camera for every image / with "
                             "every object at half size (see the docstring)")
    opts = parser.parse_args()
    if opts.encoder_from and opts.runs is None:
        parser.error("--encoder-from needs --runs (the encoder file is written there)")
    if opts.anatomy == []:  # `--anatomy` with no run: not "train every variant"
        parser.error("--anatomy needs at least one trained run folder")
    if not opts.variants:
        parser.error("--variants needs at least one variant name")
    if opts.epochs is None:
        opts.epochs = 0 if opts.quick else 4  # 0: the settings' own
    elif opts.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {opts.epochs}")
    taskenc = [v for v in opts.variants if v.endswith("-taskenc")]
    if taskenc and not opts.encoder_from and opts.anatomy is None:
        parser.error(f"{', '.join(taskenc)} start from a trained encoder: give --encoder-from RUN")
    if opts.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: PyTorch sees no CUDA GPU on this machine")
    if opts.runs is not None and opts.runs.exists() and not opts.runs.is_dir():
        parser.error(f"--runs {opts.runs}: not a folder")
    try:  # a run that is not there, a folder of another world: one line, before any work
        for run_dir in [*(opts.anatomy or ()), *([opts.encoder_from] if opts.encoder_from else [])]:
            require_file(run_dir / "best.pt", "trained run's checkpoint")
        if opts.world in WORLDS:
            make_world_data(opts.data, opts.world, opts.quick)
        elif opts.data.exists() and not (opts.data / "meta.json").is_file() and (
                not opts.data.is_dir() or any(opts.data.iterdir())):
            raise InputError("not a synthetic set (no meta.json); give a new or empty folder to make one there",
                             opts.data)
    except (ValueError, MdeError) as err:
        parser.error(str(err))
    try:
        out = run(opts)
    except MdeError as err:  # e.g. a --runs folder whose runs were trained with other settings
        parser.error(str(err))
    json.dump(out, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    run_main(main)
