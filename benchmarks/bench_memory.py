"""Long runs stay flat: RSS growth after warm-up for `mde predict` over many images and 10,000 `predict` calls."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from cli_common import Parser, default_decoder, run_main

TARGET_GROWTH = 0.05


def _tiny_model(workdir: Path, size: int = 64) -> Path:
    """Export a resnet18 model (random weights, `mde train`'s default decoder) for the run; memory behaviour does
    not need training."""
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    ckpt = workdir / "tiny.pt"
    save_untrained(ckpt, ModelArgs(backbone="resnet18", image_size=size, decoder=default_decoder()))
    export_checkpoint(ExportConfig(checkpoint=ckpt, out=workdir / "export", precisions=("fp32",)))
    return workdir / "export" / "model.onnx"


def estimator_calls(model: Path, calls: int, warmup: int) -> dict:
    """RSS after `warmup` calls vs after `calls` calls of `DepthEstimator.predict` in this process."""
    from mde.runtime import DepthEstimator

    proc = psutil.Process()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    est = DepthEstimator.open(model)
    for _ in range(warmup):
        est.predict(image)
    base = proc.memory_info().rss
    for _ in range(calls - warmup):
        est.predict(image)
    end = proc.memory_info().rss
    return {"calls": calls, "rss_after_warmup_mb": base / 2**20, "rss_end_mb": end / 2**20,
            "growth": (end - base) / base}


def predict_cli(model: Path, workdir: Path, images: int) -> dict:
    """RSS of an `mde predict` process over `images` files: after 10% of outputs vs the peak after."""
    from mde.data.synth import synthesize

    data = workdir / "frames"
    synthesize(data, train=images, val=1, size=64, seed=1, progress=False)
    out = workdir / "pred"
    cmd = [sys.executable, "-m", "mde", "predict", str(model), str(data / "train" / "rgb"),
           "--out", str(out), "--format", "npy"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[int, int]] = []

    def poll() -> None:
        p = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                done = len(list(out.glob("*.npy"))) if out.exists() else 0
                samples.append((done, p.memory_info().rss))
            except (psutil.NoSuchProcess, FileNotFoundError):
                break
            time.sleep(0.25)

    thread = threading.Thread(target=poll)
    thread.start()
    child.wait()
    thread.join()
    warm = [rss for done, rss in samples if done >= images // 10]
    if child.returncode != 0 or len(warm) < 2:
        return {"images": images, "error": f"exit {child.returncode}, {len(samples)} samples"}
    base, peak = warm[0], max(warm)
    return {"images": images, "rss_after_warmup_mb": base / 2**20, "rss_peak_mb": peak / 2**20,
            "growth": (peak - base) / base}


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = _tiny_model(workdir)
        calls = estimator_calls(model, calls=1000 if quick else 10_000, warmup=100 if quick else 500)
        cli = predict_cli(model, workdir, images=200 if quick else 2000)
    for name, r in (("DepthEstimator.predict", calls), ("mde predict", cli)):
        if "growth" in r:
            verdict = "OK" if r["growth"] < TARGET_GROWTH else "OVER TARGET"
            print(f"{name}: RSS growth after warm-up {r['growth'] * 100:+.2f}% "
                  f"(target < {TARGET_GROWTH * 100:.0f}%) {verdict}")
        else:
            print(f"{name}: {r['error']}")
    return {"estimator": calls, "predict_cli": cli}


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    run(quick=parser.parse_args().quick)


if __name__ == "__main__":
    run_main(main)
