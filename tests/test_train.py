"""The trainer: losses, augmentation, CyclicLR, a tiny run's outputs, resume after SIGKILL, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mde.train.augment import (
    FULL_AUGMENT,
    AugmentConfig,
    augment_config,
    augment_pair,
    crop_window,
    object_weights,
    random_window,
    resize_intrinsics,
    to_training_pair,
)
from mde.train.config import TrainConfig
from mde.train.losses import LOSSES, get_loss, masked_loss

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # conftest's share of the cores
TINY = ["--backbone", "resnet18", "--image-size", "64", "--batch-size", "4", "--no-pretrained",
        "--workers", "0", "--device", "cpu", "--seed", "0"]


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = {"data": str(data), "out": str(out), "backbone": "resnet18", "image_size": 64,
              "batch_size": 4, "epochs": 1, "pretrained": False, "workers": 0, "device": "cpu", **overrides}
    if values.get("schedule") == "cyclic":  # a short cycle; the option shapes nothing else
        values.setdefault("step_size_up", 3)
    return TrainConfig(**values)


# -- losses -------------------------------------------------------------------------------------
def test_losses_on_known_values():
    target = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])       # last pixel invalid
    pred = torch.tensor([[[[2.0, 4.0, 8.0, 100.0]]]])
    assert masked_loss("l1", pred, target).item() == pytest.approx((1 + 2 + 4) / 3)
    # berHu: c = 0.2 * max|e| = 0.8; |e| = 1, 2, 4 are all above c -> (e^2 + c^2) / 2c
    c = 0.8
    expected = np.mean([(e * e + c * c) / (2 * c) for e in (1, 2, 4)])
    assert masked_loss("berhu", pred, target).item() == pytest.approx(expected, rel=1e-5)
    # SILog of a constant scale error: 10 * sqrt(d^2 - 0.85 d^2), d = log 2
    assert masked_loss("silog", pred, target).item() == pytest.approx(
        10 * math.log(2) * math.sqrt(0.15), rel=1e-3)


def test_losses_are_zero_for_a_perfect_prediction_and_ignore_invalid():
    target = torch.rand(2, 1, 32, 32) * 9 + 1
    target[:, :, :4] = 0
    pred = target.clone()
    pred[:, :, :4] = 50.0   # garbage where ground truth is invalid
    for name in LOSSES:
        assert masked_loss(name, pred, target).item() == pytest.approx(0.0, abs=2e-3), name
    worse = masked_loss("ssim_l1", target.clamp_min(1) + 1, target)
    assert worse.item() > 0.05


def test_no_loss_trains_pixels_without_ground_truth():
    """ssim_l1 compared the prediction at invalid pixels with itself, but kept its gradient: windows over a hole
    trained the map where nothing is known (mean |grad| 2e-5 there against 2e-4 at valid pixels)."""
    target = torch.rand(1, 1, 32, 32) * 9 + 1
    target[:, :, 10:20, 10:20] = 0
    for name in LOSSES:
        pred = (torch.rand(1, 1, 32, 32) * 9 + 1).requires_grad_()
        masked_loss(name, pred, target).backward()
        assert pred.grad[:, :, 10:20, 10:20].abs().max() == 0 and pred.grad.abs().sum() > 0, name


def test_color_jitter_clips_after_each_adjustment_as_torchvision_does():
    """Values brightness pushed past 255 were carried into the contrast's mean and the saturation's blend: up to 21
    grey levels from torchvision's adjust_brightness/contrast/saturation with the same factors."""
    import torchvision.transforms.functional as TF

    from mde.train.augment import AugmentConfig, color_jitter

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cfg = AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4)
    for seed in range(4):
        ours = color_jitter(rgb, np.random.default_rng(seed), cfg)
        draw = np.random.default_rng(seed)
        factors = [draw.uniform(1 - 0.4, 1 + 0.4) for _ in range(3)]
        theirs = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        for adjust, factor in zip((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation), factors):
            theirs = adjust(theirs, factor)
        theirs = (theirs * 255).permute(1, 2, 0).numpy()
        assert np.abs(ours.astype(np.float32) - theirs).max() <= 3, seed  # rounding (torchvision's grey is uint8's)


def test_losses_have_gradients_and_unknown_name():
    pred = (torch.rand(1, 1, 16, 16) * 5 + 1).requires_grad_()
    target = torch.rand(1, 1, 16, 16) * 5 + 1
    for name in LOSSES:
        pred.grad = None
        masked_loss(name, pred, target).backward()
        assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0, name
    from mde.errors import InputError

    with pytest.raises(InputError, match="choose from"):
        get_loss("mse")


def test_weighted_losses_reduce_to_unweighted_and_follow_the_weights():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 16, generator=gen) * 9 + 1
    target[:, :, :2] = 0
    wrong = torch.rand(2, 1, 16, 16, generator=gen) < 0.3  # exact elsewhere
    pred = torch.where(wrong, target * 1.5 + 1, target)
    ones = torch.ones_like(target)
    for name in LOSSES:
        plain = masked_loss(name, pred, target).item()
        assert masked_loss(name, pred, target, ones).item() == pytest.approx(plain, rel=1e-5), name
        assert masked_loss(name, pred, target, 3 * ones).item() == pytest.approx(plain, rel=1e-5), name
        heavy = torch.where(wrong, 5.0, 1.0)  # the wrong pixels weigh more: a larger loss
        assert masked_loss(name, pred, target, heavy).item() > plain, name
    target = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])       # last pixel invalid: its weight is ignored
    pred = torch.tensor([[[[1.5, 4.0, 10.0, 100.0]]]])  # three different ratios: SILog's mean matters
    weight = torch.tensor([[[[1.0, 1.0, 5.0, 9.0]]]])
    assert masked_loss("l1", pred, target, weight).item() == pytest.approx((0.5 + 2 + 5 * 6) / 7)
    # a weight of k is the pixel counted k times (per-pixel losses; berHu's c is the same max)
    repeated = [0, 1, 2, 2, 2, 2, 2]
    for name in ("l1", "berhu", "silog"):
        once = masked_loss(name, pred[..., repeated], target[..., repeated]).item()
        assert masked_loss(name, pred, target, weight).item() == pytest.approx(once, rel=1e-5), name


def _indexed_reference(name: str, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """The losses as first written, on the valid pixels picked out by boolean indexing."""
    mask = torch.isfinite(target) & (target > 0)
    p, t, w = pred[mask], target[mask], weight[mask]
    mean = lambda v: float((w * v).sum() / w.sum())  # noqa: E731
    e = (p - t).abs()
    c = 0.2 * float(e.max())
    d = torch.log(p) - torch.log(t)
    return {"l1": mean(e), "berhu": mean(torch.where(e <= c, e, (e**2 + c**2) / (2 * c))),
            "silog": 10 * math.sqrt(mean(d**2) - 0.85 * mean(d) ** 2 + 1e-8)}[name]


def test_losses_match_indexing_without_a_data_dependent_shape():
    """The losses are sums over a mask, not means over `x[mask]`: the same values and gradients, and nothing
    whose shape or branch depends on the data, so a GPU step waits for no copy to the host. `fullgraph=True`
    refuses a graph break, which `if mask.any()` and boolean indexing both are."""
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 16, 16, generator=gen) * 9 + 1
    target[0, 0, 0, :4] = torch.tensor([0.0, -1.0, float("nan"), float("inf")])  # invalid, each kind
    pred = (torch.rand(2, 1, 16, 16, generator=gen) * 9 + 1).requires_grad_()
    weight = torch.where(torch.rand(2, 1, 16, 16, generator=gen) < 0.3, 4.0, 1.0)
    for name in ("l1", "berhu", "silog"):
        assert masked_loss(name, pred, target, weight).item() == pytest.approx(
            _indexed_reference(name, pred.detach(), target, weight), rel=1e-5), name
    torch._dynamo.reset()
    for name in LOSSES:
        compiled = torch.compile(lambda p, t, w, name=name: masked_loss(name, p, t, w), fullgraph=True,
                                 backend="eager")
        pred.grad = None
        loss = compiled(pred, target, weight)
        loss.backward()
        assert loss.item() == pytest.approx(masked_loss(name, pred, target, weight).item(), rel=1e-6), name
        assert torch.isfinite(pred.grad).all(), name  # a NaN target's pixel gives no NaN gradient
        if name != "ssim_l1":  # whose windows see the prediction around a valid pixel, as designed
            assert (pred.grad[0, 0, 0, :4] == 0).all(), name  # per-pixel losses: invalid pixels do not pull
        empty = compiled(pred, torch.zeros_like(target), weight)
        assert empty.item() == 0.0 and empty.requires_grad, name


def test_weighted_ssim_l1_is_the_weighted_mean_of_its_map():
    from mde.train.losses import ssim_map

    gen = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 16, 16, generator=gen) * 9 + 1
    pred = target + torch.rand(1, 1, 16, 16, generator=gen)
    weight = torch.where(torch.rand(1, 1, 16, 16, generator=gen) < 0.3, 4.0, 1.0)
    structure = ((1 - ssim_map(pred, target, float(target.max()))) / 2).clamp(0, 1)
    expected = (weight * structure).sum() / weight.sum() + 0.1 * (weight * (pred - target).abs()).sum() / weight.sum()
    assert masked_loss("ssim_l1", pred, target, weight).item() == pytest.approx(expected.item(), rel=1e-5)


# -- augmentation -------------------------------------------------------------------------------
def _coded_pair(h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """RGB whose red channel and depth both encode the column index (depth also the row)."""
    cols = np.tile(np.arange(w), (h, 1))
    rows = np.tile(np.arange(h)[:, None], (1, w))
    rgb = np.stack([cols * 7, rows * 9, np.zeros_like(cols)], -1).astype(np.uint8)
    return rgb, (1 + cols + 100 * rows).astype(np.float32)


def test_flip_and_crop_move_rgb_and_depth_together():
    rgb, depth = _coded_pair()
    no_color = {"brightness": 0, "contrast": 0, "saturation": 0}
    a_rgb, a_depth, no_mask = augment_pair(rgb, depth, np.random.default_rng(0),
                                           AugmentConfig(flip_p=1.0, crop_p=0.0, **no_color))
    assert no_mask is None
    assert np.array_equal(a_depth, depth[:, ::-1])
    assert np.array_equal(a_rgb, rgb[:, ::-1])
    for seed in range(5):
        window = random_window(*depth.shape, np.random.default_rng(seed), 0.5)
        c_rgb, c_depth, _ = crop_window(rgb, depth, *window)
        col = c_rgb[..., 0].astype(int) // 7
        row = c_rgb[..., 1].astype(int) // 9
        s = c_depth.shape[1] / depth.shape[1]  # the zoom-in divides depth by 1 / s
        np.testing.assert_allclose(c_depth, (1 + col + 100 * row) * s, rtol=1e-6)
        assert c_depth.shape[0] >= 12


def _row_column(depth: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """The row and column a `_coded_pair` depth value (1 + col + 100 row, times the crop's scale s) encodes."""
    code = np.rint(depth / s - 1).astype(int)
    return code // 100, code % 100


def test_region_mask_moves_with_depth_and_weights_land_on_objects():
    rgb, depth = _coded_pair()
    rows, cols = np.indices(depth.shape)
    mask = ((rows + 2 * cols) % 5 == 0).astype(np.uint8)  # objects on a diagonal pattern

    def is_object(d, s):
        row, col = _row_column(d, s)
        return (row + 2 * col) % 5 == 0

    seen = set()
    for seed in range(8):
        m_rgb, m_depth, m_mask = augment_pair(rgb, depth, np.random.default_rng(seed), mask=mask)
        p_rgb, p_depth, _ = augment_pair(rgb, depth, np.random.default_rng(seed))
        assert np.array_equal(m_rgb, p_rgb) and np.array_equal(m_depth, p_depth)  # masks draw nothing
        s = m_depth.shape[1] / depth.shape[1]
        row, col = _row_column(m_depth, s)
        seen |= {"crop" if s < 1 else "full", "flip" if col[0, 0] > col[0, -1] else "same",
                 "moved" if row[0, 0] > 0 else "top"}
        assert np.array_equal(m_mask == 1, is_object(m_depth, s))
        _, y = to_training_pair(m_rgb, m_depth, (16, 16))
        weights = object_weights(m_mask, (16, 16), 4.0)
        assert set(np.unique(weights).tolist()) == {1.0, 4.0}
        assert np.array_equal(weights[0] == 4.0, is_object(y[0], s))
    assert seen == {"crop", "full", "flip", "same", "moved", "top"}
    assert np.array_equal(object_weights(None, (8, 8), 4.0), np.ones((1, 8, 8), np.float32))


def test_depth_pairs_weigh_object_pixels_only_when_asked(synth_data):
    from mde.data.readers import open_dataset
    from mde.runtime.preprocess import resize_depth
    from mde.train.loader import DepthPairs

    base = open_dataset(synth_data, "train")
    k = next(i for i in range(len(base)) if (base[i].mask == 1).any())
    x, y, w, index = DepthPairs(base, 32, augment=False, seed=0)[k]
    assert index == k and w.numel() == 0  # unweighted: nothing to ship
    x3, y3, w3, _ = DepthPairs(base, 32, augment=False, seed=0, object_weight=3.0)[k]
    assert torch.equal(x, x3) and torch.equal(y, y3)
    objects = resize_depth(base[k].mask.astype(np.float32), (32, 32), nearest=True) == 1
    assert objects.any() and torch.equal(w3[0] == 3.0, torch.from_numpy(objects))
    assert set(w3.unique().tolist()) == {1.0, 3.0}


def test_augmentation_is_seeded_and_depth_stays_clean():
    rgb, depth = _coded_pair()
    depth[:4] = 0  # invalid band
    one = augment_pair(rgb, depth, np.random.default_rng(3))
    two = augment_pair(rgb, depth, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    x, y = to_training_pair(*one[:2], (16, 16))
    assert x.shape == (3, 16, 16) and y.shape == (1, 16, 16)
    assert 0 <= x.min() and x.max() <= 1
    s = one[1].shape[1] / depth.shape[1]  # the crop's scale (1 without a crop)
    values = set(np.unique(depth * np.float32(s)).tolist())
    assert set(np.unique(y).tolist()) <= values  # nearest: no blended depths (invalid stays 0)
    assert s < 1  # this seed crops


def test_scale_crop_matches_a_longer_focal_length_rendering():
    """One scene of the virtual world rendered at two focal lengths: the wide view, centre-cropped to
    half its side and resized back, must match the narrow view (f x 2) as the recorded camera sees it:
    same image, same principal point, depth divided by the zoom (depth / fx identical)."""
    from mde.data.world import _sample_scene, draw_scene
    from mde.runtime.preprocess import resize_rgb

    size, s = 96, 0.5
    scene = _sample_scene(np.random.default_rng(11))
    scene["hfov"] = np.radians(80.0)
    wide_rgb, wide_depth, wide_k = draw_scene(scene, size)
    narrow = dict(scene, hfov=2 * np.arctan(np.tan(scene["hfov"] / 2) * s))  # focal length / s
    narrow_rgb, narrow_depth, narrow_k = draw_scene(narrow, size)
    assert narrow_k["fx"] == pytest.approx(wide_k["fx"] / s)

    side = round(size * s)
    off = (size - side) // 2
    c_rgb, c_depth, c_k = crop_window(wide_rgb, wide_depth, off, off, side, side, wide_k)
    rgb, depth = resize_rgb(c_rgb, (size, size)), to_training_pair(c_rgb, c_depth, (size, size))[1][0]
    k = resize_intrinsics(c_k, (side, side), (size, size))
    assert k["fx"] == pytest.approx(wide_k["fx"]) and k["fy"] == pytest.approx(wide_k["fy"])  # the camera's
    assert (k["cx"], k["cy"]) == pytest.approx((narrow_k["cx"], narrow_k["cy"]))
    # depth in units of the focal length matches the narrow rendering (pixels away from edges)
    rel = np.abs(depth / k["fx"] - narrow_depth / narrow_k["fx"]) / (narrow_depth / narrow_k["fx"])
    assert np.median(rel) < 0.02 and np.mean(rel < 0.05) > 0.9  # unscaled depth would be off by 1 / s
    assert np.median(np.abs(depth - narrow_depth * s) / (narrow_depth * s)) < 0.02
    # and the picture is the narrow view (bilinear upsampling blurs the texture a little)
    err = np.abs(rgb.astype(float) - narrow_rgb).mean()
    other = np.abs(wide_rgb.astype(float) - narrow_rgb).mean()
    assert err < 0.5 * other


# -- CyclicLR -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, second_peak", [("triangular", 1e-3), ("triangular2", 5.5e-4)])
def test_cyclic_lr_trajectory(mode, second_peak):
    from mde.train.trainer import make_optimizer, make_scheduler

    cfg = TrainConfig(lr_min=1e-4, lr_max=1e-3, step_size_up=4, cycle_mode=mode, schedule="cyclic")
    model = torch.nn.Linear(2, 1)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, total_steps=100)  # CyclicLR ignores the run length
    lrs = [sched.get_last_lr()[0]]
    for _ in range(12):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(5.5e-4)
    assert lrs[8] == pytest.approx(1e-4)
    assert lrs[12] == pytest.approx(second_peak)


def test_onecycle_lr_warms_up_then_anneals_over_the_run():
    from mde.train.trainer import make_optimizer, make_scheduler

    cfg = TrainConfig(lr_min=1e-4, lr_max=1e-3, schedule="onecycle")
    model = torch.nn.Linear(2, 1)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, total_steps=20)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(19):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(1e-4) and lrs[peak] == pytest.approx(1e-3)
    assert 4 <= peak <= 7  # 30 % of the run
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(1e-6, rel=0.05)  # lr_min / 100


@pytest.mark.parametrize("total", [1, 2, 3])
def test_a_onecycle_run_of_a_few_steps_starts_at_lr_min(total):
    """The warm-up ends at step 0.3 x steps - 1, before the first for 3 steps or fewer: such a run began near
    --lr-max (1.99e-3 of 2e-3) instead of at --lr-min."""
    from mde.train.trainer import make_optimizer, make_scheduler

    cfg = TrainConfig(lr_min=2e-4, lr_max=2e-3, schedule="onecycle")
    opt = make_optimizer(cfg, torch.nn.Linear(2, 1))
    sched = make_scheduler(cfg, opt, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4, 2e-3, 2e-6][:total])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizer_is_fused_and_steps_as_the_unfused_one(optimizer):
    from mde.train.trainer import make_optimizer

    cfg = TrainConfig(optimizer=optimizer, lr_min=1e-2)
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = make_optimizer(cfg, models[0])
    kind = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    plain = kind(models[1].parameters(), lr=1e-2, weight_decay=cfg.weight_decay, foreach=False, **extra)
    assert all(group["fused"] for group in fused.param_groups)
    for step in range(3):
        for model, opt in zip(models, (fused, plain)):
            opt.zero_grad()
            model(torch.full((2, 4), float(step + 1))).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b)


def test_old_configs_read_with_the_recipe_they_were_trained_with():
    new_keys = ("decoder", "schedule", "scale_crop", "color_jitter")
    old = {k: v for k, v in TrainConfig(decoder="unet", schedule="onecycle").to_dict().items() if k not in new_keys}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.decoder, cfg.schedule, cfg.scale_crop, cfg.color_jitter) == ("report", "cyclic", True, True)
    assert TrainConfig.from_dict(TrainConfig(decoder="unet").to_dict()).decoder == "unet"
    assert not TrainConfig.from_dict(TrainConfig().to_dict()).color_jitter
    no_augment = {**old, "augment": False, "data": "d", "out": "o"}  # older configs said scale_crop: true even then
    no_augment["scale_crop"] = True
    cfg = TrainConfig.from_dict(no_augment)
    assert (cfg.augment, cfg.scale_crop, cfg.color_jitter) == (False, False, False)
    cfg.validate()


def test_trainer_hands_the_augmentation_options_to_the_loader(tmp_path, synth_data, monkeypatch):
    import mde.train.trainer as trainer

    class Built(Exception):
        pass

    def spy(*args, **kwargs):
        raise Built(kwargs)

    monkeypatch.setattr(trainer, "DepthPairs", spy)
    for crop, jitter in ((True, False), (False, True)):
        with pytest.raises(Built) as built:
            trainer.train(tiny_config(synth_data, tmp_path / f"{crop}{jitter}", scale_crop=crop, color_jitter=jitter))
        assert (built.value.args[0]["scale_crop"], built.value.args[0]["color_jitter"]) == (crop, jitter)


def test_default_augmentation_is_flips_only_and_the_rest_can_be_turned_on(synth_data):
    from mde.data.readers import open_dataset
    from mde.train.loader import DepthPairs

    assert (TrainConfig().augment, TrainConfig().scale_crop, TrainConfig().color_jitter) == (True, False, False)
    base = open_dataset(synth_data, "train")

    def kind(x: np.ndarray, plain: np.ndarray) -> str:
        return ("same" if np.allclose(x, plain, atol=1e-5) else
                "flip" if np.allclose(x, plain[:, :, ::-1], atol=1e-5) else "changed")

    plain = [DepthPairs(base, 32, augment=False, seed=0)[i][0].numpy() for i in range(len(base))]
    flips = DepthPairs(base, 32, augment=True, seed=0)
    assert {kind(flips[i][0].numpy(), plain[i]) for i in range(len(base))} == {"same", "flip"}
    jitter = DepthPairs(base, 32, augment=True, seed=0, color_jitter=True)
    assert {kind(jitter[i][0].numpy(), plain[i]) for i in range(len(base))} == {"changed"}
    on = augment_config(scale_crop=True, color_jitter=True)
    off = augment_config(scale_crop=False, color_jitter=False)
    assert on == FULL_AUGMENT and (off.crop_p, off.brightness, off.contrast, off.saturation) == (0, 0, 0, 0)
    assert off.flip_p == FULL_AUGMENT.flip_p > 0


# -- a tiny run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(built_once, synth_data):
    from mde.train.trainer import train

    def build(folder):
        # every transform on, so the exact-resume test covers their random draws too
        return folder / "run", train(tiny_config(synth_data, folder / "run", epochs=2, checkpoint_every=0,
                                                 scale_crop=True, color_jitter=True))

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # as the resume test's subprocesses: same arithmetic
    return built_once("train-run", build)


@pytest.fixture(scope="module")
def cyclic_run(built_once, synth_data):
    """A finished 1-epoch cyclic run (`mde train ... --epochs 1 --schedule cyclic`) that resume tests copy
    (`_copy_run`) before they resume or change it."""
    from mde.train.trainer import train

    def build(folder):
        train(tiny_config(synth_data, folder / "run", schedule="cyclic", seed=0))
        return folder / "run"

    return built_once("cyclic-run", build)


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to))


def test_run_folder_outputs(tiny_run):
    out, result = tiny_run
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl", "curves.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "lr", "val_rmse", "val_ssim", "val_abs_rel", "val_delta1", "images_per_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    config = json.loads((out / "config.json").read_text())
    assert config["freeze_stages"] == 0 and config["max_depth"] > 0  # resolved values
    assert (config["world_size"], config["global_batch_size"]) == (1, config["batch_size"])  # one process
    # `lr` is the rate the epoch's last step used: one-cycle's last step anneals to lr_min / 100
    assert records[-1]["lr"] == pytest.approx(config["lr_min"] / 100, rel=1e-6)
    assert result["final"]["rmse"] == pytest.approx(records[-1]["val_rmse"])
    assert result["best"]["rmse"] == min(r["val_rmse"] for r in records)


def test_validation_reports_regions(tiny_run):
    records = [json.loads(line) for line in (tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    for key in ("val_objects_rmse", "val_structure_rmse", "val_objects_delta1", "val_structure_abs_rel"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[-1]["val_structure_images"] == 8


def test_defaults_are_unet_onecycle_and_the_report_recipe_stays_selectable(tiny_run, tmp_path, synth_data):
    from mde.train.checkpoint import load_checkpoint, load_model
    from mde.train.trainer import train

    state = load_checkpoint(tiny_run[0] / "last.pt")  # the tiny run uses the defaults
    assert state["model_args"]["decoder"] == "unet" and state["config"]["schedule"] == "onecycle"
    assert state["scheduler"]["total_steps"] == 12  # 24 images / batch 4, two epochs
    # the scale its PNGs were read at, from the synth set's meta.json (no --depth-scale given): eval's note needs it
    assert state["config"]["depth_scale"] is None and state["config"]["png_depth_scale"] == 1000.0
    out = tmp_path / "report"
    result = train(tiny_config(synth_data, out, decoder="report", schedule="cyclic", scale_crop=True, color_jitter=True))
    assert math.isfinite(result["best"]["rmse"])
    config = json.loads((out / "config.json").read_text())
    assert (config["decoder"], config["schedule"], config["scale_crop"], config["color_jitter"]) == (
        "report", "cyclic", True, True)
    model, state = load_model(out / "best.pt")
    assert state["model_args"]["decoder"] == "report" and type(model.decoder).__name__ == "ReportDecoder"
    assert "base_lrs" in load_checkpoint(out / "last.pt")["scheduler"]


def test_the_same_seed_trains_the_same_run_on_the_cpu(tmp_path, synth_data):
    """What the README promises: on the CPU a --seed gives the same run (its augmentation, batch order and weights)."""
    import mde.train.trainer as trainer

    records = []
    for name in ("a", "b"):
        trainer.train(tiny_config(synth_data, tmp_path / name, color_jitter=True, scale_crop=True, seed=3))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records.append([{k: v for k, v in json.loads(line).items() if "per_s" not in k and "time" not in k}
                        for line in lines])
    assert records[0] == records[1] and len(records[0]) == 1


def test_object_weight_reaches_the_loss_and_the_config(tmp_path, synth_data, monkeypatch):
    import mde.train.trainer as trainer

    seen = []

    def spy(name, pred, target, weight=None):
        seen.append(set() if weight is None else set(weight.unique().tolist()))
        return masked_loss(name, pred, target, weight)

    monkeypatch.setattr(trainer, "masked_loss", spy)
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    result = trainer.train(tiny_config(synth_data, tmp_path / "run", object_weight=4.0))
    # deterministic mode (no NaN fill) is the training's: the caller's process gets its own settings back
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) \
        == before == (False, True)
    assert math.isfinite(result["best"]["rmse"])
    assert len(seen) == 6 and all(s <= {1.0, 4.0} and 1.0 in s for s in seen) and any(4.0 in s for s in seen)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["object_weight"] == 4.0


def test_object_weight_needs_masks(cli, tmp_path, synth_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "train" / "mask")
    res = cli("train", "--data", data, "--out", tmp_path / "run", *TINY, "--epochs", "1", "--object-weight", "2")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "--object-weight 2 needs region masks, and the train split has none" in res.err and str(data) in res.err
    assert not (tmp_path / "run").exists()  # refused before the output folder is made
    import h5py  # an NYU file has none at all: "train/mask/NAME.png" named a folder it cannot have

    with h5py.File(tmp_path / "nyu.mat", "w") as f:
        f["images"] = np.zeros((20, 3, 64, 64), np.uint8)
        f["depths"] = np.ones((20, 64, 64), np.float32)
    res = cli("train", "--data", tmp_path / "nyu.mat", "--out", tmp_path / "run", *TINY, "--object-weight", "2")
    assert res.code == 2 and res.err == (f"mde: error: {tmp_path / 'nyu.mat'}: --object-weight 2 needs region masks, "
                                         "which an NYU file does not hold\n"), res.err


def test_checkpoint_carries_training_state(tiny_run):
    from mde.train.checkpoint import load_checkpoint

    state = load_checkpoint(tiny_run[0] / "last.pt")  # weights_only=True
    for key in ("model_args", "model", "config", "epoch", "step", "optimizer", "scheduler",
                "scaler", "rng", "metrics"):
        assert key in state, key
    assert state["epoch"] == 2 and state["step"] == 12 and state["epoch_step"] == 0
    assert state["model_args"]["backbone"] == "resnet18"
    assert set(state["rng"]) == {"torch", "numpy", "python"}
    best = load_checkpoint(tiny_run[0] / "best.pt")  # the deployable model: no optimizer state
    assert "optimizer" not in best and best["metrics"]["rmse"] > 0
    assert (tiny_run[0] / "best.pt").stat().st_size < 0.5 * (tiny_run[0] / "last.pt").stat().st_size


def test_trained_model_evaluates_like_the_run(tiny_run, synth_data):
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.train.checkpoint import load_model
    from mde.train.evaluate import evaluate_model

    out, _ = tiny_run
    model, state = load_model(out / "best.pt")
    metrics = evaluate_model(model, open_dataset(synth_data, "val"), 64, model.args.max_depth,
                             data_range=dataset_max_depth(synth_data))
    assert metrics["rmse"] == pytest.approx(state["metrics"]["rmse"], rel=1e-5)
    assert metrics["images"] == 8


def test_python_m_mde_train_takes_mde_s_own_options_anywhere(tmp_path):
    """`python -m mde.train --verbose ...` (torchrun's form) was refused with "given before the command: mde
    --verbose train ...", a form `-m mde.train` cannot take; the internal-error line advises --verbose."""
    done = subprocess.run([sys.executable, "-m", "mde.train", "--data", str(tmp_path / "none"), "--verbose",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" in done.stderr and done.stderr.endswith(f"mde: error: {tmp_path / 'none'}: dataset not found\n")
    from mde.train.__main__ import own_options_first

    # an option's value stays the option's: `--out -v` is a folder named -v, as `mde train` reads it
    assert own_options_first(["--data", "-v", "--out", "-v", "-v", "--", "--verbose"]) == [
        "-v", "train", "--data", "-v", "--out", "-v", "--", "--verbose"]


# -- resume after SIGKILL -----------------------------------------------------------------------
def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mde.train", "--data", str(data), "--out", str(out), *TINY,
            "--epochs", "2", "--scale-crop", "--color-jitter", "--json", *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, synth_data, tiny_run):
    run = tmp_path / "killed"
    env = dict(os.environ)  # conftest's OMP_NUM_THREADS, as tiny_run's
    proc = subprocess.Popen(_train_cmd(synth_data, run, "--checkpoint-every", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no mid-epoch checkpoint before the kill"
    from mde.train.checkpoint import load_checkpoint

    killed_at = load_checkpoint(last)
    assert killed_at["epoch"] == 0 and 0 < killed_at["epoch_step"] < 6  # really mid-epoch 1
    done = subprocess.run(_train_cmd(synth_data, run, "--resume", str(last)), env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads(done.stdout)
    reference = tiny_run[1]  # the same config, uninterrupted
    for key in ("rmse", "ssim", "abs_rel"):
        assert resumed["final"][key] == pytest.approx(reference["final"][key], rel=1e-4)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    reference_records = [json.loads(line) for line in (tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(records, reference_records):  # the running loss carried over the kill too
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)


def test_a_resumed_running_loss_is_carried_by_rank_0_only(tiny_run):
    """A mid-epoch last.pt holds the running loss summed over every rank; on resume rank 0 carries it and the
    others start from 0, so the epoch's all-reduced loss counts each rank's batches once."""
    from types import SimpleNamespace

    from mde.train.trainer import restore, rng_state, set_rng_state

    state = torch.load(tiny_run[0] / "last.pt", map_location="cpu", weights_only=True)
    state |= {"loss_sum": 12.0, "loss_count": 4}
    noop = SimpleNamespace(load_state_dict=lambda _state: None, is_enabled=lambda: False)
    before = rng_state()
    try:
        for rank, expected in ((0, (12.0, 4)), (1, (0.0, 0))):
            job = SimpleNamespace(optimizer=noop, scheduler=noop, scaler=noop, env=SimpleNamespace(is_main=rank == 0),
                                  cfg=SimpleNamespace(resume=str(tiny_run[0] / "last.pt"), data=state["config"]["data"]),
                                  val_data=state["val_data"], data_range=state["data_range"])
            resumed = restore(job, state)
            assert (resumed.loss_sum, resumed.loss_count) == expected, rank
    finally:
        set_rng_state(before)


# -- DDP ------------------------------------------------------------------------------------------
# Loaded by every process of the DDP test (sitecustomize on PYTHONPATH): records, per rank, the sample
# indices of every batch and every checkpoint saved, by wrapping the functions the trainer imports.
_DDP_SPY = """
import os
import mde.train.checkpoint as checkpoint
import mde.train.loader as loader
_log = open(os.path.join(os.environ["MDE_TEST_SPY"], "rank" + os.environ.get("RANK", "x") + ".txt"), "a")
_save, _batches = checkpoint.save_checkpoint, loader.batches
def _spy_save(path, state):
    _log.write("save " + os.path.basename(path) + " " + str(state.get("loss_count")) + "\\n"); _log.flush()
    return _save(path, state)
def _spy_batches(data):
    for x, y, w, idx in _batches(data):
        _log.write("batch " + " ".join(map(str, idx.tolist())) + "\\n"); _log.flush()
        yield x, y, w, idx
checkpoint.save_checkpoint, loader.batches = _spy_save, _spy_batches
"""


@pytest.mark.slow
def test_ddp_two_cpu_ranks_split_data_and_rank0_writes_once(tmp_path, synth_data, cli):
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(_DDP_SPY)
    data = tmp_path / "data"  # rank 0's val shard (even images) without masks: only rank 1 has region metrics
    shutil.copytree(synth_data, data)
    for mask in sorted((data / "val" / "mask").iterdir())[::2]:
        mask.unlink()
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mde.train", "--data", str(data), "--out", str(run), *TINY,
           "--epochs", "1", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MDE_TEST_SPY": str(spy),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(spy), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = {r: (spy / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)}
    used = {r: [int(i) for line in lines if line.startswith("batch ") for i in line.split()[1:]]
            for r, lines in seen.items()}
    assert len(used[0]) == len(used[1]) == 12       # 24 images / 2 ranks, 3 batches of 4 each
    assert not set(used[0]) & set(used[1])          # different data on each rank
    saves = {r: [line for line in lines if line.startswith("save ")] for r, lines in seen.items()}
    # a mid-epoch last.pt after step 2 holds the running loss of both ranks' 2 batches (4), summed by a
    # collective that every rank joined; the epoch-end one starts the next epoch from 0
    assert saves[1] == [] and saves[0] == ["save last.pt 4", "save best.pt None", "save last.pt 0"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl", "samples.png"]
    config = json.loads((run / "config.json").read_text())  # --batch-size is per process
    assert (config["batch_size"], config["world_size"], config["global_batch_size"]) == (4, 2, 8)
    # the progress line's running loss is over both ranks, as the epoch's line is (it was rank 0's alone)
    progress = re.findall(r"epoch 1/1: 3/3 \(100%\).*? loss (\d+\.\d+)", done.stderr)
    epoch_line = re.findall(r"epoch 1/1: loss (\d+\.\d+)", done.stderr)
    assert progress and epoch_line and progress[-1] == epoch_line[-1], done.stderr[-2000:]
    assert "validate 1/1: 1/1 (100%)" in done.stderr  # rank 0's shard: 4 of the 8 val images, one batch
    # validation scored the model rank 0 saved (rank 1 held its own last batch's BatchNorm statistics)
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    scored = cli("eval", run / "best.pt", "--data", data, "--json")
    assert scored.code == 0, scored.err
    evaluated = json.loads(scored.out)
    for name in ("rmse", "ssim", "objects_rmse", "structure_rmse"):  # regions: over rank 1's images
        assert logged[f"val_{name}"] == pytest.approx(evaluated[name], rel=1e-5), name


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, match", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "64"], "too few for --batch-size"),
    (["--backbone", "resnet99"], "unknown --backbone"),
    (["--loss", "mse"], "unknown --loss"),
    (["--decoder", "fpn"], "unknown --decoder 'fpn'; choose from report, unet"),
    (["--schedule", "cosine"], "unknown --schedule 'cosine'; choose from cyclic, onecycle"),
    (["--resume", "missing/last.pt"], "not found"),
    (["--pretrained", "--backbone-weights", "w.pth"], "conflict"),
    (["--freeze-stages", "3"], "randomly initialised"),
    (["--image-size", "70"], "--image-size must be multiples of 32"),
    (["--image-size", "99968"], "--image-size must be multiples of 32 from 32 to 8192 (N, or HxW), got 99968"),
    (["--object-weight", "0"], "--object-weight must be in 0.001..1000, got 0.0"),
    (["--object-weight", "nan"], "--object-weight must be in 0.001..1000"),
    (["--object-weight", "1e39"], "--object-weight must be in 0.001..1000"),
    (["--no-augment", "--color-jitter"], "--scale-crop and --color-jitter add to --augment"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    # it trained an epoch, diverged, and blamed --lr-max
    (["--weight-decay", "1e30"], "--lr-max 0.002 x --weight-decay 1e+30 = 2e+27: AdamW would shrink each weight by"),
    (["--epochs", "99999999999999999999"], "--epochs must be at most 100000"),  # one-cycle stayed at --lr-min
    (["--max-depth", "nan"], "--max-depth must be a finite number, got nan"),
    (["--depth-scale", "inf"], "--depth-scale must be a finite number, got inf"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["--seed", "100000000000000000000000"], "--seed must be in 0..4294967295"),
    (["--max-depth", "1e300"], "--max-depth must be 0.001 to 10000 m (0: the dataset's), got 1e+300"),
    (["--max-depth", "1e-9"], "--max-depth must be 0.001 to 10000 m (0: the dataset's), got 1e-09"),
    (["--step-size-up", "3"], "--step-size-up shapes the cyclic schedule; with --schedule onecycle it would do nothing"),
    (["--cycle-mode", "exp_range"], "--cycle-mode shapes the cyclic schedule"),
    (["--image-size", "32", "--batch-size", "1"], "--batch-size 1 at --image-size 32 gives BatchNorm one value"),
])
def test_bad_train_input_is_one_line_exit_2(cli, tmp_path, synth_data, extra, match):
    res = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1", *extra)
    assert res.code == 2, res.err
    assert match in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_out_inside_the_dataset_is_refused(cli, tmp_path, synth_data):
    """A run folder inside --data would add curves.png & co. to the dataset's images."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    res = cli("train", "--data", data, "--out", data / "train" / "rgb", "--force", *TINY, "--epochs", "1")
    assert res.code == 2 and "lies inside the dataset's train/ or val/" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    first = tmp_path / "first"  # nor may a resume move a run there
    assert cli("train", "--data", data, "--out", first, *TINY, "--epochs", "1", "--schedule", "cyclic").code == 0
    for into in (data / "train" / "rgb", data / "val" / "new"):
        res = cli("train", "--resume", first / "last.pt", "--epochs", "2", "--out", into, "--force")
        assert res.code == 2 and "lies inside the dataset's train/ or val/" in res.err, res.err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert cli("train", "--data", data, "--out", data / "runs" / "r", *TINY, "--epochs", "1").code == 0  # beside them


def test_resume_reads_the_history_from_its_checkpoint_and_the_data_from_anywhere(cli, synth_data, tmp_path,
                                                                                 monkeypatch):
    """last.pt carries the records: a metrics.jsonl of another run in the folder (a --force run killed before
    its first last.pt) does not leak into the resumed history; stale temporary copies are removed; the
    dataset path is absolute, so a resume from another working folder trains on the same data."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert cli("train", "--data", "data", "--out", run, *TINY, "--epochs", "1", "--schedule", "cyclic").code == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(data)
    first = json.loads((run / "metrics.jsonl").read_text())
    (run / "metrics.jsonl").write_text(json.dumps({**first, "train_loss": 99.0}) + "\n")  # another run's
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("train", "--resume", run / "last.pt", "--epochs", "2")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first
    # validation shows its progress (minutes of silence for a few hundred images at 224 px on a CPU)
    assert re.search(r"^validate 2/2: (\d+)/\1 \(100%\)", result.err, re.MULTILINE), result.err
    assert not list(run.glob(".*.tmp"))
    result = cli("train", "--resume", run / "last.pt", "--data", "../data", "--epochs", "3")  # given, relative
    assert result.code == 0, result.err
    assert json.loads((run / "config.json").read_text())["data"] == str(data)  # recorded absolute again
    shutil.move(data, tmp_path / "moved")
    result = cli("train", "--resume", run / "last.pt", "--epochs", "4")
    assert result.code == 2 and result.err.strip() == (
        f"mde: error: {run / 'last.pt'}: the run's dataset {data} (its --data, saved in the checkpoint) is not "
        "found from here; give --data")


@pytest.mark.parametrize("damage, what", [
    (lambda s: s.pop("rng"), "rng"),
    (lambda s: s.pop("epoch_step"), "epoch_step"),
    (lambda s: s.update(epoch="1"), "epoch"),
    (lambda s: s["optimizer"].update(param_groups=[]), "optimizer"),
    (lambda s: s.update(scheduler={"foo": 1}), "scheduler"),
    # edited by hand or by another version: internal errors (TypeError, ValueError), or taken in silence
    (lambda s: s["config"].update(batch_size="eight"), "config.batch_size"),
    (lambda s: s["config"].update(lr_max=None), "config.lr_max"),
    (lambda s: s.update(config=[1, 2]), "config"),
    (lambda s: s.update(epoch=-5), "epoch"),
    (lambda s: s.update(best_rmse="x"), "best_rmse"),
    (lambda s: s.update(loss_sum="x"), "loss_sum"),
    (lambda s: s.update(records="x"), "records"),  # was written into metrics.jsonl as a line "x"
    (lambda s: s["config"].update(image_size=96), "config.image_size (not the network's)"),  # trained 64 px at 96
])
def test_damaged_training_checkpoint_is_one_line_naming_it(cli, tmp_path, tiny_run, damage, what):
    state = torch.load(tiny_run[0] / "last.pt", map_location="cpu", weights_only=True)
    damage(state)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    res = cli("train", "--resume", bad, "--out", tmp_path / "r", "--epochs", "3")
    assert res.code == 2 and res.err.strip() == (
        f"mde: error: {bad}: damaged training checkpoint: {what} missing or malformed; cannot resume")


def test_a_damaged_val_file_is_found_before_any_training(cli, synth_data, tmp_path, monkeypatch):
    """Validation reads val/ after the first epoch: its files are read once before, so that epoch is not lost."""
    from PIL import Image

    from mde.train import trainer

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    mask = sorted((data / "val" / "mask").iterdir())[-1]
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(mask)  # instance ids, say
    epochs = []
    monkeypatch.setattr(trainer, "train_one_epoch", lambda *args: epochs.append(args))
    result = cli("train", "--data", data, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert result.code == 2 and f"{mask}: mask has value 7" in result.err, result.err
    assert not epochs and not (tmp_path / "run").exists()


def test_a_run_killed_while_writing_its_first_checkpoint_starts_again_without_force(cli, synth_data, tmp_path):
    """All such a run leaves is the checkpoint's temporary copy: not a run to protect with --force."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 0, result.err
    assert not list(run.glob(".*.tmp")) and (run / "last.pt").is_file()
    # the same command again: the one way on it named was --force, which throws a stopped run away
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 2 and result.err == (  # one-cycle, finished: it cannot go on
        f"mde: error: {run}: the folder holds a run (last.pt), finished; start anew over it with --force, or choose "
        "another --out\n")
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    # stopped short of its schedule by a smaller --epochs (`--resume --epochs 1` of a 3-epoch one-cycle run): it
    # can go on, and --force, the one way named, threw it away
    steps = state["steps_per_epoch"]
    torch.save({**state, "scheduler": {**state["scheduler"], "total_steps": 3 * steps}}, run / "last.pt")
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 2 and result.err == (
        f"mde: error: {run}: the folder holds a run (last.pt), 1 of its one-cycle schedule's 3 epochs trained: "
        f"continue it with --resume {run / 'last.pt'} --epochs 3, or start anew over it with --force\n"), result.err
    torch.save({**state, "epoch": 0, "step": 3, "epoch_step": 3}, run / "last.pt")  # as after a Ctrl-C mid-epoch
    from mde.train import trainer

    built = []  # said before a model is built: with --pretrained, its weights were downloaded first
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "build_model", lambda *args, **kwargs: built.append(1) or pytest.fail("built"))
        result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert not built
    assert result.code == 2 and result.err == (
        f"mde: error: {run}: the folder holds a run (last.pt), 0 of its 1 epochs trained: continue it with --resume "
        f"{run / 'last.pt'}, or start anew over it with --force\n")
    torch.save({**state, "epoch": 0, "step": 3, "epoch_step": 1, "world_size": 2, "steps_per_epoch": 3},
               run / "last.pt")  # stopped under torchrun: plain `mde train --resume` was refused, on 1 process
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 2 and "continue it with torchrun --nproc-per-node 2 -m mde.train --resume " in result.err


def test_force_belongs_to_the_command_that_types_it(cli, synth_data, tmp_path, monkeypatch):
    """A run started with --force, resumed into another folder, must not empty that folder unasked; a new run
    with --force replaces the old run whole with its first write (stopped after it, never one run's best.pt
    beside another's; failing before it, the old run stays)."""
    import torchvision

    from mde.train import trainer

    first = tmp_path / "first"
    assert cli("train", "--data", synth_data, "--out", first, *TINY, "--epochs", "1", "--force",
               "--schedule", "cyclic").code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "best.pt").write_bytes(b"another run's")
    res = cli("train", "--resume", first / "last.pt", "--out", victim, "--epochs", "2")
    assert res.code == 2 and "output folder is not empty (use --force to overwrite)" in res.err, res.err
    assert (victim / "best.pt").read_bytes() == b"another run's"
    (first / "notes.txt").write_text("mine")

    saved = trainer.save_checkpoint

    def stopped_after_the_first_save(job, state, path, training_state=True):
        saved(job, state, path, training_state)
        raise KeyboardInterrupt

    partial = tmp_path / "partial.pth"  # refused once loaded: the old run must still be there
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("layer4")},
               partial)
    res = cli("train", "--data", synth_data, "--out", first, *TINY, "--epochs", "1", "--force",
              "--backbone-weights", partial)
    assert res.code == 2 and "incomplete resnet18 weights" in res.err and (first / "last.pt").is_file()
    monkeypatch.setattr(trainer, "save_checkpoint", stopped_after_the_first_save)
    res = cli("train", "--data", synth_data, "--out", first, *TINY, "--epochs", "1", "--force",
              "--checkpoint-every", "1")
    assert res.code == 130
    # the old run's files went with the new run's first write, not the user's
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "last.pt", "notes.txt"]
    assert torch.load(first / "last.pt", weights_only=True)["epoch_step"] == 1
    # an epoch's end whose first write is metrics.jsonl (no better val RMSE: no best.pt): it stays
    res = cli("train", "--data", synth_data, "--out", first, *TINY, "--epochs", "2", "--force", "--val-every", "2")
    assert res.code == 130
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "curves.png", "last.pt", "metrics.jsonl",
                                                       "notes.txt"]


def test_ctrl_c_while_force_removes_the_old_run_waits_for_the_new_runs_first_checkpoint(cli, synth_data, tmp_path,
                                                                                         monkeypatch):
    """The first mid-epoch checkpoint removed the old run's files one by one with Ctrl-C let through: stopped
    half-way, the folder kept the old config.json, metrics.jsonl and pictures, and no checkpoint at all."""
    import signal

    from mde.train import report

    run = tmp_path / "run"
    assert cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1").code == 0
    remove = report.remove_run_files

    def ctrl_c_half_way(out):
        (out / "best.pt").unlink()
        signal.raise_signal(signal.SIGINT)  # as a terminal sends it: the handler runs at once
        remove(out)

    monkeypatch.setattr(report, "remove_run_files", ctrl_c_half_way)
    res = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1", "--force", "--checkpoint-every", "1")
    assert res.code == 130, res.err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt"]  # the new run's, resumable
    assert torch.load(run / "last.pt", weights_only=True)["epoch_step"] == 1


def test_a_checkpoint_carries_only_its_own_validation(tmp_path, synth_data, monkeypatch):
    """An epoch --val-every skipped gets no metrics in last.pt: export would stamp an earlier epoch's on it."""
    from mde.train import trainer

    saved = trainer.save_checkpoint

    def stop_after_epoch_1(job, state, path, training_state=True):
        saved(job, state, path, training_state)
        if path.name == "last.pt" and state.epoch == 1 and state.epoch_step == 0:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    trainer.train(tiny_config(synth_data, out, epochs=1, checkpoint_every=0))
    first = torch.load(out / "last.pt", weights_only=False)
    assert first["metrics"]["rmse"] > 0  # validated: its own figures
    monkeypatch.setattr(trainer, "save_checkpoint", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(synth_data, tmp_path / "skip", epochs=3, val_every=2, checkpoint_every=1))
    skipped = torch.load(tmp_path / "skip" / "last.pt", weights_only=False)
    assert skipped["epoch"] == 1 and skipped["metrics"] == {}


def test_a_run_whose_output_saturates_at_one_depth_is_warned_of_once(cli, synth_data, tmp_path):
    """--lr-max 100 drives the sigmoid head to 0 m or its maximum at nearly every pixel: the run ended as a success
    with a model of one or two depths, which export and predict then took. A trained model is not warned of."""
    res = cli("train", "--data", synth_data, "--out", tmp_path / "hot", *TINY, "--epochs", "2", "--lr-min", "100",
              "--lr-max", "100", "--weight-decay", "0")
    assert res.code == 0, res.err
    assert res.err.count("warning: ") == 1 and re.search(r"warning: epoch 1: the model predicts (0 m|20 m|0 m or 20 m), "
                                                         r"(an end|the ends) of its range, at \d+% of the pixels of the first "
                                                         r"val images: its output has saturated", res.err), res.err
    assert "smaller --lr-max (now 100)" in res.err
    res = cli("train", "--data", synth_data, "--out", tmp_path / "fine", *TINY, "--epochs", "1")
    assert res.code == 0 and "warning" not in res.err, res.err


def test_a_diverging_run_saves_no_nan_weights(cli, synth_data, tmp_path):
    run = tmp_path / "run"
    res = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1", "--schedule", "cyclic",
              "--lr-min", "1e11", "--lr-max", "1e12", "--weight-decay", "0", "--checkpoint-every", "1")
    assert res.code == 1 and "training diverged" in res.err
    assert ("--force to reuse this folder" in res.err) == (run.is_dir() and any(run.iterdir())), res.err
    if (run / "last.pt").exists():  # one written before the weights went bad
        weights = torch.load(run / "last.pt", weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_partial_backbone_weights_are_refused(cli, synth_data, tmp_path):
    """Only conv1/bn1 given: layer1.. would start random, and be frozen so by --freeze-stages."""
    import torchvision

    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items()
                if k.startswith(("conv1.", "bn1."))}, partial)
    res = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1",
              "--backbone-weights", partial, "--freeze-stages", "3")
    assert res.code == 2 and res.err.strip() == (
        f"mde: error: {partial}: incomplete resnet18 weights: 95 encoder tensors missing "
        "(e.g. layer1.0.conv1.weight)"), res.err
    weights = torchvision.models.resnet18().state_dict()
    weights["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    nan, deeper, pipe = tmp_path / "nan.pth", tmp_path / "r34.pth", tmp_path / "pipe.pth"
    torch.save(weights, nan)  # trained from, it diverged after an epoch, blamed on --lr-max (exit 1)
    torch.save(torchvision.models.resnet34().state_dict(), deeper)
    os.mkfifo(pipe)  # was "not found"
    for weights_file, said in ((nan, "non-finite weights (NaN or infinity) in layer2.0.conv1.weight"),
                               (deeper, "not a torchvision resnet18 state dict (96 mismatched keys, e.g. layer1.2."),
                               (pipe, "expected a torchvision ResNet .pth file, found a pipe")):
        res = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1",
                  "--backbone-weights", weights_file)
        assert res.code == 2 and res.err.startswith(f"mde: error: {weights_file}: {said}"), res.err
        assert res.err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_last_pt_is_the_last_file_an_epoch_writes(tmp_path, synth_data, monkeypatch):
    """A run killed as soon as its final last.pt is written has the final epoch in metrics.jsonl and
    curves.png too: a resume would refuse ("already trained"), so nothing could write them later."""
    from mde.train import trainer

    saved = trainer.save_checkpoint

    def killed_after_last_pt(job, state, path, training_state=True):
        saved(job, state, path, training_state)
        if path.name == "last.pt" and state.epoch == job.cfg.epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", killed_after_last_pt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(synth_data, out, epochs=2, checkpoint_every=0))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["epoch"] for r in torch.load(out / "last.pt", weights_only=False)["records"]] == [1, 2]
    assert (out / "curves.png").stat().st_size > 0


def test_a_resume_onto_other_data_chooses_best_pt_again(cli, synth_data, tmp_path, monkeypatch):
    """best.pt was chosen by comparing val RMSEs of two val sets: an epoch on the old data, easier here, stayed
    "best" after the resume onto other data, and best.pt held weights never validated on it."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(synth_data, other)
    first = sorted((other / "val" / "rgb").iterdir())[0]
    first.unlink()
    for folder in ("depth", "mask"):
        (other / "val" / folder / f"{first.stem}.png").unlink(missing_ok=True)
    for path in (other / "val" / "depth").glob("*.png"):  # a deeper val set: every RMSE on it is larger
        Image.fromarray((np.asarray(Image.open(path), dtype=np.float64) * 1.8).astype(np.uint16)).save(path)
    run = tmp_path / "run"
    assert cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1", "--schedule", "cyclic").code == 0
    result = cli("train", "--resume", run / "last.pt", "--data", other, "--epochs", "2", "--json")
    assert result.code == 0, result.err
    assert f"note: the resumed run validated on other val depth than this run reads (it had --data {synth_data}, " \
        "--depth-scale unset); best.pt is chosen again from epoch 2 on" in result.err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["val_rmse"] < records[1]["val_rmse"]  # the old data's figure would have stayed best
    assert json.loads(result.out)["best"]["epoch"] == 2
    assert torch.load(run / "best.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    # the same data moved (a copy elsewhere, re-encoded), resumed into another folder, where epoch 3 does worse:
    # no new choice, and run2 gets run's best.pt, the best of the epochs on this data (epoch 1 is lower, elsewhere)
    shutil.copytree(other, tmp_path / "moved")
    for path in (tmp_path / "moved" / "val" / "depth").glob("*.png"):
        Image.open(path).save(path, compress_level=0)
    import mde.train.trainer as trainer

    validate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda job, *args: {**validate(job, *args), "rmse": 1e6})
    result = cli("train", "--resume", run / "last.pt", "--data", tmp_path / "moved", "--out", tmp_path / "run2",
                 "--epochs", "3", "--json")
    assert result.code == 0 and "other val depth" not in result.err and "is not the resumed run's best" not in \
        result.err, result.err
    assert json.loads(result.out)["best"]["epoch"] == 2
    assert torch.load(tmp_path / "run2" / "best.pt", map_location="cpu", weights_only=False)["epoch"] == 2


def test_resume_rejects_conflicting_flags_and_foreign_checkpoints(cli, tmp_path, synth_data, tiny_run,
                                                                  tiny_checkpoint):
    last = tiny_run[0] / "last.pt"
    res = cli("train", "--data", synth_data, "--out", tmp_path / "r", "--resume", last, "--lr-max", "0.5")
    assert res.code == 2 and f"{last}: --lr-max 0.5 conflicts with the resumed checkpoint" in res.err
    # tiny_run is one-cycle over 2 epochs: a third would step past its schedule's end
    before = (last.read_bytes(), (tiny_run[0] / "metrics.jsonl").read_bytes())
    res = cli("train", "--data", synth_data, "--out", tiny_run[0], "--resume", last, "--epochs", "3")
    assert res.code == 2 and "more than this one-cycle run's schedule" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and str(last) in res.err
    assert (last.read_bytes(), (tiny_run[0] / "metrics.jsonl").read_bytes()) == before
    # tiny_run has trained all of its 2 epochs
    res = cli("train", "--data", synth_data, "--out", tiny_run[0], "--resume", last)
    assert res.code == 2 and "already trained 2 of --epochs 2; nothing to resume" in res.err, res.err
    res = cli("train", "--resume", last, "--epochs", "0")  # the option's fault, not the checkpoint's
    assert res.code == 2 and res.err == "mde: error: --epochs must be >= 1, got 0\n", res.err
    # into another folder: it must be empty, as for a new run (from a copy that stopped after epoch 1)
    state = torch.load(last, map_location="cpu", weights_only=True)
    torch.save({**state, "epoch": 1, "step": state["step"] // 2}, tmp_path / "half.pt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = cli("train", "--data", synth_data, "--out", tmp_path / "full", "--resume", tmp_path / "half.pt")
    assert res.code == 2 and "not empty" in res.err and sorted(os.listdir(tmp_path / "full")) == ["keep.txt"]
    # tiny_run crops: turning the crop off is refused though --no-scale-crop is the default
    res = cli("train", "--data", synth_data, "--out", tmp_path / "r", "--resume", last, "--no-scale-crop")
    assert res.code == 2 and "--no-scale-crop conflicts with the resumed checkpoint's --scale-crop" in res.err
    res = cli("train", "--data", synth_data, "--out", tmp_path / "r", "--resume", tiny_checkpoint)
    assert res.code == 2 and "cannot resume" in res.err
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(last.read_bytes()[:1000])
    res = cli("train", "--data", synth_data, "--out", tmp_path / "r", "--resume", bad)
    assert res.code == 2 and "corrupt" in res.err


# -- config ---------------------------------------------------------------------------------------
def test_freeze_auto_follows_the_starting_weights():
    assert TrainConfig().frozen_stages == 3                       # report: ImageNet + 3 frozen
    assert TrainConfig(pretrained=False).frozen_stages == 0       # from scratch: nothing frozen
    assert TrainConfig(pretrained=False, backbone_weights="w.pth").frozen_stages == 3
    assert TrainConfig(pretrained=False, freeze_stages=0, backbone_weights="w.pth").frozen_stages == 0


def test_bad_data_found_mid_epoch_leaves_no_folder_and_spares_an_old_run(cli, tmp_path, synth_data, tiny_run):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    image = sorted((data / "train" / "rgb").iterdir())[5]
    image.write_bytes(image.read_bytes()[:200])  # found only when the loader reads it
    res = cli("train", "--data", data, "--out", tmp_path / "new", *TINY, "--epochs", "1")
    assert res.code == 2 and image.name in res.err
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    shutil.copytree(tiny_run[0], old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    res = cli("train", "--data", data, "--out", old, "--force", *TINY, "--epochs", "1", "--lr-max", "1e-3")
    assert res.code == 2 and image.name in res.err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # config.json, metrics.jsonl untouched


def test_a_train_depth_map_with_no_valid_pixel_is_trained_past_and_a_val_one_refused(cli, tmp_path, synth_data,
                                                                                     tiny_export):
    """A sparse LiDAR frame with no return in view stopped training mid-epoch ("depth map has no valid pixel"),
    and eval's per-pixel mean map too; the loss leaves invalid pixels out. A scored (val) one is still refused."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    empty = sorted((data / "train" / "depth").iterdir())[3]
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(empty)
    res = cli("train", "--data", data, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert res.code == 0 and empty.name not in res.err, res.err
    scored = cli("eval", tmp_path / "run" / "best.pt", "--data", data, "--json")
    assert scored.code == 0 and "pixel_mean_map" in json.loads(scored.out), scored.err
    for holdout in (4, 16):  # the map among the calibration images, then among the held-out ones (their check skips it)
        calibrated = cli("calibrate", tiny_export / "model.onnx", "--data", data, "--out", tmp_path / f"q{holdout}.onnx",
                         "--num-images", 8, "--holdout-images", holdout, "--allow-few", "--max-float-nodes", 0)
        assert calibrated.code == 0, calibrated.err
    val_empty = sorted((data / "val" / "depth").iterdir())[0]
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(val_empty)
    refused = cli("eval", tmp_path / "run" / "best.pt", "--data", data)
    assert refused.code == 2 and refused.err.strip() == (f"mde: error: {val_empty}: depth map has no valid pixel (all "
                                                         "0, NaN or negative): it cannot be scored"), refused.err


def test_a_mismatched_train_pair_is_found_before_the_run_folder(cli, tmp_path, synth_data, tiny_run):
    """Found mid-epoch, after a mid-epoch checkpoint, it left a new run folder behind, or with --force had
    already replaced the old run by a 0-epoch one. The headers of every train pair are read first."""
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    depth = sorted((data / "train" / "depth").iterdir())[-1]  # the last pair: read last, if at all, by an epoch
    Image.open(depth).resize((32, 32)).save(depth)
    old = tmp_path / "old"
    shutil.copytree(tiny_run[0], old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    for out, force in ((tmp_path / "new", []), (old, ["--force"])):
        res = cli("train", "--data", data, "--out", out, *force, *TINY, "--epochs", "1", "--checkpoint-every", "1")
        assert res.code == 2 and res.err.endswith(
            f"mde: error: {depth}: depth map is 32x32 but its image is 64x64 (width x height)\n"), res.err
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


def test_an_older_configs_depth_scale_of_1000_reads_as_the_formats_own():
    """Configs written before --depth-scale could be unset saved 1000 for "the default": an NYU run resumes."""
    assert TrainConfig.from_dict({"data": "nyu.mat", "depth_scale": 1000.0}).depth_scale is None
    assert TrainConfig.from_dict({"data": "d", "depth_scale": 256.0}).depth_scale == 256.0
    from mde.train.config import merge_resume

    saved = TrainConfig(data="d", out="o", pretrained=False)  # depth_scale None
    cli = TrainConfig(data="d", out="o", resume="o/last.pt", depth_scale=1000.0)
    assert merge_resume(cli, saved, given={"depth_scale"}).depth_scale == 1000.0  # no conflict; typed, it stands


def test_merge_resume_keeps_the_checkpoint_config():
    from mde.errors import InputError
    from mde.train.config import merge_resume

    saved = TrainConfig(data="d", out="o", lr_max=5e-3, epochs=2, pretrained=False)
    merged = merge_resume(TrainConfig(data="d2", out="o2", epochs=4, resume="o/last.pt"), saved)
    assert (merged.lr_max, merged.epochs, merged.data, merged.pretrained) == (5e-3, 4, "d2", False)
    with pytest.raises(InputError, match="conflicts"):
        merge_resume(TrainConfig(data="d", out="o", backbone="resnet34", resume="x"), saved)
    with pytest.raises(InputError, match="conflicts with the resumed checkpoint's --backbone-weights unset;"):
        merge_resume(TrainConfig(data="d", out="o", backbone_weights="w.pth", resume="x"), saved)  # read "weights ;"
    # recorded absolute, typed relative (or the other way, in an older run): one file, no conflict
    from_weights = TrainConfig(data="d", out="o", pretrained=False, backbone_weights=os.path.abspath("w.pth"))
    assert merge_resume(TrainConfig(data="d", out="o", backbone_weights="w.pth", resume="x"),
                        from_weights).backbone_weights == os.path.abspath("w.pth")
    with pytest.raises(InputError, match="conflicts"):
        merge_resume(TrainConfig(data="d", out="o", backbone_weights="v.pth", resume="x"), from_weights)
    # a value no run could use is said as a new run says it, not as a conflict ("--object-weight nan conflicts")
    for name, value, said in (("object_weight", float("nan"), "--object-weight must be in"),
                              ("lr_max", float("inf"), "--lr-max must be a finite number"),
                              ("decoder", "foo", "unknown --decoder 'foo'")):
        with pytest.raises(InputError, match=said):
            merge_resume(TrainConfig(data="d", out="o", resume="x", **{name: value}), saved)
    with pytest.raises(InputError, match="--pretrained conflicts with the resumed checkpoint's --no-pretrained"):
        merge_resume(TrainConfig(data="d", out="o", resume="x", pretrained=True), saved, given={"pretrained"})
    # a value that only clashes with the checkpoint's other options is a conflict: "pass --freeze-stages 0" (a new
    # run's advice) was refused in turn as a conflict
    with pytest.raises(InputError, match="--freeze-stages 2 conflicts with the resumed checkpoint's --freeze-stages"):
        merge_resume(TrainConfig(data="d", out="o", resume="x", freeze_stages=2), saved)


def test_merge_resume_counts_given_options_even_at_their_default():
    """`mde train --resume R --no-scale-crop` on a crop run is refused, `--epochs 20` applies: the CLI names what was typed."""
    from mde.errors import InputError
    from mde.train.config import merge_resume

    saved = TrainConfig(data="d", out="o", epochs=2, pretrained=False, scale_crop=True)
    cli = TrainConfig(data="d", out="o", resume="o/last.pt")  # every other option at its default
    assert merge_resume(cli, saved).scale_crop                 # nothing given: the checkpoint's
    with pytest.raises(InputError, match="--no-scale-crop conflicts with the resumed checkpoint's --scale-crop"):
        merge_resume(cli, saved, given={"data", "out", "resume", "scale_crop"})
    assert merge_resume(cli, saved).epochs == 2
    assert merge_resume(cli, saved, given={"epochs"}).epochs == 20
    assert merge_resume(cli, saved, given={"decoder"}) == merge_resume(cli, saved)  # given, and the same as saved
    # "auto" typed again (the original command plus --resume): the checkpoint holds what it resolved to
    resolved = TrainConfig(data="d", out="o", pretrained=False, max_depth=20.0, freeze_stages=0)
    assert merge_resume(cli, resolved, given={"max_depth", "freeze_stages"}).max_depth == 20.0


def test_training_without_matplotlib_skips_the_figures(tmp_path, synth_data, monkeypatch, caplog):
    """A bare GPU image has no matplotlib: training still runs and says what it left out."""
    import logging

    from mde.train import report, trainer

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report.can_plot.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="mde"):
            result = trainer.train(tiny_config(synth_data, tmp_path / "run", checkpoint_every=0))
    finally:
        report.can_plot.cache_clear()
    assert result["epochs"] == 1 and (tmp_path / "run" / "best.pt").is_file()
    assert not (tmp_path / "run" / "curves.png").exists() and not (tmp_path / "run" / "samples.png").exists()
    assert any("matplotlib is not installed" in r.getMessage() for r in caplog.records)


def test_reference_lists_the_options_a_resume_may_change():
    """docs/reference.md names exactly `RESUME_OVERRIDES` (less --resume itself)."""
    from mde.train.config import RESUME_OVERRIDES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()
    sentence = doc[doc.index("Only\n`--data`"):doc.index("may change;")]
    named = set(re.findall(r"`--([a-z-]+)`", sentence))
    assert named == {k.replace("_", "-") for k in RESUME_OVERRIDES} - {"resume"}


_DDP_HARD_EXIT = """
import os, time
import mde.train.loader as loader
_batches = loader.batches
def _first_batch(data):
    if os.environ.get("RANK") == "1":
        os._exit(1)  # dies at once: no cleanup of its own runs
    time.sleep(120)  # rank 0 is in Python code when torchrun's SIGTERM comes
    yield from _batches(data)
loader.batches = _first_batch
"""


@pytest.mark.slow
def test_ddp_a_rank_that_dies_leaves_no_run_folder(tmp_path, synth_data):
    """Rank 1 dies before any checkpoint; torchrun stops rank 0 with SIGTERM, and rank 0 exits through
    Python and removes the run folder it created, instead of leaving it empty."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(_DDP_HARD_EXIT)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mde.train", "--data", str(synth_data), "--out", str(run), *TINY, "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(spy), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and time.monotonic() - started < 100, done.stderr[-3000:]
    assert not run.exists(), sorted(p.name for p in run.iterdir())


def test_resume_into_another_folder_keeps_the_history_and_the_best_pt_its_records_name(cli, synth_data, tmp_path,
                                                                                      cyclic_run):
    """The resumed run's earlier epochs come along, and the best checkpoint named is one that exists. Where no
    new epoch beat the resumed run's best, the new folder had no best.pt, though its --json named that epoch as
    the best (and the run folder promises one): it gets that run's best.pt, where that file is the best epoch."""
    run, out = _copy_run(cyclic_run, tmp_path / "first"), tmp_path / "more"
    result = cli("train", "--resume", run / "last.pt", "--data", synth_data, "--out", out, "--epochs", "2")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    best = min(records, key=lambda r: r["val_rmse"])
    assert result.out.strip().splitlines()[-1].startswith(f"best epoch {best['epoch']}: rmse {best['val_rmse']:.4f}")
    assert result.out.strip().endswith(f"-> {out / 'best.pt'}") and torch.load(
        out / "best.pt", weights_only=True)["epoch"] == best["epoch"]

    state = torch.load(run / "last.pt", weights_only=True)  # a first epoch no later one can beat
    state["best_rmse"] = state["records"][0]["val_rmse"] = 1e-3
    torch.save(state, run / "last.pt")
    result = cli("train", "--resume", run / "last.pt", "--data", synth_data, "--out", tmp_path / "again",
                 "--epochs", "2", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["best"]["epoch"] == 1
    assert (tmp_path / "again" / "best.pt").read_bytes() == (run / "best.pt").read_bytes()
    best = torch.load(run / "best.pt", weights_only=True)  # one that is not the best epoch: not copied, and said
    best["epoch"] = 7
    torch.save(best, run / "best.pt")
    result = cli("train", "--resume", run / "last.pt", "--data", synth_data, "--out", tmp_path / "third",
                 "--epochs", "2")
    assert result.code == 0 and not (tmp_path / "third" / "best.pt").exists(), result.err
    assert f"note: {run / 'best.pt'} is not the resumed run's best epoch (1)" in result.err
    # only last.pt carried to another machine, resumed in its folder: exit 0, no best.pt, and its path printed
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copyfile(run / "last.pt", moved / "last.pt")  # epoch 1, the best: its weights become best.pt
    result = cli("train", "--resume", moved / "last.pt", "--data", synth_data, "--epochs", "2")
    assert result.code == 0 and result.out.strip().endswith(f"-> {moved / 'best.pt'}"), result.out + result.err
    kept = torch.load(moved / "best.pt", weights_only=True)
    assert kept["epoch"] == 1 and "optimizer" not in kept
    assert all(torch.equal(kept["model"][k], state["model"][k]) for k in state["model"])


def test_a_resume_at_an_epoch_end_on_another_number_of_processes_is_said(cli, synth_data, tmp_path, cyclic_run):
    """Trained under torchrun on 2 processes, resumed with plain mde train: the batch of each step halved, the steps
    per epoch doubled, without a word."""
    run = _copy_run(cyclic_run, tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    torch.save({**state, "world_size": 2}, run / "last.pt")
    result = cli("train", "--resume", run / "last.pt", "--epochs", "2")
    assert result.code == 0, result.err
    assert f"note: {run / 'last.pt'} trained on 2 process(es), batches of 8; it goes on on 1, batches of 4" \
        in result.err


def test_a_diverged_run_stops_with_one_line_and_saves_no_nan_weights(cli, synth_data, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "2",
                 "--lr-max", "1e12", "--lr-min", "1e11", "--weight-decay", "0", "--json")  # diverges, not refused
    assert result.code == 1 and not result.out, result.out
    assert result.err.strip().splitlines()[-1] == (
        f"mde: error: {run}: training diverged: the loss or the weights became NaN or infinite in epoch 1; start "
        "again with a lower --lr-max than 1e+12")
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_eval_of_a_nan_model_is_refused_naming_it(cli, tiny_checkpoint, synth_data, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.dim() == 4)
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    result = cli("eval", broken, "--data", synth_data, "--json")
    assert result.code == 2 and not result.out
    assert result.err.strip().splitlines()[-1].startswith(f"mde: error: {broken}: the model predicts NaN or infinite")
    good = cli("eval", tiny_checkpoint, "--data", synth_data, "--json")
    assert good.code == 0 and "evaluate" in good.err and json.loads(good.out)["images"] == 8  # progress on stderr


def test_eval_of_an_onnx_that_predicts_nan_names_the_images(cli, tiny_export, synth_data, tmp_path):
    """The runtime refuses the output of the batch; eval says which images it held, as for a checkpoint."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_export / "model.onnx"))
    bias = [n for n in model.graph.node if n.op_type == "Conv"][-1].input[2]
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == bias:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                np.full_like(numpy_helper.to_array(tensor), np.nan), bias))
    broken = tmp_path / "nan.onnx"
    onnx.save(model, str(broken))
    result = cli("eval", broken, "--data", synth_data, "--batch-size", 4)
    assert result.code == 2, result.err
    assert re.fullmatch(rf"mde: error: {re.escape(str(broken))}: the model predicts NaN or infinite depth: a diverged "
                        r"or broken model \(one of images \S+ to \S+\)", result.err.strip().splitlines()[-1]), result.err


def test_a_folder_without_meta_json_needs_max_depth_and_is_scored_at_the_models_range(tmp_path, synth_data, cli):
    """A folder of one's own data (no meta.json) has no known depth range: training asks for --max-depth
    instead of capping the model at a guessed 20 m, and eval takes the model's range as the SSIM range."""
    import shutil

    data = tmp_path / "mine"
    shutil.copytree(synth_data, data)
    (data / "meta.json").unlink()
    refused = cli("train", "--data", data, "--out", tmp_path / "r0", "--backbone", "resnet18", "--image-size", "64",
                  "--epochs", "1", "--batch-size", "4", "--no-pretrained", "--workers", "0")
    assert refused.code == 2 and "pass --max-depth METRES" in refused.err and "Traceback" not in refused.err
    assert not (tmp_path / "r0").exists()
    (data / "meta.json").write_text('{"max_depth": 1e5}')  # a typo: it would be the model's output range
    refused = cli("train", "--data", data, "--out", tmp_path / "r0", *TINY, "--epochs", "1")
    assert refused.code == 2 and refused.err.strip() == (
        f"mde: error: {data / 'meta.json'}: max_depth 100000 m is beyond what the model's output can hold "
        "(10000 m); pass --max-depth METRES")
    assert not (tmp_path / "r0").exists()
    (data / "meta.json").unlink()

    from mde.train.trainer import train

    result = train(tiny_config(data, tmp_path / "run", max_depth=30.0, checkpoint_every=0))
    scored = cli("eval", tmp_path / "run" / "best.pt", "--data", data, "--json")
    assert scored.code == 0, scored.err
    assert json.loads(scored.out)["ssim"] == pytest.approx(result["best"]["ssim"], abs=1e-5)  # range 30 both


def test_resume_needs_neither_data_nor_out(cli, tmp_path, synth_data, cyclic_run):
    """`mde train --resume RUN/last.pt` alone continues the run: the dataset from its config, the run folder
    the checkpoint is in (also after the folder was moved); without --resume both are required."""
    assert "missing option '--data'" in cli("train", "--out", tmp_path / "x", *TINY).err
    assert "missing option '--out'" in cli("train", "--data", synth_data, *TINY).err
    _copy_run(cyclic_run, tmp_path / "moved")  # a run trained in another folder, then moved
    resumed = cli("train", "--resume", tmp_path / "moved" / "last.pt", "--epochs", "2", "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out)["run"] == str(tmp_path / "moved")
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # and the folder it was trained in was not written to:
    assert len((cyclic_run / "metrics.jsonl").read_text().splitlines()) == 1
    # a checkpoint copied under another name into another run's folder: that run's best.pt was replaced unasked
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.pt").write_bytes(b"another run's")
    shutil.copyfile(cyclic_run / "last.pt", other / "runB.pt")
    result = cli("train", "--resume", other / "runB.pt", "--epochs", "2")
    assert result.code == 2 and result.err == (
        f"mde: error: {other}: the resumed checkpoint runB.pt is not this folder's last.pt or best.pt, so its best.pt "
        "may be another run's; resume with --out NEW_FOLDER, or with --force to replace them\n")
    assert sorted(p.name for p in other.iterdir()) == ["best.pt", "runB.pt"]
    assert (other / "best.pt").read_bytes() == b"another run's"


def test_more_torchrun_processes_than_gpus_are_refused_before_the_process_group(monkeypatch):
    """`torchrun --nproc-per-node 2 -m mde.train --device cuda` on a one-GPU machine put both ranks on cuda:0,
    which NCCL fails in its first collective ("Duplicate GPU detected"), after the data had loaded."""
    from mde.errors import BackendError
    from mde.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed.dist, "init_process_group", None)  # reached: a TypeError, not the refusal
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BackendError, match=r"torchrun starts 2 processes on this machine, and it has 1 CUDA GPU\(s\)"
                                           r".*use --nproc-per-node 1, or --device cpu"):
        distributed.setup("cuda")
    distributed.check_one_gpu_per_process(2)  # one GPU each: goes on
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two machines, one process and one GPU each
    distributed.check_one_gpu_per_process(1)


def test_a_mid_epoch_resume_on_fewer_steps_per_epoch_is_refused():
    """Stopped at step 3 of an epoch, resumed on half the data (2 steps an epoch): the epoch was counted as done
    with no step trained (the progress bar at 3/2)."""
    from mde.errors import InputError
    from mde.train.config import check_resume

    cfg = tiny_config("data", "run", epochs=2, resume="run/last.pt")
    stopped = {"epoch": 0, "epoch_step": 3, "scheduler": {}}
    check_resume(cfg, stopped, steps_per_epoch=4)  # the same data: goes on
    with pytest.raises(InputError, match="stopped at step 3 of an epoch, and its data now gives 2 steps per epoch"):
        check_resume(cfg, stopped, steps_per_epoch=2)
    # stopped mid-epoch under torchrun on 2 processes, resumed on 1: the rest of the epoch went on in silence over
    # the one process's shuffle, training some images twice and skipping others
    on_two = {**stopped, "world_size": 2}
    check_resume(cfg, on_two, steps_per_epoch=4, world_size=2)
    with pytest.raises(InputError, match=r"stopped at step 3 of an epoch on 2 processes, .* resume it on 2 "
                                         r"\(torchrun --nproc-per-node 2; 1: plain mde train\), not 1"):
        check_resume(cfg, on_two, steps_per_epoch=4, world_size=1)
    check_resume(cfg, {**on_two, "epoch_step": 0}, steps_per_epoch=4, world_size=1)  # at an epoch's end: any number


def test_a_one_cycle_resume_that_cannot_fit_says_why():
    """A run trained under torchrun on 2 processes and resumed on 1 was told that "--epochs 2" (which nobody typed)
    needs more steps than its schedule; a run stopped short by a smaller --epochs was called finished."""
    from mde.errors import InputError
    from mde.train.config import check_resume

    cfg = tiny_config("data", "run", epochs=2, resume="run/last.pt", schedule="onecycle")
    two_processes = {"epoch": 1, "epoch_step": 0, "step": 24, "scheduler": {"total_steps": 48},
                     "steps_per_epoch": 24, "world_size": 2}
    check_resume(cfg, two_processes, steps_per_epoch=24)  # as it was trained: goes on
    with pytest.raises(InputError, match=r"this one-cycle run trained at 24 steps per epoch on 2 processes, and its "
                                         r"data now gives 48, too many for the 24 steps its schedule has left: "
                                         r".*number of processes \(torchrun --nproc-per-node\)"):
        check_resume(cfg, two_processes, steps_per_epoch=48)
    older = {k: v for k, v in two_processes.items() if k not in ("steps_per_epoch", "world_size")}
    with pytest.raises(InputError, match=r"--epochs 2 needs 48 more steps \(48 per epoch\), more than this "
                                         r"one-cycle run's schedule has left \(24 of 48\)"):
        check_resume(cfg, older, steps_per_epoch=48)  # a checkpoint from before the count was saved
    # a 2-epoch schedule resumed once with --epochs 1, then again
    shortened = tiny_config("data", "run", epochs=1, resume="run/last.pt", schedule="onecycle")
    with pytest.raises(InputError, match=r"nothing to resume \(its one-cycle schedule runs to epoch 2: --epochs 2 "
                                         r"continues it\)"):
        check_resume(shortened, two_processes, steps_per_epoch=24)
    with pytest.raises(InputError, match=r"a finished one-cycle run cannot go on"):  # 6 steps an epoch on 2 now:
        check_resume(shortened, {**two_processes, "step": 48}, steps_per_epoch=12)  # none left, whatever the rate
    # trained 1 epoch of 6 steps on 1 process, resumed on 2 (3 an epoch): the hint said --epochs 2, which stepped
    # the schedule past its end (ValueError); the steps taken count now
    one = {"epoch": 1, "epoch_step": 0, "step": 6, "scheduler": {"total_steps": 6}, "steps_per_epoch": 6,
           "world_size": 1}
    with pytest.raises(InputError, match=r"a finished one-cycle run cannot go on"):
        check_resume(shortened, one, steps_per_epoch=3)
    # 1 of 3 epochs of 6 steps on 1 process, resumed on 2 processes (or on half the data): 3 steps an epoch ended
    # the run at step 12 of its 18, the learning rate near its peak, without a word
    three = tiny_config("data", "run", epochs=3, resume="run/last.pt", schedule="onecycle")
    one_of_three = {**one, "scheduler": {"total_steps": 18}}
    check_resume(three, one_of_three, steps_per_epoch=6)
    with pytest.raises(InputError, match=r"this one-cycle run trained at 6 steps per epoch on 1 process, and its data "
                                         r"now gives 3, so its epochs would end 6 steps before its schedule does"):
        check_resume(three, one_of_three, steps_per_epoch=3)
    # stopped mid-epoch at step 3 of 6, resumed on data of 3 steps: an epoch of no step
    cyclic = tiny_config("data", "run", epochs=3, resume="run/last.pt", schedule="cyclic")
    mid = {"epoch": 1, "epoch_step": 3, "step": 9, "scheduler": {}, "steps_per_epoch": 6, "world_size": 1}
    check_resume(cyclic, mid, steps_per_epoch=6)
    with pytest.raises(InputError, match=r"this run stopped at step 3 of an epoch of 6 steps on 1 process, and its "
                                         r"data now gives 3: the dataset or the number of processes"):
        check_resume(cyclic, mid, steps_per_epoch=3)


def test_more_workers_than_cpus_is_one_note_not_torchs_warnings(cli, synth_data, tmp_path):
    import os
    import warnings

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = cpus + 1
    with warnings.catch_warnings(record=True) as caught:  # what a terminal would show (pytest keeps them)
        warnings.simplefilter("always")
        res = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1",
                  "--workers", str(workers))
    assert res.code == 0, res.err
    assert f"note: --workers {workers} is more than the {cpus} CPUs this process may use" in res.err
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]


def test_a_stop_while_the_samples_are_drawn_still_leaves_them(cli, synth_data, tmp_path, monkeypatch):
    """samples.png was drawn after the final last.pt, outside the epoch's set: a stop there left a finished run
    (nothing to resume) without it."""
    import signal

    from mde.train import report

    real = report.write_samples

    def stopped(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C as the picture is drawn
        real(*args, **kwargs)

    monkeypatch.setattr(report, "write_samples", stopped)
    run = tmp_path / "run"
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 130, result.err
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl", "samples.png"]


def test_val_masks_without_objects_give_null_not_nan_in_metrics_jsonl(cli, synth_data, tmp_path):
    """A region no val image shows has NaN figures: metrics.jsonl held a bare NaN (strict parsers refuse it) and
    the epoch line said "objects rmse nan"."""
    data = tmp_path / "structure-only"
    shutil.copytree(synth_data, data)
    for mask in (data / "val" / "mask").iterdir():
        values = np.asarray(Image.open(mask))
        Image.fromarray(np.where(values == 1, 0, values).astype(np.uint8)).save(mask)
    run = tmp_path / "run"
    result = cli("train", "--data", data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 0, result.err
    line = (run / "metrics.jsonl").read_text().splitlines()[0]
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))
    assert record["val_objects_images"] == 0 and record["val_objects_rmse"] is None
    assert "objects rmse" not in result.err and "val rmse" in result.err


def _recoded(data: Path, to: Path, scale: float | None) -> Path:
    """A copy of `data` with its depth maps written as 16-bit PNGs of `scale` units per metre, or as .npy metres."""
    import shutil

    from mde.runtime.images import read_depth

    shutil.copytree(data, to)
    for png in sorted(to.glob("*/depth/*.png")):
        metres = read_depth(png, png_scale=1000.0)
        png.unlink()
        if scale is None:
            np.save(png.with_suffix(".npy"), metres.astype(np.float32))
        else:
            Image.fromarray(np.round(metres * scale).astype(np.uint16)).save(png)
    meta = json.loads((to / "meta.json").read_text())
    del meta["depth_png_scale"]  # as a dataset of one's own: no scale declared
    (to / "meta.json").write_text(json.dumps(meta))
    return to


def test_a_resume_on_data_of_another_depth_encoding_reads_it_at_its_scale(cli, synth_data, tmp_path, cyclic_run):
    """--depth-scale belongs to the dataset: a resume onto KITTI-scaled PNGs refused it as a conflict, and without
    it read every depth at 1000 units per metre (0.256x); a checkpoint's scale stopped a resume onto .npy depth."""
    from mde.errors import InputError
    from mde.train.config import TrainConfig
    from mde.train.trainer import inherited_depth_scale

    kitti = _recoded(synth_data, tmp_path / "kitti", 256.0)
    run = _copy_run(cyclic_run, tmp_path / "first")
    resumed = cli("train", "--resume", run / "last.pt", "--data", kitti, "--depth-scale", "256",
                  "--out", tmp_path / "more", "--epochs", "2", "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads((tmp_path / "more" / "config.json").read_text())["depth_scale"] == 256.0
    metres = _recoded(synth_data, tmp_path / "npy", None)
    for data, kept in ((kitti, 256.0), (synth_data, None), (metres, None)):  # a checkpoint's 256 on each
        # (synth_data's meta.json declares 1000, which is read)
        assert inherited_depth_scale(TrainConfig(data=str(data), depth_scale=256.0)) == kept, data
    # the folder the run trained on, now declaring another scale than the run read it at: its depths would change
    # 3.9x in the middle of the run, with a note
    with pytest.raises(InputError, match=r"the resumed run read .* PNG depth at --depth-scale 256, and its meta.json "
                                         r"now declares 1000: correct meta.json, or start a new run"):
        inherited_depth_scale(TrainConfig(data=str(synth_data), depth_scale=256.0), str(synth_data))


def test_a_resume_onto_data_of_another_depth_range_says_ssim_changes_scale(cli, synth_data, tmp_path, cyclic_run):
    """SSIM's data range is the dataset's max_depth: the same weights scored 0.593 and 0.700 in one metrics.jsonl,
    without a word, after a resume onto a copy whose meta.json says 40 m."""
    data = tmp_path / "deeper"
    shutil.copytree(synth_data, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "max_depth": 40}))
    run = _copy_run(cyclic_run, tmp_path / "first")
    result = cli("train", "--resume", run / "last.pt", "--data", data, "--out", tmp_path / "more", "--epochs", "2")
    assert result.code == 0, result.err
    assert "note: this data's depth range (its meta.json's max_depth, else the model's) is 40 m, the resumed run's " \
        "was 20 m: SSIM from epoch 2 on is on another scale" in result.err, result.err


class _KillsItsWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer ends a worker


def test_a_killed_loader_worker_is_one_line_naming_workers():
    """torch's "DataLoader worker (pid 1495) is killed by signal: Killed." was an internal error (exit 1 with no
    advice)."""
    from mde.errors import MdeError
    from mde.train.loader import batches

    loader = torch.utils.data.DataLoader(_KillsItsWorker(), batch_size=2, num_workers=1)
    with pytest.raises(MdeError, match=r"^a data-loader worker process was killed or crashed \(out of memory\?\): "
                                       r"try fewer --workers, or --workers 0$"):
        list(batches(loader))


def test_the_first_batch_shows_progress(cli, synth_data, tmp_path, monkeypatch):
    """Progress came every --log-interval (10) batches: a log had no line before the 10th (minutes of silence with
    --compile, and none at all for a run stopped sooner)."""
    from mde.console import PlainProgress
    from mde.train import trainer

    lines: list[str] = []
    monkeypatch.setattr(trainer, "make_progress", lambda: PlainProgress(interval=0, write=lines.append))
    result = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert result.code == 0, result.err
    epoch = [line.split(" (")[0] for line in lines if line.startswith("epoch 1/1: ")]
    assert epoch == ["epoch 1/1: 1/6", "epoch 1/1: 6/6"], lines  # 24 images, batches of 4
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert (last["steps_per_epoch"], last["world_size"]) == (6, 1)  # what a one-cycle resume's refusal names


def test_a_run_whose_checkpoints_cannot_fit_is_refused_before_training(cli, synth_data, tmp_path, monkeypatch):
    """A disk with room for the epoch but not its checkpoints: the whole epoch trained, then last.pt failed, leaving
    a run folder that could neither be resumed nor started again without --force."""
    import shutil
    from collections import namedtuple

    from mde.train import trainer

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(2**30, 2**30 - 60 * 2**20, 60 * 2**20))
    monkeypatch.setattr(trainer, "train_one_epoch", None)  # refused before any training
    run = tmp_path / "run"
    result = cli("train", "--data", synth_data, "--out", run, *TINY, "--epochs", "1")
    assert result.code == 2 and re.fullmatch(
        rf"mde: error: {run}: too little free space for this run's checkpoints: about \d+ MiB, and 60 MiB is free "
        r"there\n", result.err), result.err
    assert not run.exists()


def test_an_epoch_with_no_valid_depth_pixel_is_refused(cli, synth_data, tmp_path):
    """Depth maps so sparse that none of their pixels survives the resize trained at `loss 0.0000` for every epoch,
    exit 0, and wrote checkpoints of a model that had learned nothing."""
    import shutil

    data = tmp_path / "sparse"
    shutil.copytree(synth_data, data, ignore=shutil.ignore_patterns("mask"))
    for png in (data / "train" / "depth").iterdir():
        depth = np.zeros((64, 64), np.uint16)
        depth[0, 1] = 5000  # one valid pixel, at an odd column: a resize to 32 px keeps none
        Image.fromarray(depth).save(png)
    run = tmp_path / "run"
    args = [a if a != "64" else "32" for a in TINY]
    result = cli("train", "--data", data, "--out", run, *args, "--epochs", "1", "--no-augment")
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1] == (
        f"mde: error: {data}: epoch 1 had no valid depth pixel to learn from in 24 train images at --image-size 32: "
        "the depth maps are empty, or too sparse to keep one after the resize (use a larger --image-size, or "
        "denser depth)")
    assert not run.exists()


def test_compile_on_a_cpu_does_not_leak_a_cuda_home_warning(cli, synth_data, tmp_path, monkeypatch):
    """`--compile` on a CPU printed torch's "No CUDA runtime is found, using CUDA_HOME=..." (inductor's C++ toolchain
    lookup) among the run's lines; the logger is quieted for the run, then given back. Here torch.compile warns as
    inductor does, without its minutes of compiling."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    before = logger.level

    def compile_that_warns(module, *args, **kwargs):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        return module

    monkeypatch.setattr(torch, "compile", compile_that_warns)
    result = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1", "--compile")
    assert result.code == 0, result.err
    assert "No CUDA runtime" not in result.err + result.out
    assert logger.level == before


def test_a_worker_death_raised_outside_the_loader_is_the_same_one_line(cli, synth_data, tmp_path, monkeypatch):
    """torch's SIGCHLD handler raises a worker's death wherever the main thread is (in `backward`), outside `batches`:
    it was "internal error", exit 1, where `batches` says it in one line, exit 2."""
    from mde.train import trainer

    def dies(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid 6033) is killed by signal: Killed. ")

    monkeypatch.setattr(trainer, "train_one_epoch", dies)
    result = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1] == ("mde: error: a data-loader worker process was killed or crashed "
                                                   "(out of memory?): try fewer --workers, or --workers 0")


def test_every_ranks_checks_come_before_what_rank_0_alone_reads(cli, synth_data, tmp_path, monkeypatch):
    """Under torchrun, rank 1 met a bad --backbone-weights at once while rank 0 was still reading every val file
    (minutes on a real dataset): rank 1 said it, then rank 0 again. The weights are checked before that reading."""
    from mde.train import trainer

    read: list[bool] = []
    monkeypatch.setattr(trainer, "read_on_rank0", lambda *args: read.append(True) or "")
    junk = tmp_path / "junk.pth"
    junk.write_text("junk")
    result = cli("train", "--data", synth_data, "--out", tmp_path / "run", *TINY, "--epochs", "1",
                 "--backbone-weights", junk)
    assert result.code == 2 and "cannot read backbone weights" in result.err, result.err
    assert not read


def test_a_scaler_saved_off_is_not_a_damaged_checkpoint_where_one_is_on():
    """A bf16 (or CPU) run saves its GradScaler off, as {}; resumed on a GPU without native bf16, the fp16 run's
    enabled scaler refused it, and the resume called the checkpoint damaged."""
    from mde.train.trainer import restore_scaler

    class Scaler:
        def __init__(self, enabled):
            self.enabled, self.loaded = enabled, None

        def is_enabled(self):
            return self.enabled

        def load_state_dict(self, state):  # torch's own check
            if self.enabled and not state:
                raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                                   "instance of GradScaler.")
            self.loaded = state

    on, off = Scaler(True), Scaler(False)
    restore_scaler(on, {})
    restore_scaler(off, {"scale": 2.0})
    assert on.loaded is None and off.loaded == {"scale": 2.0}
    restore_scaler(on, {"scale": 4.0})
    assert on.loaded == {"scale": 4.0}


def test_a_compiler_torch_compile_cannot_find_is_one_line_naming_the_way_on():
    """`--compile` on a machine without g++ ended in "internal error: BackendCompilerFailed: backend='inductor'
    raised:" (the cause cut off), exit 1, after the model was traced."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError, InvalidCxxCompiler

    from mde.errors import BackendError
    from mde.train.trainer import said_compile_failures

    def failing(err: Exception):
        def call(*_args):
            raise err
        return said_compile_failures(call)

    no_cxx = InvalidCxxCompiler()
    for err in (BackendCompilerFailed(lambda: None, no_cxx, None), InductorError(no_cxx, "")):
        with pytest.raises(BackendError, match=r"^--compile: torch.compile could not compile the model: it found no "
                                               r"working C\+\+ compiler \(install g\+\+, or set CXX to one\); train "
                                               r"without --compile$"):
            failing(err)(1)
    with pytest.raises(BackendError, match=r"could not compile the model: RuntimeError: unsupported op; train"):
        failing(BackendCompilerFailed(lambda: None, RuntimeError("unsupported op"), None))(1)
    with pytest.raises(ValueError, match="the data's own"):  # raised through the compiled call: as it is
        failing(ValueError("the data's own"))(1)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # while it benchmarked kernels
    with pytest.raises(RuntimeError, match="^CUDA out of memory"):  # said as out of memory, with its own advice
        failing(BackendCompilerFailed(lambda: None, oom, None))(1)
    assert said_compile_failures(lambda x: x + 1)(1) == 2


def test_backbone_weights_of_a_whole_pickled_model_say_to_save_its_state_dict(tmp_path):
    """`torch.save(model)` was told it is "not a PyTorch weights file (... saved with torch.save)": it was."""
    from mde.errors import ModelError
    from mde.train.model import ModelArgs, build_model, load_backbone_weights

    whole = tmp_path / "r18full.pth"
    torch.save(torch.nn.Linear(2, 2), whole)
    model = build_model(ModelArgs(backbone="resnet18", image_size=64))
    with pytest.raises(ModelError, match=r"r18full.pth: cannot read backbone weights: the file holds pickled objects "
                                         r"\(a whole model saved with torch.save\(model\)\?\).*torch.save\("
                                         r"model.state_dict\(\), PATH\)"):
        load_backbone_weights(model, whole)
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ModelError, match=r"not a PyTorch weights file"):
        load_backbone_weights(model, tmp_path / "text.pth")
