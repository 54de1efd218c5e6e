"""The depth network (timm style: building blocks, decoders in a registry, the model, the factory).

A ResNet encoder (avgpool/fc removed) and a decoder chosen by name: `report` (the source
report's five transposed convs) or `unet` (skip connections from every encoder stride).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mde.errors import InputError, ModelError, one_line
from mde.printed import printed_by_this_thread
from mde.train.config import input_hw, size_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Encoder channels at strides 2 (stem), 4, 8, 16 and 32 (layer1..layer4).
ENCODER_CHANNELS = {"resnet18": (64, 64, 128, 256, 512), "resnet34": (64, 64, 128, 256, 512),
                    "resnet50": (64, 256, 512, 1024, 2048)}
DECODER_CHANNELS = (512, 256, 128, 64)  # the report's transposed convs
UNET_CHANNELS = (256, 128, 64, 32)      # the skip decoder's outputs at strides 16, 8, 4, 2


@dataclass
class ModelArgs:
    """Everything needed to rebuild the network; stored in every checkpoint.

    `decoder` defaults to "report" so checkpoints written before decoders had names load as
    the network they hold.
    """

    backbone: str = "resnet50"
    image_size: int | tuple[int, int] = 224  # N (square) or (height, width)
    max_depth: float = 20.0
    decoder: str = "report"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, list):  # (height, width) through JSON; check_model_args checks the rest
            self.image_size = tuple(self.image_size)

    @property
    def input_hw(self) -> tuple[int, int]:
        """The network's input size as (height, width)."""
        return input_hw(self.image_size)


# -- building blocks --------------------------------------------------------------------------
def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """ConvTranspose2d(4, 2, 1) doubling the resolution, then BatchNorm and ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv2d (same padding, no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling (one ONNX Resize)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FuseBlock(nn.Module):
    """Upsample x2, concatenate the skip feature map, then two Conv-BN-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = conv_bn_relu(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(torch.cat([upsample2x(x), skip], dim=1)))


# -- decoders: features at strides (2, 4, 8, 16, 32) -> one-channel logits at stride 1 ----------
DecoderFactory = Callable[[tuple[int, ...]], nn.Module]
DECODERS: dict[str, DecoderFactory] = {}


def register_decoder(name: str) -> Callable[[DecoderFactory], DecoderFactory]:
    """Register a decoder class or factory under `name` (the `--decoder` choices come from here)."""

    def add(factory: DecoderFactory) -> DecoderFactory:
        DECODERS[name] = factory
        return factory

    return add


def decoder_names() -> tuple[str, ...]:
    return tuple(DECODERS)


@register_decoder("report")
class ReportDecoder(nn.Sequential):
    """The source report's decoder: five ConvTranspose2d(4, 2, 1) on the stride-32 features only."""

    def __init__(self, encoder_channels: tuple[int, ...]):
        chans = (encoder_channels[-1], *DECODER_CHANNELS)
        super().__init__(
            *(up_block(c_in, c_out) for c_in, c_out in itertools.pairwise(chans)),
            nn.ConvTranspose2d(DECODER_CHANNELS[-1], 1, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[-1])


@register_decoder("unet")
class UNetDecoder(nn.Module):
    """Skip connections at strides 16, 8, 4 and 2 (upsample, concat, Conv-BN-ReLU x2), then a full-resolution head.

    The stride-32 features are first reduced by a 1x1 Conv-BN-ReLU; the last block's stride-2
    output is upsampled to the input resolution and a 3x3 conv gives the logits.
    """

    def __init__(self, encoder_channels: tuple[int, ...], channels: tuple[int, ...] = UNET_CHANNELS):
        super().__init__()
        skips = encoder_channels[-2::-1]  # strides 16, 8, 4, 2
        self.bottleneck = conv_bn_relu(encoder_channels[-1], channels[0], kernel_size=1)
        ins = (channels[0], *channels[:-1])
        self.blocks = nn.ModuleList(FuseBlock(i, s, o) for i, s, o in zip(ins, skips, channels))
        self.head = nn.Conv2d(channels[-1], 1, kernel_size=3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(features[-1])
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, skip)
        return self.head(upsample2x(x))


def build_decoder(name: str, encoder_channels: tuple[int, ...]) -> nn.Module:
    """The registered decoder `name`; an unknown name lists the valid ones."""
    if name not in DECODERS:
        raise InputError(f"unknown decoder {name!r}; choose from {', '.join(DECODERS)}")
    return DECODERS[name](encoder_channels)


# -- the model --------------------------------------------------------------------------------
class DepthNet(nn.Module):
    """RGB in [0, 1] (N x 3 x H x W) -> depth in metres (N x 1 x H x W), H and W multiples of 32.

    ImageNet normalization is the first step of `forward`, so exported graphs carry it.
    The head maps the decoder's logits to (0, max_depth) with a sigmoid: depth is
    positive (log losses are defined) and bounded (FP16/INT8 ranges are known).
    """

    def __init__(self, args: ModelArgs, weights: str | None = None):
        super().__init__()
        import torchvision

        if args.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {args.backbone!r}; choose from {', '.join(BACKBONES)}")
        decoder = build_decoder(args.decoder, ENCODER_CHANNELS[args.backbone])
        self.args = args
        resnet = getattr(torchvision.models, args.backbone)(weights=weights)
        # The report: ResNet without its last two layers (avgpool, fc).
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.decoder = decoder
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps at strides 2, 4, 8, 16 and 32."""
        x = self.stem[:3]((x - self.mean) / self.std)
        features = [x]
        x = self.stem[3](x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.args.max_depth * torch.sigmoid(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze(self, stages: int) -> None:
        """Freeze the stem and the first `stages - 1` residual stages (0 = nothing frozen).

        Frozen parts keep their BatchNorm in eval mode (see `train`).
        """
        if not 0 <= stages <= 5:
            raise InputError(f"--freeze-stages must be in 0..5, got {stages}")
        self._frozen = [self.stem, *self.stages[: max(stages - 1, 0)]] if stages > 0 else []
        for module in self._frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> DepthNet:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self


def build_model(
    args: ModelArgs, pretrained: bool = False, backbone_weights: str | Path | None = None
) -> DepthNet:
    """Build the network; `pretrained` downloads torchvision ImageNet weights, `backbone_weights` loads a file."""
    if any(side % 32 for side in args.input_hw):
        raise InputError(f"--image-size must be multiples of 32, got {size_text(args.image_size)}")
    weights = None
    if pretrained:
        weights = "DEFAULT"
    try:
        with printed_by_this_thread(into=sys.stderr):  # torch.hub prints "Downloading: ..." on stdout (--json)
            model = DepthNet(args, weights=weights)
    except Exception as err:  # noqa: BLE001 - a failed download (URLError is an OSError), or a damaged cached file
        cached = _cached_imagenet_weights(args.backbone) if pretrained else None
        if cached is not None and not _loads(cached):  # torch.hub reads a file in its cache as it is
            why = f"{type(err).__name__}: {one_line(str(err).splitlines()[0]) if str(err) else ''}"
            raise ModelError(f"cannot read the cached ImageNet weights for {args.backbone} (a damaged or cut-short "
                             f"copy; {why}); delete it to download them again, or use --backbone-weights FILE",
                             cached) from None
        if not isinstance(err, OSError | RuntimeError):
            raise
        raise ModelError(
            f"cannot download ImageNet weights for {args.backbone} ({err}); "
            "use --backbone-weights FILE or --no-pretrained",
            "torchvision",
        ) from None
    if backbone_weights is not None:
        load_backbone_weights(model, Path(backbone_weights))
    return model


def _cached_imagenet_weights(backbone: str) -> Path | None:
    """The file in torch.hub's cache that torchvision reads `backbone`'s ImageNet weights from, where it is there."""
    import torchvision

    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


def _loads(path: Path) -> bool:
    """Whether `path` reads as a weights file: a cached copy that does is not what failed."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever stops the load
        return False
    return True


def load_backbone_weights(model: DepthNet, path: Path) -> None:
    """Load a torchvision ResNet state dict (e.g. resnet50-*.pth) into the encoder."""
    if path.is_dir():
        raise InputError("--backbone-weights is a folder; expected a torchvision ResNet .pth file", path)
    if not path.exists():
        raise InputError("backbone weights file not found", path)
    if not path.is_file():
        raise InputError("expected a torchvision ResNet .pth file, found a pipe, socket or device", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        if "Unsupported global" in str(err):  # a torch.save of objects the weights-only loader refuses: a model
            raise ModelError("cannot read backbone weights: the file holds pickled objects (a whole model saved "
                             "with torch.save(model)?), which are not loaded, as they could run code; save its "
                             "weights with torch.save(model.state_dict(), PATH)", path) from None
        raise ModelError("cannot read backbone weights: not a PyTorch weights file (a torchvision ResNet .pth, "
                         "saved with torch.save)", path) from None
    if not isinstance(state, dict):
        raise ModelError(f"expected a state dict, found a {type(state).__name__}", path)
    mapping = {"conv1.": "stem.0.", "bn1.": "stem.1."}
    mapping.update({f"layer{i + 1}.": f"stages.{i}." for i in range(4)})
    renamed = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
    own = model.state_dict()
    bad = [k for k, v in renamed.items() if k not in own or own[k].shape != v.shape]
    if not renamed:
        kind = (" (an mde checkpoint" + (": continue its training with --resume)" if "optimizer" in state else ")")
                if "model_args" in state else "")
        raise ModelError(f"no torchvision ResNet weights (conv1.*, layer1.* ...) in this file{kind}", path)
    if bad:
        raise ModelError(f"not a torchvision {model.args.backbone} state dict ({len(bad)} mismatched keys, "
                         f"e.g. {_torchvision_name(bad[0], mapping)})", path)
    missing = [k for k in own if k.startswith(("stem.", "stages.")) and k not in renamed
               and not k.endswith("num_batches_tracked")]  # a counter older ImageNet files do not have
    if missing:  # the layers it lacks would start random, and be frozen so by --freeze-stages
        raise ModelError(f"incomplete {model.args.backbone} weights: {len(missing)} encoder tensors missing "
                         f"(e.g. {_torchvision_name(missing[0], mapping)})", path)
    broken = next((k for k, v in renamed.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:  # trained from, they diverge in the first steps, blamed on --lr-max
        raise ModelError(f"non-finite weights (NaN or infinity) in {_torchvision_name(broken, mapping)}", path)
    model.load_state_dict(renamed, strict=False)


def _torchvision_name(key: str, mapping: dict[str, str]) -> str:
    """An encoder key under the name a torchvision state dict gives it (`stages.0.` -> `layer1.`)."""
    for old, new in mapping.items():
        if key.startswith(new):
            return old + key[len(new):]
    return key
