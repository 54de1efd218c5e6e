"""`--image-size HxW`: a network input of another aspect ratio than 1:1, from the option to the exported model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mde.errors import InputError
from mde.train.config import TrainConfig, as_typed, parse_image_size, same_size, size_text


def test_image_size_is_n_or_height_x_width():
    assert parse_image_size("64") == 64
    assert parse_image_size("32x64") == (32, 64)
    assert parse_image_size("64X64") == 64  # square: the int every run before HxW saved
    assert size_text((32, 64)) == "32x64" and size_text([64, 64]) == "64"
    assert as_typed("image_size", (32, 64)) == "--image-size 32x64"
    assert same_size((32, 64), [32, 64]) and same_size(64, [64, 64]) and not same_size((32, 64), (64, 32))
    assert not same_size("abc", 64) and same_size("abc", "abc")
    for bad in ("", "x", "32x", "-32", "3x2x1", "32.0", "64 px", "²", "٣٢"):  # digits int() refuses, or reads
        with pytest.raises(InputError, match="--image-size must be N"):
            parse_image_size(bad)
    for bad in ((32, 48), (0, 64), (64, 16384), 48):
        with pytest.raises(InputError, match="--image-size must be multiples of 32"):
            TrainConfig(data="d", out="o", image_size=bad).validate()
    with pytest.raises(InputError, match="--batch-size 1 at --image-size 32 gives BatchNorm one value"):
        TrainConfig(data="d", out="o", image_size=32, batch_size=1).validate()
    TrainConfig(data="d", out="o", image_size=(32, 64), batch_size=1).validate()  # 1 x 2 at the last stage: fine
    assert TrainConfig.from_dict({"image_size": [32, 64]}).image_size == (32, 64)  # config.json's list


def test_depth_pairs_resize_to_height_x_width(synth_data):
    from mde.data.readers import open_dataset
    from mde.train.loader import DepthPairs

    mask_weighted = DepthPairs(open_dataset(synth_data, "train"), (32, 64), True, 0, object_weight=4.0)
    x, y, w, _ = mask_weighted[0]
    assert x.shape == (3, 32, 64) and y.shape == (1, 32, 64) and w.shape == (1, 32, 64)


@pytest.mark.slow
def test_a_height_x_width_run_trains_exports_and_scores_at_its_own_size(cli, synth_data, tmp_path):
    """Trained at 32x64, the checkpoint, its config, the exported model's metadata and eval all hold 32x64: eval at
    a square size would score other figures than the run's own validation."""
    run, art = tmp_path / "run", tmp_path / "art"
    res = cli("train", "--data", synth_data, "--out", run, "--backbone", "resnet18", "--image-size", "32x64",
              "--epochs", "1", "--batch-size", "8", "--no-pretrained", "--workers", "0", "--device", "cpu", "--json")
    assert res.code == 0, res.err
    assert "resnet18/unet 32x64 px on cpu" in res.err
    best = json.loads(res.out)["best"]
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["model_args"]["image_size"] == (32, 64)
    assert json.loads((run / "config.json").read_text())["image_size"] == [32, 64]

    res = cli("eval", run / "best.pt", "--data", synth_data, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["rmse"] == pytest.approx(best["rmse"], rel=1e-5)

    res = cli("export", run / "best.pt", "-o", art, "-p", "fp32")  # checked against PyTorch at 32x64
    assert res.code == 0, res.err
    res = cli("info", art / "model.onnx", "--json")
    assert json.loads(res.out)["metadata"]["input_size"] == [32, 64]
    # --dynamic-size traced at a side of 32 (32 x 1): torch.export fixed that dimension, an internal error
    res = cli("export", run / "best.pt", "-o", tmp_path / "dyn", "-p", "fp32", "--dynamic-size")
    assert res.code == 0, res.err
    from mde.runtime import DepthEstimator

    with DepthEstimator.open(tmp_path / "dyn" / "model.onnx", native_resolution=True) as est:
        assert est.predict(np.zeros((96, 64, 3), np.uint8)).shape == (96, 64)  # run at 96x64, not 32x64

    res = cli("train", "--resume", run / "last.pt", "--image-size", "64", "--epochs", "2")
    assert res.code == 2 and "--image-size 64 conflicts with the resumed checkpoint's --image-size 32x64" in res.err
