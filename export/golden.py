"""`golden.npz`: golden inputs, PyTorch outputs and tolerances, for later torch-free checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def golden_inputs(
    state: dict[str, Any], size: tuple[int, int], count: int, seed: int
) -> tuple[np.ndarray, str]:
    """`count` golden inputs N x 3 x H x W in [0, 1]: validation images of the training dataset
    when its folder exists here, else seeded uniform noise. Returns (images, description)."""
    from mde.runtime.images import list_images, read_rgb
    from mde.runtime.preprocess import preprocess

    config = state.get("config") or {}
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, str) and data:
        for split in ("val", "train"):
            folder = Path(data) / split / "rgb"
            try:
                files = list_images(folder)[:count] if folder.is_dir() else []
                if len(files) == count:
                    return preprocess(
                        [read_rgb(f) for f in files], size
                    ), f"{folder} ({count} images)"
            except Exception:  # noqa: BLE001 - a broken dataset falls back to noise
                break
    rng = np.random.default_rng(seed)
    return rng.random((count, 3, *size), dtype=np.float32), f"uniform noise, seed {seed}"


def golden_checkpoint(path: Path) -> str:
    try:
        with np.load(path) as data:
            return str(data["checkpoint_sha256"])
    except Exception:  # noqa: BLE001 - an unreadable golden file is simply "another one"
        return ""


def write_golden(
    path: Path,
    image: np.ndarray,
    reference: np.ndarray,
    depth_range: float,
    checkpoint_sha: str,
    image_source: str,
) -> None:
    """`golden.npz`: inputs `image`, PyTorch outputs `depth`, `tolerances` (JSON), provenance; atomic."""
    from dataclasses import asdict

    from mde.io import atomic_path
    from mde.runtime.parity import DEFAULT_TOLERANCES

    tolerances = {
        "metric": "p99(|artifact - torch|) / depth_range",
        "depth_range": depth_range,
        **{precision: asdict(row) for precision, row in DEFAULT_TOLERANCES.items()},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            image=image,
            depth=reference,
            tolerances=np.array(json.dumps(tolerances, sort_keys=True)),
            checkpoint_sha256=np.array(checkpoint_sha),
            source=np.array(image_source),
        )
    path.chmod(0o644)  # mkstemp creates 0600; golden.npz is read by other users/tools
