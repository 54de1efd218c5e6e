"""benchmarks/worlds.py: what each world patch changes in a scene, and what it keeps; how a world set is made."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import worlds as bench_worlds  # noqa: E402

from mde.data import world  # noqa: E402
from mde.data.synth import MASK_OBJECT  # noqa: E402
from mde.errors import InputError  # noqa: E402

SEEDS = range(6)


def _scenes(patch=None, buildings: bool = True) -> list[dict]:
    """The scenes of `SEEDS`, drawn under `patch`; without the far buildings (drawn last) when asked."""
    with contextlib.ExitStack() as stack:
        if patch is not None:
            stack.enter_context(patch())
        if not buildings:
            stack.enter_context(mock.patch.object(world, "_place_buildings", lambda *a: None))
        return [world._sample_scene(np.random.default_rng(k)) for k in SEEDS]


def _foot_height(obj: dict) -> float:
    return float(obj["center"][1] - (obj["size"][0] if obj["shape"] == "sphere" else obj["size"][1]))


def test_small_objects_halves_each_placed_object_where_it_stood():
    placed = _scenes(buildings=False)
    for plain, small in zip(placed, _scenes(bench_worlds.small_objects, buildings=False), strict=True):
        assert len(plain["objects"]) == len(small["objects"]) > 0
        for a, b in zip(plain["objects"], small["objects"], strict=True):
            np.testing.assert_allclose(b["size"], a["size"] * bench_worlds.SMALL_OBJECTS_SCALE, rtol=1e-6)
            np.testing.assert_allclose(b["center"][[0, 2]], a["center"][[0, 2]])
            assert _foot_height(b) == pytest.approx(_foot_height(a), abs=1e-5)
    # the far buildings, drawn after the objects, keep their size
    for plain, small, without in zip(_scenes(), _scenes(bench_worlds.small_objects), placed, strict=True):
        for a, b in zip(plain["objects"][len(without["objects"]):], small["objects"][len(without["objects"]):],
                        strict=True):
            np.testing.assert_array_equal(a["size"], b["size"])
    # rendered, objects cover less of the image
    share = {name: float(np.mean([world.draw_labelled(scene, 48)[2] == MASK_OBJECT for scene in scenes]))
             for name, scenes in (("plain", _scenes()), ("small", _scenes(bench_worlds.small_objects)))}
    assert share["small"] < 0.75 * share["plain"]


def test_fixed_camera_gives_every_scene_one_camera():
    for plain, fixed in zip(_scenes(), _scenes(bench_worlds.fixed_camera), strict=True):
        assert fixed["hfov"] == pytest.approx(np.radians(bench_worlds.FIXED_CAMERA["hfov_deg"])) and fixed["roll"] == 0
        assert fixed["origin"][1] == pytest.approx(bench_worlds.FIXED_CAMERA["height_m"])
        np.testing.assert_allclose(fixed["origin"][[0, 2]], plain["origin"][[0, 2]])
        assert len(fixed["objects"]) == len(plain["objects"])


FULL_META = {"cameras": {}, "counts": {"train": 2000, "val": 200}, "size": [128, 128]}


def test_world_data_refuses_a_folder_of_another_world(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(FULL_META))
    (tmp_path / "bench_world.json").write_text(json.dumps({"world": "small-objects"}))
    assert bench_worlds.make_world_data(tmp_path, "small-objects") == tmp_path
    with pytest.raises(ValueError, match="--world fixed-camera needs a new folder"):
        bench_worlds.make_world_data(tmp_path, "fixed-camera")


def test_world_data_interrupted_before_its_meta_is_made_again(tmp_path, monkeypatch):
    import mde.data.synth as synth

    made = []

    def interrupted(path, **kwargs):
        made.append(kwargs["force"])
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_worlds.make_world_data(tmp_path / "set", "small-objects")
    (tmp_path / "set" / ".synth-left-by-a-kill").mkdir()  # a kill: synthesize's own cleanup did not run
    (tmp_path / "set" / "train").mkdir()  # stopped while moving its splits into place

    def finished(path, **kwargs):
        made.append(kwargs["force"])
        (path / "meta.json").write_text(json.dumps(FULL_META))

    monkeypatch.setattr(synth, "synthesize", finished)
    assert bench_worlds.make_world_data(tmp_path / "set", "small-objects") == tmp_path / "set"
    assert made == [True, True]
    assert bench_worlds.make_world_data(tmp_path / "set", "small-objects") == tmp_path / "set"  # there: not made again
    assert len(made) == 2
    for leftover in ("notes.txt", "train"):  # without the marker, nothing there is the benchmark's
        other = tmp_path / f"other-{leftover}"
        other.mkdir()
        (other / leftover).write_text("mine")
        with pytest.raises(ValueError, match="holds other files and no dataset"):
            bench_worlds.make_world_data(other, "small-objects")


def test_world_data_quick_is_the_quick_set_and_a_set_of_the_other_size_is_refused(tmp_path, monkeypatch):
    import mde.data.synth as synth

    asked = []

    def made(path, **kwargs):
        asked.append({k: kwargs[k] for k in ("train", "val", "size")})
        (path / "meta.json").write_text(json.dumps({"cameras": {}, "counts": {"train": kwargs["train"],
                                                    "val": kwargs["val"]}, "size": [kwargs["size"]] * 2}))

    monkeypatch.setattr(synth, "synthesize", made)
    assert bench_worlds.make_world_data(tmp_path / "q", "fixed-camera", quick=True) == tmp_path / "q"
    assert asked == [{"train": 120, "val": 20, "size": 64}]
    with pytest.raises(InputError, match="holds 120 / 20 images at 64 px, not the 2000 / 200 at 128 px"):
        bench_worlds.make_world_data(tmp_path / "q", "fixed-camera")
    assert bench_worlds.make_world_data(tmp_path / "q", "fixed-camera", quick=True) == tmp_path / "q"
    assert len(asked) == 1  # there: not made again
