"""The README's quick start runs as written (with small sizes): the docs cannot drift from the code.

It is also the end-to-end gate: a tiny model is trained, exported to FP32/FP16,
calibrated to INT8 and must pass parity through ONNX Runtime CPU.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
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
def test_readme_quickstart_runs(tmp_path):
    for argv in quickstart_commands(README.read_text()):
        argv = shrink(argv)
        proc = subprocess.run([sys.executable, "-m", "mde", *argv[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"`{shlex.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    parity = json.loads((tmp_path / "parity.json").read_text())
    precisions = {a["precision"] for a in parity["artifacts"]}
    assert precisions == {"fp32", "fp16", "int8"}
    assert all(a["passed"] for a in parity["artifacts"])
