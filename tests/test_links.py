"""Symbolic links, FIFOs and odd entries at inputs and outputs: no command writes through a link, blocks on a
FIFO or follows a loop; each refusal is one line naming the file, exit 2, with nothing written."""

from __future__ import annotations

import os
import shutil

import pytest


def one_line_refusal(result, name: str) -> None:
    assert result.code == 2, result.err
    assert result.err.strip().count("\n") == 0 and name in result.err, result.err


def test_calibrate_refuses_a_ranges_file_that_is_a_link_to_its_model(cli, tiny_export, synth_data, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_export / "model.onnx", model)
    before = model.read_bytes()
    (tmp_path / "q.ranges.json").symlink_to(model)
    result = cli("calibrate", model, "--data", synth_data, "--out", tmp_path / "q.onnx", "--num-images", 4,
                 "--holdout-images", 2, "--allow-few")
    one_line_refusal(result, "q.ranges.json")
    assert model.read_bytes() == before and not (tmp_path / "q.onnx").exists()


def test_calibrate_refuses_a_fifo_as_its_ranges_file(cli, tiny_export, synth_data, tmp_path):
    os.mkfifo(tmp_path / "q.ranges.json")
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", tmp_path / "q.onnx")
    one_line_refusal(result, "q.ranges.json")


def test_calibrate_replaces_a_ranges_file_that_links_to_a_fifo(cli, tiny_export, synth_data, tmp_path):
    """A link is replaced, whatever it points to (a FIFO or /dev/zero was refused as if named directly)."""
    fifo, link = tmp_path / "pipe", tmp_path / "q.ranges.json"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", tmp_path / "q.onnx",
                 "--num-images", 4, "--holdout-images", 2, "--allow-few", "--max-float-nodes", 0,
                 "--target-ssim-drop", 1)
    assert result.code == 0, result.err
    assert not link.is_symlink() and '"ranges"' in link.read_text() and fifo.is_fifo()


def test_parity_json_through_a_link_replaces_the_link_not_the_model(cli, tiny_export, tmp_path):
    keep = tmp_path / "keep.onnx"
    shutil.copy(tiny_export / "model.fp16.onnx", keep)
    link = tmp_path / "j.json"
    link.symlink_to(keep)
    result = cli("parity", "--golden", tiny_export / "golden.npz", tiny_export / "model.onnx", "--json", link)
    assert result.code == 0, result.err
    assert keep.read_bytes() == (tiny_export / "model.fp16.onnx").read_bytes()
    assert not link.is_symlink() and '"artifacts"' in link.read_text()


def test_parity_refuses_a_fifo_tolerance_table_without_blocking(cli, tiny_export, tmp_path):
    fifo = tmp_path / "t.toml"
    os.mkfifo(fifo)
    result = cli("parity", "--golden", tiny_export / "golden.npz", tiny_export / "model.onnx", "--tolerances", fifo)
    one_line_refusal(result, "t.toml")


def test_predict_writes_no_depth_map_through_a_link(cli, tiny_export, synth_data, tmp_path):
    image = sorted((synth_data / "val" / "rgb").iterdir())[0]
    victim, preds = tmp_path / "notes.txt", tmp_path / "preds"
    victim.write_text("mine")
    preds.mkdir()
    (preds / f"{image.stem}.png").symlink_to(victim)
    result = cli("predict", tiny_export / "model.onnx", image, "--out", preds)
    assert result.code == 2 and "exists, and a depth map would replace it" in result.err, result.err
    result = cli("predict", tiny_export / "model.onnx", image, "--out", preds, "--force")  # the link goes, not mine
    assert result.code == 0, result.err
    assert victim.read_text() == "mine" and not (preds / f"{image.stem}.png").is_symlink()


def test_predict_refuses_an_output_folder_inside_a_dataset_split(cli, tiny_export, synth_data, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(synth_data, data)
    depth = data / "val" / "depth"
    before = {p.name: p.read_bytes() for p in depth.iterdir()}
    result = cli("predict", tiny_export / "model.onnx", data / "val" / "rgb", "--out", depth, "--format", "png16")
    one_line_refusal(result, "depth")
    assert {p.name: p.read_bytes() for p in depth.iterdir()} == before


@pytest.mark.parametrize("command", ["export", "synth"])
def test_a_broken_link_or_loop_as_the_output_folder_is_named(cli, tiny_checkpoint, tmp_path, command):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in (tmp_path / "loop1", tmp_path / "dangling"):
        args = (("export", tiny_checkpoint, "--out", out) if command == "export"
                else ("data", "synth", out, "--train", 4, "--val", 2, "--size", 32))
        result = cli(*args)
        one_line_refusal(result, out.name)
        assert "internal error" not in result.err and not (tmp_path / "nowhere").exists()


def test_eval_names_a_broken_or_fifo_meta_json(cli, tiny_export, synth_data, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(synth_data, data)
    (data / "meta.json").unlink()
    (data / "meta.json").symlink_to(tmp_path / "gone.json")
    one_line_refusal(cli("eval", tiny_export / "model.onnx", "--data", data), "meta.json")
    (data / "meta.json").unlink()
    os.mkfifo(data / "meta.json")
    one_line_refusal(cli("eval", tiny_export / "model.onnx", "--data", data), "meta.json")


def test_a_deeply_nested_sidecar_is_one_line(cli, tmp_path):
    engine = tmp_path / "deep.engine"
    engine.write_bytes(b"\0" * 64)
    (tmp_path / "deep.engine.json").write_text("[" * 100_000 + "]" * 100_000)
    result = cli("info", engine)
    one_line_refusal(result, "deep.engine.json")
    assert "RecursionError" not in result.err


def test_train_refuses_a_folder_at_a_run_file_name_before_training(cli, synth_data, tmp_path):
    out = tmp_path / "run"
    (out / "curves.png").mkdir(parents=True)
    result = cli("train", "--data", synth_data, "--out", out, "--backbone", "resnet18", "--image-size", 32,
                 "--epochs", 1, "--no-pretrained", "--workers", 0, "--force")
    one_line_refusal(result, "curves.png")
    assert sorted(p.name for p in out.iterdir()) == ["curves.png"]


def test_force_keeps_the_old_run_when_the_new_checkpoints_cannot_fit(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    from mde.errors import InputError
    from mde.train import report

    (tmp_path / "best.pt").write_bytes(b"x" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda _p: usage(10**9, 10**9, 500))
    with pytest.raises(InputError, match="old run is kept"):
        report.check_room(tmp_path, needed=2000)
    assert (tmp_path / "best.pt").stat().st_size == 1000
    report.check_room(tmp_path, needed=1500)  # 500 free + the old run's 1000 bytes


def test_an_unreadable_checkpoint_is_not_called_corrupt(tmp_path, monkeypatch):
    import torch

    from mde.errors import ModelError
    from mde.train.checkpoint import load_checkpoint

    path = tmp_path / "a.pt"
    path.write_bytes(b"PK" + b"\0" * 100)

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(ModelError, match="cannot read the checkpoint .Permission denied"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["dangling", "fifo"])
def test_a_mask_that_is_no_file_is_refused_not_taken_for_no_mask(cli, tiny_export, synth_data, tmp_path, kind):
    data = tmp_path / "copy"
    shutil.copytree(synth_data, data)
    mask = sorted((data / "val" / "mask").iterdir())[0]
    mask.unlink()
    if kind == "dangling":
        mask.symlink_to(tmp_path / "gone.png")
    else:
        os.mkfifo(mask)
    result = cli("eval", tiny_export / "model.onnx", "--data", data)
    one_line_refusal(result, mask.name)
    assert "not a readable file" in result.err


def test_predict_runs_again_into_its_own_depth_folder(cli, tiny_export, synth_data, tmp_path):
    """Only a dataset split (DATA/train|val/depth) is refused: a user's rec/rgb + rec/depth is rewritten (--force)."""
    rgb = tmp_path / "rec" / "rgb"
    shutil.copytree(synth_data / "val" / "rgb", rgb)
    for force in ([], ["--force"]):
        result = cli("predict", tiny_export / "model.onnx", rgb, "--out", tmp_path / "rec" / "depth", *force)
        assert result.code == 0, result.err


def test_force_checks_the_room_before_removing_the_old_run(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple
    from types import SimpleNamespace

    import torch

    from mde.errors import InputError
    from mde.train import trainer
    from mde.train.checkpoint import checkpoint_bytes

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 64)).sum().backward()
    optimizer.step()  # AdamW's moments exist after a step
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "real.pt")
    needed = checkpoint_bytes(model, optimizer)
    assert (tmp_path / "real.pt").stat().st_size < needed < 3 * (tmp_path / "real.pt").stat().st_size

    (tmp_path / "best.pt").write_bytes(b"x" * 10)
    monkeypatch.setattr(sh, "disk_usage", lambda _p: namedtuple("usage", "total used free")(1, 1, 100))
    job = SimpleNamespace(replaces_a_run=True, out=tmp_path, model=model, optimizer=optimizer)
    with pytest.raises(InputError, match="old run is kept"):
        trainer.replace_old_run(job)
    assert (tmp_path / "best.pt").exists()


def test_a_first_force_run_needs_no_room_check(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    from mde.train import report

    monkeypatch.setattr(sh, "disk_usage", lambda _p: namedtuple("usage", "total used free")(1, 1, 0))
    report.check_room(tmp_path, needed=10**9)  # no old run to keep: the first write says what is wrong


def test_predict_names_a_broken_link_as_its_output_folder(cli, tiny_export, synth_data, tmp_path):
    (tmp_path / "brk").symlink_to(tmp_path / "nowhere" / "x")
    image = sorted((synth_data / "val" / "rgb").iterdir())[0]
    result = cli("predict", tiny_export / "model.onnx", image, "--out", tmp_path / "brk")
    one_line_refusal(result, "brk")
    assert "broken symbolic link" in result.err
