"""A SIGKILL at any moment of `export` or `calibrate` leaves the old complete file or the new one, never a broken one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _kill_after(argv: list[str], seconds: float, started: Callable[[], bool] | None = None,
                env: dict[str, str] | None = None) -> tuple[int | None, bool]:
    """Start `mde ARGV` and SIGKILL it `seconds` after `started()` turns true (after start without it).

    Returns (exit code if it finished, whether a kill landed after `started()` was seen): a
    kill before torch has even been imported proves nothing about the files being written.
    """
    proc = subprocess.Popen([sys.executable, "-m", "mde", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    deadline = time.monotonic() + 120
    while started is not None and not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return proc.wait(timeout=seconds), False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, started is None or started()


def _appears(folder: Path, pattern: str) -> Callable[[], bool]:
    """A check that turns true once a new `pattern` entry (a staging folder) appears in `folder`."""
    existing = set(folder.glob(pattern))
    return lambda: bool(set(folder.glob(pattern)) - existing)


def _complete_onnx(path: Path) -> bool:
    """True when `path` is a whole ONNX model with its mde metadata (what a reader needs)."""
    import onnx

    from mde.runtime.metadata import ModelMetadata

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, path)
    return True


@pytest.mark.slow
def test_export_killed_at_random_moments(tmp_path, tiny_checkpoint):
    out = tmp_path / "export"
    rng = random.Random(1)
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--precision", "fp32",
            "--precision", "fp16", "--force"]
    landed = 0
    for _ in range(4):
        before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} if out.exists() else {}
        _, killed = _kill_after(argv, rng.uniform(0.0, 4.0), started=_appears(out, ".mde-export-*"))
        landed += killed
        for name in ("model.onnx", "model.fp16.onnx"):
            path = out / name
            if path.exists():
                assert _complete_onnx(path), name
            else:
                assert name not in before, f"{name} vanished after a kill"
    assert landed >= 1, "no kill landed while the export was staging its files"
    # whatever happened, a final uninterrupted run completes over the leftovers
    assert _kill_after(argv, 120)[0] == 0
    assert _complete_onnx(out / "model.onnx") and _complete_onnx(out / "model.fp16.onnx")


@pytest.mark.slow
def test_calibrate_killed_at_random_moments(tmp_path, tiny_export, synth_data):
    out = tmp_path / "model.int8.onnx"
    rng = random.Random(2)
    argv = ["calibrate", str(tiny_export / "model.onnx"), "--data", str(synth_data), "--out", str(out),
            "--num-images", "12", "--holdout-images", "4", "--allow-few", "--max-float-nodes", "0",
            "--recalibrate", "--force"]
    scratch = tmp_path / "tmp"  # calibrate stages its work in a scratch folder of TMPDIR: watch for it there
    scratch.mkdir()
    landed = 0
    for _ in range(3):
        existed = out.exists()
        _, killed = _kill_after(argv, rng.uniform(0.0, 4.0), env={"TMPDIR": str(scratch)},
                                started=_appears(scratch, "mde-calibrate-*"))
        landed += killed
        if out.exists():
            assert _complete_onnx(out)
        else:
            assert not existed, "the previous INT8 model vanished after a kill"
    assert landed >= 1, "no kill landed while calibrate was working"
    assert _kill_after(argv, 120, env={"TMPDIR": str(scratch)})[0] == 0
    assert _complete_onnx(out)
    # what the kills left the last run removed, ONNX Runtime's folders too (the per-user lock folder stays)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("mde-locks-")] == []


@pytest.mark.slow
def test_train_killed_at_random_moments_then_resumed(tmp_path, synth_data):
    from mde.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    rng = random.Random(3)
    fresh = ["train", "--data", str(synth_data), "--out", str(run), "--backbone", "resnet18",
             "--image-size", "64", "--batch-size", "4", "--no-pretrained", "--workers", "0",
             "--epochs", "3", "--checkpoint-every", "1", "--device", "cpu"]
    argv = fresh
    for _ in range(3):
        _kill_after(argv, rng.uniform(3.0, 9.0))
        for name in ("last.pt", "best.pt"):
            if (run / name).exists():
                assert load_checkpoint(run / name)["model"], name  # complete, loadable
        if (run / "last.pt").exists():
            argv = ["train", "--resume", str(run / "last.pt"), "--data", str(synth_data), "--out", str(run)]
    finished = (run / "last.pt").exists() and load_checkpoint(run / "last.pt")["epoch"] == 3
    # whatever happened, a final uninterrupted run completes; one that a window outlived has nothing to resume
    assert _kill_after(argv, 300)[0] == (2 if finished else 0)
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
