"""`python -m mde.demo` (what `make demo` runs): options checked up front, and a folder it did not make, or
made with other options, refused rather than overwritten or reused (the full demo runs in CI's `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mde import demo


@pytest.mark.parametrize("argv, says", [
    (["--size", "48"], "--size must be a multiple of 32 from 32 to 4096, got 48"),
    (["--backbone", "bogus"], "unknown --backbone 'bogus'; choose from resnet18, resnet34, resnet50"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--size", "abc"], "argument --size: invalid int value: 'abc'"),
    (["--train-images", "15"], "--train-images must be at least 16 (one training batch), got 15"),  # the train
])  # step refused it once the data was made, leaving the folder
def test_bad_options_are_one_line_before_any_work(tmp_path, argv, says):
    done = subprocess.run([sys.executable, "-m", "mde.demo", "--out", str(tmp_path / "d"), *argv],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.strip() == f"demo: error: {says}", done.stderr
    assert not (tmp_path / "d").exists()


def test_a_folder_the_demo_did_not_make_or_made_otherwise_is_refused(tmp_path, capsys):
    """Its steps run with --force: a user's data/train/notes.txt would go. Files made with --size 64 would be
    reused as if made with --size 128."""
    settings = {name: 1 for name in demo.SETTINGS}
    foreign = tmp_path / "foreign"
    (foreign / "data" / "train").mkdir(parents=True)
    (foreign / "data" / "train" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as stopped:
        demo.claim_folder(foreign, settings)
    assert stopped.value.code == 2 and "not empty and not made by the demo" in capsys.readouterr().err
    mine = tmp_path / "mine"
    demo.claim_folder(mine, settings)
    assert json.loads((mine / demo.DEMO_FILE).read_text()) == settings
    demo.claim_folder(mine, settings)  # the same options again: reused
    with pytest.raises(SystemExit):
        demo.claim_folder(mine, {**settings, "size": 2})
    assert "made with other options" in capsys.readouterr().err


def test_a_stopped_training_is_resumed_and_a_finished_one_reused(tmp_path):
    run = tmp_path / "run"
    opts = demo.parse(["--epochs", "2"])
    assert "--force" in demo.train_step(tmp_path / "data", run, opts)  # nothing yet: a new run
    run.mkdir()
    (run / "last.pt").write_bytes(b"a checkpoint")
    assert demo.train_step(tmp_path / "data", run, opts) == ["train", "--resume", str(run / "last.pt")]
    (run / "best.pt").write_bytes(b"a checkpoint")
    (run / "metrics.jsonl").write_text("{}\n")
    assert not demo.trained(run, 2)  # one epoch of two
    (run / "metrics.jsonl").write_text("{}\n{}\n")
    assert demo.trained(run, 2)
    assert not demo.trained(Path(tmp_path / "none"), 2)


def test_an_out_folder_named_like_an_option_reaches_the_steps_as_a_path(tmp_path, monkeypatch):
    """`--out=-dash` was passed to `mde data synth` as is, which read it as an option (-d)."""
    monkeypatch.chdir(tmp_path)
    opts = demo.parse(["--out=-dash"])
    assert opts.out == tmp_path / "-dash"
    assert demo.train_step(opts.out / "data", opts.out / "run", opts)[2] == str(tmp_path / "-dash" / "data")
