"""Runtime benchmark: ONNX Runtime (via DepthEstimator) vs PyTorch eager, as ratios measured in one run.

    python benchmarks/bench_runtime.py [--quick] [--threads T] [--decoder D] [--model model.onnx --checkpoint ckpt.pt]
        [--json]

Figures (resnet50 and `mde train`'s default decoder at 224x224, batch 1, CPU, FP32, same thread count for both):
1. latency of `DepthEstimator.predict` (pre/post included) / PyTorch eager (`inference_mode`);
2. model FLOPs / ORT inference latency, as a fraction of this machine's FP32 GEMM rate;
3. cold start (fresh process: launch -> first depth map) and peak RSS, runtime / PyTorch path;
4. preprocessing + postprocessing of a 480x640 camera frame (resized to the network and back) as a % of
   inference time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cli_common import Parser, decoder_choices, default_decoder, run_main

TARGETS = {"latency_ratio": 0.5, "gemm_efficiency": 0.9, "cold_start_ratio": 0.5,
           "peak_rss_ratio": 0.4, "pre_post_pct": 5.0}
SIZE = 224
CAMERA = (480, 640)  # the frame pre/post is timed on: what a robot's camera hands over, not the network's size


def build_artifacts(folder: Path, backbone: str = "resnet50", size: int = SIZE,
                    decoder: str | None = None) -> tuple[Path, Path]:
    """A random-weight DepthNet checkpoint and the FP32 ONNX that `mde export` makes of it (the graph users get;
    `mde train`'s default decoder unless named)."""
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    ckpt = folder / "model.pt"
    save_untrained(ckpt, ModelArgs(backbone=backbone, image_size=size, max_depth=20.0,
                                   decoder=decoder or default_decoder()))
    artifacts = export_checkpoint(ExportConfig(checkpoint=ckpt, out=folder / "export", precisions=("fp32",),
                                               progress=False))
    return artifacts[0].path, ckpt


def count_flops(model: Any, size: tuple[int, int] = (SIZE, SIZE)) -> int:
    """FLOPs (2 x multiply-adds) of the convolutions, transposed convolutions and linear layers at `size` (H, W)."""
    import torch
    from torch import nn

    macs = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel scatters a k x k x out/groups patch
            k = module.kernel_size[0] * module.kernel_size[1]
            macs[0] += x.numel() * (module.out_channels // module.groups) * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs[0] += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            macs[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.inference_mode():
        model(torch.rand(1, 3, *size))
    for h in handles:
        h.remove()
    return 2 * macs[0]


def gemm_rate(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured FP32 GEMM FLOP/s (torch.matmul, `threads` threads): median of repeated n x n products."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


def time_calls(fn: Any, iterations: int, warmup: int) -> list[float]:
    """Seconds of each of `iterations` calls of `fn`, after `warmup` untimed ones (the benchmarks' one timing loop)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# VmHWM (this process's own peak RSS): ru_maxrss would carry the forking parent's peak across exec.
_PEAK = (
    "def PEAK_RSS_KIB():\n"
    "    return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
)

COLD_RUNTIME = _PEAK + """
import sys, numpy as np
from mde.runtime import DepthEstimator
est = DepthEstimator.open(sys.argv[1], threads=int(sys.argv[3]), providers=["CPUExecutionProvider"])
depth = est.predict(np.full((224, 224, 3), 127, np.uint8))
print(PEAK_RSS_KIB(), float(depth.mean()))
"""

COLD_TORCH = _PEAK + """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from mde.train.checkpoint import load_model
from mde.runtime.preprocess import postprocess, preprocess
model, _ = load_model(sys.argv[2], "cpu")
size = model.args.input_hw  # the network's own size, as the runtime child runs it
with torch.inference_mode():
    out = model(torch.from_numpy(preprocess([np.full((224, 224, 3), 127, np.uint8)], size))).numpy()
depth = postprocess(out[0], (224, 224), model.args.max_depth)
print(PEAK_RSS_KIB(), float(depth.mean()))
"""


def cold_start(code: str, onnx_path: Path, ckpt: Path, threads: int, repeats: int) -> tuple[float, float]:
    """Median wall seconds (launch -> exit after the first depth map) and median peak RSS (MiB)."""
    walls, rss = [], []
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(ckpt), str(threads)],
                              capture_output=True, text=True, env=env, check=False)
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"cold-start child failed: {proc.stderr.strip().splitlines()[-1:]}")
        rss.append(int(proc.stdout.split()[0]) / 1024.0)
    return statistics.median(walls), statistics.median(rss)


def run(quick: bool = False, threads: int = 0, model: Path | None = None,
        checkpoint: Path | None = None, decoder: str | None = None) -> dict[str, Any]:
    """Measure the four figures in this process (and fresh subprocesses); return them with targets."""
    import torch

    from mde.io import sha256_file
    from mde.runtime import DepthEstimator
    from mde.runtime.parity_run import source_mismatch
    from mde.runtime.preprocess import postprocess, preprocess
    from mde.train.checkpoint import load_model

    threads = threads or len(os.sched_getaffinity(0))
    iterations, warmup, repeats = (10, 3, 1) if quick else (40, 5, 3)
    with tempfile.TemporaryDirectory(prefix="mde-bench-") as tmp:
        if model is None or checkpoint is None:
            model, checkpoint = build_artifacts(Path(tmp), decoder=decoder)
        torch.set_num_threads(threads)
        net, _ = load_model(checkpoint, "cpu")
        size = net.args.input_hw  # (H, W)
        rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        est = DepthEstimator.open(model, providers=["CPUExecutionProvider"], threads=threads)
        torch_est = DepthEstimator.open(checkpoint, threads=threads)  # the torch runner: same pre/post
        mismatch = source_mismatch(est.runner, {"checkpoint_sha256": sha256_file(checkpoint),
                                                "weights_sha256": torch_est.runner.weights_sha256()},
                                   Path(checkpoint).name)
        if mismatch:  # the comparison (and the latency ratio) would be of two different models
            print(f"bench_runtime.py: error: {model}: {mismatch}", file=sys.stderr)
            raise SystemExit(2)

        def torch_predict() -> np.ndarray:
            return torch_est.predict(rgb)

        diff = float(np.abs(est.predict(rgb) - torch_predict()).max())
        # interleave ORT's predict and bare model call and torch's rounds, so machine noise hits all three alike (the
        # bare call timed on its own came out slower than predict, which includes it, under a changing load)
        batch = preprocess([rgb], size)
        ort_t, torch_t, infer_t = [], [], []
        for _ in range(3):
            ort_t += time_calls(lambda: est.predict(rgb), iterations // 3 + 1, warmup)
            infer_t += time_calls(lambda: est.infer(batch), iterations // 3 + 1, warmup)
            torch_t += time_calls(torch_predict, iterations // 3 + 1, warmup)
        out = est.infer(batch)
        pre_t = time_calls(lambda: preprocess([rgb], size), iterations * 5, warmup)
        post_t = time_calls(lambda: postprocess(out[0], size, est.metadata.max_depth), iterations * 5, warmup)
        cam = np.random.default_rng(1).integers(0, 256, (*CAMERA, 3), dtype=np.uint8)
        pre_cam = time_calls(lambda: preprocess([cam], size), iterations * 5, warmup)
        post_cam = time_calls(lambda: postprocess(out[0], CAMERA, est.metadata.max_depth), iterations * 5, warmup)
        flops = count_flops(net, size)
        gemm = gemm_rate(threads, seconds=1.0 if quick else 3.0)
        est.close()
        cold_rt = cold_start(COLD_RUNTIME, model, checkpoint, threads, repeats)
        cold_pt = cold_start(COLD_TORCH, model, checkpoint, threads, repeats)

    med = statistics.median
    ort_ms, torch_ms, infer_ms = med(ort_t) * 1e3, med(torch_t) * 1e3, med(infer_t) * 1e3
    pre_ms, post_ms = med(pre_t) * 1e3, med(post_t) * 1e3
    pre_cam_ms, post_cam_ms = med(pre_cam) * 1e3, med(post_cam) * 1e3
    figures = {
        "latency_ratio": ort_ms / torch_ms,
        "gemm_efficiency": (flops / (infer_ms / 1e3)) / gemm,
        "cold_start_ratio": cold_rt[0] / cold_pt[0],
        "peak_rss_ratio": cold_rt[1] / cold_pt[1],
        "pre_post_pct": 100.0 * (pre_cam_ms + post_cam_ms) / infer_ms,
    }
    return {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "threads": threads, "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__, "platform": sys.platform},
        "model": {"backbone": net.args.backbone, "decoder": net.args.decoder, "size": list(size), "gflops": flops / 1e9,
                  "max_abs_diff_ort_vs_torch_m": diff},
        "measured": {
            "ort_predict_ms": ort_ms, "torch_predict_ms": torch_ms, "ort_infer_ms": infer_ms,
            "ort_gflops_per_s": flops / (infer_ms / 1e3) / 1e9, "gemm_gflops_per_s": gemm / 1e9,
            "cold_start_runtime_s": cold_rt[0], "cold_start_torch_s": cold_pt[0],
            "peak_rss_runtime_mib": cold_rt[1], "peak_rss_torch_mib": cold_pt[1],
            "preprocess_ms": pre_ms, "postprocess_ms": post_ms,
            "preprocess_480x640_ms": pre_cam_ms, "postprocess_480x640_ms": post_cam_ms,
        },
        "figures": figures,
        "targets": TARGETS,
        "met": {k: (v <= TARGETS[k] if k != "gemm_efficiency" else v >= TARGETS[k]) for k, v in figures.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0 = all CPUs available)")
    parser.add_argument("--decoder", choices=decoder_choices(), default=None,
                        help="the decoder of the random-weight model (default: mde train's)")
    parser.add_argument("--model", type=Path, help="an existing model.onnx (with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint it was exported from")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.checkpoint is None):
        parser.error("--model and --checkpoint go together (the model is compared with the checkpoint it came from)")
    for path, expected in ((args.model, "model.onnx"), (args.checkpoint, "best.pt")):
        if path is not None and not path.is_file():
            said = f"is a folder; expected a file ({expected})" if path.is_dir() else "file not found"
            parser.error(f"{path}: {said}")
    if args.model is not None:  # the figures are those of an FP32 ONNX on ORT's CPU provider (GEMM FLOP/s among them)
        from mde.runtime import read_metadata

        if args.model.suffix.lower() != ".onnx" or read_metadata(args.model).precision != "fp32":
            parser.error(f"--model {args.model}: expected the FP32 ONNX (model.onnx) exported from --checkpoint")
    from mde.errors import InputError
    from mde.runtime.backends.onnxruntime import check_threads_option

    try:  # before any model is built: torch.set_num_threads(100000) crashed the process
        check_threads_option(args.threads)
    except InputError as err:
        parser.error(str(err))
    if args.decoder is not None and args.model is not None:
        parser.error("--decoder picks the random-weight model's; --model brings its own")
    result = run(args.quick, args.threads, args.model, args.checkpoint, args.decoder)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    report(result)


def report(result: dict[str, Any]) -> None:
    """Print the figures of `run` against their targets."""
    m, f, t, ok = result["measured"], result["figures"], result["targets"], result["met"]
    print(f"mde runtime benchmark: {result['model']['backbone']} + {result['model']['decoder']} decoder "
          f"{result['model']['size'][0]}x{result['model']['size'][1]}, "
          f"batch 1, FP32, {result['machine']['threads']} threads ({result['machine']['cpus']} CPUs), "
          f"ORT {result['machine']['onnxruntime']} CPU vs torch {result['machine']['torch']} eager")
    rows = [
        ("1 latency ORT predict / torch eager", f["latency_ratio"], f"<= {t['latency_ratio']}",
         f"{m['ort_predict_ms']:.1f} ms vs {m['torch_predict_ms']:.1f} ms", ok["latency_ratio"]),
        ("2 model FLOP/s / GEMM FLOP/s", f["gemm_efficiency"], f">= {t['gemm_efficiency']}",
         (f"{m['ort_gflops_per_s']:.0f} vs {m['gemm_gflops_per_s']:.0f} GFLOP/s "
          f"({result['model']['gflops']:.2f} GFLOP in {m['ort_infer_ms']:.1f} ms)"), ok["gemm_efficiency"]),
        ("3a cold start runtime / torch", f["cold_start_ratio"], f"<= {t['cold_start_ratio']}",
         f"{m['cold_start_runtime_s']:.2f} s vs {m['cold_start_torch_s']:.2f} s", ok["cold_start_ratio"]),
        ("3b peak RSS runtime / torch", f["peak_rss_ratio"], f"<= {t['peak_rss_ratio']}",
         f"{m['peak_rss_runtime_mib']:.0f} MiB vs {m['peak_rss_torch_mib']:.0f} MiB", ok["peak_rss_ratio"]),
        ("4 pre+post % of inference, 480x640", f["pre_post_pct"], f"<= {t['pre_post_pct']}",
         f"{m['preprocess_480x640_ms']:.2f} + {m['postprocess_480x640_ms']:.2f} ms vs {m['ort_infer_ms']:.1f} ms",
         ok["pre_post_pct"]),
    ]
    for name, value, target, detail, met in rows:
        print(f"  {name:38s} {value:7.3f}  target {target:7s} {'met' if met else 'MISSED':6s}  {detail}")
    if f["gemm_efficiency"] > 1.0:  # the model cannot beat the machine's own matrix product: a load change
        print("  note: model FLOP/s above the GEMM reference means the machine's load changed between the two "
              "timings; rerun on an idle machine")
    if m["ort_infer_ms"] > m["ort_predict_ms"]:  # predict is the model call and more: the load changed meanwhile
        print(f"  note: the bare model call ({m['ort_infer_ms']:.1f} ms) timed slower than predict, which includes it "
              f"({m['ort_predict_ms']:.1f} ms): the machine's load changed; rerun on an idle machine")
    print(f"  (an image of the network's size, nothing to resize: preprocess {m['preprocess_ms']:.3f} ms, "
          f"postprocess {m['postprocess_ms']:.3f} ms; max |ORT - torch| "
          f"{result['model']['max_abs_diff_ort_vs_torch_m']:.2e} m)")


if __name__ == "__main__":
    run_main(main)
