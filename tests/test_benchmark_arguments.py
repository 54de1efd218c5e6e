"""The benchmark scripts answer bad arguments with argparse's one-line error and exit 2, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = [
    ("make_sample_figure.py", ["--count", "-1", "--out", "{tmp}/x.png"], "--count must be >= 1, got -1"),
    ("make_sample_figure.py", ["--size", "8", "--out", "{tmp}/x.png"], "--size must be >= 16"),
    ("make_sample_figure.py", ["--out", "{tmp}/full"], "full: expected a .png file name in an existing folder"),
    ("bench_int8.py", ["--decoder", "nosuch"], "unknown --decoder nosuch; choose from report, unet"),
    ("bench_int8.py", ["--rounds", "0"], "--rounds must be >= 1, got 0"),
    ("bench_runtime.py", ["--model", "{tmp}/model.onnx"], "--model and --checkpoint go together"),
    ("bench_runtime.py", ["--model", "{tmp}/nosuch.onnx", "--checkpoint", "{tmp}/nosuch.pt"],
     "nosuch.onnx: file not found"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/full"], "full: not a synthetic set (no meta.json)"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/d", "--anatomy"], "--anatomy needs at least one trained run"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/d", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
    ("bench_train.py", ["--only", "decoders", "quality"], "--only decoders runs on its own"),
    ("bench_train.py", ["--only", "decoders", "--epochs", "-1"], "--epochs must be >= 0"),
    ("bench_train.py", ["--only", "quality", "--data", "{tmp}/full"], "full: not a synthetic set (no meta.json)"),
    ("run.py", ["--only", "synth", "--out", "{tmp}/nosuch/results.json"], "expected a file in an existing folder"),
]


@pytest.mark.parametrize(("script", "args", "message"), CASES, ids=[f"{c[0]}-{c[1][1]}" for c in CASES])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, script, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a dataset")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing written


def test_a_saved_run_of_other_settings_is_not_reused_under_new_labels(tmp_path):
    """`--runs R --epochs 2` over 1-epoch runs would print their figures as 2-epoch ones: refused, naming R/x."""
    import json

    sys.path.insert(0, str(BENCHMARKS))
    import bench_train

    from mde.errors import InputError

    run_dir = tmp_path / "unet-flips"
    run_dir.mkdir()
    settings = {**bench_train.QUALITY, **bench_train.QUICK, "epochs": 1, "patch": None}
    (run_dir / "bench.json").write_text(json.dumps({"settings": settings}))
    assert bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=1)["settings"] == settings  # reused
    with pytest.raises(InputError, match=r"unet-flips: holds a run trained with other settings \(epochs: 1, not 2\)"):
        bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=2)


def test_bench_runtime_refuses_a_model_exported_from_another_checkpoint(tmp_path, tiny_export, tiny_unet):
    """Its ORT-vs-torch difference and latency ratio would compare two different models."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_runtime.py"), "--quick", "--threads", "1",
                           "--model", str(tiny_export / "model.onnx"), "--checkpoint", str(tiny_unet.checkpoint)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    assert "model.onnx: exported from another model" in done.stderr and "Traceback" not in done.stderr
