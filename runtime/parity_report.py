"""Parity outputs: the rich table, the JSON object and the Markdown report with worst-image PNGs (torch-free)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from mde.errors import one_line
from mde.runtime.parity import ArtifactResult

REPORT_TITLE = "# mde parity report"
COLUMNS = ("artifact", "precision", "backend", "RMSE", "dRMSE", "SSIM", "dSSIM", "p99 diff", "result")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(results: Sequence[ArtifactResult]) -> list[list[str]]:
    """Table rows, one per artifact (the table printed, and the Markdown one)."""
    out = []
    for r in results:
        verdict = "PASS" if r.passed else "FAIL (" + ", ".join(r.failed) + ")"
        out.append([r.artifact, r.precision, r.backend, _fmt(r.rmse, ".4f"), _fmt(r.d_rmse, "+.2e"),
                    _fmt(r.ssim, ".4f"), _fmt(r.d_ssim, "+.2e"),
                    "-" if r.p99_abs_diff is None else f"{r.p99_abs_diff:.2e} ({r.p99_over_range:.1e})",
                    verdict])
    return out


def region_rows(results: Sequence[ArtifactResult], figures: dict[str, Any]) -> list[list[str]]:
    """Per-region rows (region, model, RMSE, AbsRel, delta1, images): PyTorch, each artifact, the pixel mean map."""
    out = []
    for region in ("objects", "structure"):
        models = [("PyTorch", figures.get("reference", {}).get(region))]
        models += [(r.artifact, r.regions.get(region)) for r in results]
        models.append(("per-pixel mean map", figures.get("pixel_mean_map", {}).get(region)))
        out += [[region, name, *(f"{m[k]:.4f}" if m["images"] else "-" for k in ("rmse", "abs_rel", "delta1")),
                 str(m["images"])] for name, m in models if m]
    return out


REGION_COLUMNS = ("region", "model", "RMSE", "AbsRel", "delta1", "images")


def _table_console(to_stderr: bool) -> Any:
    """Where the tables go: stdout, or stderr where `--json` or `--report` sends its file to stdout."""
    from rich.console import Console

    from mde.console import stdout_console

    return Console(width=160, markup=False, stderr=True) if to_stderr else stdout_console(160)


def print_regions(results: Sequence[ArtifactResult], figures: dict[str, Any], to_stderr: bool = False) -> None:
    """The per-region figures on stdout, or stderr (information: parity gates use the whole image)."""
    from rich.table import Table

    table = Table(title="per region (information, not gated)")
    for col in REGION_COLUMNS:
        table.add_column(col, justify="left" if col in ("region", "model") else "right")
    for row in region_rows(results, figures):
        table.add_row(*row)
    _table_console(to_stderr).print(table)


def print_table(results: Sequence[ArtifactResult], title: str, to_stderr: bool = False) -> None:
    """The parity table on stdout, or stderr where stdout takes `--json` or `--report`."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("artifact", "result") else "right")
    for row, r in zip(rows(results), results):
        style = "green" if r.passed else "red"
        table.add_row(*row[:-1], Text(row[-1], style=style))
    console = _table_console(to_stderr)
    console.print(table)
    for r in results:
        if r.reason:
            console.print(Text.assemble((str(r.artifact), "red"), f": {r.reason}"))


def panel(rgb: np.ndarray, reference: np.ndarray, artifact: np.ndarray, max_depth: float) -> np.ndarray:
    """RGB | PyTorch | artifact | |difference| side by side (H x 4W x 3 uint8), all at the RGB's size.

    The difference is grey from black (none) to white (the image's largest finite difference,
    `difference_scale`); a NaN or infinite pixel of either map is white too, as large as a difference gets."""
    from mde.runtime.colormap import colorize
    from mde.runtime.preprocess import resize_rgb

    h, w = reference.shape
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(artifact.astype(np.float64) - reference)
    broken = ~np.isfinite(diff)
    scale = difference_scale(reference, artifact)
    gray = np.where(broken, 255, np.rint(255.0 * np.where(broken, 0.0, diff) / max(scale, 1e-12))).astype(np.uint8)
    return np.concatenate([resize_rgb(rgb, (h, w)), colorize(reference, max_depth),
                           colorize(artifact, max_depth), np.repeat(gray[..., None], 3, axis=2)], axis=1)


def difference_scale(reference: np.ndarray, artifact: np.ndarray) -> float:
    """The |artifact − PyTorch| in metres that the picture's difference panel shows as white: the largest finite
    one (0.0 where none is)."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(artifact.astype(np.float64) - reference)
    finite = diff[np.isfinite(diff)]
    return float(finite.max()) if finite.size else 0.0


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG (to a temporary path: `run_parity` writes its outputs as one set)."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def _setting(value: Any) -> str:
    """A header value as the report shows it: {"rmse": 1.77, "device": "cpu"} as `rmse 1.77, device cpu`."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_setting(v)}" for k, v in value.items())
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _markdown_text(text: str) -> str:
    """`text` shown as itself in Markdown: the characters that would end a table cell, a link's text or start
    code or emphasis are escaped (an artifact named `a|b].onnx`)."""
    return re.sub(r"([\\`*\[\]|])", r"\\\1", text)


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(map(_markdown_text, cells)) + " |"


def write_markdown(path: Path, results: Sequence[ArtifactResult], header: dict[str, Any],
                   images: dict[str, tuple[str, float]]) -> None:
    """The Markdown report: settings, the table, per artifact its tolerances, failures and worst image (to a
    temporary path, as `write_png`).

    Args:
        images: per artifact, its worst-image picture's file name and the difference in metres that the picture
            shows as white."""
    lines = [REPORT_TITLE, ""]
    lines += [f"- **{k}**: {_setting(v)}" for k, v in header.items() if k != "regions"]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [_markdown_row(row) for row in rows(results)]
    if header.get("regions") or any(r.regions for r in results):
        lines += ["", "Per region (information; the gates use the whole image):", "",
                  "| " + " | ".join(REGION_COLUMNS) + " |", "|" + "---|" * len(REGION_COLUMNS)]
        lines += [_markdown_row(row) for row in region_rows(results, header.get("regions", {}))]
    lines += ["", ("p99 diff: 99th percentile of |artifact - PyTorch| at model resolution, metres "
                   "(in brackets: divided by the model's max depth)."), ""]
    for r in results:
        lines += [f"## {_markdown_text(r.artifact)} ({r.precision}, {r.backend}): {'PASS' if r.passed else 'FAIL'}",
                  ""]
        if r.reason:
            lines += [f"Reason: {r.reason}", ""]
        if r.failed:
            lines += [f"Failing metrics: {', '.join(r.failed)}", ""]
        tol = ", ".join(f"{k} {v:g}" for k, v in r.tolerance.items() if v is not None)
        lines += [(f"Tolerance: {tol or '-'}; max |diff| {_fmt(r.max_abs_diff, '.3e')} m, "
                   f"mean |diff| {_fmt(r.mean_abs_diff, '.3e')} m, AbsRel {_fmt(r.abs_rel, '.4f')}, "
                   f"delta1 {_fmt(r.delta1, '.4f')}, worst image {_markdown_text(r.worst_image or '-')}"), ""]
        if r.artifact in images:
            name, white = images[r.artifact]
            # percent-encoded: a space, parenthesis or # in the report's name ended the link (no picture shown)
            lines += [f"![{_markdown_text(r.artifact)}: RGB, PyTorch, artifact, difference]({quote(name)})", "",
                      f"Difference panel: black 0, white {white:.3g} m (the image's largest finite difference; "
                      "NaN or infinite pixels white too).", ""]
    # a name that is not UTF-8 (a dataset's `img\xff.png`) or holds a control character, shown as `\xNN`, as the
    # JSON and the messages show it: strict encoding raised on the first, the second broke its line
    path.write_bytes("\n".join(map(one_line, lines)).encode())
