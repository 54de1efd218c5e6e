"""`make demo`: synthesize -> train -> export -> calibrate -> parity -> bench, then one summary table.

Every step runs the real `mde` CLI in a subprocess (what a user would type) and is
skipped when its output already exists, so re-running the demo reuses earlier work.
The folder records the options it was made with (`demo.json`): a re-run with other
options, or a folder the demo did not make, is refused rather than reused or overwritten.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from rich.table import Table
from rich.text import Text

from mde.console import err_console as console  # stderr, soft-wrapped: whole lines in logs
from mde.console import stdout_console
from mde.errors import missing_module_hint
from mde.export.config import ARTIFACT_NAMES, INT8_CPU_NAME
from mde.io import write_json_atomic
from mde.train.config import TrainConfig

DEMO_FILE = "demo.json"  # the options the folder was made with
SETTINGS = ("train_images", "val_images", "size", "backbone", "epochs", "calib_images")  # what the files depend on
TRAIN_BATCH = TrainConfig.batch_size  # the train step's: fewer training images than one batch are refused


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and the exit code, as the mde commands end."""
    console.print(f"demo: error: {message}", markup=False, highlight=False)
    raise SystemExit(code)


def step(title: str, outputs: list[Path], args: list[str], capture: bool = False) -> str:
    """Run `mde ARGS` unless all `outputs` exist; return its stdout when `capture`."""
    if outputs and all(p.exists() for p in outputs) and not capture:
        console.print(Text.assemble(("✓", "green"), f" {title} ", (f"(reusing {outputs[0]})", "dim")))
        return ""
    console.rule(Text(title, style="bold"))
    console.print(Text(f"$ mde {' '.join(args)}", style="dim"))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mde", *args], stdout=subprocess.PIPE if capture else None,
                            text=True)
    try:
        stdout, _ = proc.communicate()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    if proc.returncode not in (0, 1):
        fail(f"{title} failed (exit {proc.returncode}; its own message is above)", proc.returncode)
    console.print(Text.assemble(("✓", "green"), f" {title} ", (f"({time.perf_counter() - start:.0f} s)", "dim")))
    return stdout or ""


def _stop(proc: subprocess.Popen) -> None:
    """Let a step that Ctrl-C reached clean up and exit (a terminal's Ctrl-C reaches it too; a signal sent to
    the demo alone is passed on); only one that hangs is killed."""
    for wait, then in ((2, lambda: proc.send_signal(signal.SIGINT)), (60, proc.kill)):
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            then()
    proc.wait()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mde.demo", description=__doc__.splitlines()[0])
    parser.error = fail  # type: ignore[method-assign]  # one line, as the mde commands
    parser.add_argument("--out", type=Path, default=Path("demo"), help="the demo's folder (default: demo)")
    parser.add_argument("--train-images", type=int, default=1200, help="synthetic training images (1200)")
    parser.add_argument("--val-images", type=int, default=100, help="synthetic validation images (100)")
    parser.add_argument("--size", type=int, default=128, help="image side, a multiple of 32 (128)")
    parser.add_argument("--backbone", default="resnet18", help="encoder (resnet18)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (8)")
    parser.add_argument("--calib-images", type=int, default=128, help="INT8 calibration images (128)")
    parser.add_argument("--bench-iterations", type=int, default=30, help="timed runs per model (30)")
    opts = parser.parse_args(argv)
    for name in ("train_images", "val_images", "epochs", "calib_images", "bench_iterations"):
        if getattr(opts, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if opts.train_images < TRAIN_BATCH:  # found now, not by the train step after the data is made
        fail(f"--train-images must be at least {TRAIN_BATCH} (one training batch), got {opts.train_images}")
    if str(opts.out).startswith("-"):  # the steps' commands would read `-dash` as an option
        opts.out = opts.out.absolute()
    if opts.size % 32 or not 32 <= opts.size <= 4096:
        fail(f"--size must be a multiple of 32 from 32 to 4096, got {opts.size}")
    try:
        from mde.train.model import BACKBONES  # torch: after the checks that need none
    except ModuleNotFoundError as err:  # a runtime-only install: what to install, as the mde commands say it
        fail(missing_module_hint(err) or f"cannot import {err.name}: {err}")

    if opts.backbone not in BACKBONES:
        fail(f"unknown --backbone {opts.backbone!r}; choose from {', '.join(BACKBONES)}")
    return opts


def claim_folder(out: Path, settings: dict) -> None:
    """Make `out` the demo's folder for `settings`, or refuse: a folder the demo did not make (the steps
    overwrite what they write), or one made with other options (its files would be reused as if made with these)."""
    recorded = out / DEMO_FILE
    if out.exists() and not out.is_dir():
        fail(f"{out}: not a folder")
    if recorded.is_file():
        try:
            saved = json.loads(recorded.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != settings:
            fail(f"{out}: made with other options ({recorded}); choose another --out, or remove it to start again")
    elif out.is_dir() and any(out.iterdir()):
        fail(f"{out}: not empty and not made by the demo (no {DEMO_FILE}; earlier versions wrote none); choose "
             "another --out, or remove it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, settings)
    except OSError as err:
        fail(f"{out}: cannot write here ({err.strerror or err})")


def train_step(data: Path, run: Path, opts: argparse.Namespace) -> list[str]:
    """The train command: a new run, or the resume of one a stop cut short (its last.pt)."""
    if (run / "last.pt").exists():
        return ["train", "--resume", str(run / "last.pt")]
    return ["train", "--data", str(data), "--out", str(run), "--backbone", opts.backbone,
            "--image-size", str(opts.size), "--epochs", str(opts.epochs), "--no-pretrained", "--device", "auto",
            "--force"]  # the run folder is the demo's: a stop before the first checkpoint left bits of one


def trained(run: Path, epochs: int) -> bool:
    """Whether the run folder holds a finished run: every epoch in metrics.jsonl, and best.pt."""
    metrics = run / "metrics.jsonl"
    return (run / "best.pt").is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    try:
        run_demo(opts)
    except KeyboardInterrupt:  # the step's own process has said its line
        console.print("demo: interrupted (run it again to go on from the last finished step)")
        raise SystemExit(130) from None


def run_demo(opts: argparse.Namespace) -> None:
    out: Path = opts.out
    claim_folder(out, {name: getattr(opts, name) for name in SETTINGS})
    data, run, export = out / "data", out / "run", out / "export"
    ckpt = run / "best.pt"
    started = time.perf_counter()

    step("1/6 synthesize the virtual-world dataset", [data / "meta.json"],
         ["data", "synth", str(data), "--train", str(opts.train_images),
          "--val", str(opts.val_images), "--size", str(opts.size), "--seed", "0", "--force"])
    if trained(run, opts.epochs):
        console.print(Text.assemble(("✓", "green"), " 2/6 train ", (f"(reusing {ckpt})", "dim")))
    else:
        step("2/6 train (default decoder and LR schedule, augmentation)", [], train_step(data, run, opts))
    step("3/6 export ONNX FP32 + FP16", [export / "model.onnx", export / "model.fp16.onnx"],
         ["export", str(ckpt), "--out", str(export), "--precision", "fp32",
          "--precision", "fp16", "--force"])
    int8, int8_cpu = export / ARTIFACT_NAMES["int8"], export / INT8_CPU_NAME
    # --allow-few: a small demo (--train-images under ~300) calibrates on what it has
    step("4a/6 calibrate INT8 (Q/DQ for TensorRT)", [int8],
         ["calibrate", str(export / "model.onnx"), "--data", str(data), "--target", "tensorrt",
          "--out", str(int8), "--num-images", str(opts.calib_images), "--allow-few", "--force"])
    step("4b/6 calibrate INT8 for ONNX Runtime's CPU provider", [int8_cpu],
         ["calibrate", str(export / "model.onnx"), "--data", str(data), "--target", "cpu",
          "--out", str(int8_cpu), "--num-images", str(opts.calib_images), "--allow-few", "--force"])
    artifacts = [export / ARTIFACT_NAMES["fp32"], export / ARTIFACT_NAMES["fp16"], int8, int8_cpu]
    parity_json = out / "parity.json"
    step("5/6 parity against PyTorch", [],
         ["parity", str(ckpt), *map(str, artifacts), "--data", str(data),
          "--json", str(parity_json), "--report", str(out / "parity.md")])
    bench_out = step("6/6 benchmark (ONNX Runtime CPU vs PyTorch)", [],
                     ["bench", *map(str, artifacts), "--torch", str(ckpt),
                      "--iterations", str(opts.bench_iterations), "--json"], capture=True)

    picture(export / "model.onnx", data, out / "predictions.png")
    summary(json.loads(parity_json.read_text()), json.loads(bench_out), artifacts, run, data)
    console.print(Text.assemble("\n", (f"demo finished in {time.perf_counter() - started:.0f} s", "bold"),
                                f"; outputs in {out}/ (parity report: {out / 'parity.md'})"))


def picture(model: Path, data: Path, out: Path, count: int = 4) -> None:
    """Rows of input | ground truth | prediction for the first `count` validation images."""
    import numpy as np
    from PIL import Image

    from mde.data.readers import open_dataset
    from mde.runtime import DepthEstimator, colorize

    est = DepthEstimator.open(model)
    val = open_dataset(data, "val")
    rows = []
    for i in range(min(count, len(val))):
        sample = val[i]
        depth = est.predict(sample.rgb)
        colored = [colorize(d, est.metadata.max_depth) for d in (sample.depth, depth)]
        rows.append(np.concatenate([sample.rgb, *colored], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    console.print(Text.assemble(("✓", "green"), f" predictions picture: {out}"))


def _by_name(rows: list[dict], key: str) -> dict[str, dict]:
    return {Path(str(r.get(key, ""))).name: r for r in rows}


def summary(parity: dict, bench: dict, artifacts: list[Path], run: Path, data: Path) -> None:
    """One table: per artifact its size, latency, RMSE, SSIM, deltas to PyTorch and PASS/FAIL.

    Two image-blind baselines come first, so the table shows what training bought.
    """
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.runtime.evaluate import baselines

    base = baselines(open_dataset(data, "train"), open_dataset(data, "val"), dataset_max_depth(data))
    checks = _by_name(parity["artifacts"], "artifact")
    speeds = _by_name([r for r in bench["results"] if r["backend"] != "torch"], "artifact")
    torch_speed = next((r for r in bench["results"] if r["backend"] == "torch"), {})
    table = Table(title="mde demo summary")
    for col in ("artifact", "size MB", "latency ms", "RMSE m", "SSIM", "dRMSE", "dSSIM", "parity"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    ref = parity["reference"]
    for name, label in (("mean_depth", "baseline: train mean depth"),
                        ("pixel_mean_map", "baseline: per-pixel mean map")):
        table.add_row(label, "", "", _fmt(base[name]["rmse"], 4), _fmt(base[name]["ssim"], 4), "", "", "")
    table.add_row("PyTorch (best.pt)", f"{(run / 'best.pt').stat().st_size / 1e6:.1f}",
                  _fmt(torch_speed.get("latency_ms", {}).get("mean")),
                  _fmt(ref["rmse"], 4), _fmt(ref["ssim"], 4), "", "", "reference")
    for path in artifacts:
        c, s = checks.get(path.name, {}), speeds.get(path.name, {})
        table.add_row(path.name, f"{path.stat().st_size / 1e6:.1f}",
                      _fmt(s.get("latency_ms", {}).get("mean")),
                      _fmt(c.get("rmse"), 4), _fmt(c.get("ssim"), 4),
                      _fmt(c.get("d_rmse"), 2, sci=True), _fmt(c.get("d_ssim"), 2, sci=True),
                      Text("PASS", style="green") if c.get("passed") else Text("FAIL", style="red"))
    stdout_console(130).print(table)
    ratio = ref["rmse"] / base["mean_depth"]["rmse"]
    stdout_console(130).print(f"model RMSE = {ratio:.2f} x the mean-depth baseline's")
    fp32_ms, cpu_ms = (speeds.get(n, {}).get("latency_ms", {}).get("mean") for n in (artifacts[0].name, INT8_CPU_NAME))
    if fp32_ms and cpu_ms:
        stdout_console(130).print(f"ONNX Runtime CPU: {INT8_CPU_NAME} runs in {cpu_ms / fp32_ms:.2f} x the time "
                                 f"of {artifacts[0].name} (FP32)")


def _fmt(value: float | None, digits: int = 2, sci: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}e}" if sci else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
