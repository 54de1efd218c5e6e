"""`mde data synth`: a dataset of procedural scenes (`mde.data.world`) in the folder format of docs/reference.md.

OUT/{train,val}/rgb/NAME.png (8-bit RGB), OUT/{train,val}/depth/NAME.png (16-bit, millimetres) and
OUT/{train,val}/mask/NAME.png (8-bit regions: 0 structure, 1 object, 255 sky) with NAME = the
zero-padded index, plus OUT/meta.json: generator and version, seed, counts,
size, max/min depth and the depth PNG scale, and OUT/cameras.json: under [split][name], each image's
intrinsics (fx, fy, cx, cy; pixel centres at integer coordinates) and camera (height_m, pitch_deg, positive
looking down, roll_deg, hfov_deg, scene kind). Sets made before cameras.json hold that under meta.json's
"cameras" (`read_cameras` takes both). Image i of a split is rendered from
SeedSequence([seed, split index, i]), so files are byte-identical for a seed whatever the
number of workers.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mde.data.world import MAX_DEPTH, MIN_DEPTH, draw_scene, render_labelled, render_scene
from mde.io import (
    claim_output,
    deferred_signals,
    no_empty_new_folder,
    prepare_output_dir,
    remove_stale_scratch,
    replace_together,
    scratch_folder,
    write_json_atomic,
)
from mde.runtime.metadata import MM_PER_M
from mde.runtime.metrics import MASK_INVALID, MASK_OBJECT, MASK_STRUCTURE

__all__ = ["MAX_DEPTH", "MIN_DEPTH", "SPLITS", "SynthConfig", "draw_scene", "render_scene", "scene_rng",
           "synthesize"]

GENERATOR_VERSION = 2  # 2: region masks
DEPTH_PNG_SCALE = MM_PER_M  # PNG units per metre
SPLITS = ("train", "val")
CAMERAS_FILE = "cameras.json"  # beside meta.json, which stays small: ~240 bytes an image held 70,000 images' worth
MAX_IMAGES = 1_000_000  # one run's --train + --val: their list and cameras are held in memory until written


# --- dataset writer -----------------------------------------------------------------------------


CHUNK = 8  # images a worker renders per task: fewer round trips, still a fine progress bar
SCRATCH_PREFIX = ".synth-"  # the folder images are rendered into, beside the splits it replaces


def _png(array: np.ndarray) -> bytes:
    """Encode H x W x 3 uint8 RGB, H x W uint8 mask or H x W uint16 depth as PNG (Pillow, zlib level 1: fast).

    The bytes depend only on the pixels, so datasets stay byte-identical.
    """
    buffer = io.BytesIO()
    image = Image.fromarray(array.astype(np.uint16) if array.ndim == 2 and array.dtype != np.uint8 else array)
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws image `index` of `split` in the set made with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def _render_chunk(jobs: list[tuple]) -> list[tuple[str, str, dict]]:
    """A worker's task: `CHUNK` image pairs."""
    return [_render_job(job) for job in jobs]


def _render_job(job: tuple) -> tuple[str, str, dict]:
    """Render and write one image pair (worker entry point); returns (split, name, intrinsics)."""
    tmp, split, index, size, seed = job
    rgb, depth, mask, intr = render_labelled(scene_rng(seed, split, index), size)
    name = f"{index:06d}"
    mm = np.round(depth * DEPTH_PNG_SCALE).astype(np.uint16)
    (Path(tmp) / split / "rgb" / f"{name}.png").write_bytes(_png(rgb))
    (Path(tmp) / split / "depth" / f"{name}.png").write_bytes(_png(mm))
    (Path(tmp) / split / "mask" / f"{name}.png").write_bytes(_png(mask))
    return split, name, intr


@dataclass
class SynthConfig:
    """`mde data synth` defaults: dataset size and seed."""

    train: int = 1000
    val: int = 100
    size: int = 224
    seed: int = 0
    workers: int = 0  # 0: automatic (2 processes for 64 images or more)


def _default_workers(count: int) -> int:
    return 1 if count < 64 else max(1, min(2, os.cpu_count() or 1))


def synthesize(out: str | Path, train: int, val: int, size: int, seed: int, force: bool = False,
               progress: bool = True, workers: int | None = None) -> dict:
    """Write a procedural dataset in the dataset folder format (docs/reference.md) plus `OUT/meta.json`.

    Files are written into a temporary folder inside OUT and swapped into place at the end by
    renames that all happen or none (`mde.io.replace_together`), so an interrupted run leaves the
    old dataset or the new one, never a mix, and a folder with meta.json is complete. With `force`,
    existing train/, val/, cameras.json and meta.json in OUT are replaced; other files there are left alone.
    Another mde command writing OUT meanwhile is refused. With workers > 1 the pool uses the "spawn" start
    method (safe after torch is imported): call it from a `__main__`-guarded script.

    Args:
        out: output folder (must be empty or missing unless `force`).
        train: number of training pairs.
        val: number of validation pairs.
        size: image height and width in pixels.
        seed: dataset seed; image i of a split is seeded by (seed, split, i), so the files do
            not depend on the number of workers.
        force: overwrite a non-empty OUT.
        progress: show a progress bar on stderr.
        workers: processes (default: 2 for 64 images or more, else 1 in-process).

    Returns:
        The meta dict written to `meta.json`.
    """
    from mde.errors import InputError

    _check_request(train, val, size, seed)
    _check_outside_a_split(Path(out))
    with claim_output(out), no_empty_new_folder(out):  # a run that fails or is stopped leaves no folder it made
        if Path(out).is_dir():  # first: a run killed with SIGKILL left its scratch folder, nothing else
            remove_stale_scratch(out, SCRATCH_PREFIX)
        out = prepare_output_dir(out, force=force)
        _check_replaceable(out)
        try:
            with scratch_folder(out, SCRATCH_PREFIX) as tmp:
                cameras = _render_splits(tmp, {"train": train, "val": val}, size, seed, progress, workers)
                meta = {"generator": "mde.data.synth", "version": GENERATOR_VERSION, "seed": seed,
                        "counts": {"train": train, "val": val}, "size": [size, size],
                        "max_depth": MAX_DEPTH, "min_depth": MIN_DEPTH, "depth_png_scale": DEPTH_PNG_SCALE,
                        "mask_values": {"structure": MASK_STRUCTURE, "object": MASK_OBJECT,
                                        "invalid": MASK_INVALID},
                        "intrinsics_convention": "pixel centres at integer coordinates (OpenCV)",
                        "cameras_file": CAMERAS_FILE}
                _publish(tmp, out, meta, cameras)
                return meta
        except OSError as err:
            raise InputError(f"cannot write the dataset ({err.strerror or err})", out) from None


def _check_replaceable(out: Path) -> None:
    """Before rendering: what `_publish` replaces must be a real folder (train/, val/) and a file (meta.json),
    or absent; anything else would fail half-way through the swap, with the old dataset half removed."""
    from mde.errors import InputError

    for split in SPLITS:
        path = out / split
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InputError("expected a split folder here (or nothing), found a link or a file; move it away "
                             "first", path)
    for name in ("meta.json", CAMERAS_FILE):
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise InputError(f"expected {name} to be a file (or absent); move it away first", path)


def _check_outside_a_split(out: Path) -> None:
    """Refuse an output in (or that is) another dataset's split folder: its images would join that split, whose
    every later read then warns of subfolders, or (`d1/train --force`) a dataset would be written into a split."""
    from mde.errors import InputError
    from mde.io import resolved

    target = resolved(out)
    for folder in (target, *target.parents):
        if folder.name in SPLITS and (folder / "rgb").is_dir() and (folder / "depth").is_dir():
            raise InputError(f"lies inside the dataset split {folder}; write the new dataset outside it", out)


def _check_request(train: int, val: int, size: int, seed: int) -> None:
    from mde.errors import InputError

    if train < 0 or val < 0:
        raise InputError(f"--train and --val must be >= 0, got {train} and {val}")
    if train + val > MAX_IMAGES:  # found now: the job list alone of 10**20 images filled the memory
        raise InputError(f"--train and --val ask for {train + val} images; one run makes at most {MAX_IMAGES:,}")
    if train + val == 0:
        raise InputError("--train and --val are both 0: no images to write")
    if not 0 <= seed < 2**32:  # numpy's SeedSequence drops trailing zero words: 2**32 + k drew seed k's images
        raise InputError(f"--seed must be 0 to {2**32 - 1}, got {seed}")
    if not 16 <= size <= 4096:
        raise InputError(f"--size must be 16 to 4096 pixels, got {size}")


def _render_splits(tmp: Path, counts: dict[str, int], size: int, seed: int, progress: bool,
                   workers: int | None) -> dict[str, dict]:
    """Render every image of every split into `tmp`; returns {split: {name: camera}}, sorted by name."""
    for split in SPLITS:
        for sub in ("rgb", "depth", "mask"):
            if counts[split]:  # no empty split folder: readers take one for a split with no images
                (tmp / split / sub).mkdir(parents=True)
    jobs = [(str(tmp), s, i, size, seed) for s in SPLITS for i in range(counts[s])]
    # no more processes than images or cores: a pool of 99 for 3 images only costs start-up time
    limit = max(1, min(len(jobs), os.cpu_count() or 1))
    workers = _default_workers(len(jobs)) if workers is None else max(1, min(workers, limit))
    cameras: dict[str, dict] = {s: {} for s in SPLITS}
    with _pool(workers) as pool:
        if pool is None:
            results = map(_render_job, jobs)
        else:
            # submitted by hand, not with pool.map: on an error, map's results cancel the queued work, which
            # races with the executor failing it once the workers are gone (CPython 3.11 prints an
            # InvalidStateError from its manager thread)
            chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
            with _workers_ignore_ctrl_c():  # every worker starts while the jobs are submitted
                futures = [pool.submit(_render_chunk, chunk) for chunk in chunks]
            results = (result for future in futures for result in future.result())
        if progress:
            from mde.console import track

            results = track(results, f"synthesizing {size}x{size}", total=len(jobs))
        try:
            for split, name, intr in results:
                cameras[split][name] = intr
        except BrokenProcessPool:  # a worker killed from outside (out of memory?)
            from mde.errors import MdeError

            # A signal sent to the whole group (`timeout`, `kill -TERM -PGID`) kills the workers as it reaches
            # this process: a moment for its handler to run, so the run is reported as stopped, not as failed.
            time.sleep(0.5)
            raise MdeError("a rendering worker stopped unexpectedly (killed, or out of memory?); try --workers 1") \
                from None
    return {s: dict(sorted(cameras[s].items())) for s in SPLITS}


def _publish(tmp: Path, out: Path, meta: dict, cameras: dict) -> None:
    """Swap the rendered splits, cameras.json and meta.json (last: it marks a complete dataset) from `tmp` into
    `out`, by renames that all happen or none; the old dataset goes into `tmp`, deleted with it afterwards."""
    write_json_atomic(tmp / CAMERAS_FILE, cameras)
    write_json_atomic(tmp / "meta.json", meta)
    moves = [((tmp / split) if (tmp / split).exists() else None, out / split) for split in SPLITS]
    replace_together([*moves, (tmp / CAMERAS_FILE, out / CAMERAS_FILE), (tmp / "meta.json", out / "meta.json")],
                     tmp / "old")


def read_cameras(data: str | Path) -> dict[str, dict[str, dict]]:
    """{split: {name: camera}} of a set `mde data synth` made: its cameras.json, or meta.json's "cameras" in a set
    made before that file (information: no command reads it)."""
    import json

    data = Path(data)
    if (data / CAMERAS_FILE).is_file():
        return json.loads((data / CAMERAS_FILE).read_text())
    return json.loads((data / "meta.json").read_text())["cameras"]


class _pool:
    """A process pool (spawn: safe after torch/OpenMP imports), or None for one worker.

    concurrent.futures' pool, not multiprocessing's: `timeout` and job schedulers send SIGTERM to the whole
    process group, and a worker killed while it waits for work holds multiprocessing.Pool's queue lock, on
    which its terminate() then waits forever. This pool notices dead workers and lets go.
    """

    def __init__(self, workers: int):
        self.workers, self.pool = workers, None

    def __enter__(self):
        if self.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_die_with_parent, initargs=(os.getpid(),))
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        # After an error or a stop, the workers are stopped at once (their chunk may take seconds at a large
        # --size) and waited for, so the scratch folder goes after their last write; `timeout` sends its
        # signal twice (to the process, then its group), and the copy must not cut this short: it comes after.
        # The queued work is not cancelled: the executor fails it itself once it sees the workers gone.
        with deferred_signals():
            if exc[0] is not None:
                for process in list(self.pool._processes.values()):  # no public terminate() in the executor;
                    process.kill()  # SIGKILL: a SIGTERM that mde was started ignoring is ignored by them too
            self.pool.shutdown(wait=True)


def _die_with_parent(parent: int) -> None:
    """In a worker: end with the parent. Killed alone (SIGKILL, the OOM killer), it left its workers waiting for work
    for good, each holding both ends of the job pipe, so none ever read its end. Linux's parent-death signal; where
    there is none (or the parent is gone already), nothing, or an exit now."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Around the calls that start workers (the executor starts them as work is submitted): Ctrl-C reaches the
    whole process group, and the parent stops the pool, so the workers ignore it from birth (an ignored signal
    stays ignored across exec) and none prints a traceback of its own. Only from the main thread."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        yield
    finally:
        if previous is not None:  # None: not the main thread, or a handler installed from C: left as it is
            signal.signal(signal.SIGINT, previous)
