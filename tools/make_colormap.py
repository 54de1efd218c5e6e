"""Generate runtime/turbo_lut.npy (256 x 3 uint8) from matplotlib's turbo colormap.

Run from the repository root: `python tools/make_colormap.py`. matplotlib is a build-time
tool here, not a runtime dependency: the runtime only loads the committed .npy file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "runtime" / "turbo_lut.npy"


def make_lut(name: str = "turbo", n: int = 256) -> np.ndarray:
    """An n x 3 uint8 RGB lookup table sampled from matplotlib's colormap `name`."""
    import matplotlib

    cmap = matplotlib.colormaps[name].resampled(n)
    rgba = cmap(np.arange(n))
    return np.round(rgba[:, :3] * 255.0).astype(np.uint8)


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no stray arguments
    lut = make_lut()
    np.save(OUT, lut, allow_pickle=False)
    print(f"wrote {OUT} {lut.shape} {lut.dtype}")


if __name__ == "__main__":
    main()
