"""The README's quick start runs as written (with small sizes): the docs cannot drift from the code.

It is also the end-to-end gate: a tiny model is trained, exported to FP32/FP16,
calibrated to INT8 and must pass parity through ONNX Runtime CPU.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# Flags the test shrinks so the whole pipeline runs in about a minute on 2 cores.
SMALL = {
    "--train": "48", "--val": "8", "--size": "64", "--image-size": "64", "--epochs": "2",
    "--backbone": "resnet18", "--num-images": "32", "--iterations": "3", "--limit": "8",
    "--batch-size": "8",
}


def quickstart_commands(text: str) -> list[list[str]]:
    """The `mde ...` lines of the README block between the quickstart markers."""
    block = re.search(r"<!-- quickstart:start -->(.*?)<!-- quickstart:end -->", text, re.S)
    if block is None:
        raise AssertionError("README has no quickstart block")
    commands = []
    for line in block.group(1).splitlines():
        line = line.strip()
        if line.startswith("mde "):
            commands.append(shlex.split(line.split("#")[0]))
    return commands


def shrink(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in SMALL:
            out[i + 1] = SMALL[word]
    return out


def test_readme_has_a_quickstart():
    commands = quickstart_commands(README.read_text())
    names = [c[1] for c in commands]
    for required in ("data", "train", "export", "calibrate", "parity", "predict", "bench", "info"):
        assert required in names, f"README quick start lacks `mde {required}`"


@pytest.mark.slow
def test_readme_quickstart_runs(cli, tmp_path, monkeypatch):
    """Each command as the README writes it, in this process (as `mde` would run it, less the start-up of 11
    interpreters: other tests run `python -m mde` itself)."""
    monkeypatch.chdir(tmp_path)
    for argv in quickstart_commands(README.read_text()):
        argv = shrink(argv)
        result = cli(*argv[1:])
        assert result.code == 0, f"`{shlex.join(argv)}` exited {result.code}:\n{result.err[-3000:]}"
    parity = json.loads((tmp_path / "parity.json").read_text())
    rows = {Path(a["artifact"]).name: a for a in parity["artifacts"]}
    assert {r["precision"] for r in rows.values()} == {"fp32", "fp16", "int8"}
    assert all(a["passed"] for a in rows.values()), rows
    cpu = rows["model.int8.cpu.onnx"]  # the CPU INT8 model passes at the INT8 row of the tolerance table
    assert cpu["tolerance"]["ssim_abs"] == pytest.approx(1e-2) and cpu["images"] == 8 and cpu["rmse"] > 0


def test_readme_runtime_example_runs_as_written(tmp_path, tiny_export, synth_data, monkeypatch):
    """The "Python runtime" block, run with the README's own file names (a model and a frame put there)."""
    block = re.search(r"## Python runtime \(no torch\)\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README has no Python runtime block"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes((tiny_export / "model.onnx").read_bytes())
    frame = sorted((synth_data / "val" / "rgb").iterdir())[0]
    (tmp_path / "frame.jpg").write_bytes(frame.read_bytes())  # a PNG under that name: Pillow reads by content
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["depth"].shape == scope["rgb"].shape[:2] and len(scope["depths"]) == 2
    assert scope["points"].ndim == 2 and scope["points"].shape[1] == 3


def test_native_resolution_on_a_fixed_size_model_says_it_has_no_effect(tiny_export, caplog):
    from mde.runtime import DepthEstimator

    with caplog.at_level("WARNING"), DepthEstimator.open(tiny_export / "model.onnx", native_resolution=True) as est:
        assert est.native_resolution is False
    assert "native_resolution=True has no effect" in caplog.text
