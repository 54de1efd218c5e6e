"""Training-time augmentation applied consistently to an RGB image and its depth map (numpy, torch-free).

Geometric changes (random scale-crop, horizontal flip) move RGB and depth together; depth is
resized with NEAREST so invalid pixels (0) never blend into valid ones. Photometric changes
(colour jitter) touch RGB only. Validation never augments: it uses `mde.runtime.preprocess`.

The scale-crop is geometrically consistent (Eigen et al., NIPS 2014): a window of side fraction
s, resized back to the input size, makes everything look 1/s times larger, so depth is
multiplied by s. The pair is then exactly what the recorded camera (same focal length in
pixels of the output size) sees of the scene squeezed along its optical axis by s: with
z' = s z, u = fx x / z = (s fx) x / z'. Intrinsics, where given, follow the crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mde.runtime.metrics import MASK_OBJECT
from mde.runtime.preprocess import resize_depth, resize_rgb


@dataclass
class AugmentConfig:
    """Ranges of the random transforms."""

    flip_p: float = 0.5
    min_scale: float = 0.6          # the crop's side as a fraction of the image side
    crop_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


FULL_AUGMENT = AugmentConfig()  # every transform on; training turns the optional ones off with `augment_config`


def augment_config(scale_crop: bool, color_jitter: bool) -> AugmentConfig:
    """`FULL_AUGMENT` with the scale-crop and the colour jitter each kept or turned off (flips always stay)."""
    off = {**({} if scale_crop else {"crop_p": 0.0}),
           **({} if color_jitter else {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0})}
    return replace(FULL_AUGMENT, **off)


def hflip(rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror both left-right."""
    return rgb[:, ::-1], depth[:, ::-1]


def crop_window(rgb: np.ndarray, depth: np.ndarray, y: int, x: int, ch: int, cw: int,
                intrinsics: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Crop rows y..y+ch, columns x..x+cw of both and rescale depth to the zoom (see the module docstring).

    Depth is multiplied by s = cw / W (the crop's side fraction); invalid pixels (0) stay 0.
    Returned intrinsics (fx, fy, cx, cy at the crop's own pixel grid) are those of the
    recorded camera looking at the depth-scaled scene: after resizing the crop back to W x H
    they give the original fx, fy again.

    Args:
        intrinsics: a dict with fx, fy, cx, cy (other keys are copied), or None.
    """
    h, w = depth.shape
    s = cw / w
    out = None
    if intrinsics is not None:
        out = {**intrinsics, "fx": intrinsics["fx"] * s, "fy": intrinsics["fy"] * ch / h,
               "cx": intrinsics["cx"] - x, "cy": intrinsics["cy"] - y}
    return rgb[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw] * np.float32(s), out


def random_window(h: int, w: int, rng: np.random.Generator, min_scale: float) -> tuple[int, int, int, int]:
    """(y, x, height, width) of a random window of an h x w image: side fraction in [min_scale, 1], same aspect."""
    s = rng.uniform(min_scale, 1.0)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return y, x, ch, cw


def resize_intrinsics(intrinsics: dict, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> dict:
    """fx, fy, cx, cy after resizing an image from src_hw to dst_hw (pixel centres at integers)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return {**intrinsics, "fx": intrinsics["fx"] * sx, "fy": intrinsics["fy"] * sy,
            "cx": (intrinsics["cx"] + 0.5) * sx - 0.5, "cy": (intrinsics["cy"] + 0.5) * sy - 0.5}


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random brightness, contrast and saturation, in that order, each as torchvision's `adjust_*` defines it
    (clipped to 0..255 after each: what brightness pushed past white is white for the contrast's mean)."""
    img = np.clip(rgb.astype(np.float32) * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness), 0, 255)
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = np.clip((img - gray.mean()) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + gray.mean(), 0, 255)
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    img = (img - gray[..., None]) * sat + gray[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def augment_pair(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig = FULL_AUGMENT,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One random augmentation of an (H x W x 3 uint8, H x W float32) pair and its region mask (or None).

    A region `mask` (H x W uint8), when given, is cropped and flipped with the depth map; it
    draws nothing from `rng`, so a run with masks sees the same images as one without.
    """
    if rng.random() < cfg.crop_p:
        y, x, ch, cw = random_window(*depth.shape, rng, cfg.min_scale)
        rgb, depth, _ = crop_window(rgb, depth, y, x, ch, cw)
        mask = None if mask is None else mask[y:y + ch, x:x + cw]
    if rng.random() < cfg.flip_p:
        rgb, depth = hflip(rgb, depth)
        mask = None if mask is None else mask[:, ::-1]
    if cfg.brightness or cfg.contrast or cfg.saturation:
        rgb = color_jitter(rgb, rng, cfg)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), None if mask is None else np.ascontiguousarray(mask)


def object_weights(mask: np.ndarray | None, size: tuple[int, int], object_weight: float) -> np.ndarray:
    """1 x H x W per-pixel loss weights at `size` (H, W): `object_weight` on the object pixels of `mask`, 1 elsewhere.

    The mask is resized like the depth map in `to_training_pair` (nearest), so each weight
    belongs to the depth value beside it; no mask means all ones.
    """
    weights = np.ones((1, *size), np.float32)
    if mask is not None:
        small = resize_depth(mask.astype(np.float32), size, nearest=True)
        weights[0][small == MASK_OBJECT] = object_weight
    return weights


def to_training_pair(rgb: np.ndarray, depth: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to the model input `size` (H, W): RGB bilinear (as `preprocess`), depth nearest; float RGB in [0,1]."""
    rgb = resize_rgb(np.ascontiguousarray(rgb), size)
    depth = resize_depth(np.ascontiguousarray(depth), size, nearest=True)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    x = rgb.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    return x, depth[None]
