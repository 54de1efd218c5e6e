"""Parity: tolerances per precision and the pure comparison of an artifact's outputs with PyTorch's (torch-free).

Tolerances (docs/reference.md), all checked per artifact: RMSE and SSIM are means over images,
the tensor statistic is pooled over every pixel of every image:
  |dRMSE|  = |RMSE(artifact, GT) - RMSE(PyTorch, GT)|  <= rmse_abs (m), or rmse_rel * RMSE(PyTorch, GT)
  |dSSIM|  = |SSIM(artifact, GT) - SSIM(PyTorch, GT)|  <= ssim_abs
  p99(|artifact - PyTorch|) / max_depth                <= p99_over_range   (model resolution, all pixels of
                                                                             all images together)
Golden mode gates the same way when the golden file holds ground truth (`mde export --golden-data`);
a golden file of seeded noise has none, and there the tensor statistic is the only gate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

try:  # Python 3.11+; tomli is the same parser for 3.10 (Ubuntu 22.04 / ROS 2 Humble)
    import tomllib  # novermin - guarded: tomli below on 3.10
except ModuleNotFoundError:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from mde.errors import InputError
from mde.io import json_float, read_small_text
from mde.runtime.preprocess import postprocess


@dataclass(frozen=True)
class Tolerance:
    """One precision's row of the tolerance table; the RMSE limit is `rmse_abs` (metres) or `rmse_rel` (a
    fraction of PyTorch's RMSE), one of them (an override naming one drops the other)."""

    rmse_abs: float | None = None
    rmse_rel: float | None = None
    ssim_abs: float = 0.0
    p99_over_range: float = 0.0

    def rmse_limit(self, reference_rmse: float) -> float:
        if self.rmse_rel is not None:
            return self.rmse_rel * reference_rmse
        return self.rmse_abs if self.rmse_abs is not None else float("inf")


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rmse_abs=1e-4, ssim_abs=1e-4, p99_over_range=1e-4),
    "fp16": Tolerance(rmse_abs=5e-3, ssim_abs=2e-3, p99_over_range=5e-3),
    "int8": Tolerance(rmse_rel=0.02, ssim_abs=1e-2, p99_over_range=5e-2),
}
# golden.npz's tolerance table holds, beside one row per precision, these notes (`export.golden.write_golden`)
GOLDEN_TABLE_NOTES = ("metric", "depth_range")


def tolerances_from_dict(table: dict[str, Any], base: dict[str, Tolerance] | None = None,
                         source: str | Path = "tolerances") -> dict[str, Tolerance]:
    """Override `base` (default: `DEFAULT_TOLERANCES`) with {precision: {field: value}}; unknown names are errors."""
    result = dict(DEFAULT_TOLERANCES if base is None else base)
    names = {f.name for f in fields(Tolerance)}
    for precision, row in table.items():
        if precision in names:  # `ssim_abs = 1` above every table: which precision is it for?
            raise InputError(f"{precision} stands outside a precision's table; put it under one of "
                             f"{', '.join(f'[{p}]' for p in DEFAULT_TOLERANCES)}", source)
        if precision not in DEFAULT_TOLERANCES:
            raise InputError(f"unknown precision [{precision}]; expected {', '.join(DEFAULT_TOLERANCES)}", source)
        if not isinstance(row, dict):
            raise InputError(f"[{precision}] must be a table of tolerances", source)
        unknown = set(row) - names
        if unknown:
            raise InputError(f"unknown tolerance {sorted(unknown)} in [{precision}]; expected {sorted(names)}", source)
        for key, value in row.items():
            number = json_float(value)
            if number is None or not (math.isfinite(number) and number >= 0):
                text = repr(value)
                shown = text if len(text) <= 40 else f"{text[:20]}… ({len(text)} characters)"
                raise InputError(f"[{precision}] {key} must be a finite number >= 0, got {shown}", source)
        if {"rmse_abs", "rmse_rel"} <= set(row):
            raise InputError(f"[{precision}] gives rmse_abs and rmse_rel; the RMSE limit is one of them", source)
        changes: dict[str, float | None] = {k: float(v) for k, v in row.items()}
        if "rmse_abs" in row:  # the row's RMSE limit becomes absolute (int8's default is relative)
            changes["rmse_rel"] = None
        elif "rmse_rel" in row:
            changes["rmse_abs"] = None
        result[precision] = replace(result[precision], **changes)
    return result


def read_tolerance_table(path: str | Path) -> dict[str, Any]:
    """A TOML file of overrides, e.g. `[int8]\\nssim_abs = 0.02`, as {precision: {field: value}}; checked."""
    path = Path(path)
    try:
        table = tomllib.loads(read_small_text(path))
    except OSError as err:
        raise InputError(f"cannot read tolerances ({err.strerror or err})", path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:  # ValueError: an
        # integer past Python's 4300 digits
        raise InputError(f"not a valid TOML file ({err})", path) from None
    tolerances_from_dict(table, source=path)  # refuses unknown names and bad values now, before any work
    return table


def load_tolerances(path: str | Path, base: dict[str, Tolerance] | None = None) -> dict[str, Tolerance]:
    """A TOML file of overrides over `base` (default: the default table)."""
    return tolerances_from_dict(read_tolerance_table(path), base, source=path)


@dataclass
class ArtifactResult:
    """One artifact against the reference: metrics, deltas, tensor statistics, verdict."""

    artifact: str
    precision: str
    backend: str
    images: int = 0
    rmse: float | None = None          # vs ground truth (None in golden mode)
    ssim: float | None = None
    abs_rel: float | None = None
    delta1: float | None = None
    d_rmse: float | None = None        # artifact - reference
    d_ssim: float | None = None
    rmse_vs_reference: float | None = None
    max_abs_diff: float | None = None  # |artifact - reference| at model resolution, metres
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    p99_over_range: float | None = None
    worst_image: str | None = None
    worst_index: int | None = None
    tolerance: dict[str, float | None] = field(default_factory=dict)
    regions: dict[str, dict[str, float]] = field(default_factory=dict)  # information, never a gate
    failed: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def gt_metrics(raws: Sequence[np.ndarray], gts: Sequence[np.ndarray], max_depth: float,
               data_range: float, masks: Sequence[np.ndarray | None] | None = None) -> list[dict[str, float]]:
    """Per-image metrics against the ground truth, plus each image's region figures where it has a mask
    (each output is postprocessed once)."""
    from mde.runtime.metrics import compute_metrics, region_metrics

    out = []
    for raw, gt, mask in zip(raws, gts, masks if masks is not None else [None] * len(gts)):
        depth = postprocess(raw, gt.shape, max_depth)
        metrics = compute_metrics(depth, gt, data_range)
        if mask is not None:
            metrics |= region_metrics(depth, gt, mask)
        out.append(metrics)
    return out


def region_means(per_image: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{region: {rmse, abs_rel, delta1, images}} from per-image figures (`gt_metrics` with masks), each
    the mean over the images having that region; every region, one that no image shows with 0 images and
    NaN figures (null in JSON).
    """
    from mde.runtime.metrics import REGION_METRIC_NAMES, REGIONS

    out = {}
    for region in REGIONS:
        rows = [m for m in per_image if f"{region}_rmse" in m]
        out[region] = {k: _mean([m[f"{region}_{k}"] for m in rows]) for k in REGION_METRIC_NAMES}
        out[region]["images"] = len(rows)
    return out


def shown_regions(means: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """`region_means` as reported: none at all where no image shows either region (masks of sky only), as
    `mde eval` reports none; otherwise every region, one that no image shows with 0 images."""
    return means if any(row["images"] for row in means.values()) else {}


def compare(
    reference: Sequence[np.ndarray],
    artifact: Sequence[np.ndarray],
    gts: Sequence[np.ndarray] | None,
    *,
    tolerance: Tolerance,
    max_depth: float,
    data_range: float,
    names: Sequence[str] | None = None,
    label: str = "artifact",
    precision: str = "fp32",
    backend: str = "onnxruntime",
    reference_metrics: list[dict[str, float]] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> ArtifactResult:
    """Compare per-image raw outputs (1 x h x w, model resolution) of an artifact with the reference's.

    Args:
        reference: PyTorch's raw outputs, one per image.
        artifact: the artifact's raw outputs, same images, same preprocessed input.
        gts: ground-truth depth maps (any resolution; outputs are postprocessed to it), or None.
        tolerance: the row of the tolerance table for this artifact's precision.
        max_depth: the model's output range (postprocess clip; divides the p99 diff).
        data_range: SSIM's data range (the dataset's max depth).
        names: image names, for the worst image.
        reference_metrics: precomputed per-image GT metrics of the reference (saves work).
        masks: region masks of the ground truths (None where an image has none): per-region
            figures for information in `regions`, not gates.
    """
    if len(reference) != len(artifact) or not len(reference):
        raise InputError(f"expected as many artifact outputs as reference outputs (> 0), got "
                         f"{len(artifact)} and {len(reference)}")
    result = ArtifactResult(label, precision, backend, images=len(reference),
                            tolerance=asdict(tolerance))
    _tensor_statistics(result, reference, artifact, tolerance, max_depth, names)
    if gts is not None:
        ref_m = reference_metrics if reference_metrics is not None else gt_metrics(reference, gts, max_depth,
                                                                                   data_range)
        art_m = gt_metrics(artifact, gts, max_depth, data_range, masks)
        _gt_deltas(result, art_m, ref_m, tolerance)
        if masks is not None and any(m is not None for m in masks):  # no mask at all: no region figures
            result.regions = shown_regions(region_means(art_m))
    return result


def _tensor_statistics(result: ArtifactResult, reference: Sequence[np.ndarray], artifact: Sequence[np.ndarray],
                       tolerance: Tolerance, max_depth: float, names: Sequence[str] | None) -> None:
    """|artifact - reference| statistics at model resolution, the worst image, and the p99 / NaN gates."""
    diffs, p99s = [], []
    for ref, out in zip(reference, artifact):
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise InputError(f"{result.artifact}: output shape {out.shape} differs from the reference's {ref.shape}")
        diff = np.abs(out - ref).ravel()
        diff[~np.isfinite(diff)] = np.inf
        diffs.append(diff)
        p99s.append(_p99(diff))
    alldiff = np.concatenate(diffs)
    worst = int(np.argmax(p99s))
    result.max_abs_diff = float(alldiff.max())
    result.mean_abs_diff = float(alldiff.mean())
    result.p99_abs_diff = _p99(alldiff)
    result.p99_over_range = result.p99_abs_diff / max_depth
    result.worst_index = worst
    result.worst_image = names[worst] if names is not None else str(worst)
    result.rmse_vs_reference = float(np.mean([np.sqrt(np.mean(d**2)) for d in diffs]))
    if not np.isfinite(result.max_abs_diff):
        result.failed.append("nan")
    if result.p99_over_range > tolerance.p99_over_range or not np.isfinite(result.p99_over_range):
        result.failed.append("p99")


def _p99(diff: np.ndarray) -> float:
    """The 99th percentile of |diff|, where a non-finite output's difference is inf: interpolating toward
    inf is inf - inf, NaN (and numpy's warning), so there it is the upper of the two neighbours (inf, or a
    finite value where the percentile falls on one)."""
    with np.errstate(invalid="ignore"):
        value = float(np.percentile(diff, 99))
    return float(np.percentile(diff, 99, method="higher")) if np.isnan(value) else value


def _gt_deltas(result: ArtifactResult, art: list[dict[str, float]], ref: list[dict[str, float]],
               tolerance: Tolerance) -> None:
    """The artifact's ground-truth metrics, their deltas to the reference's, and the RMSE / SSIM gates."""
    result.rmse, result.ssim = _mean([m["rmse"] for m in art]), _mean([m["ssim"] for m in art])
    result.abs_rel = _mean([m.get("abs_rel", np.nan) for m in art])
    result.delta1 = _mean([m.get("delta1", np.nan) for m in art])
    ref_rmse, ref_ssim = _mean([m["rmse"] for m in ref]), _mean([m["ssim"] for m in ref])
    result.d_rmse, result.d_ssim = result.rmse - ref_rmse, result.ssim - ref_ssim
    if not abs(result.d_rmse) <= tolerance.rmse_limit(ref_rmse):
        result.failed.append("rmse")
    if not abs(result.d_ssim) <= tolerance.ssim_abs:
        result.failed.append("ssim")


def mismatch(label: str, precision: str, backend: str, reason: str, check: str = "preprocess",
             tolerance: Tolerance | None = None) -> ArtifactResult:
    """A failed result for an artifact that cannot be compared (`check`: preprocess, or source: another
    checkpoint's export); `tolerance`: its precision's, reported as for any artifact."""
    return ArtifactResult(label, precision, backend, failed=[check], reason=reason,
                          tolerance=asdict(tolerance) if tolerance is not None else {})
