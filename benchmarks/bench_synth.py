"""Benchmark: procedural generator throughput at 224x224 (target: 100 images/s on 2 cores).

Measures, in one run, (1) the end-to-end `synthesize` wall-clock rate with 2 worker processes
(rendering + PNG encoding of RGB, depth and mask + writing, pool start-up included) and (2) the single-process CPU time
per image, from which the per-core rate follows.

    python benchmarks/bench_synth.py [--quick]
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
from cli_common import Parser, run_main

TARGET = 100.0  # images/s at 224x224 on 2 cores
SIZE = 224


def run(quick: bool = False, verbose: bool = True) -> dict:
    """Time the generator, print one summary line, return the figures (images_per_s, ratio_to_target, ...)."""
    from mde.data.synth import _render_job, synthesize

    count = 120 if quick else 600
    workers = min(2, os.cpu_count() or 1)
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # before we add ours
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize(os.path.join(tmp, "d"), train=count, val=0, size=SIZE, seed=0,
                   progress=False, workers=workers)
        wall = time.perf_counter() - start
        single = 30 if quick else 100
        os.makedirs(os.path.join(tmp, "s", "train", "rgb"))
        os.makedirs(os.path.join(tmp, "s", "train", "depth"))
        os.makedirs(os.path.join(tmp, "s", "train", "mask"))
        cpu0 = time.process_time()
        for i in range(single):
            _render_job((os.path.join(tmp, "s"), "train", i, SIZE, 0))
        cpu_ms = (time.process_time() - cpu0) / single * 1000
    rate = count / wall
    res = {
        "benchmark": "synth", "size": SIZE, "images": count, "workers": workers,
        "images_per_s": round(rate, 1), "target_images_per_s": TARGET,
        "ratio_to_target": round(rate / TARGET, 2),
        "cpu_ms_per_image": round(cpu_ms, 2),
        "images_per_s_per_core": round(1000 / cpu_ms, 1),
        "load_avg_1min_before": load,
        "numpy": np.__version__,
    }
    if verbose:
        print(f"synth {SIZE}x{SIZE}: {res['images_per_s']:.1f} images/s with {res['workers']} workers "
              f"({res['images']} images) = {res['ratio_to_target']:.2f}x the {TARGET:.0f} images/s "
              f"target; {res['cpu_ms_per_image']:.1f} CPU ms/image single-process "
              f"({res['images_per_s_per_core']:.0f} images/s per core); 1-min load "
              f"before {res['load_avg_1min_before']}", flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    res = run(quick=args.quick, verbose=not args.json)
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    run_main(main)
