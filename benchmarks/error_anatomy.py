"""Where a trained run's val error is (`bench_decoder_ideas.py --anatomy`).

Per region, pixels near a depth edge (a jump over 0.5 m within 2 px) against the rest; object
pixels by ground-truth depth and by the area of their connected object region; on a set that
`mde data synth` made, object pixels split into the open scenes' far backdrop buildings and the
placed boxes, spheres and cylinders (the scenes are drawn again from the set's seed to tell them
apart); the placed objects (all objects on other sets) by whether their connected region reaches
the image's bottom row (its foot, where it would meet the floor, out of frame); and the RMSE left
after rescaling each prediction by its least-squares factor (what one global scale per image,
camera height or focal length, would explain). RMSEs here are pixel-pooled, so they differ a
little from the metrics module's per-image means.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from mde.runtime.metrics import MASK_OBJECT, REGIONS

DEPTH_BINS = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 20.1)
AREA_BINS = (0, 16, 64, 256, 1024, 4096, 1 << 30)  # pixels of a connected object region, at the data's size
EDGE_JUMP_M, EDGE_RADIUS_PX = 0.5, 2
FOOT = ("in_frame", "cut_by_bottom_edge")  # does the object region reach the image's bottom row?
KINDS = ("placed", "buildings")  # the placed objects; the open scenes' far backdrop boxes


def near_edge(depth: np.ndarray) -> np.ndarray:
    """Pixels within EDGE_RADIUS_PX of a neighbour-to-neighbour depth jump over EDGE_JUMP_M."""
    gy, gx = np.gradient(depth)
    edge = np.hypot(gx, gy) > EDGE_JUMP_M
    out = edge.copy()
    for _ in range(EDGE_RADIUS_PX):  # 4-neighbour dilation
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def cut_by_bottom_edge(regions: np.ndarray) -> np.ndarray:
    """Of a labelled image (0 = background), the pixels whose region reaches the bottom row."""
    bottom = regions[-1][regions[-1] > 0]
    return np.isin(regions, bottom) & (regions > 0)


def backdrop_buildings(data: Path, samples: list, world: Callable[[], AbstractContextManager] = nullcontext,
                       ) -> list[np.ndarray] | None:
    """Per val sample, its backdrop-building pixels; None unless `mde data synth` (under `world`) made the set.

    Each scene is drawn again from the set's seed, then without its buildings (the objects marked
    `backdrop`); an object pixel whose label or depth changes is a building's. The first drawing
    must give the stored mask, or the set is not this generator's and None is returned.
    """
    from mde.data import world as w
    from mde.data.synth import scene_rng

    meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").is_file() else {}
    if meta.get("generator") not in ("mde.data.synth", "mde.synth"):  # its name before the package moved
        return None
    out, size = [], meta["size"][0]
    with world():
        for index, sample in enumerate(samples):
            scene = w._sample_scene(scene_rng(meta["seed"], "val", index))
            _, depth, mask, _ = w.draw_labelled(scene, size)
            if not np.array_equal(mask, sample.mask):
                return None
            placed = [obj for obj in scene["objects"] if not obj.get("backdrop")]
            if len(placed) == len(scene["objects"]):
                out.append(np.zeros_like(mask, dtype=bool))
                continue
            _, bare_depth, bare_mask, _ = w.draw_labelled({**scene, "objects": placed}, size)
            out.append((mask == MASK_OBJECT) & ((bare_mask != mask) | (np.abs(bare_depth - depth) > 1e-4)))
    return out


def anatomy(data: Path, run_dir: Path, world: Callable[[], AbstractContextManager] = nullcontext) -> dict:
    """The error table of the trained run in `run_dir` on `data`'s val split (see the module docstring)."""
    from bench_train import load_run
    from skimage.measure import label

    from mde.data.readers import open_dataset
    from mde.train.evaluate import torch_predictor

    model = load_run(run_dir)
    predict = torch_predictor(model, model.args.image_size, model.args.max_depth)
    val = open_dataset(data, "val")
    samples = [val[i] for i in range(len(val))]
    buildings = backdrop_buildings(data, samples, world)
    split = {(r, e): np.zeros(2) for r in REGIONS for e in ("edge", "interior")}
    nbins, nareas = len(DEPTH_BINS) - 1, len(AREA_BINS) - 1
    # per bin: count, sum of squared error, sum of signed error
    by_depth, by_size, by_foot, by_kind = (np.zeros((3, n)) for n in (nbins, nareas, len(FOOT), len(KINDS)))
    scaled = {"image": np.zeros(2), "objects": np.zeros(2)}
    for k, sample in enumerate(samples):
        gt, pred = sample.depth, predict([sample.rgb])[0]
        valid, edge = gt > 0, near_edge(gt)
        err = pred - gt
        for region, code in REGIONS.items():
            for where, sel in (("edge", edge), ("interior", ~edge)):
                m = valid & (sample.mask == code) & sel
                split[(region, where)] += ((err[m] ** 2).sum(), m.sum())
        objects = sample.mask == MASK_OBJECT
        obj = valid & objects
        regions = label(objects, connectivity=1)  # touching objects count as one
        area = np.bincount(regions.ravel())[regions[obj]]
        # pixels, and the bin of each: the foot split counts placed objects only, where buildings are known
        bins = [(by_depth, obj, np.digitize(gt[obj], DEPTH_BINS) - 1),
                (by_size, obj, np.digitize(area, AREA_BINS) - 1)]
        placed = obj if buildings is None else obj & ~buildings[k]
        placed_regions = regions if buildings is None else label(objects & ~buildings[k], connectivity=1)
        bins.append((by_foot, placed, cut_by_bottom_edge(placed_regions)[placed].astype(int)))
        if buildings is not None:
            bins.append((by_kind, obj, buildings[k][obj].astype(int)))
        for stats, sel, idx in bins:
            n = stats.shape[1]
            stats += [np.bincount(idx, None, n), np.bincount(idx, err[sel] ** 2, n), np.bincount(idx, err[sel], n)]
        s = (pred[valid] * gt[valid]).sum() / max((pred[valid] ** 2).sum(), 1e-9)
        for name, m in (("image", valid), ("objects", obj)):
            scaled[name] += (((s * pred - gt)[m] ** 2).sum(), m.sum())
    out = _regions_table(split)
    out["objects_by_depth"] = _binned(by_depth, [DEPTH_BINS[j:j + 2] for j in range(nbins)])
    out["objects_by_area"] = _binned(by_size, [AREA_BINS[j:j + 2] for j in range(nareas)])
    out["objects_by_foot"] = dict(zip(FOOT, _binned(by_foot, FOOT)))
    if buildings is not None:
        out["objects_by_kind"] = dict(zip(KINDS, _binned(by_kind, KINDS)))
    out["rmse_after_per_image_scale"] = {k: round(float(np.sqrt(v[0] / v[1])), 3) for k, v in scaled.items()}
    return out


def _binned(stats: np.ndarray, keys: list) -> list[dict]:
    """Rows of share, RMSE, mean signed error and error share from (count, sum of squared error, sum of error); a bin
    no pixel falls in has null RMSE and mean error (0 would read as a perfect score)."""
    count, sse, signed = stats
    return [{"bin": key, "pixel_share": round(count[j] / count.sum(), 3),
             "rmse": round(float(np.sqrt(sse[j] / count[j])), 3) if count[j] else None,
             "mean_error": round(float(signed[j] / count[j]), 3) if count[j] else None,
             "error_share": round(sse[j] / sse.sum(), 3)}
            for j, key in enumerate(keys)]


def _regions_table(split: dict) -> dict:
    """Share, RMSE and error share of each region's pixels near a depth edge and away from one."""
    out: dict = {"regions": {}}
    for region in ("objects", "structure"):
        total_sse, total_n = sum(split[(region, e)] for e in ("edge", "interior"))
        for where in ("edge", "interior"):
            sse, n = split[(region, where)]
            out["regions"][f"{region}_{where}"] = {
                "pixel_share": round(n / total_n, 3), "rmse": round(float(np.sqrt(sse / n)), 3) if n else None,
                "error_share": round(sse / total_sse, 3)}
    return out


if __name__ == "__main__":  # a library of bench_decoder_ideas.py, beside the scripts: say where it runs
    import sys

    print("error_anatomy.py: error: it is run through bench_decoder_ideas.py: python benchmarks/bench_decoder_ideas.py "
          "--data D --anatomy RUN [RUN ...]", file=sys.stderr)
    sys.exit(2)
