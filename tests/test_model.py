"""The network (the report's decoder and the skip decoder), freezing, and checkpoints (atomic, weights_only, architecture checks)."""

from __future__ import annotations

import os

import pytest
import torch

from mde.errors import InputError, ModelError
from mde.train.checkpoint import (
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
    save_untrained,
)
from mde.train.config import DECODER_CHOICES
from mde.train.model import DECODERS, ModelArgs, build_model

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # conftest's share of the cores


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(ModelArgs("resnet18", 64, 10.0))


def test_forward_shape_and_range(net):
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    assert float(out.min()) >= 0 and float(out.max()) <= 10.0


def test_resnet50_decoder_matches_the_report():
    model = build_model(ModelArgs("resnet50", 224, 20.0))
    convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (2048, 512), (512, 256), (256, 128), (128, 64), (64, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [
        (1, 64, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]


def test_decoder_registry_and_cli_choices_agree():
    from mde.train.config import BACKBONE_CHOICES, LOSS_CHOICES
    from mde.train.losses import LOSSES
    from mde.train.model import BACKBONES

    # the config keeps torch-free copies of the registries' names for `mde --help`: they cannot drift
    assert tuple(DECODERS) == DECODER_CHOICES
    assert tuple(BACKBONES) == BACKBONE_CHOICES
    assert tuple(LOSSES) == LOSS_CHOICES
    assert ModelArgs().decoder == "report"  # what an old checkpoint without the field holds


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_unet_decoder_shapes_and_ops(backbone):
    torch.manual_seed(0)
    model = build_model(ModelArgs(backbone, 64, 10.0, "unet")).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    assert float(out.min()) >= 0 and float(out.max()) <= 10.0
    kinds = {type(m).__name__ for m in model.decoder.modules() if not list(m.children())}
    assert kinds == {"Conv2d", "BatchNorm2d", "ReLU"}  # no transposed convs; Resize and Concat in forward
    # skip connections: the output reacts to a stride-2 feature map, which the report decoder ignores
    feats = model.forward_features(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        base = model.forward_head(feats)
        feats[0] = feats[0] + 1.0
        assert not torch.allclose(model.forward_head(feats), base)


def test_unknown_decoder_lists_the_registered_ones():
    with pytest.raises(InputError, match="unknown decoder 'fpn'; choose from report, unet"):
        build_model(ModelArgs("resnet18", 64, 10.0, "fpn"))


def test_freeze_three_stages_keeps_frozen_batchnorm_in_eval():
    model = build_model(ModelArgs("resnet18", 64, 10.0))
    model.freeze(3)  # stem + layer1 + layer2
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    trainable = [model.stages[2], model.stages[3], model.decoder]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trainable for p in m.parameters())

    def bns(mods):
        return [b for m in mods for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]

    assert bns(frozen) and not any(b.training for b in bns(frozen))
    assert all(b.training for b in bns(trainable))
    before = model.stem[1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, model.stem[1].running_mean)  # frozen BN statistics do not move


def test_freeze_zero_and_out_of_range():
    model = build_model(ModelArgs("resnet18", 64, 10.0))
    model.freeze(0)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(InputError, match="freeze"):
        model.freeze(7)


@pytest.mark.parametrize("args, match", [
    (ModelArgs("resnet99", 64, 10.0), "unknown backbone"),
    (ModelArgs("resnet18", 70, 10.0), "--image-size must be multiples of 32"),
])
def test_bad_model_args(args, match):
    with pytest.raises(InputError, match=match):
        build_model(args)


def test_checkpoint_roundtrip(tmp_path, net):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model_args": vars(net.args), "model": net.state_dict(), "epoch": 3})
    model, state = load_model(path)
    assert state["epoch"] == 3 and not model.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left


def test_save_untrained_takes_batchnorm_statistics_from_the_images(tmp_path):
    args = ModelArgs("resnet18", 64, 10.0, "unet")
    images = torch.rand(10, 3, 64, 64).numpy()
    blank = save_untrained(tmp_path / "blank.pt", args)
    primed = save_untrained(tmp_path / "primed.pt", args, images, config={"note": "x"})
    stem_bn = "stem.1.running_mean"
    assert torch.count_nonzero(blank.state_dict()[stem_bn]) == 0
    assert torch.count_nonzero(primed.state_dict()[stem_bn]) > 0
    assert not primed.training
    loaded, state = load_model(tmp_path / "primed.pt")
    assert state["config"] == {"note": "x"} and state["model_args"]["decoder"] == "unet"
    x = torch.from_numpy(images[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), primed(x))
        assert not torch.allclose(blank(x), primed(x))


def test_checkpoint_errors(tmp_path, net):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelError, match="not an mde checkpoint"):
        load_checkpoint(foreign)
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"model_args": {"backbone": "resnet50", "image_size": 64, "max_depth": 10.0},
                            "model": net.state_dict()})
    with pytest.raises(ModelError, match="do not match"):
        model_from_checkpoint(load_checkpoint(other), other)
    unknown = tmp_path / "unknown.pt"
    save_checkpoint(unknown, {"model_args": {**vars(net.args), "decoder": "fpn"}, "model": net.state_dict()})
    with pytest.raises(ModelError, match="unknown.pt.*unknown decoder 'fpn'.*report, unet"):
        model_from_checkpoint(load_checkpoint(unknown), unknown)
    swapped = tmp_path / "swapped.pt"
    save_checkpoint(swapped, {"model_args": {**vars(net.args), "decoder": "unet"}, "model": net.state_dict()})
    with pytest.raises(ModelError, match="resnet18/unet DepthNet"):
        model_from_checkpoint(load_checkpoint(swapped), swapped)


def test_checkpoint_without_decoder_loads_as_report(tmp_path, net):
    """Checkpoints written before decoders had names hold no `decoder` key."""
    old = tmp_path / "old.pt"
    args = {k: v for k, v in vars(net.args).items() if k != "decoder"}
    save_checkpoint(old, {"model_args": args, "model": net.state_dict()})
    model, _ = load_model(old)
    assert model.args.decoder == "report"
    x = torch.rand(1, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_damaged_cached_imagenet_weights_are_named(tmp_path, monkeypatch):
    """A junk or cut-short file in torch.hub's cache (copied there by hand, for a machine offline) was an internal
    error (UnpicklingError), or said "cannot download" of a file nothing had tried to download."""
    cached = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"junk\n")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    said = (r"cannot read the cached ImageNet weights for resnet18 \(a damaged or cut-short copy; UnpicklingError: "
            r".*\); delete it to download them again")
    with pytest.raises(ModelError, match=said) as err:
        build_model(ModelArgs("resnet18", 64, 10.0), pretrained=True)
    assert err.value.path == cached
