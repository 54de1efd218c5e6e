"""Benchmark the trainer: quality vs two baselines, loader vs step rate, FLOP/s vs GEMM, and the loss choice.

    python benchmarks/bench_train.py [--quick] [--only quality throughput losses] [--data DIR]

(1) quality: on `mde data synth D --train 2000 --val 200 --size 128 --seed 0`, a resnet18 trained
    from scratch on CPU (<= 15 min) against predicting the training set's mean depth and its
    per-pixel mean depth map (targets: RMSE <= 0.5x the first, below the second).
(2) throughput: the data loader alone vs the training step rate (target >= 3x), and training
    FLOP/s (torch.utils.flop_counter) vs this machine's FP32 GEMM rate (target >= 50%), resnet18
    at 128x128, same thread count.
(3) losses: a short run of each loss on the same data, scored with the same metrics.
(4) cuda_amp (only with a GPU): bf16/fp16 autocast + channels_last vs FP32 images/s (target >= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# TrainConfig's defaults (batch 16, CyclicLR triangular2 2e-4..2e-3 over 250-step half cycles,
# berHu loss, augmentation on), from scratch (so freeze auto -> 0), resnet18 at 96 px on CPU.
QUALITY = {"backbone": "resnet18", "image_size": 96, "epochs": 8, "pretrained": False,
           "workers": 1, "device": "cpu", "checkpoint_every": 0}
QUICK = {"image_size": 64, "epochs": 1, "batch_size": 8}


def ensure_data(path: Path, train: int, val: int, size: int) -> Path:
    from mde.synth import synthesize

    if not (path / "meta.json").is_file():
        synthesize(path, train=train, val=val, size=size, seed=0, progress=False)
    return path


def baselines(data: Path) -> dict[str, float]:
    """Val RMSE/SSIM of the training set's mean depth and of its per-pixel mean depth map."""
    from mde.runtime.evaluate import baselines as image_blind_baselines
    from mde.train.data import dataset_max_depth, open_dataset

    base = image_blind_baselines(open_dataset(data, "train"), open_dataset(data, "val"), dataset_max_depth(data))
    out = {"train_mean_depth_m": base["train_mean_depth_m"]}
    for name in ("mean_depth", "pixel_mean_map"):
        out[f"{name}_rmse"] = base[name]["rmse"]
        out[f"{name}_ssim"] = base[name]["ssim"]
    return out


def quality(data: Path, quick: bool) -> dict:
    from mde.train.config import TrainConfig
    from mde.train.trainer import train

    data = ensure_data(data, 120 if quick else 2000, 20 if quick else 200, 64 if quick else 128)
    base = baselines(data)
    settings = {**QUALITY, **(QUICK if quick else {})}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(TrainConfig(data=str(data), out=os.path.join(tmp, "run"), **settings))
        wall = time.perf_counter() - start
    best = result["best"]
    return {**base, "settings": settings, "wall_s": round(wall, 1),
            "train_images_per_s": round(result["images_per_s"], 2),
            **{f"model_{k}": best[k] for k in ("rmse", "ssim", "abs_rel", "delta1")},
            "rmse_ratio_to_mean_depth": best["rmse"] / base["mean_depth_rmse"],
            "beats_pixel_mean_map": best["rmse"] < base["pixel_mean_map_rmse"],
            "target_met": best["rmse"] <= 0.5 * base["mean_depth_rmse"]
            and best["rmse"] < base["pixel_mean_map_rmse"] and wall <= 900}


def throughput(data: Path, quick: bool, batch: int = 16, size: int = 128) -> dict:
    """Loader-alone images/s vs training images/s; training FLOP/s vs GEMM FLOP/s."""
    import torch
    from bench_runtime import gemm_rate  # benchmarks/ is on sys.path when these scripts run
    from torch.utils.flop_counter import FlopCounterMode

    from mde.train.data import open_dataset
    from mde.train.loader import DepthPairs, epoch_indices, epoch_loader
    from mde.train.losses import masked_loss
    from mde.train.model import ModelArgs, build_model

    threads = torch.get_num_threads()
    data = ensure_data(data, 120 if quick else 2000, 20 if quick else 200, 64 if quick else 128)
    pairs = DepthPairs(open_dataset(data, "train"), size, augment=True, seed=0)
    indices = epoch_indices(len(pairs), 0, 0, 0, 1)[: (64 if quick else 512)]
    start = time.perf_counter()
    n = sum(len(x) for x, _, _ in epoch_loader(pairs, indices, batch, 0, False))
    loader_ips = n / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = build_model(ModelArgs("resnet18", size, 20.0)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 1, size, size) * 20

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        masked_loss("l1", model(x), y).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    steps = 3 if quick else 10
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    gemm = gemm_rate(threads)  # the one GEMM measurement, shared with bench_runtime
    return {"threads": threads, "batch": batch, "size": size,
            "loader_images_per_s": round(loader_ips, 1),
            "train_images_per_s": round(batch / step_s, 2),
            "loader_to_train_ratio": round(loader_ips * step_s / batch, 2),
            "train_gflop_per_step": round(flops / 1e9, 2),
            "train_gflops": round(flops / step_s / 1e9, 1), "gemm_gflops": round(gemm / 1e9, 1),
            "train_to_gemm_ratio": round(flops / step_s / gemm, 3)}


def _cuda_images_per_s(amp: bool, dtype, batch: int, size: int, steps: int) -> float:
    """resnet50 training images/s on CUDA, FP32 or autocast(`dtype`) + channels_last."""
    import torch

    from mde.train.losses import masked_loss
    from mde.train.model import ModelArgs, build_model

    model = build_model(ModelArgs("resnet50", size, 20.0)).cuda()
    x = torch.rand(batch, 3, size, size, device="cuda")
    y = torch.rand(batch, 1, size, size, device="cuda") * 20
    if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    for i in range(5 + steps):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            pred = model(x)
        scaler.scale(masked_loss("berhu", pred, y)).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def cuda_amp(data: Path, quick: bool, batch: int = 64, size: int = 224) -> dict:
    """On CUDA: training images/s of FP32 vs bf16/fp16 autocast + channels_last (target >= 1.5x)."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU visible to PyTorch"}
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    steps = 5 if quick else 30
    fp32 = _cuda_images_per_s(False, dtype, batch, size, steps)
    amp = _cuda_images_per_s(True, dtype, batch, size, steps)
    return {"device": torch.cuda.get_device_name(), "backbone": "resnet50", "batch": batch,
            "size": size, "amp_dtype": str(dtype), "fp32_images_per_s": round(fp32, 1),
            "amp_channels_last_images_per_s": round(amp, 1), "speedup": round(amp / fp32, 2)}


def losses(data: Path, quick: bool) -> dict:
    """Each loss, same short schedule (resnet18 64px from scratch), scored on the val split."""
    from mde.train.config import LOSS_CHOICES, TrainConfig
    from mde.train.trainer import train

    data = ensure_data(data, 120 if quick else 2000, 20 if quick else 200, 64 if quick else 128)
    table = {}
    for loss in LOSS_CHOICES:
        with tempfile.TemporaryDirectory() as tmp:
            settings = {**QUALITY, "loss": loss, "image_size": 64, "epochs": 1 if quick else 2,
                        "step_size_up": 125}
            best = train(TrainConfig(data=str(data), out=os.path.join(tmp, "r"), **settings))["best"]
        table[loss] = {k: round(best[k], 4) for k in ("rmse", "ssim", "abs_rel", "delta1")}
        print(f"  {loss:8s} {table[loss]}", flush=True)
    return {"settings": "resnet18 64px, from scratch, 2 epochs, batch 16, CyclicLR 2e-4..2e-3 (125-step half cycle)",
            "results": table, "best_rmse": min(table, key=lambda k: table[k]["rmse"])}


def run(quick: bool = False,
        only: tuple[str, ...] = ("throughput", "cuda_amp", "losses", "quality"),
        data: Path | None = None) -> dict:
    """All three parts (quick: tiny sizes, for a smoke run); returns their figures."""
    with tempfile.TemporaryDirectory() as tmp:
        root = data or Path(tmp) / "synth"
        parts = {"throughput": throughput, "cuda_amp": cuda_amp, "losses": losses,
                 "quality": quality}
        results = {}
        for name in only:
            start = time.perf_counter()
            results[name] = parts[name](root, quick)
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(name, json.dumps(results[name], default=str), flush=True)
        return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=["throughput", "cuda_amp", "losses", "quality"])
    parser.add_argument("--data", type=Path, default=None,
                        help="the synthetic set (made here when missing)")
    opts = parser.parse_args()
    out = run(opts.quick, tuple(opts.only), opts.data)
    json.dump(out, sys.stdout, indent=2, default=str)
    print()
