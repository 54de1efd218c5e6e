"""Depth -> color image through the turbo lookup table (generated from matplotlib by tools/make_colormap.py)."""

from __future__ import annotations

import functools
import numbers
from pathlib import Path

import numpy as np

from mde.errors import InputError
from mde.runtime.metadata import MAX_PLAUSIBLE_DEPTH, MIN_DEPTH_RANGE

LUT_PATH = Path(__file__).with_name("turbo_lut.npy")


@functools.lru_cache(maxsize=1)
def turbo_lut() -> np.ndarray:
    """The 256 x 3 uint8 turbo table (index 0 = dark blue, 255 = dark red)."""
    lut = np.load(LUT_PATH, allow_pickle=False)
    if lut.shape != (256, 3) or lut.dtype != np.uint8:
        raise InputError(f"colormap table must be 256x3 uint8, got {lut.dtype} {lut.shape}", LUT_PATH)
    lut.setflags(write=False)
    return lut


def colorize(
    depth: np.ndarray, max_depth: float, invalid_color: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """H x W depth in metres -> H x W x 3 uint8 RGB, turbo colormap.

    Near is red (depth 0 -> the table's red end), far is blue (depth >= `max_depth` -> its
    blue end); the scale is fixed by `max_depth`, so colors mean the same distance in
    every image. Invalid pixels (0, negative, NaN, inf, or masked in an `np.ma.MaskedArray`, as
    `to_points` reads them) get `invalid_color`, three integers 0-255.
    """
    masked = np.ma.getmaskarray(depth) if isinstance(depth, np.ma.MaskedArray) else None
    depth = np.asarray(depth)
    if not np.issubdtype(depth.dtype, np.floating):  # as `to_points`: millimetres are not guessed
        hint = " (a depth camera's millimetres: divide by 1000)" if depth.dtype.kind in "ui" else ""
        raise InputError(f"expected depth in metres as floating point, got {depth.dtype}{hint}")
    valid = np.isfinite(depth) & (depth > 0)  # before a cast to float32, which makes 1e-300 m 0 and 1e300 m inf
    if depth.dtype.itemsize > 4:  # a float64 beyond float32's range is far, and one below it near
        f32_max = np.finfo(np.float32).max
        depth = np.where(np.isfinite(depth), np.clip(depth, -f32_max, f32_max), depth)
    depth = depth.astype(np.float32, copy=False)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth, valid = depth[0], valid[0]
        masked = None if masked is None else masked[0]
    if depth.ndim != 2:
        raise InputError(f"expected an H x W depth map, got shape {depth.shape}")
    if not (isinstance(max_depth, numbers.Real) and not isinstance(max_depth, bool)
            and MIN_DEPTH_RANGE <= max_depth <= MAX_PLAUSIBLE_DEPTH):
        raise InputError(f"max_depth must be a number of metres from {MIN_DEPTH_RANGE:g} to {MAX_PLAUSIBLE_DEPTH:g}, "
                         f"got {max_depth!r:.40}")
    color = _rgb(invalid_color)
    if masked is not None:
        valid &= ~masked
    scaled = np.clip(np.where(valid, depth, 0.0) / np.float32(max_depth), 0.0, 1.0)
    index = np.rint((1.0 - scaled) * 255.0).astype(np.uint8)
    rgb = turbo_lut()[index]
    rgb[~valid] = color
    return rgb


def _rgb(color: object) -> np.ndarray:
    """`invalid_color` as 3 uint8 values; an `InputError` where it is not three integers 0-255."""
    values = list(color) if isinstance(color, (tuple, list, np.ndarray)) else None
    if not (values is not None and len(values) == 3
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)):
        raise InputError(f"invalid_color must be three integers 0-255 (R, G, B), got {color!r}")
    return np.asarray(values, dtype=np.uint8)
