"""Other worlds for the decoder benchmarks: the built-in virtual world with a patch while a set is made.

fixed-camera: every image taken by one camera (hfov 70 deg, pitch 10 deg down, no roll, 1.2 m up;
only where it stands and looks varies). small-objects: every placed object at half its size,
standing where it stood (the open scenes' far buildings keep theirs). `make_world_data` makes a
set from either (see bench_decoder_ideas.py for what each shows).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

FIXED_CAMERA = {"hfov_deg": 70.0, "pitch_deg": 10.0, "height_m": 1.2}


def fixed_camera() -> AbstractContextManager:
    """A patch of the world: every scene re-shot by the `FIXED_CAMERA` (same place and heading)."""
    from unittest import mock

    from mde.data import world

    sample = world._sample_scene

    def fixed_camera_scene(rng: np.random.Generator) -> dict:
        scene = sample(rng)
        forward = scene["rot"][:, 2]  # the camera's z axis in the world
        pitch = float(np.radians(FIXED_CAMERA["pitch_deg"]))
        scene["hfov"], scene["pitch"] = float(np.radians(FIXED_CAMERA["hfov_deg"])), pitch
        scene["rot"], scene["roll"] = world._rot(float(np.arctan2(forward[0], forward[2])), pitch, 0.0), 0.0
        scene["origin"][1] = FIXED_CAMERA["height_m"]
        return scene

    return mock.patch.object(world, "_sample_scene", fixed_camera_scene)


SMALL_OBJECTS_SCALE = 0.5  # every placed object (not the open scenes' far buildings) at half its size


def small_objects() -> AbstractContextManager:
    """A patch of the world: every object shrunk by `SMALL_OBJECTS_SCALE` where it stood, its foot where it was."""
    from unittest import mock

    from mde.data import world

    place = world._place_objects

    def place_small(rng: np.random.Generator, scene: dict, *args) -> None:
        before = len(scene["objects"])
        place(rng, scene, *args)
        for obj in scene["objects"][before:]:
            half_h = float(obj["size"][0] if obj["shape"] == "sphere" else obj["size"][1])
            obj["size"] = obj["size"] * np.float32(SMALL_OBJECTS_SCALE)
            obj["radius"] *= SMALL_OBJECTS_SCALE
            obj["center"][1] -= half_h * (1 - SMALL_OBJECTS_SCALE)  # on the floor (or as far above it)

    return mock.patch.object(world, "_place_objects", place_small)


WORLDS = {"fixed-camera": fixed_camera, "small-objects": small_objects}


def make_world_data(path: Path, name: str, quick: bool = False) -> Path:
    """`ensure_data`'s synthetic set (the `--quick` one with `quick`) drawn from world `name`, made at `path`
    unless it is there.

    A `bench_world.json` marks the folder (written first: a folder with it and no meta.json was
    interrupted, and is made again); a fixed-camera set made before the marker existed is
    recognised by its cameras. Made in one process: the patch does not reach spawned workers.
    """
    from bench_train import check_data_settings, data_settings

    from mde.data.synth import read_cameras, synthesize
    from mde.io import parse_json, read_small_text

    marker = path / "bench_world.json"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: not a folder; --world {name} makes its set in a new folder")
    if (path / "meta.json").is_file():
        if marker.is_file():
            try:
                saved = parse_json(read_small_text(marker))
            except ValueError as err:  # JSON that is cut short
                raise ValueError(f"{marker}: not readable ({err}); remove the folder to make the set again") \
                    from None
            ours = isinstance(saved, dict) and saved.get("world") == name
        else:  # fixed-camera sets made before the marker
            cameras = read_cameras(path)
            ours = name == "fixed-camera" and all(c[key] == value for split in cameras.values()
                                                  for c in split.values() for key, value in FIXED_CAMERA.items())
        if not ours:
            raise ValueError(f"{path}: holds another dataset; --world {name} needs a new folder")
        check_data_settings(path, quick)
        return path
    # The marker goes first, so a set interrupted before its meta.json is made again, not refused:
    # what synthesize leaves when stopped (its splits, its temporary folder) may be there with it.
    path.mkdir(parents=True, exist_ok=True)
    ours = {marker.name, "train", "val"} if marker.is_file() else set()
    if any(p.name not in ours and not (ours and p.name.startswith(".synth-")) for p in path.iterdir()):
        raise ValueError(f"{path}: holds other files and no dataset; --world {name} needs a new folder")
    marker.write_text(json.dumps({"world": name}))
    with WORLDS[name]():
        synthesize(path, **data_settings(quick), seed=0, force=True, progress=False, workers=1)
    return path
