"""Safe image reading and conversion to the one input format: H x W x 3 uint8 RGB."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mde.errors import DataError, InputError
from mde.runtime.metadata import MAX_INPUT_SIDE

log = logging.getLogger(__name__)

# Images larger than this are refused from their header, before any pixel is decoded.
MAX_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE
MIN_SIDE = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ORIENTATION_TAG = 0x0112  # EXIF: how the stored pixels are turned for display (1: as stored)


def _open_checked(path: Path) -> Image.Image:
    """Open an image lazily and check its header (size limits) before decoding."""
    if not path.exists():
        raise InputError("image not found", path)
    if path.is_dir():
        raise InputError("expected an image file, found a directory", path)
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise DataError("not a readable image (unknown or corrupt format)", path) from None
    except Image.DecompressionBombError as err:  # Pillow refuses > 2x its own limit at open
        raise DataError(f"image header claims too many pixels, refused before decoding ({err})", path) from None
    except OSError as err:
        raise DataError(f"cannot read image ({err})", path) from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DataError(f"image is {w}x{h}, larger than the {MAX_PIXELS} pixel limit", path)
    if min(w, h) < MIN_SIDE:
        img.close()
        raise DataError(f"image is {w}x{h}, smaller than {MIN_SIDE} pixels on a side", path)
    return img


def _decode(img: Image.Image, path: Path) -> np.ndarray:
    try:
        img.load()
        return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"truncated or corrupt image ({err})", path) from None
    finally:
        img.close()


def to_rgb8(array: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert gray, gray+alpha, RGBA and 16-bit/float images to H x W x 3 uint8 RGB.

    Pixel values follow one rule, for arrays and files alike (`_to_uint8`). Conversions are logged
    (info level; a guess at warning level) so a user knows the input was changed.
    """
    if not isinstance(array, np.ndarray):
        raise InputError(f"{source}: expected a numpy array, got {type(array).__name__}")
    if array.size == 0:
        raise InputError(f"{source}: empty image (shape {array.shape})")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{source}: expected H x W x 3 RGB, got shape {array.shape}")
    array = _to_uint8(array, source)
    channels = array.shape[2]
    if channels in (1, 2):
        log.info("%s: grayscale image converted to RGB", source)
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif channels == 4:
        log.info("%s: RGBA image, alpha channel dropped", source)
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Pixel values as 8-bit, or InputError where they cannot be an image's.

    Floats must be finite and lie in [0, 1]. Integers of at most 255 in a wider type are 8-bit
    values (shifting them as 16-bit would make the image black), up to 65535 they are 16-bit;
    negative or larger values are refused.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{source}: floating-point image with NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{source}: floating-point image with values {lo:g} to {hi:g}; expected [0, 1] "
                             "(or 8-bit integers 0 to 255)")
        log.info("%s: float image in [0, 1] scaled to 8-bit", source)
        return (array * 255.0 + 0.5).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{source}: unsupported dtype {array.dtype} (expected uint8)")
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"{source}: integer image with values {lo} to {hi}; expected 8- or 16-bit values")
    if hi <= 255:  # a guess, per image: say so louder than the other conversions
        log.warning("%s: 8-bit values in a %d-bit image, read as 8-bit", source, 8 * array.dtype.itemsize)
        return array.astype(np.uint8)
    log.info("%s: 16-bit image scaled to 8-bit", source)
    return (array.astype(np.uint16) >> 8).astype(np.uint8)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: as stored); 1 too where the EXIF is damaged or the file ends early."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF on stderr
        try:
            return int(img.getexif().get(ORIENTATION_TAG, 1))
        except Exception:  # noqa: BLE001 - any EXIF Pillow cannot parse: the pixels as stored
            return 1


def read_rgb(path: str | Path, upright: bool = False) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (gray, RGBA, 16-bit and float gray are converted).

    upright: turn it as its EXIF orientation says, as viewers show it (`mde predict`: the depth map
        matches the picture the user sees). Datasets are read as stored, like their depth maps.
    """
    path = Path(path)
    img = _open_checked(path)
    if upright and _orientation(img) != 1:
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"truncated or corrupt image ({err})", path) from None
    if img.mode not in ("RGB", "L", "LA", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
        try:
            img = img.convert("RGB")
        except OSError as err:
            raise DataError(f"truncated or corrupt image ({err})", path) from None
        array = _decode(img, path)
    else:
        array = _decode(img, path)
    return to_rgb8(array, str(path))


def read_depth(path: str | Path, png_scale: float = 1000.0) -> np.ndarray:
    """Read a depth map as H x W float32 metres; invalid pixels become 0.

    Args:
        path: a 16-bit PNG (value / `png_scale` metres; 1000 for millimetres, 256 for KITTI)
            or a float32 `.npy` in metres (0 or NaN invalid).
        png_scale: PNG units per metre.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.exists():
            raise InputError("depth map not found", path)
        try:
            if not _starts_with(path, b"\x93NUMPY"):  # numpy takes any other file for a pickle
                raise DataError("not a NumPy .npy file", path)
            depth = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"cannot read depth .npy ({err})", path) from None
        if depth.ndim == 3 and depth.shape[0] == 1:
            depth = depth[0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise DataError(f"expected an H x W float depth map, got {depth.dtype} {depth.shape}", path)
        depth = depth.astype(np.float32)
    else:
        img = _open_checked(path)
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):  # 8-bit "L" would cap depth at 0.255 m
            img.close()
            raise DataError(f"expected a 16-bit single-channel depth PNG, got mode {img.mode}"
                            f"{' (8-bit: a picture of depth, not depth?)' if img.mode == 'L' else ''}", path)
        depth = _decode(img, path).astype(np.float32) / np.float32(png_scale)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return depth


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def list_images(folder: Path) -> list[Path]:
    """Image files in `folder` (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
