"""The Markdown report of benchmarks/gpu_check.py, rendered from its JSON report (every figure with its unit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COMPONENTS = {"pytorch_cuda": "PyTorch CUDA", "onnxruntime_gpu": "onnxruntime-gpu (CUDA provider)",
              "tensorrt": "TensorRT"}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[str]:
    """A Markdown table of `rows` (dicts) with `columns` {key: header}."""
    if not rows:
        return ["(none)", ""]
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
    return [*lines, ""]


LATENCY = {"precision": "precision", "call": "call", "batch": "batch", "median_ms": "median (ms)",
           "p90_ms": "p90 (ms)", "images_per_s": "images/s"}
PARITY = {"artifact": "artifact", "precision": "precision", "backend": "backend", "images": "images",
          "rmse": "RMSE (m)", "ssim": "SSIM", "d_rmse": "dRMSE (m)", "d_ssim": "dSSIM",
          "max_abs_diff": "max \\|diff\\| (m)", "p99_over_range": "p99 \\|diff\\| / range", "passed": "PASS",
          "failed": "failed metrics"}


def _environment(r: dict[str, Any]) -> list[str]:
    rows = [{"name": k, "value": v} for k, v in r.get("versions", {}).items()]
    return table(rows, {"name": "item", "value": "value"})


def _tests(r: dict[str, Any]) -> list[str]:
    lines = [f"`{r['selection']}`: {r['passed']} passed, {r['failed']} failed, {r['errors']} errors, "
             f"{r['skipped']} skipped (pytest exit {r['exit_code']}; full output in `{r['log']}`).", ""]
    return lines + table(r.get("not_passed", []), {"test": "test", "outcome": "outcome", "message": "message"})


def _model(r: dict[str, Any]) -> list[str]:
    return [f"{r['backbone']} at {r['image_size']}x{r['image_size']} px, {r['parameters_m']} M parameters, "
            f"random weights with BatchNorm statistics from {r['synth_train_images']} `mde data synth` images "
            f"(+ {r['synth_val_images']} validation images).", ""]


def _training(r: dict[str, Any]) -> list[str]:
    rows = [{"mode": "FP32", "ips": r["fp32_images_per_s"]},
            {"mode": f"{r['amp_dtype']} autocast + channels_last", "ips": r["amp_channels_last_images_per_s"]}]
    return [f"{r['backbone']} at {r['size']}x{r['size']} px, batch {r['batch']}, on {r['device']}.", "",
            *table(rows, {"mode": "training", "ips": "images/s"}),
            f"Speed-up: **{r['speedup']}x** (goal >= {r['goal_speedup']}x: {'met' if r['goal_met'] else 'missed'}). "
            f"{r['fp32_note']}.", ""]


def _torch_inference(r: dict[str, Any]) -> list[str]:
    cols = {**LATENCY, "max_abs_diff_vs_cpu_fp32_m": "max \\|out - CPU FP32\\| (m)"}
    del cols["call"]
    lines = [f"{r['backbone']} at {r['image_size']}x{r['image_size']} px on {r['device']}, eager, "
             "16-bit with autocast + channels_last.", "", *table(r["latency"], cols)]
    return lines + [f"Not run: {k}: {v}" for k, v in r.get("not_run", {}).items()] + [""]


def _export(r: dict[str, Any]) -> list[str]:
    cols = {"precision": "precision", "file": "file", "size_mib": "size (MiB)", "seconds": "time (s)",
            "max_abs_diff_m": "max \\|diff\\| vs PyTorch, golden (m)", "p99_over_range": "p99 / range",
            "calibration_images": "calibration images", "float_nodes": "float nodes",
            "ssim_drop_vs_fp32": "1 - SSIM(INT8, FP32)"}
    lines = table(r.get("artifacts", []), cols)
    return lines + [f"Not made: {k}: {v}" for k, v in r.get("not_run", {}).items()] + [""]


def _runtime(r: dict[str, Any]) -> list[str]:
    lines = []
    if r.get("requested_provider"):
        lines += [f"Requested provider: `{r['requested_provider']}`; `mde parity` (default providers) ran on "
                  f"`{_cell(r.get('parity_providers'))}`.", ""]
        runs = [{"precision": k, **v} for k, v in r.get("runs", {}).items()]
        lines += table(runs, {"precision": "artifact", "providers": "session providers (get_providers())",
                              "io_binding": "I/O binding"})
    if r.get("builds"):
        lines += [f"TensorRT {r['tensorrt']} on {r['gpu']} (compute capability {r['compute_capability']}).", ""]
        lines += table(r["builds"], {"precision": "engine", "source": "from", "build_s": "build (s)",
                                     "engine_mib": "size (MiB)"})
    if "parity" in r:
        lines += ["Parity (`mde parity`, PyTorch FP32 on the CPU as the reference):", "", *table(r["parity"], PARITY)]
    if r.get("latency"):
        lines += ["Latency (`DepthEstimator.infer`: host arrays in and out; `predict`: pre- and postprocessing "
                  "included):", "", *table(r["latency"], LATENCY)]
    return lines + [f"Not run: {k}: {v}" for k, v in r.get("not_run", {}).items()] + [""]


RENDER = {"environment": _environment, "tests": _tests, "model": _model, "training": _training,
          "torch_inference": _torch_inference, "export": _export, "onnxruntime": _runtime, "tensorrt": _runtime}


def render(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    sections = report["sections"]
    versions = sections.get("environment", {}).get("versions", {})
    lines = ["# mde GPU check", "",
             f"`{report['command']}` — started {report['started']}, device `{report['device']}`, "
             f"GPU: {versions.get('gpu', 'none')}, {report.get('total_s', 0):.0f} s of a {report['budget_s']:.0f} s "
             f"budget, exit code {report.get('exit_code', '(running)')}.", "",
             "## Found and ran", ""]
    found, ran = report.get("found", {}), report.get("ran", {})
    lines += table([{"c": name, "found": found.get(key), "ran": ran.get(key)} for key, name in COMPONENTS.items()],
                   {"c": "component", "found": "found", "ran": "ran"})
    rows = [{"name": n, **r} for n, r in sections.items()]
    lines += ["## Sections", "", *table(rows, {"name": "section", "status": "status", "seconds": "time (s)",
                                               "budget_s": "budget (s)", "reason": "reason"})]
    for name, result in sections.items():
        if result["status"] == "skipped" or name not in RENDER:
            continue
        lines += [f"## {name}", ""]
        try:
            lines += RENDER[name](result)
        except (KeyError, TypeError) as err:  # a section that stopped half-way: its own fields only
            lines += [f"(partial result: {type(err).__name__} {err})", ""]
    return "\n".join(lines).rstrip() + "\n"
