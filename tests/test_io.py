"""Atomic writes: a symlink's target is replaced (not the link), a device or FIFO is written through; scratch
folders go however a run ends."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from mde.io import write_json_atomic


def test_a_symlink_keeps_pointing_at_its_file(tmp_path):
    target, link = tmp_path / "t.json", tmp_path / "l.json"
    target.write_text("old")
    link.symlink_to(target)
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json_atomic(fifo, {"a": 1})
    reader.join(timeout=10)
    assert json.loads(received[0]) == {"a": 1}
    assert fifo.is_fifo()  # still the FIFO, not a regular file put in its place


def test_json_is_strict_nan_becomes_null(tmp_path):
    from mde.io import json_safe

    assert json_safe({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x"}) == {"a": None, "b": [None, 1.5], "c": "x"}
    write_json_atomic(tmp_path / "r.json", {"rmse": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: 1 / 0) == {"rmse": None}


def test_a_scratch_folder_goes_even_when_a_stop_lands_right_after_it_is_made(tmp_path, monkeypatch):
    """SIGTERM raises wherever Python is: between making export's or synth's staging folder and entering
    the block that removes it (mkdtemp's gap), a stop left `.mde-export-*` behind (a flaky signal test)."""
    from mde.io import scratch_folder

    real_mkdir = Path.mkdir

    def mkdir_then_stop(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_stop)
    with pytest.raises(KeyboardInterrupt), scratch_folder(tmp_path, ".mde-export-"):
        pass
    assert list(tmp_path.iterdir()) == []
