"""benchmarks/error_anatomy.py's splits: object regions cut by the bottom edge, and the backdrop buildings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import worlds as bench_worlds  # noqa: E402
from error_anatomy import backdrop_buildings, cut_by_bottom_edge  # noqa: E402

from mde.data.readers import open_dataset  # noqa: E402
from mde.data.synth import MASK_OBJECT, synthesize  # noqa: E402


def test_cut_by_bottom_edge_marks_whole_regions_that_reach_the_last_row():
    regions = np.array([[1, 1, 0, 2],
                        [0, 1, 0, 2],
                        [3, 0, 0, 2],
                        [3, 0, 4, 0]])
    expected = np.isin(regions, [3, 4])
    np.testing.assert_array_equal(cut_by_bottom_edge(regions), expected)
    np.testing.assert_array_equal(cut_by_bottom_edge(np.zeros((3, 3), int)), np.zeros((3, 3), bool))


def _samples(path: Path) -> list:
    val = open_dataset(path, "val")
    return [val[i] for i in range(len(val))]


def test_backdrop_buildings_are_object_pixels_of_open_scenes_only(tmp_path):
    synthesize(tmp_path, train=1, val=12, size=48, seed=3, progress=False, workers=1)
    samples = _samples(tmp_path)
    buildings = backdrop_buildings(tmp_path, samples)
    assert buildings is not None and len(buildings) == len(samples)
    scenes = json.loads((tmp_path / "cameras.json").read_text())["val"]
    for name, sample, b in zip(sorted(scenes), samples, buildings, strict=True):
        assert not (b & (sample.mask != MASK_OBJECT)).any()
        if scenes[name]["scene"] != "open":
            assert not b.any()
    assert any(b.any() for b in buildings), "no building seen in 12 scenes: pick another seed"
    # a building is a box 11-19 m away: its pixels are far
    far = np.concatenate([s.depth[b] for s, b in zip(samples, buildings, strict=True)])
    assert far.min() > 5.0


def test_backdrop_buildings_need_the_generator_and_the_world_that_made_the_set(tmp_path):
    with bench_worlds.small_objects():
        synthesize(tmp_path, train=1, val=4, size=32, seed=1, progress=False, workers=1)
    samples = _samples(tmp_path)
    assert backdrop_buildings(tmp_path, samples, bench_worlds.small_objects) is not None
    assert backdrop_buildings(tmp_path, samples) is None  # drawn again without the patch: other masks
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "generator": "someone else"}))
    assert backdrop_buildings(tmp_path, samples, bench_worlds.small_objects) is None


def test_anatomy_of_a_run_that_is_not_there_is_one_line_and_makes_no_set(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decoder_ideas.py"
    done = subprocess.run([sys.executable, str(script), "--world", "small-objects", "--data", str(tmp_path / "set"),
                           "--anatomy", str(tmp_path / "no-run")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bench_decoder_ideas.py: error: {tmp_path / 'no-run' / 'best.pt'}: trained run's checkpoint not found"]
    assert not (tmp_path / "set").exists()


def test_a_bin_no_pixel_falls_in_has_no_rmse_rather_than_a_perfect_one():
    """An empty area bin read `rmse 0.0, mean_error 0.0`: a perfect score for pixels that are not there."""
    import numpy as np
    from error_anatomy import _binned

    stats = np.array([[4.0, 0.0], [16.0, 0.0], [-4.0, 0.0]])  # count, sum of squared error, sum of error
    rows = _binned(stats, ["small", "large"])
    assert rows[0] == {"bin": "small", "pixel_share": 1.0, "rmse": 2.0, "mean_error": -1.0, "error_share": 1.0}
    assert rows[1]["pixel_share"] == 0.0 and rows[1]["rmse"] is None and rows[1]["mean_error"] is None
