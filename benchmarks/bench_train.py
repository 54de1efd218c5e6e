"""Benchmark the trainer: quality vs two baselines, loader vs step rate, FLOP/s vs GEMM, and the loss choice.

    python benchmarks/bench_train.py [--quick] [--only quality throughput losses decoders] [--data DIR]
    python benchmarks/bench_train.py --only decoders --data DIR --runs DIR [--variants NAME ...]

(1) quality: on `mde data synth D --train 2000 --val 200 --size 128 --seed 0`, a resnet18 trained
    from scratch on CPU (<= 15 min) against predicting the training set's mean depth and its
    per-pixel mean depth map (targets: RMSE <= 0.5x the first, below the second).
(2) throughput: the data loader alone vs the training step rate (target >= 3x), and training
    FLOP/s (torch.utils.flop_counter) vs this machine's FP32 GEMM rate (target >= 50%), resnet18
    at 128x128, same thread count.
(3) losses: a short run of each loss on the same data, scored with the same metrics.
(4) cuda_amp (only with a GPU): bf16/fp16 autocast + channels_last vs FP32 images/s (target >= 1.5x).
(5) decoders: the quality settings once per variant (decoder x schedule x augmentation, same data,
    epochs and seed), then one per-region table (whole image, objects, structure: RMSE / AbsRel /
    delta1) of every variant and of the per-pixel mean map, with ratios to the first variant.
    Runs are kept in --runs and reused.
(6) decoder_speed: per decoder, ONNX Runtime CPU latency (resnet50, 224 px) and training images/s
    (resnet18, 96 px) on the CPU, and with a CUDA GPU training images/s there too (autocast, synthetic
    batches: resnet18 96 px batch 16, resnet50 224 px batch 64).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from cli_common import Parser, default_decoder, run_main

# TrainConfig's defaults (unet decoder, batch 16, one-cycle 2e-4..2e-3, berHu loss, flips), from
# scratch (so freeze auto -> 0), resnet18 at 96 px on CPU.
QUALITY = {"backbone": "resnet18", "image_size": 96, "epochs": 8, "pretrained": False,
           "workers": 1, "device": "cpu", "checkpoint_every": 0}
QUICK = {"image_size": 64, "epochs": 1, "batch_size": 8}
# name -> TrainConfig overrides of QUALITY; a "patch" names a PATCHES entry that changes the run in
# a way no option does ("legacy_crop": the pre-fix crop, depth left unscaled). More variants:
# bench_decoder_ideas.py. Every variant pins its augmentation, so a saved run keeps its meaning when
# the defaults change: earlier versions also scale-cropped and colour-jittered (CROP_JITTER), and the
# variants measured then keep that; FLIPS is today's default.
CROP_JITTER = {"scale_crop": True, "color_jitter": True}
FLIPS = {"scale_crop": False, "color_jitter": False}
VARIANTS = {
    "report": {"decoder": "report", "schedule": "cyclic", **CROP_JITTER},
    "unet-onecycle": {"decoder": "unet", "schedule": "onecycle", **CROP_JITTER},
    "unet-cyclic": {"decoder": "unet", "schedule": "cyclic", **CROP_JITTER},
    "unet-onecycle-nocrop": {"decoder": "unet", "schedule": "onecycle", "scale_crop": False, "color_jitter": True},
    "unet-onecycle-legacycrop": {"decoder": "unet", "schedule": "onecycle", **CROP_JITTER, "patch": "legacy_crop"},
    "unet-cyclic-nocrop": {"decoder": "unet", "schedule": "cyclic", "scale_crop": False, "color_jitter": True},
    "unet-cyclic-legacycrop": {"decoder": "unet", "schedule": "cyclic", **CROP_JITTER, "patch": "legacy_crop"},
    "report-onecycle": {"decoder": "report", "schedule": "onecycle", **CROP_JITTER},
    "report-nocrop": {"decoder": "report", "schedule": "cyclic", "scale_crop": False, "color_jitter": True},
    "report-legacycrop": {"decoder": "report", "schedule": "cyclic", **CROP_JITTER, "patch": "legacy_crop"},
    # today's defaults: flips only
    "unet-flips": {"decoder": "unet", "schedule": "onecycle", **FLIPS},
    "report-flips": {"decoder": "report", "schedule": "cyclic", **FLIPS},
}


def data_settings(quick: bool) -> dict[str, int]:
    """The benchmarks' synthetic set: 2000 / 200 images at 128 px (seed 0), or a tiny one for `--quick`."""
    return {"train": 120, "val": 20, "size": 64} if quick else {"train": 2000, "val": 200, "size": 128}


def check_data_settings(path: Path, quick: bool) -> None:
    """Refuse a set at `path` made for the other budget (a `--quick` set reused for a full run, or the
    reverse): its figures would not be the benchmark's."""
    from mde.errors import InputError
    from mde.io import parse_json, read_small_text

    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return
    try:
        meta = parse_json(read_small_text(meta_path))
    except OSError as err:
        raise InputError(f"cannot read it ({err.strerror or err})", meta_path) from None
    except ValueError as err:
        raise InputError(f"not readable JSON ({err})", meta_path) from None
    counts, size = (meta.get("counts"), meta.get("size")) if isinstance(meta, dict) else (None, None)
    if not (isinstance(counts, dict) and isinstance(size, list) and size):
        raise InputError("records no image counts and size (not a set `mde data synth` made)", meta_path)
    want = data_settings(quick)
    have = {"train": counts.get("train"), "val": counts.get("val"), "size": size[0]}
    if have != want:
        raise InputError(f"holds {have['train']} / {have['val']} images at {have['size']} px, not the "
                         f"{want['train']} / {want['val']} at {want['size']} px this run needs"
                         f"{'' if quick else ' (a --quick set?)'}; give another --data folder", path)


def ensure_data(path: Path, quick: bool) -> Path:
    """The benchmark's synthetic set at `path`, made there unless it is (of the same size)."""
    from mde.data.synth import synthesize

    check_data_settings(path, quick)
    if not (path / "meta.json").is_file():
        synthesize(path, **data_settings(quick), seed=0, progress=False)
    return path


def require_masks(data: Path) -> None:
    """The per-region figures need the val split's region masks (`mde data synth` writes them)."""
    from mde.errors import InputError

    if not any((Path(data) / "val" / "mask").glob("*.png")):
        raise InputError("has no region masks (val/mask/*.png, which `mde data synth` writes); the per-region "
                         "figures need them", data)


def baselines(data: Path) -> dict[str, float]:
    """Val RMSE/SSIM of the training set's mean depth and of its per-pixel mean depth map."""
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.runtime.evaluate import baselines as image_blind_baselines

    base = image_blind_baselines(open_dataset(data, "train"), open_dataset(data, "val"), dataset_max_depth(data))
    out = {"train_mean_depth_m": base["train_mean_depth_m"]}
    for name in ("mean_depth", "pixel_mean_map"):
        out[f"{name}_rmse"] = base[name]["rmse"]
        out[f"{name}_ssim"] = base[name]["ssim"]
    return out


def quality(data: Path, quick: bool) -> dict:
    from mde.train.config import TrainConfig
    from mde.train.trainer import train

    data = ensure_data(data, quick)
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

    from mde.data.readers import open_dataset
    from mde.train.config import TrainConfig
    from mde.train.loader import DepthPairs, epoch_indices, epoch_loader
    from mde.train.losses import masked_loss
    from mde.train.model import ModelArgs, build_model
    from mde.train.trainer import make_optimizer

    threads = torch.get_num_threads()
    data = ensure_data(data, quick)
    # every transform on: the loader's worst case
    pairs = DepthPairs(open_dataset(data, "train"), size, augment=True, seed=0, scale_crop=True, color_jitter=True)
    indices = epoch_indices(len(pairs), 0, 0, 0, 1)[: (64 if quick else 512)]
    start = time.perf_counter()
    n = sum(len(x) for x, *_ in epoch_loader(pairs, indices, batch, 0, False))
    loader_ips = n / (time.perf_counter() - start)

    torch.manual_seed(0)  # the trainer's step: its default decoder, loss and optimizer
    cfg = TrainConfig()
    model = build_model(ModelArgs("resnet18", size, 20.0, cfg.decoder)).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 1, size, size) * 20

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        masked_loss(cfg.loss, model(x), y).backward()
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


def _cuda_images_per_s(amp: bool, dtype, batch: int, size: int, steps: int, backbone: str = "resnet50",
                       decoder: str | None = None) -> float:
    """Training images/s on CUDA (resnet50 and the default decoder unless named), FP32 or autocast(`dtype`)
    + channels_last."""
    import torch

    from mde.train.losses import masked_loss
    from mde.train.model import ModelArgs, build_model

    model = build_model(ModelArgs(backbone, size, 20.0, decoder or default_decoder())).cuda()
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


@contextmanager
def cudnn_benchmark():
    """cuDNN's autotuner on (fastest kernels for the fixed shapes timed here), and back as it was after: the
    process may go on to compare outputs, where the tuned kernels' other rounding would count."""
    import torch

    before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def cuda_amp(data: Path, quick: bool, batch: int = 64, size: int = 224) -> dict:
    """On CUDA: training images/s of FP32 vs bf16/fp16 autocast + channels_last (target >= 1.5x)."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU visible to PyTorch"}
    from mde.train.trainer import autocast_dtype

    dtype = autocast_dtype(torch)
    steps = 5 if quick else 30
    with cudnn_benchmark():
        fp32 = _cuda_images_per_s(False, dtype, batch, size, steps)
        amp = _cuda_images_per_s(True, dtype, batch, size, steps)
    return {"device": torch.cuda.get_device_name(), "backbone": "resnet50", "decoder": default_decoder(),
            "batch": batch, "size": size, "amp_dtype": str(dtype), "fp32_images_per_s": round(fp32, 1),
            "amp_channels_last_images_per_s": round(amp, 1), "speedup": round(amp / fp32, 2)}


def losses(data: Path, quick: bool) -> dict:
    """Each loss, same short schedule (resnet18 64px from scratch), scored on the val split."""
    from mde.train.config import LOSS_CHOICES, TrainConfig
    from mde.train.trainer import train

    data = ensure_data(data, quick)
    table = {}
    for loss in LOSS_CHOICES:
        with tempfile.TemporaryDirectory() as tmp:
            settings = {**QUALITY, "loss": loss, "image_size": 64, "epochs": 1 if quick else 2, "schedule": "cyclic",
                        "step_size_up": 125}
            best = train(TrainConfig(data=str(data), out=os.path.join(tmp, "r"), **settings))["best"]
        table[loss] = {k: round(best[k], 4) for k in ("rmse", "ssim", "abs_rel", "delta1")}
        print(f"  {loss:8s} {table[loss]}", file=sys.stderr, flush=True)
    return {"settings": f"resnet18 64px, from scratch, {settings['epochs']} epoch(s), batch 16, "
                        "CyclicLR 2e-4..2e-3 (125-step half cycle)",
            "results": table, "best_rmse": min(table, key=lambda k: table[k]["rmse"])}


def _legacy_crop_window(rgb, depth, y, x, ch, cw, intrinsics=None):
    """The crop before the geometry fix: depth left unscaled (for the before/after measurement)."""
    return rgb[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw], intrinsics


def _legacy_crop():
    from unittest import mock

    return mock.patch("mde.train.augment.crop_window", _legacy_crop_window)


# patch name -> a context manager factory; active while a variant trains and while its model is loaded
PATCHES = {"legacy_crop": _legacy_crop}


def variant_patch(name: str | None):
    """The context of PATCHES[name] (nothing for None)."""
    import contextlib

    return PATCHES[name]() if name else contextlib.nullcontext()


def device_settings(device: str) -> dict:
    """TrainConfig overrides that move the quality settings to `device`: none for the CPU (the benchmark's
    own), else the device and four loader workers (one cannot feed a GPU). Ratios are comparable only
    between runs on the same device: bf16 autocast and another data order change every figure."""
    return {} if device == "cpu" else {"device": device, "workers": 4}


def train_variant(data: Path, run_dir: Path, overrides: dict, quick: bool, epochs: int = 0,
                  device: str = "cpu") -> dict:
    """Train one variant at the quality settings (on `device`) into `run_dir`; reused when its summary
    holds the same settings.

    Raises:
        InputError: `run_dir` holds a run of other settings (another --epochs): its figures would be
            labelled with these.
    """
    from mde.errors import InputError
    from mde.io import write_json_atomic
    from mde.train.config import TrainConfig
    from mde.train.trainer import train

    overrides = dict(overrides)
    patch = overrides.pop("patch", None)
    settings = {**QUALITY, **(QUICK if quick else {}), **overrides, **({"epochs": epochs} if epochs else {}),
                **device_settings(device)}
    summary = run_dir / "bench.json"
    inputs = run_inputs(data, settings)
    if summary.is_file():
        saved = read_summary(summary)
        if saved.get("inputs", inputs) != inputs:  # summaries from before inputs were recorded: settings only
            raise InputError("holds a run trained on another dataset or other start weights; use another --runs "
                             "folder", run_dir)
        wanted = json.loads(json.dumps({**settings, "patch": patch}))  # as the summary stores them
        changed = sorted(k for k in wanted.keys() | saved["settings"].keys()
                         if wanted.get(k) != saved["settings"].get(k))
        if changed:
            raise InputError(f"holds a run trained with other settings ({', '.join(changed)}: "
                             f"{', '.join(str(saved['settings'].get(k)) for k in changed)}, not "
                             f"{', '.join(str(wanted.get(k)) for k in changed)}); use another --runs folder",
                             run_dir)
        return saved
    start = time.perf_counter()
    with variant_patch(patch):  # DataLoader workers fork after the patch, so they see it too
        result = train(TrainConfig(data=str(data), out=str(run_dir), force=True, **settings))
    out = {"settings": {**settings, "patch": patch}, "inputs": inputs, "wall_s": round(time.perf_counter() - start, 1),
           "train_images_per_s": round(result["images_per_s"], 2), "best_epoch": result["best"]["epoch"]}
    write_json_atomic(summary, out)  # whole or not at all: a cut one would stop every later run of the folder
    return out


def read_summary(path: Path) -> dict:
    """A run's `bench.json` (its settings, inputs and figures); `InputError` where it is no such record."""
    from mde.errors import InputError
    from mde.io import parse_json, read_small_text

    try:
        saved = parse_json(read_small_text(path))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"not a run summary (not readable JSON: {err}); remove the run's folder to train it "
                         "again", path) from None
    if not (isinstance(saved, dict) and isinstance(saved.get("settings"), dict)):
        raise InputError("not a run summary (no \"settings\" object); remove the run's folder to train it again",
                         path)
    return saved


def run_inputs(data: Path, settings: dict) -> dict[str, str]:
    """What a run was trained from besides its settings, by content (a path alone does not tell two encoders
    written to one file apart, and a set made again in a new temporary folder is the same set): the
    dataset (its meta.json, and every file's name and size) and the start weights."""
    import hashlib

    from mde.io import sha256_file

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(data).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(data)}\0{path.stat().st_size}\0".encode())
        if path.name in ("meta.json", "cameras.json"):  # the seed and every image's camera (older sets: in meta)
            digest.update(path.read_bytes())
    inputs = {"data": digest.hexdigest()}
    if settings.get("backbone_weights"):
        inputs["backbone_weights_sha256"] = sha256_file(settings["backbone_weights"])
    return inputs


def load_run(run_dir: Path):
    """A run's best.pt as an eval model, under its variant's patch (a patched decoder needs it to load)."""
    from mde.train.checkpoint import load_model

    summary = run_dir / "bench.json"
    patch = read_summary(summary)["settings"].get("patch") if summary.is_file() else None
    with variant_patch(patch):
        model, _ = load_model(run_dir / "best.pt")
    return model.eval()


def region_rows(data: Path, runs: dict[str, Path]) -> dict[str, dict]:
    """Val metrics (whole image and per region) of each run's best.pt and of the per-pixel mean map."""
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.runtime.evaluate import evaluate, pixel_mean_map_metrics
    from mde.train.evaluate import torch_predictor

    val, data_range = open_dataset(data, "val"), dataset_max_depth(data)
    rows = {"pixel_mean_map": pixel_mean_map_metrics(open_dataset(data, "train"), val, data_range, data_range)}
    for name, run_dir in runs.items():
        model = load_run(run_dir)
        rows[name] = evaluate(torch_predictor(model, model.args.image_size, model.args.max_depth), val, data_range)
    return rows


def format_region_table(rows: dict[str, dict], reference: str = "report") -> str:
    """One line per model: RMSE / AbsRel / delta1 on the whole image, objects and structure."""
    head = f"{'model':26s} " + " ".join(f"{r + ' RMSE':>15s} {'AbsRel':>7s} {'d1':>6s}"
                                        for r in ("image", "objects", "structure"))
    lines = [head]
    for name, m in rows.items():
        cells = []
        for prefix in ("", "objects_", "structure_"):
            cells.append(f"{m.get(prefix + 'rmse', float('nan')):15.3f} {m.get(prefix + 'abs_rel', float('nan')):7.3f} "
                         f"{m.get(prefix + 'delta1', float('nan')):6.3f}")
        lines.append(f"{name:26s} " + " ".join(cells))
    if reference in rows:
        ref, base = rows[reference], rows["pixel_mean_map"]
        for name, m in rows.items():
            if name in (reference, "pixel_mean_map"):
                continue
            lines.append(f"{name}: image RMSE {m['rmse'] / ref['rmse']:.2f}x {reference}'s; object RMSE "
                         f"{m['objects_rmse'] / ref['objects_rmse']:.2f}x {reference}'s and "
                         f"{m['objects_rmse'] / base['objects_rmse']:.2f}x the pixel mean map's")
    return "\n".join(lines)


def decoders(data: Path, quick: bool, runs: Path | None = None,
             variants: tuple[str, ...] = ("report-flips", "unet-flips"), train_only: bool = False,
             epochs: int = 0, reference: str | None = None, device: str = "cpu") -> dict:
    """Train each variant (same data, epochs and seed, on `device`) and print the per-region quality
    table, with ratios to `reference` (default: the first variant)."""
    data = ensure_data(data, quick)
    require_masks(data)
    with tempfile.TemporaryDirectory() as tmp:
        root = runs or Path(tmp)
        trained = {}
        for name in variants:
            trained[name] = train_variant(data, root / name, VARIANTS[name], quick, epochs, device)
            print(f"  {name}: {json.dumps(trained[name])}", file=sys.stderr, flush=True)
        if train_only:
            return {"runs": trained}
        rows = region_rows(data, {name: root / name for name in variants})
    print(format_region_table(rows, reference or variants[0]), file=sys.stderr, flush=True)
    return {"runs": trained, "metrics": rows}


def decoder_speed(quick: bool = False, decoders: tuple[str, ...] = ("report", "unet")) -> dict:
    """Per decoder: ONNX Runtime CPU latency of the exported FP32 resnet50 at 224 px (batch 1) and
    training images/s of resnet18 at 96 px (batch 16), measured in turns so load changes hit both; with a
    CUDA GPU, also each decoder's training images/s there (`cuda_decoder_speed`)."""
    import torch
    from bench_runtime import time_calls

    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime.backends.onnxruntime import create_session
    from mde.train.checkpoint import save_untrained
    from mde.train.losses import masked_loss
    from mde.train.model import ModelArgs, build_model

    size, rounds, iters = (64, 2, 3) if quick else (224, 5, 10)
    threads = torch.get_num_threads()
    sessions, steps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in decoders:
            ckpt = Path(tmp) / f"{name}.pt"
            save_untrained(ckpt, ModelArgs("resnet50", size, 20.0, name))
            onnx_path = export_checkpoint(ExportConfig(checkpoint=ckpt, out=Path(tmp) / name,
                                                       precisions=("fp32",), progress=False))[0].path
            sessions[name] = create_session(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
            model = build_model(ModelArgs("resnet18", 96, 20.0, name)).to(memory_format=torch.channels_last)
            steps[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        x = torch.rand(16, 3, 96, 96).contiguous(memory_format=torch.channels_last)
        y = torch.rand(16, 1, 96, 96) * 20
        latency = {n: [] for n in decoders}
        step_s = {n: [] for n in decoders}

        def train_step(model, opt) -> None:
            opt.zero_grad(set_to_none=True)
            masked_loss("berhu", model(x), y).backward()
            opt.step()

        for _ in range(rounds):
            for name in decoders:
                latency[name] += time_calls(partial(sessions[name].run, None, {"image": image}), iters, 1)
                step_s[name] += time_calls(partial(train_step, *steps[name]), 2, 1)
    out = {"threads": threads, "ort_size": size, "load_avg_1min": round(os.getloadavg()[0], 2)}
    for name in decoders:
        out[name] = {"ort_latency_ms_median": round(1000 * float(np.median(latency[name])), 1),
                     "train_images_per_s": round(16 / float(np.median(step_s[name])), 2)}
    for name in decoders[1:]:
        out[f"{name}_vs_{decoders[0]}"] = {
            "latency_ratio": round(out[name]["ort_latency_ms_median"] / out[decoders[0]]["ort_latency_ms_median"], 3),
            "train_speed_ratio": round(out[name]["train_images_per_s"] / out[decoders[0]]["train_images_per_s"], 3)}
    if torch.cuda.is_available():
        out["cuda"] = cuda_decoder_speed(quick, decoders)
    return out


# (backbone, image size, batch): the quality benchmark's network, and the product's default at 224 px
CUDA_TRAIN_SHAPES = (("resnet18", 96, 16), ("resnet50", 224, 64))
CUDA_QUICK_SHAPES = (("resnet18", 64, 4),)


def cuda_decoder_speed(quick: bool, decoders: tuple[str, ...]) -> dict:
    """On CUDA: training images/s of each decoder (bf16/fp16 autocast + channels_last, synthetic batches, so
    no data loading), in turns, median of the rounds; ratios to the first decoder."""
    import torch

    from mde.train.trainer import autocast_dtype

    dtype = autocast_dtype(torch)
    rounds, steps = (1, 3) if quick else (3, 20)
    out: dict = {"device": torch.cuda.get_device_name(), "amp_dtype": str(dtype), "rounds": rounds, "steps": steps}
    for backbone, size, batch in CUDA_QUICK_SHAPES if quick else CUDA_TRAIN_SHAPES:  # quick: any GPU's memory
        rates = {name: [] for name in decoders}
        with cudnn_benchmark():
            for _ in range(rounds):
                for name in decoders:
                    rates[name].append(_cuda_images_per_s(True, dtype, batch, size, steps, backbone, name))
        key = f"{backbone}_{size}px_batch{batch}"
        median = {name: float(np.median(r)) for name, r in rates.items()}
        out[key] = {name: {"train_images_per_s": round(m, 1)} for name, m in median.items()}
        for name in decoders[1:]:
            out[key][f"{name}_vs_{decoders[0]}"] = round(median[name] / median[decoders[0]], 3)
    return out


def run(quick: bool = False,
        only: tuple[str, ...] = ("throughput", "cuda_amp", "losses", "quality"),
        data: Path | None = None) -> dict:
    """All three parts (quick: tiny sizes, for a smoke run); returns their figures."""
    with tempfile.TemporaryDirectory() as tmp:
        root = data or Path(tmp) / "synth"
        parts = {"throughput": throughput, "cuda_amp": cuda_amp, "losses": losses,
                 "quality": quality, "decoder_speed": lambda _root, q: decoder_speed(q)}
        results = {}
        for name in only:
            start = time.perf_counter()
            results[name] = parts[name](root, quick)
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(name, json.dumps(results[name], default=str), file=sys.stderr, flush=True)
        return results


DEFAULT_VARIANTS = ["report-flips", "unet-flips"]  # --only decoders: the default decoder and the report's, same recipe


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=["throughput", "cuda_amp", "losses", "quality"],
                        choices=["throughput", "cuda_amp", "losses", "quality", "decoders", "decoder_speed"])
    parser.add_argument("--data", type=Path, default=None,
                        help="the synthetic set (made here when missing)")
    parser.add_argument("--runs", type=Path, default=None, help="decoders: keep (and reuse) the runs here")
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS),
                        help="decoders: what to train and compare; ratios are to the first "
                             f"(default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--train-only", action="store_true", help="decoders: train, skip the table")
    parser.add_argument("--epochs", type=int, default=0, help="decoders: override the quality epochs (0: keep)")
    opts = parser.parse_args()
    if not opts.only:
        parser.error("--only needs at least one benchmark name")
    if "decoders" in opts.only and opts.only != ["decoders"]:
        parser.error("--only decoders runs on its own (its runs and table differ from the others')")
    if opts.only == ["decoders"] and opts.variants == []:
        parser.error("--variants needs at least one variant name")
    given = [flag for flag, used in (("--runs", opts.runs is not None), ("--train-only", opts.train_only),
                                     ("--epochs", opts.epochs != 0), ("--variants", opts.variants is not None))
             if used]
    opts.variants = DEFAULT_VARIANTS if opts.variants is None else opts.variants
    if given and opts.only != ["decoders"]:  # each shapes --only decoders alone: ignored, it misled
        parser.error(f"{given[0]} is for --only decoders; drop it, or run --only decoders")
    if opts.epochs < 0:
        parser.error(f"--epochs must be >= 0 (0: the quality settings' own), got {opts.epochs}")
    if opts.runs is not None and opts.runs.exists() and not opts.runs.is_dir():  # before a set is made for it
        parser.error(f"--runs {opts.runs}: not a folder")
    from mde.errors import MdeError

    try:
        if opts.data is not None and opts.data.exists() and not (opts.data / "meta.json").is_file() and (
                not opts.data.is_dir() or any(opts.data.iterdir())):
            raise MdeError(f"{opts.data}: not a synthetic set (no meta.json); give a new or empty folder to make "
                           "one there")
        if opts.data is not None:  # before any part runs: one refused at the end loses the others' figures
            check_data_settings(opts.data, opts.quick)
        if opts.only == ["decoders"]:
            with tempfile.TemporaryDirectory() as tmp:
                out = decoders(opts.data or Path(tmp) / "synth", opts.quick, opts.runs, tuple(opts.variants),
                               opts.train_only, opts.epochs)
        else:
            out = run(opts.quick, tuple(opts.only), opts.data)
    except MdeError as err:
        parser.error(str(err))
    json.dump(out, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    run_main(main)
