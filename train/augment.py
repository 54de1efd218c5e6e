"""Training-time augmentation applied consistently to an RGB image and its depth map (numpy, torch-free).

Geometric changes (random scale-crop, horizontal flip) move RGB and depth together; depth is
resized with NEAREST so invalid pixels (0) never blend into valid ones. Photometric changes
(colour jitter) touch RGB only. Validation never augments: it uses `mde.runtime.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


DEFAULT_AUGMENT = AugmentConfig()


def hflip(rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror both left-right."""
    return rgb[:, ::-1], depth[:, ::-1]


def scale_crop(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
               min_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop the same random window (side fraction in [min_scale, 1], same aspect) from both."""
    h, w = depth.shape
    s = rng.uniform(min_scale, 1.0)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return rgb[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw]


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random brightness, contrast and saturation (torchvision ColorJitter's definitions)."""
    img = rgb.astype(np.float32)
    img *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - gray.mean()) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + gray.mean()
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    img = (img - gray[..., None]) * sat + gray[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def augment_pair(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig = DEFAULT_AUGMENT) -> tuple[np.ndarray, np.ndarray]:
    """One random augmentation of an (H x W x 3 uint8, H x W float32) pair, at the input size."""
    if rng.random() < cfg.crop_p:
        rgb, depth = scale_crop(rgb, depth, rng, cfg.min_scale)
    if rng.random() < cfg.flip_p:
        rgb, depth = hflip(rgb, depth)
    rgb = color_jitter(np.ascontiguousarray(rgb), rng, cfg)
    return rgb, np.ascontiguousarray(depth)


def to_training_pair(rgb: np.ndarray, depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to the square model input: RGB bilinear (as `preprocess`), depth nearest; float RGB in [0,1]."""
    rgb = resize_rgb(np.ascontiguousarray(rgb), (size, size))
    depth = resize_depth(np.ascontiguousarray(depth), (size, size), nearest=True)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    x = rgb.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    return x, depth[None]
