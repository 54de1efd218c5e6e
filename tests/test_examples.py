"""`examples/robot_loop.py` runs on `mde.runtime` alone: torch, torchvision and onnx blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robot_loop.py"


def test_robot_loop_without_torch(tiny_export, synth_data):
    frames = synth_data / "val" / "rgb"
    code = textwrap.dedent(f"""
        import runpy, sys
        for name in ("torch", "torchvision", "onnx"):
            sys.modules[name] = None
        sys.argv = ["robot_loop.py", {str(tiny_export / "model.onnx")!r}, {str(frames)!r}, "--fov", "70"]
        runpy.run_path({str(EXAMPLE)!r}, run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    per_frame = [line for line in lines if " ms " in line and "points" in line]
    assert len(per_frame) == len(list(frames.iterdir()))
    # every frame back-projects to a point cloud with positive depth
    assert all(int(line.split(" ms ")[1].split()[0]) > 0 for line in per_frame)
    assert lines[-1].startswith(f"{len(per_frame)} frames: median")


def test_robot_loop_bad_arguments_are_one_line_exit_2(tiny_export, synth_data, tmp_path):
    frames = synth_data / "val" / "rgb"
    cases = [([str(tmp_path / "missing.onnx"), str(frames)], "missing.onnx: model file not found"),
             ([str(tiny_export / "model.onnx"), str(frames), "--fov", "0"], "must be between 0 and 180 degrees"),
             ([str(tiny_export / "model.onnx"), str(tmp_path / "nowhere")], "nowhere: not a folder of images"),
             ([str(tiny_export / "model.onnx"), str(tmp_path)], f"{tmp_path}: folder has no images")]
    for argv, says in cases:
        proc = subprocess.run([sys.executable, str(EXAMPLE), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)
