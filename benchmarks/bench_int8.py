"""INT8 on ONNX Runtime's CPU provider: the quantization options' latency ratios to FP32, measured in one run.

For each decoder (report: five ConvTranspose; unet: skip connections, no ConvTranspose) it
exports a model with random weights and BatchNorm statistics from synthetic images, writes the
two INT8 artifacts `mde calibrate` makes (`--target tensorrt`, `--target cpu`), builds the
alternatives `--target cpu` was chosen against (QOperator format, S8 activations, per-tensor
weights, ConvTranspose left float), and reports for each: latency and its ratio to FP32 (median
of per-round ratios, rounds interleaved so machine load hits every option alike), and the share
of convolutions ONNX Runtime runs as integer kernels. Then batch 8 for the artifacts, PyTorch
eager FP32 for reference, and parity of the artifacts against PyTorch on the validation images
at the INT8 tolerances.

INT8 gains need 8-bit dot-product instructions (AVX-512 VNNI / AVX-VNNI, or AMX); the CPU
flags and the load average are reported beside the figures.

    python benchmarks/bench_int8.py [--quick] [--decoder report --decoder unet] [--rounds N]
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from bench_runtime import time_calls  # benchmarks/ is on sys.path when these scripts run
from cli_common import CPU_FLAGS, Parser, machine, run_main

TARGETS = {"report": 0.60, "unet": 0.55}   # CPU INT8 / FP32 latency, batch 1 (issue 14)
TORCH_TARGET = 0.35                        # CPU INT8 / PyTorch eager FP32


def cpu_int8_flags() -> dict[str, bool]:
    """Which 8-bit dot-product instruction sets this CPU advertises (Linux /proc/cpuinfo)."""
    flags = machine()["cpu_flags"]
    return {name: name in flags for name in CPU_FLAGS}


def _checkpoint(path: Path, data: Path, backbone: str, size: int, decoder: str) -> None:
    """A checkpoint with random weights and BatchNorm statistics from the training images."""
    from mde.runtime.images import list_images, read_rgb
    from mde.runtime.preprocess import preprocess
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    images = [read_rgb(p) for p in list_images(data / "train" / "rgb")[:32]]
    save_untrained(path, ModelArgs(backbone=backbone, image_size=size, max_depth=20.0, decoder=decoder),
                   preprocess(images, (size, size)))


def _qoperator(pre, ranges: dict, per_channel: bool = True):
    """The same CPU choices in ONNX Runtime's QOperator format (QLinearConv nodes written directly)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode

    from mde.calibration.config import TARGETS as SPECS

    tensors = TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()})
    quantizer = ONNXQuantizer(pre, per_channel, False, QuantizationMode.QLinearOps, True, QuantType.QInt8,
                              QuantType.QUInt8, tensors, [], [], list(SPECS["cpu"].op_types),
                              {"WeightSymmetric": True})
    model = ONNXModel(quantizer.quantize_model())
    model.topological_sort()
    return model.model


def build_variants(pre_path: Path, images: list[np.ndarray], out: Path) -> dict[str, Path]:
    """The alternatives to `--target cpu`, from min/max ranges (latency does not depend on the range method)."""
    import onnx

    from mde.calibration import quantize as qz
    from mde.calibration.config import TARGETS as SPECS
    from mde.calibration.subpixel import rewrite_conv_transpose

    cpu = SPECS["cpu"]
    plain = onnx.load(str(pre_path))
    phase = rewrite_conv_transpose(plain)
    phase_path = out / "pre.phase.onnx"
    onnx.save(phase, str(phase_path))

    def ranges(path: Path, symmetric: bool) -> dict:
        return qz.collect_ranges(path, images, "minmax", cpu.op_types, symmetric=symmetric)

    asym_phase, asym_plain = ranges(phase_path, False), ranges(pre_path, False)
    s8 = dataclasses.replace(cpu, activation_type="int8")
    built = {
        "cpu, ConvTranspose left float": qz.quantize(plain, asym_plain, "minmax", cpu),
        "cpu, S8 activations": qz.quantize(phase, ranges(phase_path, True), "minmax", s8),
        "cpu, per-tensor weights": qz.quantize(phase, asym_phase, "minmax", cpu, per_channel=False),
        "cpu, QOperator format": _qoperator(phase, asym_phase),
    }
    paths = {}
    for i, (name, model) in enumerate(built.items()):
        if "QOperator" not in name and "S8" not in name:
            qz.fold_byte_moves(model)
        paths[name] = out / f"variant{i}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def time_interleaved(runners: dict, rounds: int, iterations: int, warmup: dict[str, int]) -> dict[str, list[float]]:
    """Per round and per option, the median milliseconds of `iterations` calls; options alternate each round.

    `warmup` gives the untimed calls per option (PyTorch eager needs about five before its
    latency settles; ONNX Runtime one or two).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():
        for _ in range(warmup.get(name, 2)):
            run()
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(1000.0 * float(np.median(time_calls(run, iterations, 0))))
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of each option's latency divided by `base`'s in the same round."""
    return {name: round(float(np.median(np.array(t) / np.array(times[base]))), 3) for name, t in times.items()}


def _runners(paths: dict[str, Path], x: np.ndarray, threads: int) -> dict:
    from mde.runtime.backends.onnxruntime import create_session

    runners = {}
    for name, path in paths.items():
        session = create_session(path, providers=["CPUExecutionProvider"], threads=threads)
        runners[name] = (lambda s: lambda: s.run(None, {"image": x}))(session)
    return runners


def _torch_runner(ckpt: Path, x: np.ndarray):
    import torch

    from mde.train.checkpoint import load_model

    model, _ = load_model(ckpt)
    model.eval()
    tensor = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            model(tensor)
    return run


def _parity(ckpt: Path, artifacts: dict[str, Path], data: Path, size: int) -> dict[str, dict]:
    """Each artifact against PyTorch on the validation images, with its precision's default tolerances."""
    import torch

    from mde.data.readers import open_dataset
    from mde.runtime.backends.onnxruntime import create_session
    from mde.runtime.parity import DEFAULT_TOLERANCES, compare, gt_metrics
    from mde.runtime.preprocess import preprocess
    from mde.train.checkpoint import load_model

    model, _ = load_model(ckpt)
    val = open_dataset(data, split="val")
    sessions = {k: create_session(p, providers=["CPUExecutionProvider"]) for k, p in artifacts.items()}
    ref, outs, gts = [], {k: [] for k in sessions}, []
    with torch.inference_mode():
        for i in range(len(val)):
            sample = val[i]
            batch = preprocess(sample.rgb, (size, size))
            ref.append(model(torch.from_numpy(batch)).numpy()[0])
            gts.append(sample.depth)
            for k, s in sessions.items():
                outs[k].append(s.run(None, {"image": batch})[0][0])
    ref_m = gt_metrics(ref, gts, 20.0, 20.0)
    result = {}
    for k in sessions:
        precision = "fp32" if k == "fp32" else "int8"
        r = compare(ref, outs[k], gts, tolerance=DEFAULT_TOLERANCES[precision], max_depth=20.0, data_range=20.0,
                    precision=precision, reference_metrics=ref_m)
        result[k] = {"rmse": r.rmse, "d_rmse": r.d_rmse, "ssim": r.ssim, "d_ssim": r.d_ssim,
                     "p99_over_range": r.p99_over_range, "passed": r.passed}
    return result


def bench_decoder(decoder: str, quick: bool, rounds: int, root: Path) -> dict:
    """Everything above for one decoder; returns the figures."""
    import torch

    from mde.calibration import quantize as qz
    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig
    from mde.calibration.inspect import integer_kernel_share
    from mde.data.readers import open_dataset
    from mde.data.synth import synthesize
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime.preprocess import preprocess

    backbone, size = ("resnet18", 128) if quick else ("resnet50", 224)
    n_calib, n_val, iterations, threads = (16, 4, 3, 2) if quick else (64, 16, 5, 2)
    torch.set_num_threads(threads)
    data, ckpt, export = root / "data", root / f"{decoder}.pt", root / decoder
    if not (data / "meta.json").exists():
        synthesize(data, train=n_calib + 16, val=n_val, size=size, seed=0, progress=False, workers=1)
    _checkpoint(ckpt, data, backbone, size, decoder)
    export_checkpoint(ExportConfig(checkpoint=ckpt, out=export, precisions=("fp32",), progress=False))
    artifacts = {"fp32": export / "model.onnx"}
    reports = {}
    for target, name in (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8.cpu.onnx")):
        reports[target] = calibrate(CalibrationConfig(
            model=export / "model.onnx", data=data, out=export / name, target=target, num_images=n_calib,
            allow_few=True, max_float_nodes=0, progress=False))
        artifacts[f"int8 {target}"] = export / name

    train = open_dataset(data, split="train")
    images = [preprocess(train[i].rgb, (size, size)) for i in range(8)]
    pre = root / f"{decoder}.pre.onnx"
    qz.pre_process(export / "model.onnx", pre)
    (root / f"{decoder}-variants").mkdir(exist_ok=True)
    options = {**artifacts, **build_variants(pre, images, root / f"{decoder}-variants")}

    x1 = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    x8 = np.random.default_rng(1).random((8, 3, size, size), dtype=np.float32)
    shares = {k: integer_kernel_share(p) for k, p in options.items()}
    warmup = {"pytorch fp32": 8}
    b1 = time_interleaved({**_runners(options, x1, threads), "pytorch fp32": _torch_runner(ckpt, x1)},
                          rounds, iterations, warmup)
    b8 = time_interleaved({**_runners(artifacts, x8, threads), "pytorch fp32": _torch_runner(ckpt, x8)},
                          max(3, rounds // 2), max(2, iterations // 2), warmup)
    parity = _parity(ckpt, options, data, size)
    r1, r8 = ratios(b1, "fp32"), ratios(b8, "fp32")
    t1, t8 = ratios(b1, "pytorch fp32"), ratios(b8, "pytorch fp32")
    cpu = "int8 cpu"
    return {
        "backbone": backbone, "decoder": decoder, "image_size": size, "threads": threads,
        "rounds": rounds, "iterations_per_round": iterations,
        "batch1": {k: {"ms": round(float(np.median(v)), 2), "vs_fp32": r1[k], "vs_pytorch": t1[k],
                       "integer_share": shares[k]["share"] if k in shares else None,
                       "integer_convs": f"{shares[k]['integer']}/{shares[k]['convolutions']}" if k in shares else None}
                   for k, v in b1.items()},
        "batch8": {k: {"ms": round(float(np.median(v)), 2), "vs_fp32": r8[k], "vs_pytorch": t8[k]}
                   for k, v in b8.items()},
        "parity": parity,
        "heldout_drop": {t: r.before["drop"] for t, r in reports.items()},
        "targets": {
            "cpu_int8_over_fp32_b1": [r1[cpu], TARGETS.get(decoder), r1[cpu] <= TARGETS.get(decoder, 1.0)],
            "cpu_int8_over_pytorch_b1": [t1[cpu], TORCH_TARGET, t1[cpu] <= TORCH_TARGET],
            "cpu_int8_over_fp32_b8": [r8[cpu], TARGETS.get(decoder), r8[cpu] <= TARGETS.get(decoder, 1.0)],
            "cpu_int8_over_pytorch_b8": [t8[cpu], TORCH_TARGET, t8[cpu] <= TORCH_TARGET],
            "parity_pass": parity[cpu]["passed"],
        },
    }


QUICK_ROUNDS, ROUNDS = 3, 7


def run(quick: bool = False, decoders: tuple[str, ...] = (), rounds: int | None = None) -> dict:
    """Benchmark every decoder; return the figures (`report` prints them). `rounds`: 3 with `quick`, else 7."""
    from mde.train.model import decoder_names

    rounds = rounds or (QUICK_ROUNDS if quick else ROUNDS)
    decoders = decoders or decoder_names()  # registration order: report first
    load_before = os.getloadavg()
    result: dict = {"cpu_flags": cpu_int8_flags(), "cpu_count": os.cpu_count(), "decoders": {}}
    with tempfile.TemporaryDirectory(prefix="mde-bench-int8-") as tmp:
        for decoder in decoders:
            result["decoders"][decoder] = bench_decoder(decoder, quick, rounds, Path(tmp))
    result["load_average"] = {"start": [round(v, 2) for v in load_before],
                              "end": [round(v, 2) for v in os.getloadavg()]}
    return result


def unsteady_rows(rows: dict, tolerance: float = 0.25) -> dict[str, tuple[float, float]]:
    """Rows whose `ms` (a median over rounds) over FP32's disagrees with their `vs_fp32` (a median of each round's
    ratio) by more than `tolerance`: with a steady load the two agree; under a changing one they told opposite
    stories (1.52x in ms, 0.73x as the ratio) without a word. {name: (ms ratio, vs_fp32)}."""
    fp32 = next((row["ms"] for name, row in rows.items() if name.startswith("fp32")), None)
    if not fp32:
        return {}
    return {name: (row["ms"] / fp32, row["vs_fp32"]) for name, row in rows.items()
            if row["vs_fp32"] and abs(row["ms"] / fp32 / row["vs_fp32"] - 1) > tolerance}


def report(result: dict) -> None:
    """One table per decoder: latency, ratios and integer-kernel share of every option."""
    load = result["load_average"]
    for decoder, figures in result["decoders"].items():
        print(f"\n{figures['backbone']} + {decoder} decoder, {figures['image_size']} px, "
              f"{figures['threads']} threads, ONNX Runtime CPU (1-minute load average {load['start'][0]} at the "
              f"start, {load['end'][0]} at the end)")
        print(f"{'option':34s} {'ms':>8s} {'/FP32':>6s} {'/torch':>7s} {'integer convs':>14s} "
              f"{'dRMSE':>9s} {'dSSIM':>9s} parity")
        for name, row in figures["batch1"].items():
            p = figures["parity"].get(name)
            acc = (f"{p['d_rmse']:+9.2e} {p['d_ssim']:+9.2e} {'PASS' if p['passed'] else 'FAIL'}" if p else "")
            print(f"{name:34s} {row['ms']:8.1f} {row['vs_fp32']:6.3f} {row['vs_pytorch']:7.3f} "
                  f"{row['integer_convs'] or '-':>14s} {acc}")
        for name, row in figures["batch8"].items():
            print(f"{name + ' (batch 8)':34s} {row['ms']:8.1f} {row['vs_fp32']:6.3f} {row['vs_pytorch']:7.3f}")
        for batch in ("batch1", "batch8"):
            for name, (from_ms, ratio) in unsteady_rows(figures[batch]).items():
                print(f"note: {name} ({batch.replace('batch', 'batch ')}): its ms over FP32's is {from_ms:.2f}, its "
                      f"/FP32 {ratio:.2f}; the load changed between rounds (the ratio, taken within each round, is "
                      "the steadier figure): rerun on an idle machine")
        for target, figure in figures["targets"].items():
            if isinstance(figure, list):  # [measured, target, met]
                value, goal, met = figure
                print(f"target {target}: {value:.3f}, at most {goal}: {'met' if met else 'MISSED'}" if goal is not None
                      else f"target {target}: {value:.3f} (none set for this decoder)")
            else:
                print(f"target {target}: {figure}")


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"resnet18 at 128 px, fewer images and {QUICK_ROUNDS} rounds")
    parser.add_argument("--decoder", action="append", default=[], help="decoder(s) to measure (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--rounds", type=int, help=f"interleaved timing rounds (default {ROUNDS}; "
                        f"{QUICK_ROUNDS} with --quick)")
    opts = parser.parse_args()
    from mde.train.model import decoder_names

    if len(set(opts.decoder)) < len(opts.decoder):  # each decoder's files go to one folder: a second would clash
        parser.error(f"--decoder given twice: {' '.join(opts.decoder)}")
    unknown = sorted(set(opts.decoder) - set(decoder_names()))
    if unknown:
        parser.error(f"unknown --decoder {', '.join(unknown)}; choose from {', '.join(decoder_names())}")
    if opts.rounds is not None and opts.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {opts.rounds}")
    result = run(quick=opts.quick, decoders=tuple(opts.decoder), rounds=opts.rounds)
    if opts.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        report(result)


if __name__ == "__main__":
    run_main(main)
