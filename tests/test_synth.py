"""The procedural virtual world: geometry, determinism, the folder format, meta.json, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mde.data.synth import synthesize
from mde.data.world import (
    MASK_INVALID,
    MASK_OBJECT,
    MASK_STRUCTURE,
    MAX_DEPTH,
    MIN_DEPTH,
    _rot,
    _sample_scene,
    draw_labelled,
    draw_scene,
    render_labelled,
    render_scene,
)
from mde.errors import InputError


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _flat_scene(height: float, objects: list | None = None) -> dict:
    """An open ground plane, camera level (no pitch/roll/yaw), optional objects."""
    scene = _sample_scene(np.random.default_rng(3))
    scene.pop("bounds", None)
    scene.update(kind="open", hfov=np.radians(60.0), pitch=0.0, objects=objects or [],
                 rot=_rot(0.0, 0.0, 0.0), origin=np.array([0.0, height, 0.0], np.float32),
                 sky=(np.ones(3, np.float32) * 0.8, np.ones(3, np.float32) * 0.5), haze=50.0)
    return scene


def test_ground_plane_depth_is_exact_z():
    size, h = 64, 1.5
    _, depth, intr = draw_scene(_flat_scene(h), size)
    f, cy = intr["fx"], intr["cy"]
    assert f == pytest.approx((size / 2) / np.tan(np.radians(30.0)))
    rows = np.arange(size)
    below = rows > cy
    expected = np.clip(h * f / (rows[below] - cy), MIN_DEPTH, MAX_DEPTH)  # z of the floor point
    np.testing.assert_allclose(depth[below], np.repeat(expected[:, None], size, 1), rtol=1e-4)
    assert np.all(depth[~below] == MAX_DEPTH)  # sky reads the maximum depth


def test_sphere_depth_along_optical_axis():
    size = 65  # odd: the centre pixel looks straight along the optical axis
    sphere = {"shape": "sphere", "size": np.array([1.0, 0, 0], np.float32),
              "center": np.array([0.0, 1.5, 6.0], np.float32), "radius": 1.0,
              "rot": _rot(0.3, 0.2, 0.0), "material": _sample_scene(np.random.default_rng(1))["materials"]["floor"]}
    _, depth, _ = draw_scene(_flat_scene(1.5, [sphere]), size)
    assert depth[32, 32] == pytest.approx(5.0, abs=1e-4)
    # An off-axis pixel on the sphere: z-depth, not the distance along the ray.
    x = 4 / ((size / 2) / np.tan(np.radians(30.0)))  # ray (x, 0, 1) for column 36
    b, c = -6.0, 36.0 - 1.0
    t = (-b - np.sqrt(b * b - (1 + x * x) * c)) / (1 + x * x)
    assert depth[32, 36] == pytest.approx(t, abs=1e-4)


def test_mask_marks_sky_ground_and_objects():
    size = 65
    sphere = {"shape": "sphere", "size": np.array([1.0, 0, 0], np.float32),
              "center": np.array([0.0, 1.5, 6.0], np.float32), "radius": 1.0,
              "rot": _rot(0.0, 0.0, 0.0), "material": _sample_scene(np.random.default_rng(1))["materials"]["floor"]}
    rgb, depth, mask, _ = draw_labelled(_flat_scene(1.5, [sphere]), size)
    assert mask.dtype == np.uint8 and mask.shape == (size, size)
    assert mask[32, 32] == MASK_OBJECT and depth[32, 32] == pytest.approx(5.0, abs=1e-4)
    assert mask[0, 0] == MASK_INVALID and mask[-1, 0] == MASK_STRUCTURE  # sky corner, floor corner
    on_sphere = mask == MASK_OBJECT
    assert np.all(depth[on_sphere] < 7.0)  # the sphere spans z 5..7 (its back half is hidden)
    assert set(np.unique(mask).tolist()) == {MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID}
    rgb2, depth2, _ = draw_scene(_flat_scene(1.5, [sphere]), size)
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2)


def test_random_scene_masks_agree_with_depth():
    for i in range(6):
        rgb, depth, mask, intr = render_labelled(np.random.default_rng(i), 48)
        assert set(np.unique(mask).tolist()) <= {MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID}
        assert np.all(depth[mask == MASK_INVALID] == MAX_DEPTH)  # the sky reads the maximum depth
        if intr["scene"] == "room":
            assert not np.any(mask == MASK_INVALID)  # a room has no sky


def test_render_scene_outputs_and_depth_cues():
    kinds, near_bottom = set(), []
    for i in range(16):
        rgb, depth, intr = render_scene(np.random.default_rng(i), 48)
        assert rgb.shape == (48, 48, 3) and rgb.dtype == np.uint8
        assert depth.shape == (48, 48) and depth.dtype == np.float32
        assert depth.min() >= MIN_DEPTH and depth.max() <= MAX_DEPTH
        assert rgb.std() > 5 and depth.std() > 0.1  # not blank
        assert set(intr) >= {"fx", "fy", "cx", "cy"}
        kinds.add(intr["scene"])
        near_bottom.append(depth[-4:].mean() < depth[20:28].mean())
    assert kinds == {"room", "yard", "open"}
    assert np.mean(near_bottom) > 0.8  # the floor comes closer towards the bottom of the image


def test_synthesize_folder_format_and_meta(tmp_path):
    out = tmp_path / "d"
    meta = synthesize(out, train=5, val=2, size=40, seed=7, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "train", "val"]
    assert json.loads((out / "meta.json").read_text()) == meta
    cameras = json.loads((out / "cameras.json").read_text())
    assert meta["counts"] == {"train": 5, "val": 2} and meta["size"] == [40, 40]
    assert meta["max_depth"] == MAX_DEPTH and meta["seed"] == 7 and meta["version"] >= 1
    for split, n in (("train", 5), ("val", 2)):
        names = sorted(p.stem for p in (out / split / "rgb").iterdir())
        assert names == sorted(cameras[split]) and len(names) == n
        for name in names:
            rgb = Image.open(out / split / "rgb" / f"{name}.png")
            dep = Image.open(out / split / "depth" / f"{name}.png")
            mask = Image.open(out / split / "mask" / f"{name}.png")
            assert rgb.mode == "RGB" and rgb.size == (40, 40)
            assert mask.mode == "L" and mask.size == (40, 40)
            assert dep.mode.startswith("I") and dep.size == (40, 40)
            mm = np.asarray(dep)
            assert mm.min() >= MIN_DEPTH * 1000 and mm.max() <= MAX_DEPTH * 1000
            cam = cameras[split][name]
            assert cam["fx"] == pytest.approx(20 / np.tan(np.radians(cam["hfov_deg"]) / 2), rel=1e-4)
            assert -4 <= cam["roll_deg"] <= 4 and -5 <= cam["pitch_deg"] <= 30  # the world's draws


def test_written_pngs_decode_to_the_rendered_arrays(tmp_path):
    synthesize(tmp_path / "d", train=2, val=1, size=33, seed=5, progress=False)
    for split, index in (("train", 1), ("val", 0)):
        rng = np.random.default_rng(np.random.SeedSequence([5, ("train", "val").index(split), index]))
        rgb, depth, mask, _ = render_labelled(rng, 33)
        name = f"{index:06d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d" / split / "rgb" / name)), rgb)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d" / split / "mask" / name)), mask)
        mm = np.asarray(Image.open(tmp_path / "d" / split / "depth" / name))
        np.testing.assert_array_equal(mm, np.round(depth * 1000).astype(np.uint16))


def test_synthesize_is_deterministic_and_worker_independent(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, train=4, val=2, size=32, seed=3, progress=False)
    synthesize(b, train=4, val=2, size=32, seed=3, progress=False)
    synthesize(c, train=4, val=2, size=32, seed=3, progress=False, workers=2)
    assert _tree(a) == _tree(b) == _tree(c)
    synthesize(b, train=4, val=2, size=32, seed=4, progress=False, force=True)
    assert _tree(a) != _tree(b)


def test_val_images_do_not_depend_on_train_count(tmp_path):
    synthesize(tmp_path / "a", train=1, val=2, size=32, seed=0, progress=False)
    synthesize(tmp_path / "b", train=3, val=2, size=32, seed=0, progress=False)
    assert _tree(tmp_path / "a" / "val") == _tree(tmp_path / "b" / "val")


def test_a_split_of_no_images_gets_no_folder(tmp_path):
    """`--train 0`: a val-only set that `mde eval` reads, not an empty train/ that readers refuse."""
    from mde.data.readers import open_dataset

    synthesize(tmp_path / "d", train=0, val=2, size=32, seed=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cameras.json", "meta.json", "val"]
    assert len(open_dataset(tmp_path / "d", split="val")) == 2


def test_refuses_non_empty_output_unless_force(tmp_path):
    out = tmp_path / "d"
    synthesize(out, train=3, val=1, size=32, seed=0, progress=False)
    with pytest.raises(InputError, match="not empty"):
        synthesize(out, train=2, val=1, size=32, seed=0, progress=False)
    (out / "notes.txt").write_text("keep me")
    synthesize(out, train=2, val=1, size=32, seed=0, progress=False, force=True)
    assert len(list((out / "train" / "rgb").iterdir())) == 2  # old split replaced, not merged
    finder = tmp_path / "made-in-finder"  # hidden files only: a file manager's, which no command reads or replaces
    finder.mkdir()
    (finder / ".DS_Store").write_bytes(b"\0")
    synthesize(finder, train=1, val=1, size=16, seed=0, progress=False)
    assert (finder / "meta.json").is_file() and (finder / ".DS_Store").read_bytes() == b"\0"
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_stop_while_the_new_dataset_is_swapped_in_leaves_the_old_one_whole(tmp_path, monkeypatch):
    """The swap is renames, all or none: a failure part-way (here the second rename) puts the old splits
    and meta.json back, and the killed run's scratch folder is removed by the next run."""
    import os

    from mde import io

    out = tmp_path / "d"
    synthesize(out, train=3, val=1, size=32, seed=0, progress=False)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    real_replace, calls = os.replace, []

    def stopped_at_the_second_move_in(src, dst):
        calls.append(Path(src).name)
        if Path(src).name == "val" and ".synth-" in str(src) and "old" not in str(src):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", stopped_at_the_second_move_in)
    with pytest.raises(InputError, match="cannot write the dataset"):
        synthesize(out, train=2, val=2, size=32, seed=1, progress=False, force=True)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
    (out / f".synth-{2**22 + 7}-00aa11bb00aa11bb" / "train").mkdir(parents=True)  # a SIGKILLed run's (no such pid)
    synthesize(out, train=2, val=1, size=32, seed=0, progress=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "train", "val"]


@pytest.mark.parametrize("spoil", ["train_is_a_file", "val_is_a_link"])
def test_force_over_what_it_cannot_replace_changes_nothing(tmp_path, spoil):
    """train/ as a file or val/ as a link would fail half-way through the swap: refused before rendering."""
    out = tmp_path / "d"
    synthesize(out, train=3, val=1, size=32, seed=0, progress=False)
    if spoil == "train_is_a_file":
        shutil.rmtree(out / "train")
        (out / "train").write_text("not a split")
        bad = out / "train"
    else:
        shutil.move(out / "val", tmp_path / "elsewhere")
        (out / "val").symlink_to(tmp_path / "elsewhere")
        bad = out / "val"
    before = sorted((p.relative_to(out), p.is_file() and p.read_bytes()) for p in out.rglob("*"))
    with pytest.raises(InputError, match="expected a split folder here") as refused:
        synthesize(out, train=2, val=1, size=32, seed=0, progress=False, force=True)
    assert str(bad) in str(refused.value)
    assert sorted((p.relative_to(out), p.is_file() and p.read_bytes()) for p in out.rglob("*")) == before


def test_workers_are_capped_by_the_images(tmp_path, monkeypatch):
    """`--workers 99` for 3 images starts no pool of 99 (one per image at most, and per core)."""
    from mde.data import synth

    started = []
    real = synth._pool
    monkeypatch.setattr(synth, "_pool", lambda workers: started.append(workers) or real(workers))
    synthesize(tmp_path / "d", train=2, val=1, size=16, seed=0, progress=False, workers=99)
    assert started and started[0] <= 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"train": 0, "val": 0}, "--train and --val are both 0: no images to write"),
     ({"train": -1}, "--train and --val must be >= 0, got -1 and"), ({"size": 8}, "--size must be 16 to 4096"),
     ({"seed": -1}, "--seed must be 0 to 4294967295, got -1"),
     ({"seed": 2**32}, "--seed must be 0 to 4294967295, got 4294967296"),  # it drew seed 0's images
     # its job list alone filled 24 GiB before the first image, and the kernel killed the run
     ({"train": 10**26}, "ask for 100000000000000000000000001 images; one run makes at most 1,000,000")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"train": 2, "val": 1, "size": 32, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=match):
        synthesize(tmp_path / "d", progress=False, **args)
    assert not (tmp_path / "d").exists()


def test_cli_data_synth(cli, tmp_path):
    out = tmp_path / "d"
    res = cli("data", "synth", out, "--train", 3, "--val", 2, "--size", 32, "--seed", 1)
    assert res.code == 0, res.err
    assert "wrote 3 train + 2 val pairs" in res.err and res.out == ""  # a status line: stdout is for results
    assert len(list((out / "val" / "depth").iterdir())) == 2
    res = cli("data", "synth", out, "--train", 3, "--val", 2, "--size", 32)
    assert res.code == 2
    assert res.err.strip().startswith("mde: error:") and "not empty" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert cli("data", "synth", out, "--train", 1, "--val", 1, "--size", 32, "--force").code == 0


def test_meta_json_stays_small_whatever_the_count(tmp_path):
    """Each image's camera went into meta.json, ~240 bytes an image: past ~70,000 images it outgrew the 16 MiB
    every command reads such a file up to, and mde refused the dataset it had made. They go to cameras.json."""
    from mde.data.readers import dataset_max_depth
    from mde.data.synth import read_cameras

    out = tmp_path / "d"
    synthesize(out, train=30, val=2, size=16, seed=0, progress=False)
    assert (out / "meta.json").stat().st_size < 1024 and len(read_cameras(out)["train"]) == 30
    meta = json.loads((out / "meta.json").read_text())
    (out / "cameras.json").unlink()  # a set made before cameras.json: the cameras in meta.json
    (out / "meta.json").write_text(json.dumps({**meta, "cameras": {"train": {"000000": {"fx": 1.0}}, "val": {}}}))
    assert read_cameras(out)["train"] == {"000000": {"fx": 1.0}} and dataset_max_depth(out) == meta["max_depth"]


def test_rendering_workers_end_with_a_parent_killed_alone(tmp_path):
    """SIGKILL to `mde data synth --workers 2` alone (the OOM killer) left both workers waiting for work for good."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "mde", "data", "synth", str(tmp_path / "d"), "--train", "4000",
                             "--val", "1", "--size", "64", "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        workers: list = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [c for c in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) >= 2, "no workers started"
        time.sleep(2)  # at work on their first chunks
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [p.pid for p in alive]
    finally:
        proc.kill()
        for worker in workers:  # what the test found alive is not left behind
            with contextlib.suppress(psutil.Error):
                worker.kill()


def test_a_dataset_is_not_written_into_another_datasets_split(tmp_path):
    """`mde data synth d1/train/rgb/sub` and `mde data synth d1/train --force` wrote a dataset into d1's split: its
    images joined it, and every later read of d1 warned of subfolders."""
    synthesize(tmp_path / "d1", train=1, val=1, size=16, seed=0, progress=False)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "d1").rglob("*"))
    for out, force in ((tmp_path / "d1" / "train" / "rgb" / "sub", False), (tmp_path / "d1" / "train", True)):
        with pytest.raises(InputError, match=rf"lies inside the dataset split {tmp_path / 'd1' / 'train'}; write"):
            synthesize(out, train=1, val=1, size=16, seed=0, progress=False, force=force)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "d1").rglob("*")) == before
