"""Safe image reading and conversion to the one input format: H x W x 3 uint8 RGB."""

from __future__ import annotations

import array
import contextlib
import contextvars
import io
import logging
import os
import struct
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mde.errors import DataError, InputError
from mde.io import as_path, starts_with
from mde.runtime.metadata import MAX_INPUT_SIDE, MAX_PLAUSIBLE_DEPTH, MM_PER_M, PNG16_MAX

log = logging.getLogger(__name__)


class _OncePerFolder(logging.Filter):
    """Image notes ("grayscale image converted to RGB", info level) once per folder and kind in a process, for
    reads inside `notes_once_per_folder`: a dataset is read every epoch and a camera's frames are all alike, so
    a note for every image is hundreds of thousands of lines. Other reads, and warnings, are left alone. The
    folder being read is a context variable: each thread's own."""

    folder: contextvars.ContextVar[str | None] = contextvars.ContextVar("mde_image_folder", default=None)
    said: set[tuple[str, str]] = set()  # (folder, message)
    quiet = False  # no notes at all inside `notes_once_per_folder` (`quiet_folder_notes`)

    def filter(self, record: logging.LogRecord) -> bool:
        folder = self.folder.get()
        if folder is None or record.levelno > logging.INFO:
            return True
        key = (folder, getattr(record, "note", None) or str(record.msg))  # the kind: `_note`'s message, else the
        # format (every `_note` record's is "%s: %s": keyed by it, a folder's first note silenced all other kinds)
        if self.quiet or key in self.said:
            return False
        self.said.add(key)
        record.msg, record.args = f"{record.msg} (said once for the images of %s)", (*(record.args or ()), folder)
        return True


_FOLDER_NOTES = _OncePerFolder()
log.addFilter(_FOLDER_NOTES)


# Pillow's warnings (its own size limit, "Corrupt EXIF data", a palette's transparency) are ignored while it reads:
# every image's problem is said once, as mde's own line. `warnings.catch_warnings()` would save and restore the
# process's whole filter list, and two threads reading at once (a robot's decode callbacks) restore each other's
# copy: "ignore every warning" was left behind for good. Instead one filter stays first in the list, and its message
# pattern matches only in a thread that is reading (a warning is filtered in the thread that warns): another
# thread's warnings, a planner's under its `simplefilter("error")`, are its own; and a copy of the list that a
# `catch_warnings` of the user's holds and restores later carries it inert.
class _WhileReading:
    """A warnings filter's message pattern: every message of a thread inside `_pillow_quiet`, else none."""

    lock = threading.Lock()  # the filter list's insertion, from threads reading at once
    reading = threading.local()  # .depth: this thread's `_pillow_quiet` nesting

    def match(self, _message: str) -> bool:  # what warnings calls on a filter's compiled pattern
        return getattr(_WhileReading.reading, "depth", 0) > 0


_IGNORE_WHILE_READING = ("ignore", _WhileReading(), Warning, None, 0)


def _after_fork_in_child() -> None:  # a fork while another thread held the lock: that thread is not there
    _WhileReading.lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _pillow_quiet() -> Iterator[None]:
    """Inside: no Python warning of this thread is shown (other threads' are)."""
    with _WhileReading.lock:
        filters = warnings.filters
        if not filters or filters[0] is not _IGNORE_WHILE_READING:  # first, before a user's "error" filter
            with contextlib.suppress(ValueError):
                filters.remove(_IGNORE_WHILE_READING)
            filters.insert(0, _IGNORE_WHILE_READING)
    reading = _WhileReading.reading
    reading.depth = getattr(reading, "depth", 0) + 1
    try:
        yield
    finally:
        reading.depth -= 1


@contextlib.contextmanager
def notes_once_per_folder(folder: str | Path) -> Iterator[None]:
    """Inside: an image's notes are said for the first image of `folder` that has them, not for each."""
    token = _FOLDER_NOTES.folder.set(str(folder))
    try:
        yield
    finally:
        _FOLDER_NOTES.folder.reset(token)


def quiet_folder_notes(quiet: bool = True) -> None:
    """No notes for reads inside `notes_once_per_folder` in this process (a training loader's worker, whose main
    process has said them); warnings are still said."""
    _FOLDER_NOTES.quiet = quiet

# Images larger than this are refused from their header, before any pixel is decoded.
MAX_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE
MIN_SIDE = 8


def _decoded_here(suffix: str, feature: str) -> tuple[str, ...]:
    """(`suffix`,) where this Pillow decodes `feature` (AVIF since Pillow 11.2; JPEG 2000 where built with
    OpenJPEG), else (): a file Pillow cannot read here is not taken for an image."""
    from PIL import features

    try:
        return (suffix,) if features.check(feature) else ()
    except Exception:  # noqa: BLE001 - an older Pillow that does not know the feature's name
        return ()


# Every photo format Pillow decodes that a camera or phone writes (HEIC needs a plugin Pillow does not ship)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp",
                  *_decoded_here(".avif", "avif"), *_decoded_here(".jp2", "jpg_2000"))
DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's 16-bit single-channel modes (32-bit "I": checked)
DARK_16BIT = 4096  # a uint16 image below this uses at most 12 bits: read as 16-bit, it is 1/16 as bright
ORIENTATION_TAG = 0x0112  # EXIF: how the stored pixels are turned for display (1: as stored)
# Each EXIF orientation's turn to upright, as `ImageOps.exif_transpose` makes it
TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}


# What Pillow raises on a damaged file besides OSError: a text or colour-profile chunk too large to
# inflate (ValueError), a malformed TIFF tag (TypeError), a header cut short (struct.error, SyntaxError, ...).
CORRUPT = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, ZeroDivisionError,
           struct.error)


# An encoded image in memory (a JPEG or PNG from a camera driver, a message's payload): `read_rgb` decodes it.
ENCODED = (bytes, bytearray, memoryview, array.array)
ENCODED_NAME = "<image bytes>"  # what messages name it by
PIL_NAME = "<PIL image>"
# The modes whose pixels `np.asarray` gives as they look; any other (palette, CMYK, YCbCr, 1-bit ...) is converted
ARRAY_MODES = ("RGB", "L", "LA", "RGBA", "I;16", "I;16B", "I;16L", "I", "F")


def _open_checked(path: Path, source: Callable[[], Any] | None = None) -> Image.Image:
    """Open an image lazily and check its header (size limits) before decoding.

    source: where its bytes are read from (a new binary stream at each call), `path` then only naming it in
        messages; None: the file at `path`.
    """
    if source is None:
        _check_file(path)
    try:
        with _pillow_quiet():  # Pillow's own size warning: the limit below says it in one line
            img = Image.open(path if source is None else source())
    except UnidentifiedImageError:
        raise DataError("not a readable image (unknown or corrupt format)", path) from None
    except Image.DecompressionBombError as err:  # Pillow refuses > 2x its own limit at open
        raise DataError(f"image header claims too many pixels, refused before decoding ({err})", path) from None
    except CORRUPT as err:
        raise DataError(f"cannot read image ({err})", path) from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DataError(f"image is {w}x{h}, larger than the {MAX_PIXELS} pixel limit", path)
    if min(w, h) < MIN_SIDE:
        img.close()
        raise DataError(f"image is {w}x{h}, smaller than {MIN_SIDE} pixels on a side", path)
    return img


def _is_image_data(data: bytes) -> bool:
    """Whether `data` opens as an image (its header only)."""
    try:
        with _pillow_quiet():
            Image.open(io.BytesIO(data)).close()
    except Exception:  # noqa: BLE001 - whatever Pillow raises on what is no image
        return False
    return True


def _check_file(path: Path) -> None:
    """Refuse what is no image file to open: nothing there, a folder, a FIFO (reading one would wait for a writer
    forever)."""
    if not path.exists():
        raise InputError("a symbolic link to nothing (or a loop of links)" if path.is_symlink() else "image not found",
                         path)
    if path.is_dir():
        raise InputError("expected an image file, found a directory", path)
    if not path.is_file():
        raise InputError("not a regular file (a pipe, socket or device)", path)


def _load(img: Image.Image, path: Path) -> None:
    """Decode every pixel now, so a damaged file fails here; Pillow's later calls would not decode again
    (an EXIF read that loaded half a PNG left a half-black image behind, read without an error)."""
    try:
        with _pillow_quiet():  # "Corrupt EXIF data" and the like: the pixels are what counts
            img.load()
    except CORRUPT as err:
        img.close()
        raise DataError(f"truncated or corrupt image ({err})", path) from None


def _decode(img: Image.Image, path: Path) -> np.ndarray:
    _load(img, path)
    try:
        return np.asarray(img)
    finally:
        img.close()


def to_rgb8(array: np.ndarray | Image.Image, source: str | Path = "image", by_value: bool = False) -> np.ndarray:
    """Convert gray, gray+alpha, RGBA and 16-bit/float images to H x W x 3 uint8 RGB.

    Args:
        array: the image: a numpy array, or a PIL image (its pixels converted as `read_rgb` converts a file's).
        source: what to name in messages; a `Path` (an image file) makes refusals `DataError`s.
        by_value: read 16-bit integers by their values (`_to_uint8`): a file's 16-bit grey may hold
            8-bit values; an array's dtype is trusted.

    Conversions are logged (info level; a guess at warning level, once per source) so a user knows
    the input was changed.
    """
    if isinstance(array, Image.Image):  # its pixels as a file's are read: by their values
        array, by_value = _pil_pixels(array, source), True
    if not isinstance(array, np.ndarray):
        _refuse(f"expected a numpy array or a PIL image, got {type(array).__name__}", source)
    if isinstance(array, np.ma.MaskedArray):
        _refuse("a masked array; fill the masked pixels first (np.ma.filled)", source)
    array = np.asarray(array)  # a subclass (np.matrix, memmap) as a plain array: numpy's own routines from here
    if array.size == 0:
        _refuse(f"empty image (shape {array.shape})", source)
    if array.ndim >= 2 and array.shape[0] * array.shape[1] > MAX_PIXELS:
        _refuse(f"image is {array.shape[1]}x{array.shape[0]}, larger than the {MAX_PIXELS} pixel limit", source)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        _refuse(f"expected H x W x 3 RGB, got shape {array.shape}", source)
    if min(array.shape[:2]) < MIN_SIDE:  # as for image files: nothing a depth model can see
        _refuse(f"image is {array.shape[1]}x{array.shape[0]}, smaller than {MIN_SIDE} pixels on a side", source)
    array = _to_uint8(array, source, by_value)
    channels = array.shape[2]
    if channels in (1, 2):
        _note("grayscale image converted to RGB", source)
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif channels == 4:
        _note("RGBA image, alpha channel dropped", source)
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _pil_pixels(img: Image.Image, source: str | Path, upright: bool = False) -> np.ndarray:
    """A PIL image's pixels, as `read_rgb` reads a file's: `np.asarray` gave a palette image's indices (read as grey)
    and CMYK's four channels (read as RGBA); such modes are converted to RGB. `upright`: turned as its EXIF says.

    One opened lazily (`Image.open`) is checked as a file is before it decodes (the pixel limit); a PNG of 16 bits a
    channel, which Pillow decodes to its high bytes (8-bit values black), is read from its file where it has one."""
    closed = "the PIL image is closed (its `with Image.open(...)` block has ended); pass it open, or its file"
    # `tile` belongs to an image opened from a file (Pillow 13 has it on ImageFile only, not on an image made in memory)
    if getattr(img, "tile", None) and getattr(img, "fp", None) is None:  # opened lazily, then closed
        _refuse(closed, source)
    if img.width * img.height > MAX_PIXELS:
        _refuse(f"image is {img.width}x{img.height}, larger than the {MAX_PIXELS} pixel limit", source)
    if _png_rawmode(img) in (*_COLOUR_16BIT, _HIGH_BYTE_ONLY):  # not decoded yet, so as its file holds it
        name = getattr(img, "filename", "")
        if name and os.path.isfile(name):
            return read_rgb(name, upright=upright)
        log.warning("%s: a PNG of 16 bits a channel, read from its high bytes only (values below 256 come out black); "
                    "give read_rgb the file or its bytes", source)
    try:
        with _pillow_quiet():  # "Palette images with Transparency ...", "Corrupt EXIF data"
            img.load()  # one opened lazily (`Image.open`): a damaged file fails here
            if upright and _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode not in ARRAY_MODES:
                img = img.convert("RGB")
            return np.array(img)  # a copy: the image may be drawn on after
    except CORRUPT as err:
        if "closed image" in str(err):  # Pillow's "Operation on closed image": decoded, then closed
            _refuse(closed, source)
        _refuse(f"truncated, corrupt or unsupported image ({err})", source)


def _refuse(message: str, source: str | Path) -> NoReturn:
    if isinstance(source, Path):
        raise DataError(message, source)
    raise InputError(f"{source}: {message}")


HALF_STEP = 0.5 / 255  # floats this far outside [0, 1] (resampling overshoot) still round into 0..255
# Array sources ("image", "image 3") and files' folders (a camera's frames, a dataset's split, are alike) already
# warned of: a training run reads each file every epoch, and one warning per image would bury the log.
_guessed: set[str] = set()  # ... of the 8-bit guess for integers that record no bit depth
_dark: set[str] = set()  # ... of dark 16-bit values


def _is_file(source: str | Path) -> bool:
    """Whether `source` names a file (not an array, nor the encoded bytes `read_rgb` names ENCODED_NAME)."""
    return isinstance(source, Path) and str(source) != ENCODED_NAME


def _said_once(said: set[str], source: str | Path) -> bool:
    """Whether `source` (its folder, for a file) has not been warned of yet into `said`; marks it as now warned."""
    key = str(source.parent) if _is_file(source) else f"<{source}>"  # a folder named "image" is not an array
    if key in said:
        return False
    said.add(key)
    return True


_noted: set[str] = set()  # the conversion notes said of images in memory


def _note(message: str, source: str | Path) -> None:
    """An info note of a conversion: of a file, each time (a folder's reads say it once: `notes_once_per_folder`);
    of an image in memory (an array, bytes, a PIL image: a camera's frames, 30 a second), once in this process."""
    if not _is_file(source):
        if message in _noted:
            return
        _noted.add(message)
        message += " (said once for images in memory)"
    log.info("%s: %s", source, message, extra={"note": message})


def _once_for(source: str | Path) -> str:
    return f" (said once for the images of {source.parent})" if _is_file(source) else ""


def _to_uint8(array: np.ndarray, source: str | Path, by_value: bool) -> np.ndarray:
    """Pixel values as 8-bit, or a refusal where they cannot be an image's.

    Floats must be finite and lie in [0, 1] (within half an 8-bit step). uint16 arrays are 16-bit.
    Integers of types that record no bit depth (int32, int64, ...; 16-bit files with `by_value`)
    are read by their values: at most 255 they are 8-bit (shifting them as 16-bit would make the
    image black), up to 65535 they are 16-bit; negative or larger values are refused.
    """
    kind, bits = array.dtype.kind, 8 * array.dtype.itemsize
    if kind == "u" and bits == 8:
        return array
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind == "f":
        if not np.isfinite(array).all():
            _refuse("floating-point image with NaN or infinite values", source)
        lo, hi = float(array.min()), float(array.max())
        if lo < -HALF_STEP or hi > 1 + HALF_STEP:
            hint = "" if hi <= 1.5 else ("; 0 to 255 values belong in an 8-bit image" if isinstance(source, Path)
                                         else "; 0 to 255 values belong in a uint8 array")
            _refuse(f"floating-point image with values {lo:.7g} to {hi:.7g}; expected [0, 1]{hint}", source)
        _note("float image in [0, 1] scaled to 8-bit", source)
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if kind not in "iu":
        _refuse(f"unsupported dtype {array.dtype} (expected uint8)", source)
    if by_value or not (kind == "u" and bits == 16):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            _refuse(f"integer image with values {lo} to {hi}; expected 8- or 16-bit values", source)
        if hi <= 255:  # a guess: say so louder than the other conversions, once for a source or folder
            if _said_once(_guessed, source):
                log.warning("%s: 8-bit values in a %d-bit image, read as 8-bit%s", source, bits, _once_for(source))
            return array.astype(np.uint8)
    if int(array.max()) < DARK_16BIT and _said_once(_dark, source):
        # the dtype is trusted, but a 10- or 12-bit camera frame in uint16 would come out all but black
        log.warning("%s: a 16-bit image whose values stay below %d (10- or 12-bit?) is read as 16-bit and "
                    "comes out dark; scale it to 16 bits (or to uint8) first%s", source, DARK_16BIT,
                    _once_for(source))
    _note("16-bit image scaled to 8-bit", source)
    return (array.astype(np.uint16) >> 8).astype(np.uint8)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: as stored); 1 too where the EXIF is damaged or the file ends early."""
    with _pillow_quiet():  # Pillow warns about corrupt EXIF on stderr
        try:
            return int(img.getexif().get(ORIENTATION_TAG, 1))
        except Exception:  # noqa: BLE001 - any EXIF Pillow cannot parse: the pixels as stored
            return 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation of an image file (1: shown as stored; 5-8: turned a quarter), read from its header."""
    img = _open_checked(as_path(path, "image"))
    try:
        return _orientation(img)
    finally:
        img.close()


def _say_frames(img: Image.Image, path: Path) -> None:
    """Log that an animated GIF, WebP or PNG, or a multi-page TIFF, is read as its first frame. A phone's JPEG with
    a gain map or depth map (MPO) is one picture, not said; so is a file cut off in a later frame."""
    if img.format == "MPO":
        return
    try:
        with _pillow_quiet():  # a cut-off page's "Corrupt EXIF data", as `_orientation` hears it
            frames = img.n_frames if getattr(img, "is_animated", False) or img.format == "TIFF" else 1
    except CORRUPT:  # counting reads every frame: a later one is cut off, the first is whole
        img.seek(0)  # where counting stopped is not where the picture is
        return
    if frames > 1:
        log.info("%s: %d frames (an animation or a multi-page file); the first is used", path, frames)


def read_rgb(path: str | Path | bytes | np.ndarray | Image.Image, upright: bool = False) -> np.ndarray:
    """Read an image file, or an encoded image in memory, as H x W x 3 uint8 RGB (gray, RGBA, 16-bit and float
    gray are converted).

    path: the file; or the encoded image itself (bytes, bytearray, memoryview, array.array, a 1-D uint8 array:
        the JPEG or PNG a camera driver, a message or `cv2.imencode` hands over), named "<image bytes>" in messages;
        or a PIL image (palette, CMYK ... converted as a file's), named "<PIL image>".
    upright: turn it as its EXIF orientation says, as viewers show it (`mde predict`: the depth map
        matches the picture the user sees). Datasets are read as stored, like their depth maps.
    """
    if not isinstance(upright, (bool, np.bool_)):  # 'no' would be true
        raise InputError(f"upright must be True or False, got {upright!r}")
    if isinstance(path, Image.Image):  # decoded already (`Image.open`): its pixels, converted as a file's are
        return to_rgb8(_pil_pixels(path, PIL_NAME, upright), PIL_NAME, by_value=True)
    source = None
    if isinstance(path, np.ndarray) and path.dtype == np.uint8 and (path.ndim == 1 or 1 in path.shape[:2]) \
            and path.ndim <= 2 and path.size > 0:  # np.frombuffer's N, cv2.imencode's N x 1: a file's bytes
        path = path.tobytes()  # (a picture has two axes of more than one pixel, or three)
    if isinstance(path, ENCODED):
        data = memoryview(path).tobytes()  # a copy: the caller's buffer may be reused for the next frame
        if not data:
            raise InputError("expected an encoded image (JPEG, PNG ...), got 0 bytes", ENCODED_NAME)
        if isinstance(path, bytes) and len(data) < 4096 and os.path.isfile(data) and not _is_image_data(data):
            raise InputError(f"read_rgb takes bytes as the encoded image itself, and these name a file "
                             f"({os.fsdecode(data)!r}); give its name as str or Path")
        path, source = Path(ENCODED_NAME), lambda: io.BytesIO(data)
    path = as_path(path, "image")
    img = opened = _open_checked(path, source)
    rawmode = _png_rawmode(img)  # before the load, which clears what says it
    _load(img, path)  # first: what follows works on the decoded pixels
    try:
        low = _low_bytes(img, rawmode, path, source)
        try:  # Pillow's calls only: what they raise on a damaged file is the file's fault
            if upright:  # a picture given to predict: say so of an animation (a dataset is read every epoch)
                _say_frames(img, path)
            orientation = _orientation(img)
            if not upright and orientation in TURNS:  # a dataset's picture: its depth map is as stored too
                log.info("%s: stored turned (EXIF orientation %d); read as stored, not as viewers show it", path,
                         orientation)
            if upright and orientation != 1:
                with _pillow_quiet():  # it reads the EXIF again: "Corrupt EXIF data" once more
                    img = ImageOps.exif_transpose(img)
                if low is not None and orientation in TURNS:
                    low = np.asarray(Image.fromarray(low).transpose(TURNS[orientation]))
            if img.mode not in ARRAY_MODES:
                with _pillow_quiet():  # "Palette images with Transparency ...": the alpha goes, as RGBA's
                    img = img.convert("RGB")  # palette, CMYK, YCbCr, 1-bit ...
        except CORRUPT as err:
            raise DataError(f"truncated, corrupt or unsupported image ({err})", path) from None
        array = np.array(img)  # a copy the caller may draw on (Pillow's own buffer is read-only)
    finally:
        img.close()
        opened.close()
    if low is not None:  # 16 bits a channel: read by their values, as a 16-bit grey file is
        array = (array.astype(np.uint16) << 8) | low
    return to_rgb8(array, path, by_value=True)


# How Pillow decodes a PNG or TIFF of 16 bits a channel: to 8 (its high byte), and with the other raw mode, the low
# byte (a PNG is big-endian; a TIFF either)
_COLOUR_16BIT = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "RGB;16L": "RGB;16B", "RGBA;16L": "RGBA;16B"}
_NATIVE = "L" if sys.byteorder == "little" else "B"  # a compressed TIFF, which libtiff decodes to this machine's order
_COLOUR_16BIT |= {f"{mode};16N": _COLOUR_16BIT[f"{mode};16{_NATIVE}"] for mode in ("RGB", "RGBA")}
_HIGH_BYTE_ONLY = "LA;16B"  # 16-bit grey and alpha: no raw mode of Pillow's takes its low bytes
_RAW_FORMATS = ("PNG", "TIFF")


def _tile_rawmode(tile: Any) -> str | None:
    """A tile's raw mode: a PNG's args are the raw mode, a TIFF's a tuple that starts with it."""
    args = tile[3] if len(tile) >= 4 else None
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else None


def _png_rawmode(img: Image.Image) -> str | None:
    """How a PNG or TIFF stores its pixels (`RGB;16B`: 16 bits a channel, big-endian), read before the load (which
    clears the tiles); None for any other image, or tiles of several raw modes. A tile is a named tuple from
    Pillow 11, a tuple before."""
    tile = getattr(img, "tile", None) or ()  # none on an image made in memory (Pillow 13: ImageFile's alone)
    if img.format not in _RAW_FORMATS or not tile:
        return None
    modes = {_tile_rawmode(t) for t in tile}
    return modes.pop() if len(modes) == 1 else None


def _swapped_tile(tile: Any, rawmode: str) -> Any:
    """`tile` decoding its values' other byte (`_COLOUR_16BIT`)."""
    args = tile[3]
    args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
    if hasattr(tile, "_replace"):  # Pillow 11's named tuple: its load sorts several tiles by `.offset`
        return tile._replace(args=args)
    return (*tile[:3], args)


def _low_bytes(img: Image.Image, rawmode: str | None, path: Path,
               source: Callable[[], Any] | None = None) -> np.ndarray | None:
    """A colour PNG or TIFF of 16 bits a channel, which Pillow reads as 8 (each value's high byte: 12-bit values
    come out dark, 8-bit ones black): each value's low byte, decoded again with the raw mode that takes the other
    byte of each pair; None for every other image. Called once the file has decoded whole (`_load`). Where this Pillow
    cannot, the high bytes alone, said at warning level."""
    if rawmode == _HIGH_BYTE_ONLY:
        log.warning("%s: a grey and alpha PNG of 16 bits a channel is read from its high bytes only (values below "
                    "256 come out black); save it as 16-bit grey, or as 8-bit", path)
        return None
    if rawmode not in _COLOUR_16BIT:
        return None
    try:
        with _pillow_quiet():
            other = Image.open(path if source is None else source())
            try:
                other.tile = [_swapped_tile(t, _COLOUR_16BIT[rawmode]) for t in other.tile]
                other.load()
                low = np.array(other)
            finally:
                other.close()
    except (*CORRUPT, AttributeError) as err:
        log.warning("%s: an image of 16 bits a channel, read from its high bytes only (%s)", path, err)
        return None
    if low.shape != (img.size[1], img.size[0], len(img.mode)):
        return None
    return low


def check_plausible_depth(deepest: float, path: str | Path) -> None:
    """Refuse a depth beyond `MAX_PLAUSIBLE_DEPTH`: an encoding mistake, not a distance."""
    if deepest > MAX_PLAUSIBLE_DEPTH:
        advice = ("a PNG's values are divided by --depth-scale, its units per metre: too small a scale?"
                  if Path(path).suffix.lower() == ".png" else "store metres, and 0 or NaN where depth is invalid")
        raise DataError(f"depth reaches {deepest:.3g} m, beyond any plausible distance ({MAX_PLAUSIBLE_DEPTH:g} m): "
                        f"{advice}", path)


def npy_depth_size(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(H, W) of a depth `.npy` of shape H x W, 1 x H x W or H x W x 1 (a channel axis either side), else None."""
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        shape = shape[1:] if shape[0] == 1 else shape[:2]
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def read_depth(path: str | Path, png_scale: float = MM_PER_M) -> np.ndarray:
    """Read a depth map as H x W float32 metres; invalid pixels become 0.

    Args:
        path: a 16-bit PNG (value / `png_scale` metres; 1000 for millimetres, 256 for KITTI)
            or a float32 `.npy` in metres (0 or NaN invalid).
        png_scale: PNG units per metre.
    """
    path = as_path(path, "depth map")
    if path.suffix.lower() == ".npy":
        if not path.exists():
            raise InputError("depth map not found", path)
        try:
            if not starts_with(path, b"\x93NUMPY"):
                raise DataError("not a NumPy .npy file", path)
            # mapped first: a header that promises more than the file holds is refused, not allocated (terabytes),
            # and a map larger than any image is refused before it is read whole (60000 x 60000: 14 GB)
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.size > MAX_PIXELS:
                raise DataError(f"depth map of shape {mapped.shape} is larger than the {MAX_PIXELS} pixel limit of "
                                "images", path)
            depth = np.array(mapped)
        except (ValueError, OSError, EOFError, MemoryError) as err:
            raise DataError(f"cannot read depth .npy ({str(err) or type(err).__name__})", path) from None
        size = npy_depth_size(depth.shape)
        if size is not None:
            depth = depth.reshape(size)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            hint = ("; integers are a unit other than metres (millimetres? save depth / 1000 as float32)"
                    if depth.ndim == 2 and np.issubdtype(depth.dtype, np.integer) else "")
            raise DataError(f"expected an H x W float depth map in metres, got {depth.dtype} {depth.shape}{hint}",
                            path)
        # before the float32 cast, which would turn 1e300 into inf, and inf reads as "invalid"
        check_plausible_depth(float(np.max(depth, initial=0.0, where=np.isfinite(depth))), path)
        depth = depth.astype(np.float32)
    else:
        img = _open_checked(path)
        if img.mode not in DEPTH_PNG_MODES:  # 8-bit "L" would cap depth at 0.255 m
            img.close()
            raise DataError(f"expected a 16-bit single-channel depth PNG, got mode {img.mode}"
                            f"{' (8-bit: a picture of depth, not depth?)' if img.mode == 'L' else ''}", path)
        raw = _decode(img, path)
        if img.mode == "I" and raw.size and (raw.min() < 0 or raw.max() > PNG16_MAX):  # a 32-bit image
            raise DataError(f"expected 16-bit depth values (0..{PNG16_MAX}), found {raw.min()}..{raw.max()}: "
                            "a 32-bit image, not a depth PNG", path)
        depth = raw.astype(np.float32) / np.float32(png_scale)
        check_plausible_depth(float(depth.max(initial=0.0)), path)  # too small a --depth-scale
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return depth


def image_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """An image file's (width, height) and Pillow mode, from its header: no pixel decoded, no warning shown.

    Raises:
        OSError, and what else Pillow raises on a damaged header (`CORRUPT`).
    """
    with _pillow_quiet(), Image.open(path) as img:
        return img.size, img.mode


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Regular files in `folder` (not recursive) with one of `suffixes` (any case), sorted by name. Hidden
    files are left out: macOS's `._NAME.png` companions and editors' copies are not the user's images."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file())


def list_images(folder: Path, broken_links: bool = False) -> list[Path]:
    """Image files in `folder` (not recursive, hidden files left out), sorted by name; with `broken_links`, also the
    links named like images that lead nowhere (or round in a loop), for a caller that names what it skips rather
    than leave it out in silence."""
    images = list_files(folder, IMAGE_SUFFIXES)
    if broken_links:
        images += [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   and p.is_symlink() and not p.exists()]
    return sorted(images)
