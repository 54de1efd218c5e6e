"""Torch-free dataset readers: the dataset folder format (docs/reference.md), NYU Depth v2 (labeled .mat), KITTI depth.

Every dataset has `names`, `__len__` and `__getitem__(i) -> Sample` (RGB H x W x 3 uint8, depth
H x W float32 metres, 0 = invalid, and the optional region mask: H x W uint8, 0 structure,
1 object, 255 invalid, read from `split/mask/NAME.png` where the folder has one). Pairing
problems are found on construction; unreadable images, size mismatches, depth maps without a
valid pixel and masks holding other values on load. All raise `DataError` naming the file or folder.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from mde.errors import DataError, InputError
from mde.io import parse_json, read_small_text
from mde.runtime.images import (
    DEPTH_PNG_MODES,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    MAX_PLAUSIBLE_DEPTH,
    MIN_SIDE,
    _decode,
    _open_checked,
    check_plausible_depth,
    exif_orientation,
    image_header,
    list_files,
    list_images,
    notes_once_per_folder,
    npy_depth_size,
    quiet_folder_notes,
    read_depth,
    read_rgb,
)
from mde.runtime.metadata import DEPTH_SCALE_RANGE, MIN_DEPTH_RANGE, MM_PER_M
from mde.runtime.metrics import MASK_INVALID, MASK_OBJECT, MASK_STRUCTURE

log = logging.getLogger(__name__)


def quiet_image_notes(_worker_id: int = 0) -> None:
    """No dataset image notes in this process: a DataLoader worker's `worker_init_fn` (a fresh process every epoch).
    `mde train`'s main process reads the val split and the first train image before any worker starts, and says
    their notes."""
    quiet_folder_notes()


FORMATS = ("auto", "folder", "nyu", "kitti")
NYU_SUFFIXES = (".mat", ".h5", ".hdf5")
DEPTH_SUFFIXES = (".png", ".npy")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif")  # a mask in one of these is not read
NYU_MAX_DEPTH = 10.0
NYU_UNIT_CHECK = 5  # an NYU depth beyond 5 x its range is another unit, not a far wall
UNIT_CHECK = 5  # a dataset whose first depth map lies mostly beyond 5 x its range: another unit, or a wrong range
KITTI_MAX_DEPTH = 80.0
KITTI_DEPTH_SCALE = 256.0
MASK_VALUES = (MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID)
MASK_MODES = ("L", "P")  # 8-bit single-channel PNGs (a palette's indices are the values)
# KITTI depth-completion "depth_selection/val_selection_cropped" layout.
KITTI_SELECTION = "val_selection_cropped"


@dataclass
class Sample:
    """One RGB image and its metric depth map (0 = invalid)."""

    name: str
    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray | None = None  # regions: MASK_STRUCTURE, MASK_OBJECT, MASK_INVALID


def read_mask(path: Path) -> np.ndarray:
    """Read an 8-bit single-channel region mask PNG as H x W uint8; a value other than 0, 1, 255 is a `DataError`."""
    img = _open_checked(path)
    if img.mode not in MASK_MODES:
        img.close()
        raise DataError(f"expected an 8-bit single-channel mask PNG, got mode {img.mode}", path)
    mask = np.ascontiguousarray(_decode(img, path), dtype=np.uint8)
    stray = np.setdiff1d(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)), MASK_VALUES)  # O(pixels)
    if stray.size:
        raise DataError(f"mask has value {stray[0]}; expected {MASK_STRUCTURE} structure, {MASK_OBJECT} object "
                        f"or {MASK_INVALID} invalid", path)
    return mask


def _check_pair(name: str, rgb: np.ndarray, depth: np.ndarray, depth_file: str | Path,
                mask: np.ndarray | None = None, mask_file: str | Path = "mask", empty_ok: bool = False) -> Sample:
    if depth.shape != rgb.shape[:2]:
        raise DataError(
            f"depth map is {depth.shape[1]}x{depth.shape[0]} but its image is "
            f"{rgb.shape[1]}x{rgb.shape[0]} (width x height)", depth_file)
    if not empty_ok and not np.any(depth > 0):
        raise DataError("depth map has no valid pixel (all 0, NaN or negative): it cannot be scored", depth_file)
    check_plausible_depth(float(depth.max()), depth_file)
    if mask is not None and mask.shape != depth.shape:
        raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its depth map is "
                        f"{depth.shape[1]}x{depth.shape[0]} (width x height)", mask_file)
    return Sample(name, rgb, depth, mask)


def _stored_size(path: Path) -> tuple[int, int] | None:
    """An image's (height, width) as stored, from its header; None where the header cannot be read (reading the
    image names its problem)."""
    try:
        (width, height), _ = image_header(path)
    except Exception:  # noqa: BLE001 - Pillow's errors on a damaged header are of many kinds (`CORRUPT`)
        return None
    return height, width


def _no_image(shape: tuple[int, ...]) -> np.ndarray:
    """A black H x W x 3 image that takes no memory: the `rgb` of a `ground_truth` sample, which only has a size."""
    return np.broadcast_to(np.zeros(3, np.uint8), (*shape[:2], 3))


def check_depth_scale(depth_scale: float) -> None:
    if not (DEPTH_SCALE_RANGE[0] <= depth_scale <= DEPTH_SCALE_RANGE[1]):  # NaN fails too
        raise InputError(f"--depth-scale must be a positive number of PNG units per metre, "
                         f"{DEPTH_SCALE_RANGE[0]:g} to {DEPTH_SCALE_RANGE[1]:g}, got {depth_scale}")


class PairedFiles:
    """Pairs of (RGB file, depth file) read on demand; base of the folder and KITTI readers.

    `empty_depth_ok`: a depth map with no valid pixel is read, not refused. Training sets it for its train split
    (a sparse LiDAR frame with no return in view: the loss leaves its pixels out, as it does every invalid one);
    a split that is scored refuses such a map, naming it, as there is nothing to score it on.
    """

    empty_depth_ok = False

    def __init__(self, pairs: list[tuple[str, Path, Path]], depth_scale: float,
                 masks: dict[str, Path] | None = None):
        check_depth_scale(depth_scale)
        self.pairs, self.depth_scale = pairs, float(depth_scale)
        self.masks = masks or {}

    @property
    def names(self) -> list[str]:
        """Sample names (file stems), in order."""
        return [name for name, _, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        return self._read(index, with_image=True)

    def ground_truth(self, index: int) -> Sample:
        """Sample `index` without reading its image (`rgb` is a black stand-in of the image's size, from its header):
        what an image-blind baseline scores, at a fraction of the reading, and without the image's notes said
        again. An image whose size is not its depth map's is read whole, so the problem named is the reader's."""
        return self._read(index, with_image=False)

    def _read(self, index: int, with_image: bool) -> Sample:
        name, rgb_path, depth_path = self.pairs[index]
        with notes_once_per_folder(rgb_path.parent):  # not for every image every epoch
            rgb = read_rgb(rgb_path) if with_image else None  # first, as ever: its problem is the one named
        depth = read_depth(depth_path, png_scale=self.depth_scale)
        if rgb is None:  # the image's own size, from its header: a depth map of another size is the one named
            stored = _stored_size(rgb_path) or depth.shape
            if stored != depth.shape:  # read whole, so that the image's own problem (too large) comes first
                with notes_once_per_folder(rgb_path.parent):
                    rgb = read_rgb(rgb_path)
            else:
                rgb = _no_image(stored)
        if depth.shape != rgb.shape[:2] and depth.shape == rgb.shape[1::-1] and exif_orientation(rgb_path) >= 5:
            raise DataError(f"depth map is {depth.shape[1]}x{depth.shape[0]}, its image {rgb.shape[1]}x{rgb.shape[0]} "
                            f"as stored: the image's EXIF turns it a quarter for viewers, and datasets are read as "
                            f"stored; save the image upright (PIL.ImageOps.exif_transpose)", depth_path)
        mask_path = self.masks.get(name)
        mask = read_mask(mask_path) if mask_path is not None else None
        return _check_pair(name, rgb, depth, depth_path, mask, mask_path or "mask", self.empty_depth_ok)

    def check_headers(self, description: str) -> None:
        """Check each pair's sizes and depth / mask formats from the files' headers, no pixel decoded: a train
        split's mismatched pair raises its `DataError` before a run starts, not mid-epoch with the run folder
        written (and, with --force, the old run gone). A pair its headers find wrong is read whole, so the
        message is the reader's own."""
        from mde.console import track

        indices = range(len(self.pairs))
        for index in track(indices, description) if len(self.pairs) > QUIET_CHECK else indices:
            name, rgb_path, depth_path = self.pairs[index]
            mask_path = self.masks.get(name)
            try:
                size, _ = image_header(rgb_path)
                fine = size[0] * size[1] <= MAX_PIXELS
                if depth_path.suffix.lower() == ".npy":
                    depth = np.load(depth_path, mmap_mode="r")  # its header: H x W, or 1 x H x W, of floats
                    shape = depth.shape
                    fine = (fine and npy_depth_size(shape) == size[::-1]
                            and np.issubdtype(depth.dtype, np.floating))
                else:
                    depth_size, mode = image_header(depth_path)
                    fine = fine and depth_size == size and mode in DEPTH_PNG_MODES
                if mask_path is not None:
                    mask_size, mode = image_header(mask_path)
                    fine = fine and mask_size == size and mode in MASK_MODES
            except Exception:  # noqa: BLE001 - an unreadable header: the reader names what is wrong
                fine = False
            if not fine:
                self[index]


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise DataError(f"two files share the name {path.stem!r}: {out[path.stem].name} and "
                            f"{path.name}", folder)
        out[path.stem] = path
    return out


NOT_A_FILE = "not a readable file (a broken link, a folder, a FIFO or a device)"


def refuse_odd_entries(folder: Path, suffixes: tuple[str, ...]) -> None:
    """An entry named like a file the folder holds that is no regular file (a broken link, a folder): an image or
    depth map left out of the split without a word, a mask taken for "no mask" (its image scored without
    regions)."""
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() in suffixes and not entry.name.startswith(".") and not entry.is_file():
            raise DataError(NOT_A_FILE, entry)


def _refuse_unpaired(path: Path, other: Path, stem: str, suffixes: tuple[str, ...], problem: str) -> NoReturn:
    """A file without its partner in the folder `other`: name the partner where it is there but no readable
    file (a broken link, a folder), else say what was expected."""
    for entry in sorted(other.glob(f"{glob.escape(stem)}.*")):
        if entry.suffix.lower() in suffixes and not entry.is_file():
            raise DataError(NOT_A_FILE, entry)
    same = unicodedata.normalize("NFC", stem)  # `café` composed in one folder, decomposed (macOS) in the other
    twin = next((e for e in sorted(other.iterdir()) if e.suffix.lower() in suffixes and e.stem != stem
                 and unicodedata.normalize("NFC", e.stem) == same), None)
    if twin is not None:
        raise DataError(f"{problem}: {other.name}/{twin.name} looks the same but is written in another Unicode form "
                        "(composed or decomposed accents, as macOS writes them); give both the same form", path)
    unread = next((e for e in sorted(other.glob(f"{glob.escape(stem)}.*")) if e.is_file()), None)
    if unread is not None:  # `img001.gif` or `.heic` beside `depth/img001.png`: the format is the problem
        raise DataError(f"a file of a format the dataset reader does not take here ({' '.join(suffixes)}); "
                        "convert it", unread)
    expected = f"{other.name}/{stem}{suffixes[0]}" + (f" or {suffixes[1]}" if len(suffixes) > 1 else "")
    raise DataError(f"{problem} (expected {expected})", path)


def subfolders(folder: Path) -> list[str]:
    """The names of `folder`'s visible subfolders, sorted: their files are not read (the formats are flat)."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _nested_words(folders: list[Path]) -> str:
    """What a user with one folder per sequence should hear: the format is flat."""
    named = ", ".join(f"{f.name}/{sub}/" for f in folders for sub in subfolders(f)[:3])
    return (f"the files in subfolders ({named}) are not read: the format is flat, "
            "{train,val}/{rgb,depth,mask}/NAME")


class FolderDataset(PairedFiles):
    """`root/split/rgb/NAME.png|jpg` with `root/split/depth/NAME.png` (16-bit) or `NAME.npy` (metres).

    An optional `root/split/mask/NAME.png` (8-bit regions) is loaded where present; images
    without one get `mask=None`.

    Args:
        root: dataset folder.
        split: sub-folder, e.g. "train" or "val".
        depth_scale: PNG depth units per metre (1000 = millimetres, 256 = KITTI).
    """

    def __init__(self, root: str | Path, split: str = "val", depth_scale: float = MM_PER_M):
        if split == "all":  # `--split all`: it named a folder all/ that is no part of the format
            raise InputError("split 'all' (every image) is an NYU file's or KITTI's selection's; a dataset folder has "
                             "train/ and val/", root)
        folder = Path(root) / split
        rgb_dir, depth_dir = folder / "rgb", folder / "depth"
        for sub in (folder, rgb_dir, depth_dir):
            if not sub.is_dir():
                raise DataError(f"expected a folder with rgb/ and depth/ for split {split!r}, found none"
                                f"{_kitti_hint(Path(root))}", sub)
        refuse_odd_entries(rgb_dir, IMAGE_SUFFIXES)  # a broken link was left out of the split without a word
        refuse_odd_entries(depth_dir, DEPTH_SUFFIXES)
        rgbs = _by_stem(list_images(rgb_dir), rgb_dir)
        depths = _by_stem(list_files(depth_dir, DEPTH_SUFFIXES), depth_dir)
        mask_dir = folder / "mask"
        nested = [sub for sub in (rgb_dir, depth_dir, mask_dir) if sub.is_dir() and subfolders(sub)]
        if not rgbs and not depths:
            hint = f" ({_nested_words(nested)})" if nested else ""
            raise DataError(f"split {split!r} is empty: no images in rgb/ and depth/{hint}", folder)
        if nested:  # a sequence per folder, as some datasets come: said, not guessed at
            log.warning("%s: %s", folder, _nested_words(nested))
        masks = {}
        if (mask_dir.exists() or mask_dir.is_symlink()) and not mask_dir.is_dir():  # not "no masks" in silence
            raise DataError(f"mask/ is {'a broken link' if not mask_dir.exists() else 'not a folder'}; the optional "
                            "region masks are a folder of 8-bit PNGs (remove it where there are none)", mask_dir)
        if mask_dir.is_dir():
            refuse_odd_entries(mask_dir, (".png",))
            masks = _by_stem(list_files(mask_dir, (".png",)), mask_dir)
            lossy = list_files(mask_dir, LOSSY_SUFFIXES)  # not read: said, not left out in silence
            if lossy:
                log.warning("%s: %d mask(s) in a lossy format ignored (%s%s): masks are 8-bit PNGs, as a JPEG's "
                            "compression changes the 0, 1 and 255 it holds", mask_dir, len(lossy), lossy[0].name,
                            ", ..." if len(lossy) > 1 else "")
            other = [p for p in list_files(mask_dir, IMAGE_SUFFIXES + DEPTH_SUFFIXES)  # a BMP, TIFF or .npy mask
                     if p.suffix.lower() not in (".png", *LOSSY_SUFFIXES)]   # was left out without a word
            if other:
                log.warning("%s: %d mask(s) not read (%s%s): masks are 8-bit PNGs; save them as such",
                            mask_dir, len(other), other[0].name, ", ..." if len(other) > 1 else "")
        unmasked = len(set(rgbs) - set(masks))
        if masks and unmasked:  # optional per image: said, as the region figures are over fewer images
            log.info("%s: %d of %d images have no mask; the objects / structure figures are over the other %d",
                     mask_dir, unmasked, len(rgbs), len(rgbs) - unmasked)
        for stem, path in rgbs.items():
            if stem not in depths:
                _refuse_unpaired(path, depth_dir, stem, DEPTH_SUFFIXES, "image has no depth map")
        for stem, path in {**masks, **depths}.items():  # a depth map and a mask without an image: the depth map's
            if stem not in rgbs:
                _refuse_unpaired(path, rgb_dir, stem, IMAGE_SUFFIXES,
                                 f"{'mask' if path.parent == mask_dir else 'depth map'} has no image")
        super().__init__([(s, rgbs[s], depths[s]) for s in sorted(rgbs)], depth_scale, masks)
        self.root, self.split = Path(root), split


class KittiDataset(PairedFiles):
    """KITTI depth: 16-bit PNG, value / 256 metres, 0 = invalid.

    Two layouts are accepted:
    - the folder format (`root/split/{rgb,depth}/NAME.png`) with depth in 1/256 m;
    - KITTI's depth-completion selection: `root` is `depth_selection/` or its
      `val_selection_cropped/` folder, holding `image/*_sync_image_*.png` and
      `groundtruth_depth/*_sync_groundtruth_depth_*.png`. It is KITTI's validation set: split
      "val" (or "all") reads it; any other split is refused, so nothing trains or calibrates on it.
    """

    def __init__(self, root: str | Path, split: str = "val", depth_scale: float = KITTI_DEPTH_SCALE):
        root = Path(root)
        sel = kitti_selection(root)
        if sel is None:
            folder = FolderDataset(root, split, depth_scale)
            super().__init__(folder.pairs, depth_scale, folder.masks)
            return
        if split not in ("val", "all"):
            raise DataError(f"KITTI's depth-selection layout holds only validation images; it has no {split!r} "
                            "split (arrange training pairs in the folder format)", sel)
        image_dir, gt_dir = sel / "image", sel / "groundtruth_depth"
        images = list(_by_stem(list_images(image_dir), image_dir).values())
        gts = _by_stem(list_files(gt_dir, (".png",)), gt_dir)  # by name, the suffix in any case
        if not images and not gts:
            raise DataError("KITTI selection is empty: no images in image/", image_dir)
        pairs, used = [], set()
        for path in images:
            gt_stem = path.stem.replace("_sync_image_", "_sync_groundtruth_depth_", 1)
            if gt_stem not in gts:
                _refuse_unpaired(path, gt_dir, gt_stem, (".png",), "image has no depth map")
            used.add(gt_stem)
            pairs.append((path.stem, path, gts[gt_stem]))
        for stem in sorted(set(gts) - used):
            raise DataError("depth map has no image in image/", gts[stem])
        super().__init__(pairs, depth_scale)


# Names in KITTI's downloads besides the depth-selection layout that is read (its annotated and raw sets, its tests)
KITTI_NAMES = ("depth_selection", "data_depth_annotated", "proj_depth", "groundtruth", "image_02", "image_03",
               "velodyne_raw", "test_depth_completion_anonymous", "test_depth_prediction_anonymous")


def _kitti_hint(root: Path) -> str:
    """For a folder of KITTI's that is not its selection layout (told it was no folder-format dataset): what is read."""
    try:
        names = {root.name, *(entry.name for entry in root.iterdir())} if root.is_dir() else {root.name}
    except OSError:
        return ""
    if not names & set(KITTI_NAMES) and not any(name.endswith("_sync") for name in names):
        return ""
    return (f"; of KITTI, the depth-selection layout is read (depth_selection/{KITTI_SELECTION}, with image/ and "
            "groundtruth_depth/); arrange other sets in the folder format")


def kitti_selection(root: Path) -> Path | None:
    for cand in (root, root / KITTI_SELECTION):
        if (cand / "image").is_dir() and (cand / "groundtruth_depth").is_dir():
            return cand
    return None


_portrait_said: set[str] = set()  # NYU files whose portrait frames were warned of (train and val open it)


class NYUDataset:
    """NYU Depth v2 labeled `.mat` (MATLAB v7.3 = HDF5): `images` N x 3 x W x H uint8,
    `depths` N x W x H float32 metres (MATLAB's column-major order, so both are transposed here).

    The file has no train/val split; `split` picks a fixed one: "val" = every 10th image
    (index % 10 == 9), "train" = the others, "all" = every image.
    """

    SPLITS = ("train", "val", "all")
    empty_depth_ok = False  # as `PairedFiles.empty_depth_ok`

    def __init__(self, path: str | Path, split: str = "all"):
        self.path = Path(path)
        if split not in self.SPLITS:
            raise InputError(f"unknown NYU split {split!r}; expected one of {', '.join(self.SPLITS)}", self.path)
        if not self.path.is_file():
            raise DataError("NYU Depth v2 file not found", self.path)
        h5 = self._open()
        try:
            images, depths = self._arrays(h5)
            if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
                raise DataError(f"expected 'images' N x 3 x W x H uint8, found {images.dtype} "
                                f"{images.shape}", self.path)
            if min(images.shape[2:]) < MIN_SIDE:  # as for image files
                raise DataError(f"images are {images.shape[2]}x{images.shape[3]}, smaller than {MIN_SIDE} pixels "
                                "on a side", self.path)
            if images.shape[2] * images.shape[3] > MAX_PIXELS:  # from the shape, as a file's from its header
                raise DataError(f"images are {images.shape[2]}x{images.shape[3]}, larger than the {MAX_PIXELS} pixel "
                                "limit", self.path)
            if images.shape[3] > images.shape[2] and str(self.path) not in _portrait_said:
                _portrait_said.add(str(self.path))  # NYU's frames are landscape: the file may be in the other order
                log.warning("%s: its images read as %dx%d portrait frames (W x H); NYU's labeled file stores them N x "
                            "3 x W x H, MATLAB's order, so one written N x 3 x H x W (numpy's) is read transposed",
                            self.path, images.shape[2], images.shape[3])
            if depths.shape != (images.shape[0], images.shape[2], images.shape[3]):
                raise DataError(f"expected 'depths' of shape {(images.shape[0], *images.shape[2:])} "
                                f"to match 'images', found {depths.shape}", self.path)
            if not np.issubdtype(depths.dtype, np.floating):  # uint16 would be millimetres read as metres
                raise DataError(f"expected 'depths' as floating-point metres, found {depths.dtype}", self.path)
            count = images.shape[0]
            if count:  # units: NYU's Kinect reaches about 10 m; millimetres stored as floats read 1000 x too far
                try:
                    first = np.asarray(depths[0], dtype=np.float64)
                except (OSError, ValueError) as err:  # a damaged chunk, as __getitem__ says of any other image
                    raise DataError(f"cannot read image 0 ({err})", self.path) from None
                far = float(first[np.isfinite(first)].max(initial=0.0))
                if far > NYU_UNIT_CHECK * NYU_MAX_DEPTH:
                    raise DataError(f"'depths' must be metres (NYU reaches {NYU_MAX_DEPTH:g} m); image 0 holds "
                                    f"{far:g} (millimetres?)", self.path)
        finally:
            h5.close()
        every = range(count)
        idx = [i for i in every if split == "all" or (i % 10 == 9) == (split == "val")]
        if not idx:
            raise DataError(f"NYU split {split!r} is empty ({count} images in the file)", self.path)
        self.indices, self.split = idx, split
        self._h5 = None
        self._pid = -1

    def _open(self):
        try:
            import h5py
        except ImportError:
            raise InputError("reading NYU Depth v2 .mat files needs h5py (pip install h5py)") from None
        try:  # read only, without HDF5's file lock: a notebook holding the file open (or NFS) refused it
            return h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise DataError(f"not a readable HDF5 / MATLAB v7.3 file ({err})", self.path) from None

    def _arrays(self, h5):
        import h5py

        missing = [k for k in ("images", "depths") if k not in h5]
        if missing:
            raise DataError(f"expected datasets 'images' and 'depths', missing {missing}", self.path)
        arrays = {}
        for key in ("images", "depths"):
            try:
                arrays[key] = h5[key]
            except (KeyError, OSError) as err:  # a soft or external link to nothing
                raise DataError(f"cannot open {key!r} ({err})", self.path) from None
        groups = [k for k, v in arrays.items() if not isinstance(v, h5py.Dataset)]
        if groups:  # e.g. a MATLAB struct saved under that name
            raise DataError(f"expected 'images' and 'depths' to be arrays; {groups[0]!r} is an HDF5 group", self.path)
        return arrays["images"], arrays["depths"]

    @property
    def names(self) -> list[str]:
        """Sample names: the image's index in the file, zero-padded."""
        return [f"{i:05d}" for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        if self._h5 is None or self._pid != os.getpid():  # one handle per process (DataLoader workers)
            self._h5, self._pid = self._open(), os.getpid()
        images, depths = self._arrays(self._h5)
        i = self.indices[index]
        try:
            rgb = np.ascontiguousarray(np.asarray(images[i]).transpose(2, 1, 0))
            depth = np.asarray(depths[i], dtype=np.float32).T
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {i} ({err})", self.path) from None
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        return _check_pair(f"{i:05d}", rgb, np.ascontiguousarray(depth), f"{self.path}[{i}]",
                           empty_ok=self.empty_depth_ok)

    def ground_truth(self, index: int) -> Sample:
        """Sample `index` with a black stand-in for its image (`PairedFiles.ground_truth`)."""
        sample = self[index]  # one HDF5 read per image either way; the image is small beside the file's chunks
        return Sample(sample.name, _no_image(sample.depth.shape), sample.depth, sample.mask)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": -1}


def open_dataset(path: str | Path, split: str = "val", fmt: str = "auto", depth_scale: float | None = None,
                 empty_depth_ok: bool = False) -> FolderDataset | KittiDataset | NYUDataset:
    """Open a dataset by what is on disk.

    Args:
        path: a folder (folder format, or KITTI's selection layout) or an NYU .mat / .h5 file.
        split: "train" / "val" (NYU also "all"; see `NYUDataset`).
        fmt: "auto" (detect), "folder", "nyu" or "kitti".
        depth_scale: PNG depth units per metre; None: the format's own (1000 for the folder
            format, 256 for KITTI). A value given is used as given, KITTI's layout included.
        empty_depth_ok: read a depth map with no valid pixel rather than refuse it (`PairedFiles.empty_depth_ok`).
    """
    dataset = _open_dataset(path, split, fmt, depth_scale)
    dataset.empty_depth_ok = empty_depth_ok
    return dataset


def _open_dataset(path: str | Path, split: str, fmt: str,
                  depth_scale: float | None) -> FolderDataset | KittiDataset | NYUDataset:
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if split not in NYUDataset.SPLITS:  # a split's name, never a path into another folder (`../other/val`)
        raise InputError(f"unknown split {split!r}; expected train, val (an NYU file or KITTI's selection: also all)")
    if not path.exists():
        raise DataError("dataset not found", path)
    if fmt == "auto":
        if path.is_file():
            if path.suffix.lower() not in NYU_SUFFIXES:
                raise DataError(f"expected a dataset folder or an NYU {'/'.join(NYU_SUFFIXES)} file",
                                path)
            fmt = "nyu"
        else:
            fmt = "kitti" if kitti_selection(path) is not None else "folder"
    if fmt == "nyu":
        if depth_scale is not None:  # accepted and ignored would look like it had been applied
            raise InputError("--depth-scale reads 16-bit PNG depth; NYU's depths are float metres", path)
        return NYUDataset(path, split)
    if depth_scale is not None:
        check_depth_scale(depth_scale)
    declared = declared_depth_scale(path)
    if declared is not None and depth_scale is not None and depth_scale != declared:
        raise InputError(f"--depth-scale {depth_scale:.15g} disagrees with the depth_png_scale {declared:.15g} that "
                         "meta.json declares (leave the option out, or correct meta.json)", path / "meta.json")
    scale = declared if depth_scale is None else depth_scale  # None: the format's own
    if fmt == "kitti":
        dataset: FolderDataset | KittiDataset = KittiDataset(path, split, KITTI_DEPTH_SCALE if scale is None else scale)
    else:
        dataset = FolderDataset(path, split, MM_PER_M if scale is None else scale)
    if depth_scale is not None and not any(d.suffix.lower() == ".png" for _, _, d in dataset.pairs) \
            and not has_png_depth(path):  # the option is the dataset's: a split of .npy (metres) reads as it is
        raise InputError("--depth-scale reads 16-bit PNG depth; this dataset's depth maps are all .npy (metres)",
                         path)
    return dataset


def has_png_depth(path: str | Path) -> bool:
    """Whether a dataset has 16-bit PNG depth maps, which `--depth-scale` reads, in any split (its .npy ones hold
    metres): a folder-format dataset's train/ or val/, or KITTI's selection. False for an NYU file."""
    path = Path(path)
    if not path.is_dir():
        return False
    if kitti_selection(path) is not None:
        return True
    for split in ("train", "val"):
        try:
            with os.scandir(path / split / "depth") as entries:
                if any(e.name.lower().endswith(".png") and not e.name.startswith(".") for e in entries):
                    return True
        except OSError:  # no such split
            continue
    return False


QUIET_CHECK = 256  # samples read without a progress bar (about a second)


def read_every_sample(dataset: Any, description: str) -> str:
    """Read every sample once, so a damaged or mismatched file raises its `DataError` now. Returns a digest of
    what was read, each sample's name and depth in metres: the same for the same data moved or re-encoded,
    another for other data or another PNG scale (`mde train` tells a resume onto other data by it)."""
    import hashlib

    from mde.console import track

    digest = hashlib.sha256()
    indices = range(len(dataset))
    for i in track(indices, description) if len(dataset) > QUIET_CHECK else indices:
        sample = dataset[i]
        digest.update(str(sample.name).encode("utf-8", "surrogateescape"))
        digest.update(np.ascontiguousarray(sample.depth, dtype=np.float32).tobytes())
    return digest.hexdigest()


def check_depth_units(dataset: Any, data_range: float) -> None:
    """Refuse a dataset whose depth is not in metres of its range, judged on its first depth map (as NYU's is):
    the median of its valid pixels beyond `UNIT_CHECK` x `data_range` (meta.json's max_depth, else the model's
    range) is millimetres stored in a .npy, a PNG scale not given, or a max_depth far too small. Every metric
    and the loss would be in the wrong unit, without a word. A PNG scale a few times off (KITTI's 256 read at
    the default 1000, TUM's 5000 read at 1000) passes that test; `_warn_of_png_scale` says what it suggests."""
    if not len(dataset):
        return
    read = getattr(dataset, "ground_truth", dataset.__getitem__)
    valid = np.zeros(0)
    for index in range(min(len(dataset), SCALE_SAMPLE)):  # a train split may begin with maps of no valid pixel
        depth = read(index).depth
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size:
            break
    typical = float(np.median(valid)) if valid.size else 0.0
    pairs = getattr(dataset, "pairs", None)
    source = pairs[index][2] if pairs else getattr(dataset, "path", None)
    png = Path(str(source)).suffix.lower() == ".png"
    scale = getattr(dataset, "depth_scale", None)
    read_at = f"read at {scale:g} units per metre; " if scale else ""
    advice = (f"its PNG depth is {read_at}the units per metre are --depth-scale, else meta.json's depth_png_scale, "
              "else 1000 (KITTI 256)" if png else "a .npy holds metres (millimetres?)")
    if typical > UNIT_CHECK * data_range:
        raise DataError(f"depth is {typical:.4g} m at the median, {typical / data_range:.0f}x the dataset's "
                        f"{data_range:g} m range (meta.json's max_depth, else the model's): {advice}; or the range is "
                        "too small", source)
    if png:
        _warn_of_png_scale(dataset, data_range, advice)


SCALE_SAMPLE = 8  # depth maps read, spread over a split, to judge its PNG scale
_scale_warned: set[str] = set()  # depth folders already warned of (train and eval read a split more than once)


def _warn_of_png_scale(dataset: Any, data_range: float, advice: str) -> None:
    """Warn, once per split, where a split's PNG depth looks read at the wrong scale: over a quarter of the valid
    depths of `SCALE_SAMPLE` maps beyond the range (a scale too small: TUM's 5000 read at 1000), or the deepest of
    them under a third of it (too large: KITTI's 256 read at 1000 puts an 80 m LiDAR's farthest return at 20 m). A
    warning, not a refusal: a shallow scene under a generous range looks the same."""
    pairs = getattr(dataset, "pairs", None)
    if not pairs:  # PNG depth comes in pairs of files
        return
    folder = str(Path(pairs[0][2]).parent)
    if folder in _scale_warned:
        return
    picks = sorted({round(i * (len(pairs) - 1) / max(SCALE_SAMPLE - 1, 1)) for i in range(SCALE_SAMPLE)})
    # the depth files alone: a pair's other problems are the reader's to name, when the pair is read
    depths = [d[np.isfinite(d) & (d > 0)] for d in (read_depth(pairs[i][2], png_scale=dataset.depth_scale)
                                                      for i in picks)]
    valid = np.concatenate(depths) if depths else np.zeros(0)
    if not valid.size:
        return
    beyond, deepest = float(np.mean(valid > data_range)), float(valid.max())
    if beyond > 0.25:
        said, range_is = f"{beyond:.0%} of the valid depths of {len(picks)} maps lie beyond the {data_range:g} m " \
                         "range", "too small"
    elif deepest < data_range / 3:
        said, range_is = f"the deepest valid depth of {len(picks)} maps is {deepest:.3g} m, under a third of the " \
                         f"{data_range:g} m range", "too large"
    else:
        return
    _scale_warned.add(folder)
    log.warning("%s: %s: is the PNG scale right? %s; or is max_depth %s?", folder, said, advice, range_is)


JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", type(None): "null"}


def _meta(path: Path) -> dict[str, Any] | None:
    """A dataset folder's `meta.json` as a JSON object, or None where the folder has none."""
    meta = path / "meta.json"
    if not (path.is_dir() and (meta.exists() or meta.is_symlink())):  # a broken link or a FIFO is no "no meta.json"
        return None
    try:
        text = read_small_text(meta)
    except OSError as err:
        raise DataError(f"cannot read meta.json ({err.strerror or err})", meta) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text, so not JSON (byte {err.start})", meta) from None
    try:
        doc = parse_json(text)
    except ValueError as err:
        raise DataError(f"expected a JSON object with a numeric 'max_depth' ({err})", meta) from None
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object with a numeric 'max_depth' (found a JSON "
                        f"{JSON_TYPES.get(type(doc), type(doc).__name__)})", meta)
    return doc


def _meta_number(doc: dict[str, Any], key: str, meta: Path) -> float:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float):  # float(true) is 1.0, float("20") 20
        raise DataError(f"expected a JSON object with a numeric '{key}' ({key} is {json.dumps(value)}, not a "
                        "number)", meta)
    try:
        return float(value)
    except OverflowError as err:  # an integer beyond float's range
        raise DataError(f"expected a JSON object with a numeric '{key}' ({err})", meta) from None


def png_scale_read(dataset: Any) -> float | None:
    """The units per metre `dataset`'s PNG depth maps are read at, or None where it has none (all .npy, NYU)."""
    pairs = getattr(dataset, "pairs", None) or ()
    return getattr(dataset, "depth_scale", None) if any(d.suffix.lower() == ".png" for _, _, d in pairs) else None


def trained_png_scale(config: Any) -> float | None:
    """The units per metre a model's training PNG depth was read at, from its training config (a checkpoint's, or
    the `mde.source` an export copies): its --depth-scale, else the scale its dataset declared or defaulted to
    (`png_depth_scale`, recorded since the option alone missed a meta.json's); None where neither is known."""
    if not isinstance(config, dict):
        return None
    if "png_depth_scale" not in config and config.get("depth_scale") == MM_PER_M:
        return None  # an older run, which saved the folder default as if given: not known to be the option
    for key in ("depth_scale", "png_depth_scale"):
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def note_trained_depth_scale(model: str | Path, trained: float | None, used: float | None,
                             data: str | Path) -> None:
    """A note where a model whose training PNG depth was read at one scale (`trained_png_scale`) is scored (`eval`,
    `parity`, `calibrate`, `export --golden-data`) on PNG depth read at another (`used`, units per metre): the scale
    is the dataset's and is not taken from the model, so the same data given without it reads wrong, and every
    figure with it."""
    from mde.console import info

    if trained is not None and used is not None and trained != used and has_png_depth(data):
        advice = ("as its meta.json declares" if declared_depth_scale(data) is not None  # the option would be refused
                  else "KITTI's own scale: the model was trained on other data"
                  if used == KITTI_DEPTH_SCALE and kitti_selection(Path(data))
                  else f"give --depth-scale {trained:g} if it is the same data")
        info(f"note: {model} was trained on PNG depth read at {trained:g} units per metre; {data}'s is read at "
             f"{used:g} here ({advice})")


def declared_depth_scale(path: str | Path) -> float | None:
    """The PNG depth units per metre a dataset folder's `meta.json` declares (`depth_png_scale`, which `mde data
    synth` writes), or None where it declares none."""
    path = Path(path)
    doc = _meta(path)
    if doc is None or "depth_png_scale" not in doc:
        return None
    value = _meta_number(doc, "depth_png_scale", path / "meta.json")
    if not DEPTH_SCALE_RANGE[0] <= value <= DEPTH_SCALE_RANGE[1]:  # NaN too
        raise DataError(f"expected a depth_png_scale of {DEPTH_SCALE_RANGE[0]:g} to {DEPTH_SCALE_RANGE[1]:g} PNG "
                        f"units per metre, found {value:g}", path / "meta.json")
    return value


def dataset_max_depth(path: str | Path, model_range: float | None = None) -> float:
    """The dataset's maximum depth in metres (the SSIM data range).

    `meta.json`'s `max_depth` when the folder has one that gives it (the synthetic world writes 20);
    10 for an NYU file, 80 for KITTI's selection layout; else `model_range`, the output range
    of the model being trained or scored (the range its predictions can take).

    Raises:
        DataError: a folder with none of these and no `model_range` (training without `--max-depth`):
            a guessed range would cap every prediction of a deeper dataset without a word.
    """
    path = Path(path)
    doc = _meta(path)
    if doc is not None and "max_depth" in doc:  # one that declares only depth_png_scale leaves the range open
        meta = path / "meta.json"
        value = _meta_number(doc, "max_depth", meta)
        if not MIN_DEPTH_RANGE <= value <= MAX_PLAUSIBLE_DEPTH:  # NaN too; beyond, SSIM's constants over/underflow
            raise DataError(f"expected a max_depth of {MIN_DEPTH_RANGE:g} to {MAX_PLAUSIBLE_DEPTH:g} m, "
                            f"found {value:g}", meta)
        return value
    if path.is_file() and path.suffix.lower() in NYU_SUFFIXES:
        return NYU_MAX_DEPTH
    if path.is_dir() and kitti_selection(path) is not None:
        return KITTI_MAX_DEPTH
    if model_range is not None:
        return float(model_range)
    raise DataError(f"{'meta.json gives no max_depth' if doc is not None else 'no meta.json'}, so the depth range is "
                    "unknown (the model's output range and the SSIM data range): pass --max-depth METRES, or write "
                    "{\"max_depth\": METRES} to meta.json", path)
