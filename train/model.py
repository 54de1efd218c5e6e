"""The source report's network: a ResNet encoder (avgpool/fc removed) and a five-layer transposed-conv decoder."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mde.errors import InputError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
DECODER_CHANNELS = (512, 256, 128, 64)


@dataclass
class ModelArgs:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    backbone: str = "resnet50"
    image_size: int = 224
    max_depth: float = 20.0


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """ConvTranspose2d(4, 2, 1) doubling the resolution, then BatchNorm and ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DepthNet(nn.Module):
    """RGB in [0, 1] (N x 3 x H x W) -> depth in metres (N x 1 x H x W), H and W multiples of 32.

    ImageNet normalization is the first step of `forward`, so exported graphs carry it.
    The head maps the last transposed conv to (0, max_depth) with a sigmoid: depth is
    positive (log losses are defined) and bounded (FP16/INT8 ranges are known).
    """

    def __init__(self, args: ModelArgs, weights: str | None = None):
        super().__init__()
        import torchvision

        if args.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {args.backbone!r}; choose from {', '.join(BACKBONES)}")
        self.args = args
        resnet = getattr(torchvision.models, args.backbone)(weights=weights)
        # The report: ResNet without its last two layers (avgpool, fc).
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        chans = (BACKBONES[args.backbone], *DECODER_CHANNELS)
        self.decoder = nn.Sequential(
            *(up_block(c_in, c_out) for c_in, c_out in itertools.pairwise(chans)),
            nn.ConvTranspose2d(DECODER_CHANNELS[-1], 1, kernel_size=4, stride=2, padding=1),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - self.mean) / self.std)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
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
    if args.image_size % 32:
        raise InputError(f"--image-size must be a multiple of 32, got {args.image_size}")
    weights = None
    if pretrained:
        weights = "DEFAULT"
    try:
        model = DepthNet(args, weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise ModelError(
            f"cannot download ImageNet weights for {args.backbone} ({err}); "
            "use --backbone-weights FILE or --no-pretrained",
            "torchvision",
        ) from None
    if backbone_weights is not None:
        load_backbone_weights(model, Path(backbone_weights))
    return model


def load_backbone_weights(model: DepthNet, path: Path) -> None:
    """Load a torchvision ResNet state dict (e.g. resnet50-*.pth) into the encoder."""
    if not path.is_file():
        raise InputError("backbone weights file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelError(f"cannot read backbone weights ({type(err).__name__})", path) from None
    mapping = {"conv1.": "stem.0.", "bn1.": "stem.1."}
    mapping.update({f"layer{i + 1}.": f"stages.{i}." for i in range(4)})
    renamed = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
    own = model.state_dict()
    bad = [k for k, v in renamed.items() if k not in own or own[k].shape != v.shape]
    if not renamed or bad:
        raise ModelError(
            f"not a torchvision {model.args.backbone} state dict ({len(bad)} mismatched keys)", path
        )
    model.load_state_dict(renamed, strict=False)


def model_args_dict(args: ModelArgs) -> dict:
    return asdict(args)
