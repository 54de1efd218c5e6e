"""The report's network, freezing, and checkpoints (atomic, weights_only, architecture checks)."""

from __future__ import annotations

import pytest
import torch

from mde.errors import InputError, ModelError
from mde.train.checkpoint import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from mde.train.model import ModelArgs, build_model

torch.set_num_threads(2)


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
        assert model.forward_features(torch.rand(1, 3, 224, 224)).shape == (1, 2048, 7, 7)


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
    (ModelArgs("resnet18", 70, 10.0), "multiple of 32"),
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
