"""INT8 (Q/DQ) vs FP32 on ONNX Runtime CPU: latency ratio in one run, and the accuracy deltas to PyTorch.

INT8 is only faster on CPUs with 8-bit dot-product instructions (VNNI: avx512_vnni / avx_vnni,
or AMX); without them ONNX Runtime's int8 kernels may be no faster than FP32. The CPU flags
are reported beside the figures.

    python benchmarks/bench_int8.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_int8_flags() -> dict[str, bool]:
    """Which 8-bit dot-product instruction sets this CPU advertises (Linux /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {name: name in flags for name in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2")}


def _latency(path: Path, x: np.ndarray, iterations: int, threads: int) -> float:
    """Median milliseconds of one ONNX Runtime CPU call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"image": x})
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _checkpoint(path: Path, data: Path, backbone: str, size: int) -> None:
    """A checkpoint with random weights and BatchNorm statistics from the training images."""
    import torch

    from mde.runtime.images import list_images, read_rgb
    from mde.runtime.preprocess import preprocess
    from mde.train.checkpoint import save_checkpoint
    from mde.train.model import ModelArgs, build_model

    torch.manual_seed(0)
    args = ModelArgs(backbone=backbone, image_size=size, max_depth=20.0)
    model = build_model(args).train()
    images = [read_rgb(p) for p in list_images(data / "train" / "rgb")[:32]]
    with torch.no_grad():
        for chunk in torch.split(torch.from_numpy(preprocess(images, (size, size))), 8):
            model(chunk)
    save_checkpoint(path, {"model_args": vars(args), "model": model.state_dict(), "config": {},
                           "epoch": 0, "metrics": {}})


def run(quick: bool = False) -> dict:
    """Build a model, export FP32, calibrate INT8, time both on ONNX Runtime CPU, compare with PyTorch."""
    import torch

    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime.parity import DEFAULT_TOLERANCES, compare, gt_metrics
    from mde.runtime.preprocess import preprocess
    from mde.synth import synthesize
    from mde.train.checkpoint import load_model
    from mde.train.data import open_dataset

    backbone, size = ("resnet18", 128) if quick else ("resnet50", 224)
    n_calib, n_val, iterations, threads = (16, 4, 10, 2) if quick else (64, 16, 30, 0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="mde-bench-int8-") as tmp:
        root = Path(tmp)
        data, ckpt, export = root / "data", root / "model.pt", root / "export"
        synthesize(data, train=n_calib + 16, val=n_val, size=size, seed=0, progress=False)
        _checkpoint(ckpt, data, backbone, size)
        export_checkpoint(ExportConfig(checkpoint=ckpt, out=export, precisions=("fp32",), progress=False))
        report = calibrate(CalibrationConfig(
            model=export / "model.onnx", data=data, out=export / "model.int8.onnx", num_images=n_calib,
            allow_few=True, max_float_nodes=0, progress=False))
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        fp32_ms = _latency(export / "model.onnx", x, iterations, threads)
        int8_ms = _latency(export / "model.int8.onnx", x, iterations, threads)

        import onnxruntime as ort

        model, _ = load_model(ckpt)
        val = open_dataset(data, split="val")
        sessions = {p: ort.InferenceSession(str(export / f), providers=["CPUExecutionProvider"])
                    for p, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
        ref, outs, gts = [], {p: [] for p in sessions}, []
        with torch.inference_mode():
            for i in range(len(val)):
                sample = val[i]
                batch = preprocess(sample.rgb, (size, size))
                ref.append(model(torch.from_numpy(batch)).numpy()[0])
                gts.append(sample.depth)
                for p, s in sessions.items():
                    outs[p].append(s.run(None, {"image": batch})[0][0])
        ref_m = gt_metrics(ref, gts, 20.0, 20.0)
        accuracy = {}
        for p in sessions:
            r = compare(ref, outs[p], gts, tolerance=DEFAULT_TOLERANCES[p], max_depth=20.0, data_range=20.0,
                        precision=p, reference_metrics=ref_m)
            accuracy[p] = {"rmse": r.rmse, "d_rmse": r.d_rmse, "ssim": r.ssim, "d_ssim": r.d_ssim,
                           "p99_over_range": r.p99_over_range, "passed": r.passed}
    result = {
        "backbone": backbone, "image_size": size, "calibration_images": report.num_images,
        "threads": threads or "ort default", "iterations": iterations, "cpu_flags": cpu_int8_flags(),
        "fp32_ms": round(fp32_ms, 3), "int8_ms": round(int8_ms, 3),
        "int8_over_fp32_latency": round(int8_ms / fp32_ms, 3),
        "pytorch_rmse": float(np.mean([m["rmse"] for m in ref_m])),
        "accuracy": accuracy, "heldout_drop": report.before["drop"],
    }
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv[1:])
