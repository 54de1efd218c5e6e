"""The `golden` backend: replays the PyTorch outputs saved in an export's `golden.npz` (torch-free parity)."""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import InputError
from mde.io import json_float, parse_json, starts_with
from mde.runtime.backends.base import Runner, TensorSpec, providers_refused, register_backend
from mde.runtime.images import MAX_PLAUSIBLE_DEPTH
from mde.runtime.metadata import INPUT_NAME, MIN_DEPTH_RANGE, OUTPUT_NAME, ModelMetadata
from mde.runtime.metrics import MASK_INVALID, MASK_OBJECT, MASK_STRUCTURE


def read_golden(path: str | Path) -> dict[str, Any]:
    """The arrays of a golden.npz: `image`, `depth`, optional `gt` (ground truth) and `mask`, and its JSON fields.

    Raises:
        InputError: not a golden.npz with N x 3 x H x W `image` and N x 1 x H x W `depth`.
    """
    path = Path(path)
    try:
        if not starts_with(path, b"PK\x03\x04"):  # a zip archive, as every .npz
            raise InputError("not a golden.npz (not a NumPy .npz archive)", path)
        with np.load(path, allow_pickle=False) as npz:
            golden = {name: npz[name] for name in npz.files}
        stored = golden["image"].dtype
        images, depth = golden["image"].astype(np.float32), golden["depth"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # truncated, not npz
        raise InputError(f"not a golden.npz with 'image' and 'depth' arrays ({type(err).__name__}: {err})",
                         path) from None
    if images.ndim != 4 or images.shape[1] != 3 or not images.size or depth.shape != (len(images), 1,
                                                                                    *images.shape[2:]):
        raise InputError(f"golden arrays must be N x 3 x H x W and N x 1 x H x W, N, H, W >= 1, got {images.shape}, "
                         f"{depth.shape}", path)
    if not (np.isfinite(images).all() and np.isfinite(depth).all()):
        raise InputError("golden arrays hold NaN or infinite values (a damaged file: export it again)", path)
    if stored != np.float32 or images.min() < 0.0 or images.max() > 1.0:  # every artifact would fail, not the file
        raise InputError(f"golden 'image' must be the preprocessed float32 input in [0, 1], found {stored} from "
                         f"{images.min():g} to {images.max():g} (a damaged file: export it again)", path)
    golden["image"], golden["depth"] = images, depth
    for key in ("tolerances", "meta"):
        try:
            golden[key] = parse_json(str(golden[key])) if key in golden else {}
        except ValueError as err:
            raise InputError(f"golden.npz field {key!r} is not JSON ({err})", path) from None
        if not isinstance(golden[key], dict):
            raise InputError(f"golden.npz field {key!r} must be a JSON object", path)
    _check_ground_truth(golden, len(images), path)
    return golden


def _check_ground_truth(golden: dict[str, Any], count: int, path: Path) -> None:
    """What `mde export --golden-data` saved beside the outputs, as it saved it: `gt_I` (H x W metres, some valid)
    for every image or none, `mask_I` (uint8 region values, gt_I's shape), a positive `meta.data_range`."""
    damaged = " (a damaged file: export it again)"
    data_range = golden["meta"].get("data_range")
    number = json_float(data_range)
    in_range = number is not None and MIN_DEPTH_RANGE <= number <= MAX_PLAUSIBLE_DEPTH  # SSIM squares it
    if data_range is not None and not in_range:
        raise InputError(f"golden.npz meta.data_range must be a number of metres in [{MIN_DEPTH_RANGE:g}, "
                         f"{MAX_PLAUSIBLE_DEPTH:g}], "
                         f"got {str(data_range)[:40]}{damaged}", path)
    present = [i for i in range(count) if f"gt_{i}" in golden]
    if (golden["meta"].get("ground_truth") and len(present) != count) or 0 < len(present) < count:
        missing = next(i for i in range(count) if i not in present)
        raise InputError(f"golden.npz holds ground truth for {len(present)} of its {count} images (gt_{missing} is "
                         f"missing){damaged}", path)
    for i in present:
        gt, mask = golden[f"gt_{i}"], golden.get(f"mask_{i}")
        if gt.ndim != 2 or not gt.size or gt.dtype.kind != "f":
            raise InputError(f"golden.npz gt_{i} must be an H x W float depth map, got {gt.dtype} {gt.shape}"
                             f"{damaged}", path)
        if not (np.isfinite(gt) & (gt > 0)).any():
            raise InputError(f"golden.npz gt_{i} has no valid depth (all 0, negative or NaN){damaged}", path)
        if mask is None:
            continue
        stray = np.setdiff1d(np.unique(mask), (MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID)) if mask.size else []
        if mask.dtype != np.uint8 or mask.shape != gt.shape or len(stray):
            raise InputError(f"golden.npz mask_{i} must be uint8 region values ({MASK_STRUCTURE}, {MASK_OBJECT}, "
                             f"{MASK_INVALID}) of gt_{i}'s shape {gt.shape}, got {mask.dtype} {mask.shape}"
                             f"{f' with value {stray[0]}' if len(stray) else ''} (damaged, or exported from a "
                             "dataset mask of other values; export it again from masks of those values)", path)


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


@register_backend("golden")
class GoldenRunner(Runner):
    """Answers each golden input with PyTorch's saved output for it; any other input is an error."""

    def __init__(self, path: str | Path, threads: int = 0, providers: Sequence[str] | None = None):
        # it computes nothing: `threads` is taken and unused, as by an engine; providers would be a silent no-op
        if providers is not None:
            raise providers_refused(path, "golden")
        super().__init__(path)
        self._outputs: dict[str, np.ndarray] = {}
        self.golden: dict[str, Any] = {}

    def _activate_impl(self) -> None:
        golden = read_golden(self.path)
        images, depth = golden["image"], golden["depth"]
        h, w = images.shape[2:]
        saved_range = golden["meta"].get("max_depth", golden["tolerances"].get("depth_range"))
        if saved_range is None:
            raise InputError("golden.npz records no depth range (re-export it with `mde export`)", self.path)
        max_depth = json_float(saved_range)
        # the model's range: it scales the gates
        if max_depth is None or not MIN_DEPTH_RANGE <= max_depth <= MAX_PLAUSIBLE_DEPTH:
            raise InputError(f"golden.npz meta.max_depth must be a number of metres in [{MIN_DEPTH_RANGE:g}, "
                             f"{MAX_PLAUSIBLE_DEPTH:g}], "
                             f"got {json.dumps(saved_range)[:40]} (a damaged file: export it again)", self.path)
        try:
            metadata = ModelMetadata(input_size=(int(h), int(w)), max_depth=max_depth, precision="fp32",
                                     **golden["meta"].get("model", {}))
        except (TypeError, ValueError) as err:
            raise InputError(f"golden.npz has a malformed 'meta' or 'tolerances' field ({err})", self.path) from None
        self.golden = golden
        self._outputs = {_key(image): out for image, out in zip(images, depth)}
        self.metadata = metadata
        self.input_specs = {INPUT_NAME: TensorSpec(INPUT_NAME, np.dtype(np.float32), (None, 3, int(h), int(w)))}
        self.output_specs = {OUTPUT_NAME: TensorSpec(OUTPUT_NAME, np.dtype(np.float32), (None, 1, int(h), int(w)))}

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = []
        for image in feed[INPUT_NAME]:
            saved = self._outputs.get(_key(image))
            if saved is None:
                # the input's fault, not the file's: no path, so `mde predict` skips that image and goes on
                raise InputError(f"not one of the inputs saved in {self.path.name}; the golden backend only "
                                 "replays those")
            outputs.append(saved)
        return {OUTPUT_NAME: np.stack(outputs)}

    @property
    def providers(self) -> list[str]:
        return ["saved PyTorch outputs"]
