"""The calibration ranges cache, `FILE.ranges.json` beside the output `FILE.onnx`: computed once, reused by every
quantization.

A file is reused only for the same key (model hash, images, seed, method, ONNX Runtime version,
target) and when it holds a valid range for every tensor the calibrator covers; anything else is
calibrated again, and a damaged file (NaN, inverted or missing ranges, cut-off JSON) says so in one
line first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mde.io import json_safe, parse_json, read_small_text, write_json_atomic

log = logging.getLogger(__name__)

RANGES_FORMAT = "mde.ranges/1"


def save_ranges(path: Path, key: dict[str, Any], ranges: dict[str, tuple[float, float]]) -> None:
    """Write the ranges and the key they belong to (model hash, images, seed, method) atomically."""
    write_json_atomic(path, {"format": RANGES_FORMAT, "key": key,
                             "ranges": {k: [lo, hi] for k, (lo, hi) in sorted(ranges.items())}})


def load_ranges(path: Path, key: dict[str, Any], tensors: Collection[str]) -> dict[str, tuple[float, float]] | None:
    """The saved ranges when `path` exists, was computed for `key` and has a valid range for each of `tensors`.

    The file is a cache: None (calibrate again) when it is absent or for another key, and
    likewise, with a one-line warning, when it is damaged.
    """
    try:
        doc = parse_json(read_small_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s: ignoring the saved ranges (unreadable: %s); calibrating again", path, type(err).__name__)
        return None
    # the key as the file holds it: a file name that is not UTF-8 is written as \xNN text, and must still match
    if not isinstance(doc, dict) or doc.get("format") != RANGES_FORMAT or doc.get("key") != json_safe(key):
        return None
    problem = _ranges_problem(doc.get("ranges"), tensors)
    if problem:
        log.warning("%s: ignoring the saved ranges (%s); calibrating again", path, problem)
        return None
    return {str(k): (float(lo), float(hi)) for k, (lo, hi) in doc["ranges"].items()}


FLOAT32_MAX = 3.4028234663852886e38  # a range beyond it makes an infinite float32 scale


def _ranges_problem(ranges: Any, tensors: Collection[str]) -> str | None:
    """What is wrong with a saved file's "ranges" for `tensors`; None when nothing is."""
    if not isinstance(ranges, dict):
        return f"expected an object of ranges, found {type(ranges).__name__}"
    for name, value in ranges.items():
        numbers = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= FLOAT32_MAX for v in value)
        if not (numbers and value[0] <= value[1]):  # NaN fails the comparison too
            return f"{name} has {json.dumps(value)}, expected two numbers low <= high within float32's range"
    missing = sorted(set(tensors) - set(ranges))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return f"no range for {', '.join(missing[:3])}{more}"
    return None
