"""`examples/robot_loop.py` runs on `mde.runtime` alone: torch, torchvision and onnx blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
             ([str(tiny_export / "model.onnx"), str(frames), "--fov", "0"], "must be between 1 and 179 degrees"),
             # a focal length past float's range was refused by to_points as "not finite and > 0"
             ([str(tiny_export / "model.onnx"), str(frames), "--fov", "1e-300"], "must be between 1 and 179"),
             ([str(tiny_export / "golden.npz"), str(frames)], "golden.npz: golden.npz replays the outputs"),
             ([str(tiny_export / "model.onnx"), str(frames), "--bogus"], "unrecognized arguments: --bogus"),
             ([str(tmp_path / "best.pt"), str(frames)], "best.pt: a .pt checkpoint runs in PyTorch"),
             ([str(tiny_export / "model.onnx"), str(frames), "--backend", "torch"], "invalid choice: 'torch'"),
             ([str(tiny_export / "model.onnx"), str(tmp_path / "nowhere")], "nowhere: not a folder of images"),
             ([str(tiny_export / "model.onnx"), str(tmp_path)], f"{tmp_path}: folder has no images")]
    for argv, says in cases:
        proc = subprocess.run([sys.executable, str(EXAMPLE), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and proc.stderr.count("\n") == 1, (argv, proc.stderr)
        assert proc.stderr.startswith("robot_loop: error: "), proc.stderr  # argparse's and the runtime's alike


@pytest.mark.parametrize("stop, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_robot_loop_stops_on_ctrl_c_with_its_figures_and_exit_130(tiny_export, synth_data, tmp_path, stop, code,
                                                                    said):
    """A camera loop ends with Ctrl-C, or with SIGTERM from a service manager (systemd, docker stop, roslaunch):
    the figures so far and one line, not onnxruntime's traceback (SIGTERM killed it, its figures unsaid)."""
    import signal
    import time

    frames = tmp_path / "frames"
    frames.mkdir()
    first = sorted((synth_data / "val" / "rgb").iterdir())[0]
    for i in range(5000):  # an endless camera, for this test's purpose
        (frames / f"{i:05d}.png").symlink_to(first)
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"), str(frames)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while len(lines) < 3 and time.monotonic() < deadline:  # the model line and two frames
        lines.append(proc.stdout.readline())
    proc.send_signal(getattr(signal, stop))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip() == f"robot_loop: {said}", err
    assert out.splitlines()[-1].split(" frames: median ")[0].isdigit()


def test_robot_loop_keeps_the_latencies_of_a_window_of_frames(capsys, monkeypatch):
    """A camera runs for days: the loop keeps the last WINDOW frames' latencies, not every frame's, and says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("robot_loop", EXAMPLE)
    loop = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "robot_loop", loop)  # where its dataclass looks itself up
    spec.loader.exec_module(loop)
    tally = loop.Tally()
    for i in range(loop.WINDOW + 500):
        tally.latencies.append(1000.0 if i < 500 else 2.0)  # the first 500 frames were slow
        tally.frames += 1
    assert len(tally.latencies) == loop.WINDOW
    loop.summary(tally)
    assert capsys.readouterr().out == f"{loop.WINDOW + 500} frames: median 2.0 ms, p90 2.0 ms (the last {loop.WINDOW})\n"


def test_robot_loop_piped_to_head_stops_quietly(tiny_export, synth_data, tmp_path):
    """`robot_loop.py ... | head -1` ended in a BrokenPipeError traceback."""
    frames = tmp_path / "frames"
    frames.mkdir()
    first = sorted((synth_data / "val" / "rgb").iterdir())[0]
    for i in range(2000):
        (frames / f"{i:05d}.png").symlink_to(first)
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"), str(frames)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"model.onnx: backend")
    proc.stdout.close()  # the reader leaves
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 1 and err == "", err


def test_robot_loop_to_a_reader_gone_before_it_writes_stops_quietly(tiny_export, synth_data):
    """Block-buffered stdout (no PYTHONUNBUFFERED) met the closed pipe only at the exit flush: Python's
    'Exception ignored ... BrokenPipeError' and exit 120."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| true`: the reader is gone
    try:
        proc = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"),
                               str(synth_data / "val" / "rgb")], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


def test_robot_loop_drops_a_damaged_frame_and_goes_on(tiny_export, synth_data, tmp_path):
    """One truncated file stopped the whole loop (a camera drops such a frame); a name that is not UTF-8 ended
    in a UnicodeEncodeError traceback under a strict UTF-8 stdout."""
    import os

    frames = tmp_path / "frames"
    frames.mkdir()
    first = sorted((synth_data / "val" / "rgb").iterdir())[0]
    (frames / "a.png").write_bytes(first.read_bytes())
    (frames / "b.png").write_bytes(first.read_bytes()[:100])
    (frames / "c.png").symlink_to("gone.png")  # a broken link was left out without a word
    (frames / os.fsdecode(b"caf\xe9.png")).write_bytes(first.read_bytes())
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"), str(frames)],
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.splitlines() == [f"robot_loop: dropped: {frames / 'b.png'}: truncated or corrupt image (image file is "
                                "truncated)", f"robot_loop: dropped: {frames / 'c.png'}: a symbolic link to nothing "
                                "(or a loop of links)", "robot_loop: 2 of 4 frames dropped"], err
    assert out.splitlines()[1].startswith("a.png: ") and out.splitlines()[2].startswith("caf\\xe9.png: ")
    assert out.splitlines()[-1].startswith("2 frames: median ")
    for name in ("a.png", "c.png", os.fsdecode(b"caf\xe9.png")):  # nothing left to run: bad input, as for predict
        (frames / name).unlink()
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"), str(frames)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.endswith("robot_loop: 1 of 1 frames dropped\n"), proc.stderr


@pytest.mark.parametrize("redirect, says", [
    ("closed", "robot_loop: error: standard output is closed;"),
    ("/dev/full", "robot_loop: error: cannot write to standard output (No space left on device)"),
])
def test_robot_loop_with_nowhere_to_write_is_one_line_exit_2(tiny_export, synth_data, redirect, says):
    import os

    if redirect == "/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    argv = [sys.executable, str(EXAMPLE), str(tiny_export / "model.onnx"), str(synth_data / "val" / "rgb")]
    with open(os.devnull if redirect == "closed" else redirect, "w") as sink:
        proc = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=120,
                              **({"preexec_fn": lambda: os.close(1)} if redirect == "closed" else {}))
    assert proc.returncode == 2 and proc.stderr.startswith(says) and proc.stderr.count("\n") == 1, proc.stderr
