"""The sections of benchmarks/gpu_check.py: what each measures, with what it shares (settings, artifacts).

Each section takes the `Check` and returns a dict of figures (keys carry their units); it raises
`Skip` when it cannot run here, puts per-item problems under "errors" and failed checks under
"failed_checks". The project's own code does the work: bench_train / bench_runtime for timing,
`mde.data.synth`, `mde.train.model`, `mde.export`, `mde.calibration`, `mde parity`, `DepthEstimator`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("environment", "tests", "model", "training", "torch_inference", "export", "onnxruntime", "tensorrt")
NEEDS = {"torch_inference": ("model",), "export": ("model",), "onnxruntime": ("model", "export"),
         "tensorrt": ("model", "export")}
FILES = {"json": "gpu_check.json", "markdown": "gpu_check.md", "pytest_log": "gpu_check.pytest.log"}
TEST_SELECTION = "gpu or tensorrt"
# the test files holding such tests: collecting the other 40 costs time, and an error in one of them (a module
# that machine lacks) stopped pytest before the CUDA tests ran
MARKED = re.compile(r"\bmark\.(gpu|tensorrt)\b")
TRAIN_GOAL = 1.5
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets (seconds) for one --device."""

    backbone: str
    size: int
    synth_train: int
    synth_val: int
    train_batch: int
    batches: tuple[int, ...]
    iterations: int
    warmup: int
    calib_images: int
    holdout_images: int
    parity_images: int
    total_s: float
    budgets: dict[str, float] = field(default_factory=dict)


PROFILES = {
    "cuda": Profile("resnet50", 224, 48, 16, 64, (1, 8), 50, 10, 32, 8, 16, 450.0,
                    {"environment": 20, "tests": 60, "model": 30, "training": 45, "torch_inference": 30,
                     "export": 150, "onnxruntime": 50, "tensorrt": 60}),
    # generous: the dry run checks that every path works, on shared CI machines
    "cpu": Profile("resnet18", 64, 24, 4, 8, (1, 8), 5, 2, 16, 4, 4, 600.0,
                   {"environment": 60, "tests": 120, "model": 60, "training": 60, "torch_inference": 60,
                    "export": 180, "onnxruntime": 120, "tensorrt": 60}),
}


class Skip(Exception):
    """A section that cannot run here; the message says why."""


class SectionTimeout(BaseException):
    """A section ran past its budget (BaseException: library `except Exception` blocks do not swallow it)."""


@dataclass
class Check:
    """What the sections share: settings, folders, and what earlier sections made."""

    device: str
    profile: Profile
    out: Path
    work: Path
    ort_path: Path | None
    data: Path | None = None
    checkpoint: Path | None = None
    onnx: dict[str, Path] = field(default_factory=dict)
    found: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, Any] = field(default_factory=dict)  # the running section's figures so far

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:400]}" if text else type(err).__name__


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as err:  # noqa: BLE001 - any import failure is "not usable here"
        return f"not usable ({one_line(err)})"


# -- sections -------------------------------------------------------------------------------------
def environment(ck: Check) -> dict[str, Any]:
    """Versions, the GPU, and which of PyTorch CUDA, onnxruntime-gpu and TensorRT are here."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    for module in ("torchvision", "numpy", "PIL", "onnx", "onnxscript", "onnxconverter_common", "matplotlib", "rich",
                   "pytest", "mde"):  # a missing one is said here, not as another section's error
        info[module] = _version(module)
    ort_found, trt_found = False, False
    try:
        import onnxruntime as ort

        info.update(onnxruntime=ort.__version__, onnxruntime_path=str(Path(ort.__file__).parent),
                    onnxruntime_providers=ort.get_available_providers())
        if ck.cuda and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
                info["onnxruntime_preload_dlls"] = "called"
            except Exception as err:  # noqa: BLE001
                info["onnxruntime_preload_dlls"] = one_line(err)
        ort_found = CUDA_EP in ort.get_available_providers()
    except Exception as err:  # noqa: BLE001
        info["onnxruntime"] = f"not usable ({one_line(err)})"
    try:
        import tensorrt

        info["tensorrt"], trt_found = tensorrt.__version__, True
    except Exception as err:  # noqa: BLE001
        info["tensorrt"] = f"not usable ({one_line(err)})"
    ck.found = {"pytorch_cuda": torch.cuda.is_available(), "onnxruntime_gpu": ort_found, "tensorrt": trt_found}
    return {"versions": info, "found": ck.found}


def marked_test_files() -> list[Path]:
    """tests/test_*.py files that mark a test `gpu` or `tensorrt` (relative to the checkout)."""
    return [path.relative_to(ROOT) for path in sorted((ROOT / "tests").glob("test_*.py"))
            if MARKED.search(path.read_text(errors="replace"))]


def tests(ck: Check, budget: float) -> dict[str, Any]:
    """`pytest tests -m "gpu or tensorrt"` in a subprocess; counts and every non-passed test from its JUnit XML."""
    import xml.etree.ElementTree as ET

    try:  # an import, not find_spec: pytest present without one of its own dependencies is a skip too
        import pytest  # noqa: F401
    except ImportError as err:
        raise Skip(f"pytest does not import ({err}); README 'GPU check' ships it and its dependencies "
                   "with the wheels") from None
    junit = ck.work / "pytest.junit.xml"
    env = dict(os.environ)
    if ck.ort_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ck.ort_path), env.get("PYTHONPATH")]))
    files = " ".join(map(str, marked_test_files()))
    cmd = [sys.executable, "-m", "pytest", *files.split(), "-m", TEST_SELECTION, "-q", "-rfEs",
           "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={junit}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(budget - 5, 5),
                              check=False)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, code = f"{err.stdout or ''}{err.stderr or ''}\n[killed after {err.timeout:.0f} s]", None
        output = output if isinstance(output, str) else output.decode(errors="replace")
    (ck.out / FILES["pytest_log"]).write_text(" ".join(cmd) + "\n\n" + output)
    if code is None:
        raise SectionTimeout(f"pytest ran past {budget - 5:.0f} s (log: {FILES['pytest_log']})")
    if not junit.is_file():
        raise RuntimeError(f"pytest exited {code} without a report: {output.strip().splitlines()[-1:]}")
    outcomes, counts = [], {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [c for c in case if c.tag in ("failure", "error", "skipped")]
        kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[kinds[0].tag] if kinds else "passed"
        counts[kind] += 1
        if kinds:
            message = (kinds[0].get("message") or kinds[0].text or "").strip().splitlines()
            outcomes.append({"test": name, "outcome": kind, "message": (message[0] if message else "")[:300]})
    result: dict[str, Any] = {"selection": f'pytest {files} -m "{TEST_SELECTION}"', "exit_code": code, **counts,
                              "not_passed": outcomes, "log": FILES["pytest_log"]}
    if counts["failed"] or counts["errors"] or code not in (0, 5):
        result["failed_checks"] = [f"{counts['failed']} failed, {counts['errors']} errors (pytest exit {code})"]
    return result


def model(ck: Check) -> dict[str, Any]:
    """Synthetic images (`mde data synth`) and a random-weight checkpoint whose BatchNorm statistics come from them."""
    import torch
    from cli_common import default_decoder  # benchmarks/ is sys.path[0] when this script runs

    from mde.data.synth import synthesize
    from mde.runtime.images import list_images, read_rgb
    from mde.runtime.preprocess import preprocess
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    if ck.cuda and not torch.cuda.is_available():  # an error, not a skip: a GPU check that ran nothing did not pass
        raise RuntimeError("no CUDA GPU visible to PyTorch, so nothing can run on one (--device cpu is the dry run)")
    p = ck.profile
    data = ck.work / "data"
    # --work kept from an earlier check: made again (force), the same images as the seed is fixed
    synthesize(data, train=p.synth_train, val=p.synth_val, size=p.size, seed=0, progress=False, force=True)
    images = [read_rgb(f) for f in list_images(data / "train" / "rgb")]
    ck.checkpoint = ck.work / "model.pt"
    decoder = default_decoder()  # the network users deploy: the skip decoder's Resize and Concat among its layers
    net = save_untrained(ck.checkpoint, ModelArgs(backbone=p.backbone, image_size=p.size, max_depth=20.0,
                                                  decoder=decoder),
                         preprocess(images, (p.size, p.size)), device=ck.device,
                         config={"data": str(data), "note": "gpu_check: random weights"})
    ck.data = data
    return {"backbone": p.backbone, "decoder": decoder, "image_size": p.size, "synth_train_images": p.synth_train,
            "synth_val_images": p.synth_val, "parameters_m": round(sum(x.numel() for x in net.parameters()) / 1e6, 2)}


def training(ck: Check) -> dict[str, Any]:
    """bench_train.cuda_amp: resnet50 training images/s, bf16 autocast + channels_last vs FP32."""
    import torch

    if not ck.cuda:
        raise Skip("--device cpu: AMP + channels_last training speed is a CUDA figure (bench_train.cuda_amp)")
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU visible to PyTorch")
    import bench_train  # benchmarks/ is sys.path[0] when this script runs

    result = bench_train.cuda_amp(ck.work, quick=False, batch=ck.profile.train_batch, size=ck.profile.size)
    if "skipped" in result:
        raise Skip(result["skipped"])
    return {**result, "goal_speedup": TRAIN_GOAL, "goal_met": result["speedup"] >= TRAIN_GOAL,
            "fp32_note": f"FP32 convolutions may use TF32 (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})"}


def _latency(fn: Any, iterations: int, warmup: int, batch: int) -> dict[str, float]:
    import statistics

    from bench_runtime import time_calls  # the one timing loop of the benchmarks

    times = sorted(time_calls(fn, iterations, warmup))
    median = statistics.median(times)
    return {"median_ms": round(median * 1e3, 3), "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1e3, 3),
            "images_per_s": round(batch / median, 1)}


def torch_inference(ck: Check) -> dict[str, Any]:
    """PyTorch eager latency per precision and batch; 16-bit runs use autocast + channels_last."""
    import torch

    from mde.train.checkpoint import load_model

    if ck.cuda and not torch.cuda.is_available():
        raise Skip("no CUDA GPU visible to PyTorch")
    p = ck.profile
    net, _ = load_model(ck.checkpoint, ck.device)
    reference, _ = load_model(ck.checkpoint, "cpu")
    dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    skipped = {} if ck.cuda else {p: "--device cpu: 16-bit inference is a GPU path" for p in ("fp16", "bf16")}
    rows = []
    for precision, dtype in dtypes.items():
        if precision in skipped:
            continue
        if dtype is not None:
            net = net.to(memory_format=torch.channels_last)
        for batch in p.batches:
            x = torch.rand(batch, 3, p.size, p.size, generator=torch.Generator().manual_seed(batch))
            xd = x.to(ck.device, memory_format=torch.channels_last if dtype is not None else torch.contiguous_format)

            def run(xd: torch.Tensor = xd, dtype: Any = dtype, net: Any = net) -> torch.Tensor:
                autocast = torch.autocast(ck.device, dtype=dtype) if dtype else contextlib.nullcontext()
                with torch.inference_mode(), autocast:
                    out = net(xd)
                if ck.cuda:
                    torch.cuda.synchronize()
                return out

            row = {"precision": precision, "batch": batch, **_latency(run, p.iterations, p.warmup, batch)}
            with torch.inference_mode():
                diff = (run().float().cpu() - reference(x)).abs().max().item()
            rows.append({**row, "max_abs_diff_vs_cpu_fp32_m": round(diff, 6)})
    return {"backbone": p.backbone, "image_size": p.size, "device": ck.device, "latency": rows, "not_run": skipped}


def export(ck: Check) -> dict[str, Any]:
    """`mde export` (FP32, FP16 ONNX; golden checks vs PyTorch) and `mde calibrate` (INT8 Q/DQ ONNX)."""
    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig
    from mde.export.exporter import ExportConfig, export_checkpoint

    p, out = ck.profile, ck.work / "export"
    precisions, not_run, errors = ["fp32"], {}, {}
    try:  # an import, not find_spec: present without one of its own dependencies is "not run" too
        import onnxconverter_common  # noqa: F401
    except ImportError as err:
        not_run["fp16"] = f"onnxconverter-common does not import ({err}; mde's FP16 converter); see README 'GPU check'"
    else:
        precisions.append("fp16")
    artifacts = export_checkpoint(ExportConfig(checkpoint=ck.checkpoint, out=out, precisions=tuple(precisions),
                                               force=True, progress=False))
    rows = [{"precision": a.precision, "file": a.path.name, "size_mib": round(a.size_bytes / 2**20, 2),
             "seconds": round(a.seconds, 1), "max_abs_diff_m": a.max_abs_diff, "p99_over_range": a.p99_over_range}
            for a in artifacts]
    ck.onnx.update({a.precision: a.path for a in artifacts})
    ck.partial.update(artifacts=rows, not_run=not_run, errors=errors)  # kept if calibration runs out of time
    started = time.perf_counter()
    try:
        report = calibrate(CalibrationConfig(model=ck.onnx["fp32"], data=ck.data, out=out / "model.int8.onnx",
                                             num_images=p.calib_images, holdout_images=p.holdout_images,
                                             allow_few=True, progress=False, target="tensorrt"))
        ck.onnx["int8"] = Path(report.out)
        rows.append({"precision": "int8", "file": Path(report.out).name,
                     "size_mib": round(Path(report.out).stat().st_size / 2**20, 2),
                     "seconds": round(time.perf_counter() - started, 1), "calibration_images": report.num_images,
                     "float_nodes": report.float_nodes, "ssim_drop_vs_fp32": report.after.get("drop"),
                     "ssim_drop_target_met": report.target_met})
    except Exception as err:  # noqa: BLE001 - FP32/FP16 stay usable for the later sections
        errors["int8"] = one_line(err)
    return {"artifacts": rows, "not_run": not_run, "errors": errors}


def _parity(ck: Check, artifacts: list[Path], name: str, providers: list[str] | None = None) -> list[dict[str, Any]]:
    """`mde parity CKPT ARTIFACT... --data DIR --limit N --json FILE [--providers P]` (the library call behind the
    command)."""
    from mde.errors import CheckFailed
    from mde.runtime.parity_run import ParityConfig
    from mde.runtime.parity_run import run_parity as parity_run

    path = ck.work / f"parity-{name}.json"
    with contextlib.suppress(CheckFailed):  # a FAIL is a result, read back below
        parity_run(ParityConfig(checkpoint=ck.checkpoint, artifacts=tuple(artifacts), data=ck.data,
                                limit=ck.profile.parity_images, json_path=path, providers=providers))
    keys = ("artifact", "precision", "backend", "images", "rmse", "ssim", "d_rmse", "d_ssim", "max_abs_diff",
            "p99_over_range", "passed", "failed")
    return [{k: r.get(k) for k in keys} for r in json.loads(path.read_text())["artifacts"]]


def _runtime_latency(ck: Check, path: Path, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """DepthEstimator.infer per batch (copies in and out included) and predict (pre/post, 480x640 image)."""
    import numpy as np

    from mde.runtime import DepthEstimator

    p, rows = ck.profile, []
    rng = np.random.default_rng(0)
    with DepthEstimator.open(path, **options) as est:
        info = {"providers": est.providers, "io_binding": getattr(est.runner, "uses_io_binding", None)}
        for batch in p.batches:
            x = rng.random((batch, 3, p.size, p.size), dtype=np.float32)
            rows.append({"call": "infer", "batch": batch, **_latency(lambda x=x: est.infer(x), p.iterations,
                                                                      p.warmup, batch)})
        rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        rows.append({"call": "predict 480x640", "batch": 1, **_latency(lambda: est.predict(rgb), p.iterations,
                                                                         p.warmup, 1)})
    return info, rows


def onnxruntime(ck: Check) -> dict[str, Any]:
    """The three ONNX on the CUDA provider (CPU with --device cpu): providers used, parity, latency."""
    from mde.runtime import open_runner
    from mde.runtime.backends.onnxruntime import import_ort

    ort = import_ort()
    if not ck.onnx:
        raise Skip("no ONNX artifact: the export section made none")
    available = ort.get_available_providers()
    if ck.cuda and CUDA_EP not in available:
        raise Skip(f"onnxruntime {ort.__version__} ({Path(ort.__file__).parent}) has no CUDA provider "
                   f"(has {available}): install onnxruntime-gpu and pass --ort-path (README 'GPU check')")
    wanted = CUDA_EP if ck.cuda else CPU_EP
    result: dict[str, Any] = ck.partial  # filled as it goes: kept when the budget runs out
    result.update(onnxruntime=ort.__version__, requested_provider=wanted, runs={}, latency=[], errors={})
    if not ck.cuda:
        result["not_run"] = {"CUDAExecutionProvider": "--device cpu: the CUDA provider is a GPU path"}
    # the CUDA provider by name: with TensorRT 10 installed, this machine's choice would be ORT's TensorRT
    # provider, three engine builds in this section's minute (and, mde's own engines aside, a path of its own)
    providers = [wanted, CPU_EP] if ck.cuda else None
    with open_runner(ck.onnx["fp32"], "onnxruntime", providers=providers) as runner:
        result["parity_providers"] = runner.providers
    result["parity"] = _parity(ck, list(ck.onnx.values()), "onnxruntime", providers)  # correctness first
    if ck.cuda and result["parity_providers"][:1] != [CUDA_EP]:
        result["errors"]["parity"] = f"mde parity ran on {result['parity_providers']}, not the CUDA provider"
    for precision, path in ck.onnx.items():
        try:
            info, rows = _runtime_latency(ck, path, backend="onnxruntime", providers=[wanted])
        except Exception as err:  # noqa: BLE001 - one artifact's failure leaves the others
            result["errors"][precision] = one_line(err)
            continue
        result["runs"][precision] = info
        if info["providers"][:1] != [wanted]:
            result["errors"][precision] = f"asked for {wanted}, the session runs on {info['providers']}"
        result["latency"] += [{"precision": precision, **row} for row in rows]
    failed = [r["artifact"] for r in result["parity"] if not r["passed"]]
    if failed:
        result["failed_checks"] = [f"parity FAIL: {', '.join(failed)}"]
    return result


def tensorrt(ck: Check) -> dict[str, Any]:
    """Engines from the FP16 and INT8 ONNX (the build behind `mde export --engine`), parity, latency."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        raise Skip(f"TensorRT is not installed ({err})") from None
    except Exception as err:  # noqa: BLE001 - e.g. its libraries do not load
        raise Skip(f"TensorRT does not import ({one_line(err)})") from None
    if not ck.cuda:
        raise Skip("--device cpu: TensorRT engines are built and run on a CUDA GPU")
    from mde.errors import BackendError
    from mde.export.tensorrt_build import BuildConfig, build_engine, require_tensorrt

    try:
        version, gpu, cc = require_tensorrt()
    except BackendError as err:
        raise Skip(str(err)) from None
    sources = {p: ck.onnx[p] for p in ("fp16", "int8") if p in ck.onnx}
    if not sources:
        raise Skip("no FP16 or INT8 ONNX to build from (see the export section)")
    p = ck.profile
    result: dict[str, Any] = ck.partial  # filled as it goes: kept when the budget runs out
    result.update(tensorrt=version, gpu=gpu, compute_capability=cc, builds=[], latency=[], errors={})
    engines = []
    for precision, onnx_path in sources.items():
        engine, started = onnx_path.parent / f"model.{precision}.engine", time.perf_counter()
        try:
            build_engine(onnx_path, engine, BuildConfig(precision=precision, input_size=(p.size, p.size),
                                                        max_batch=max(p.batches)))  # mde export's timing cache
        except Exception as err:  # noqa: BLE001
            result["errors"][f"build {precision}"] = one_line(err)
            continue
        result["builds"].append({"precision": precision, "source": onnx_path.name,
                                 "build_s": round(time.perf_counter() - started, 1),
                                 "engine_mib": round(engine.stat().st_size / 2**20, 2)})
        engines.append(engine)
    if engines:
        result["parity"] = _parity(ck, engines, "tensorrt")
        failed = [r["artifact"] for r in result["parity"] if not r["passed"]]
        if failed:
            result["failed_checks"] = [f"parity FAIL: {', '.join(failed)}"]
    for engine in engines:
        precision = engine.name.split(".")[1]
        try:
            result["latency"] += [{"precision": precision, **r} for r in _runtime_latency(ck, engine)[1]]
        except Exception as err:  # noqa: BLE001
            result["errors"][f"latency {precision}"] = one_line(err)
    return result


RUNNERS = {"environment": environment, "tests": tests, "model": model, "training": training,
           "torch_inference": torch_inference, "export": export, "onnxruntime": onnxruntime, "tensorrt": tensorrt}
