"""Shared fixtures: a tiny synthetic dataset, a tiny resnet18 64x64 checkpoint and its exports, a CLI runner.

Heavy fixtures are session-scoped: built once and shared by every test that needs them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Torch threads per test process: the cores shared among pytest-xdist's workers. Two workers of two threads each
# on two cores made OpenMP's waiting threads spin against each other: a tiny training ran 5-9 times slower than
# alone. Tests whose subprocesses must do the same arithmetic as the test pass this on.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # as xdist's auto
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


def _tensorrt_gpu_missing() -> str:
    """Why TensorRT engines cannot be built and run here ("" when they can): `require_tensorrt`'s reason."""
    from mde.errors import BackendError
    from mde.export.tensorrt_build import require_tensorrt

    try:
        require_tensorrt()
    except BackendError as err:
        return str(err)
    return ""


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.tensorrt` tests need TensorRT *and* a CUDA GPU: skipped with the reason otherwise."""
    marked = [item for item in items if item.get_closest_marker("tensorrt")]
    reason = _tensorrt_gpu_missing() if marked else ""
    for item in marked if reason else ():
        item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and a CUDA GPU: {reason}"))


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Tests that send themselves SIGINT expect Python's handler: a pytest started in the background of a
    non-interactive shell (`make test &`) inherits SIGINT ignored."""
    import signal
    import threading

    ignored = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


TINY_SIZE = 64
TINY_BACKBONE = "resnet18"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `mde ARGS...` in-process; return its exit code, stdout and stderr."""
    from mde.cli import main

    # a stopped command silences sys.unraisablehook for its process's way out: not for the next tests
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def _built_once(config, tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)`'s result, built once per test run: under pytest-xdist every worker would build the same
    session fixture again (minutes of CPU on two cores), so the first builds it in a folder of this run's workers,
    under a lock, and the others load what it returned."""
    run_id = getattr(config, "workerinput", {}).get("testrunuid")  # a worker of this run (not a pytest it started)
    if run_id is None:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / f"shared-{run_id}"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError):
            return pickle.loads(done.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
        folder.mkdir()
        value = build(folder)
        partial = root / f"{name}.pickle.partial"
        partial.write_bytes(pickle.dumps(value))
        os.replace(partial, done)  # whole or absent: a worker killed while writing leaves no half pickle
        return value


@pytest.fixture(scope="session")
def built_once(pytestconfig, tmp_path_factory) -> Callable[[str, Callable[[Path], Any]], Any]:
    """`built_once(name, build)`: `_built_once` for a heavy fixture (the session ones here, a module's own)."""
    return lambda name, build: _built_once(pytestconfig, tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def synth_data(built_once) -> Path:
    """A tiny procedural dataset: 24 train + 8 val pairs at 64x64."""
    from mde.data.synth import synthesize

    def build(folder: Path) -> Path:
        synthesize(folder / "data", train=24, val=8, size=TINY_SIZE, seed=0, progress=False)
        return folder / "data"

    return built_once("synth", build)


def _tiny_checkpoint(folder: Path, synth_data: Path, decoder: str) -> Path:
    """A resnet18 64x64 checkpoint: random weights, BatchNorm statistics from the synthetic images."""
    from mde.runtime.images import list_images, read_rgb
    from mde.runtime.preprocess import preprocess
    from mde.train.checkpoint import save_untrained
    from mde.train.model import ModelArgs

    args = ModelArgs(backbone=TINY_BACKBONE, image_size=TINY_SIZE, max_depth=20.0, decoder=decoder)
    images = [read_rgb(p) for p in list_images(synth_data / "train" / "rgb")]
    path = folder / f"tiny-{decoder}.pt"
    save_untrained(path, args, preprocess(images, (TINY_SIZE, TINY_SIZE)),
                   config={"backbone": TINY_BACKBONE, "image_size": TINY_SIZE, "decoder": decoder})
    return path


def _tiny_export(folder: Path, checkpoint: Path) -> Path:
    from mde.export.exporter import ExportConfig, export_checkpoint

    out = folder / "export"
    export_checkpoint(ExportConfig(checkpoint=checkpoint, out=out, precisions=("fp32", "fp16")))
    return out


def _tiny_int8(folder: Path, export: Path, synth_data: Path):
    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig

    out = folder / "int8" / "model.int8.onnx"
    out.parent.mkdir()
    report = calibrate(CalibrationConfig(
        model=export / "model.onnx", data=synth_data, out=out, num_images=12,
        holdout_images=6, allow_few=True, max_float_nodes=0, progress=False,
    ))
    return out, report


@pytest.fixture(scope="session")
def tiny_checkpoint(built_once, synth_data) -> Path:
    """The tiny resnet18 64x64 checkpoint with the report's decoder (`_tiny_checkpoint`)."""
    return built_once("ckpt", lambda folder: _tiny_checkpoint(folder, synth_data, "report"))


@pytest.fixture(scope="session")
def tiny_export(built_once, tiny_checkpoint) -> Path:
    """`model.onnx` and `model.fp16.onnx` (plus golden.npz) exported from the tiny checkpoint."""
    return built_once("export", lambda folder: _tiny_export(folder, tiny_checkpoint))


@pytest.fixture
def block_torch(monkeypatch):
    """Make `import torch` (and torchvision, onnx) fail in this process."""
    import sys

    for name in ("torch", "torchvision", "onnx"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="session")
def tiny_int8(built_once, tiny_export, synth_data):
    """`model.int8.onnx` calibrated from the tiny export (12 images, no fallback) and its CalibrationReport.

    Shared by the calibration and parity tests (added by the calibration helper).
    """
    return built_once("int8", lambda folder: _tiny_int8(folder, tiny_export, synth_data))


@dataclass
class TinyModel:
    """One tiny model and its artifacts: checkpoint, export folder (fp32, fp16, golden), INT8 file."""

    decoder: str
    checkpoint: Path
    export: Path
    int8: Path


@pytest.fixture(scope="session")
def tiny_unet(built_once, synth_data) -> TinyModel:
    """The tiny model with the skip-connection decoder, exported and calibrated like the report one."""
    def build(folder: Path) -> TinyModel:
        checkpoint = _tiny_checkpoint(folder, synth_data, "unet")
        export = _tiny_export(folder, checkpoint)
        return TinyModel("unet", checkpoint, export, _tiny_int8(folder, export, synth_data)[0])

    return built_once("unet", build)


@pytest.fixture(scope="session", params=["report", "unet"])
def tiny_model(request, tiny_checkpoint, tiny_export, tiny_int8) -> TinyModel:
    """Each decoder's tiny model in turn (the report one reuses the shared fixtures)."""
    if request.param == "report":
        return TinyModel("report", tiny_checkpoint, tiny_export, tiny_int8[0])
    return request.getfixturevalue("tiny_unet")
