"""The one preprocessing and postprocessing, shared by training-time evaluation, every backend and parity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from mde.errors import InputError
from mde.runtime.images import to_rgb8


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an H x W x 3 uint8 image to `size` = (height, width), bilinear (PIL)."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def resize_depth(depth: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an H x W float32 map to `size` = (height, width); bilinear unless `nearest`."""
    h, w = size
    if depth.shape == (h, w):
        return depth.astype(np.float32, copy=False)
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize((w, h), mode))


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB images (H x W x 3 uint8, any sizes) -> float32 N x 3 x height x width in [0, 1].

    ImageNet normalization is inside the model (and its exported graph), not here.

    Args:
        images: one image or a sequence of images.
        size: the model's input (height, width).
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    if len(images) == 0:
        raise InputError("no images to preprocess")
    batch = np.empty((len(images), 3, size[0], size[1]), dtype=np.float32)
    for i, image in enumerate(images):
        rgb = resize_rgb(to_rgb8(image, f"image {i}"), size)
        np.multiply(rgb.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=batch[i])
    return batch


def postprocess(
    depth: np.ndarray, size: tuple[int, int], max_depth: float | None = None
) -> np.ndarray:
    """A model output (1 x h x w, or h x w) -> H x W float32 metres at the original image `size`.

    Args:
        depth: one image's output.
        size: the (height, width) to return, normally the input image's.
        max_depth: clip to [0, max_depth] when given.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3:
        depth = depth[0]
    out = resize_depth(depth, size)
    upper = np.inf if max_depth is None else max_depth
    return np.clip(out, 0.0, upper).astype(np.float32, copy=False)
