"""Installed as a user installs it: a runtime-only environment (no torch, no onnx), a checkout beside a regular
install, and the source distribution's contents."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the train extra adds: hidden from the runtime-only environment.
TRAIN_ONLY = ("torch", "torchvision", "onnx", "onnxscript", "onnxconverter_common", "onnx_ir", "h5py", "matplotlib")


@pytest.fixture(scope="module")
def runtime_only(tmp_path_factory) -> Path:
    """A folder of links to this environment's packages without the train extra's (and without the editable
    install's mapping): on PYTHONPATH, with `python -S`, it is an environment where only `mde`'s base dependencies
    are installed."""
    site = tmp_path_factory.mktemp("runtime-only")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = entry.name.split("-")[0].split(".")[0]
        if top not in TRAIN_ONLY and not entry.name.startswith(("__editable__", "_mde", "mde")):
            (site / entry.name).symlink_to(entry)
    return site


def _python(site: Path, *args: str, cwd: Path = REPO, extra_path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (site, *extra_path))), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_fixture_hides_torch_and_onnx(runtime_only):
    done = _python(runtime_only, "-c", "import importlib.util as u; print([u.find_spec(m) for m in ('torch', 'onnx')])")
    assert done.stdout.strip() == "[None, None]", done.stderr


def test_the_checkout_imports_its_subpackages_without_an_editable_install(runtime_only):
    """From the checkout's root, `mde` is the checkout's folder (the current directory comes first), which holds
    only the CLI; its subpackages are the folders beside it. They were not found: `python -m mde` and the README's
    `python3 -c 'from mde.export...'` failed there with a regular install."""
    done = _python(runtime_only, "-c", "import mde.runtime, mde.data, mde.export.config; print(mde.runtime.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == REPO / "runtime" / "__init__.py"
    for other in ("mde.tests", "mde.benchmarks", "mde.mde"):  # the checkout's other folders are no part of mde
        done = _python(runtime_only, "-c", f"import {other}")
        assert done.returncode == 1 and f"No module named '{other}'" in done.stderr, (other, done.stderr)


def test_an_editable_install_maps_mde_as_it_did():
    """Its own finder maps the subpackages: mde's path stays its folder alone, with no second finder."""
    import mde

    assert mde.__path__ == [str(REPO / "mde")]
    assert not [finder for finder in sys.meta_path if type(finder).__name__ == "CheckoutFolders"]


def test_a_runtime_only_install_runs_the_robot_commands(runtime_only, tiny_export):
    done = _python(runtime_only, "-m", "mde", "info", str(tiny_export / "model.onnx"))
    assert done.returncode == 0, done.stderr
    assert "precision" in done.stdout


@pytest.mark.parametrize("command", [
    ["-m", "mde", "export", "CKPT", "--out", "OUT"],
    ["-m", "mde.demo", "--out", "OUT"],
])
def test_a_runtime_only_install_is_told_to_install_the_train_extra(runtime_only, tiny_checkpoint, tmp_path, command):
    """Without torch and onnx, export said to `pip install onnx`, which was not enough, and the demo ended in a
    traceback: one line naming the train extra, exit 2, nothing written."""
    out = tmp_path / "out"
    args = [str(tiny_checkpoint) if a == "CKPT" else str(out) if a == "OUT" else a for a in command]
    done = _python(runtime_only, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "needs torch, which is not installed; in the mde checkout: pip install -e '.[train]'" in done.stderr
    assert not out.exists()


def test_missing_onnxruntime_names_the_package_this_machine_installs(monkeypatch):
    """PyPI's onnxruntime-gpu (x86_64 Linux) and the CPU build share a module: the hint names the one
    pyproject.toml depends on here, not a second package that would replace it."""
    import platform

    from mde.errors import BackendError
    from mde.runtime.backends import ort_providers

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for system, machine, package in (("linux", "x86_64", "onnxruntime-gpu"), ("linux", "aarch64", "onnxruntime"),
                                     ("darwin", "arm64", "onnxruntime")):
        monkeypatch.setattr(sys, "platform", system)
        monkeypatch.setattr(platform, "machine", lambda machine=machine: machine)
        with pytest.raises(BackendError, match=rf"; pip install {package}$"):
            ort_providers.import_ort()


def test_the_source_distribution_carries_what_the_tests_read(tmp_path):
    """The suite imports its helpers (conftest.py, trt_fakes.py) and reads the examples, docs, benchmarks, tools
    and Makefile; the sdist had the test files only, and no licence text."""
    from setuptools import build_meta

    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [name for name in listed.decode().split("\0") if name and (REPO / name).is_file()]
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((REPO / name).read_bytes())
    here = Path.cwd()
    try:
        os.chdir(tree)
        sdist = tree / "dist" / build_meta.build_sdist(str(tree / "dist"))
    finally:
        os.chdir(here)
    with tarfile.open(sdist) as archive:
        carried = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert not {name for name in files if not name.startswith(".gitignore")} - carried
    assert not [name for name in carried if "__pycache__" in name]
