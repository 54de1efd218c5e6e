"""Depth maps for image files, folders and globs, written atomically per image (what `mde predict` runs)."""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from mde.errors import InputError, MdeError, OutOfMemory, one_line, shown_path
from mde.io import refuse_broken_link, resolved
from mde.runtime.metadata import MM_PER_M, PNG16_MAX

FORMATS = ("color", "png16", "npy")


@dataclass
class PredictConfig:
    """`mde predict` options."""

    artifact: Path
    inputs: list[str] = field(default_factory=list)
    out: Path = Path("predictions")
    backend: str = "auto"
    format: str = "color"
    threads: int = 0
    providers: list[str] | None = None
    force: bool = False  # replace files of the output names in `out` (never the input images' own folder's)
    native_resolution: bool = False  # a dynamic-size model runs each image at its own size (`DepthEstimator`)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> unique paths, in order.

    A file given twice (`a.png` and its folder) is taken once; a link by another name (`latest.jpg ->
    frame_42.jpg`) is an input of its own, with a depth map of its name.

    A pattern's matches are taken as if each were named: a folder gives its images, a file is kept
    when its suffix is an image's (a GIF too, which a folder search leaves out; other files are
    skipped, so `imgs/*` may match a README).
    """
    from mde.runtime.images import IMAGE_SUFFIXES, list_images

    pattern_suffixes = (*IMAGE_SUFFIXES, ".gif")

    def matched_images(match: Path) -> list[Path]:  # a dangling link is kept, to be named and skipped
        if match.is_dir():
            return list_images(match, broken_links=True)
        is_image = match.suffix.lower() in pattern_suffixes
        return [match] if is_image and (match.is_file() or not match.exists()) else []

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path, broken_links=True)  # a broken link is named and skipped later
            if not found:
                raise InputError(f"folder has no images ({' '.join(IMAGE_SUFFIXES)})", path)
        elif path.exists() or path.is_symlink():  # a broken link: skipped by name, as one in a folder is
            found = [path]
        elif glob.has_magic(item):  # each match as if named: a folder gives its images, a file its own if an image
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found = [image for match in matches for image in matched_images(match)]
            if not found:
                raise InputError(f"the pattern {item!r} matches " + (
                    f"{len(matches)} path(s), none an image ({' '.join(pattern_suffixes)}) or a folder with images"
                    if matches else "nothing"))
        else:
            raise InputError("input not found", path)
        paths.extend(found)
    seen: set[tuple[Path, str]] = set()
    return [p for p in paths if not ((key := (input_location(p), p.name)) in seen or seen.add(key))]


def input_location(path: Path) -> Path:
    """Where an input image is: its resolved path, or for a link that cannot be followed (a loop of links) its own,
    made absolute; such an input is skipped by name when read, as a link to nothing is."""
    try:
        return resolved(path)
    except InputError:
        return Path(os.path.abspath(path))


NAME_MAX_BYTES = 255  # a file name's limit in bytes on Linux file systems (ext4, XFS, Btrfs) and APFS


def output_names(paths: list[Path], suffix: str) -> list[str]:
    """One distinct output file name per input, from its stem; a name already given gets _1, _2, ...

    (`img.png`, `img.tiff`, `img_1.png` give `img`, `img_1`, `img_1_1`: never one file for two inputs.)
    """
    given: set[str] = set()
    names = []
    for path in paths:
        name, n = path.stem, 0
        while name in given:
            n += 1
            name = f"{path.stem}_{n}"
        given.add(name)
        names.append(name + suffix)
    return names


def write_depth(depth, path: Path, fmt: str, max_depth: float) -> None:
    """Write one depth map atomically as a color PNG, a 16-bit millimetre PNG, or float32 .npy."""
    import numpy as np
    from PIL import Image

    from mde.io import atomic_path
    from mde.runtime.colormap import colorize

    with atomic_path(path) as tmp:
        if fmt == "npy":  # through memory: numpy's own short write (a full disk) is an OSError with no errno
            buffer = io.BytesIO()
            np.save(buffer, depth.astype(np.float32), allow_pickle=False)
            tmp.write_bytes(buffer.getvalue())
        elif fmt == "png16":
            mm = np.where(np.isfinite(depth) & (depth > 0), depth.astype(np.float64) * MM_PER_M, 0.0)  # exact
            Image.fromarray(np.clip(np.rint(mm), 0, PNG16_MAX).astype(np.uint16)).save(tmp, format="PNG")
        else:
            Image.fromarray(colorize(depth, max_depth)).save(tmp, format="PNG")


def run_predict(cfg: PredictConfig) -> dict[str, int]:
    """Predict every input image; bad images are reported and skipped. Returns counts."""
    from mde.console import err_console, info, track
    from mde.io import no_empty_new_folder
    from mde.runtime import DepthEstimator
    from mde.runtime.backends.onnxruntime import check_threads_option
    from mde.runtime.images import notes_once_per_folder, read_rgb

    if cfg.format not in FORMATS:
        raise InputError(f"unknown --format {cfg.format!r}; choose from {', '.join(FORMATS)}")
    check_threads_option(cfg.threads)
    paths = expand_inputs(cfg.inputs)
    if not paths:
        raise InputError("no input images given")
    out = Path(cfg.out)
    refuse_broken_link(out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a directory", out)
    names = output_names(paths, ".npy" if cfg.format == "npy" else ".png")
    for path, name in zip(paths, names):  # found now, not after the images before it were predicted
        if len(os.fsencode(name)) > NAME_MAX_BYTES:
            raise InputError(f"its depth map's name, {shown_path(name)}, would be {len(os.fsencode(name))} bytes, "
                             f"more than a file name may hold ({NAME_MAX_BYTES}); rename the image", path)
    check_outside_dataset(out)
    check_no_overwrite(paths, [out / name for name in names], cfg.force)
    owner = {name: path for path, name in zip(paths, names)}  # an output name -> its input
    skipped: set[Path] = set()
    failed = 0
    with no_empty_new_folder(out), DepthEstimator.open(cfg.artifact, backend=cfg.backend, threads=cfg.threads,
                                                       providers=cfg.providers) as est:
        if cfg.native_resolution:
            est.require_native_resolution()
        if cfg.format == "png16" and est.metadata.max_depth * MM_PER_M > PNG16_MAX:
            raise InputError(f"--format png16 holds depths up to {PNG16_MAX / MM_PER_M:g} m; this model predicts up "
                             f"to {est.metadata.max_depth:g} m (use --format npy)", cfg.artifact)
        try:
            out.mkdir(parents=True, exist_ok=True)  # once the model opened: a bad one leaves no folder
        except OSError as err:
            raise InputError(f"cannot create output folder ({err.strerror or err})", out) from None
        runs_on = f"{Path(cfg.artifact).name}: {est.backend} on {', '.join(est.providers)}"  # said once one is written
        items = list(zip(paths, names))
        for path, name in track(items, "predict", total=len(items)) if len(items) > 1 else items:
            try:
                with notes_once_per_folder(path.parent):  # a camera's thousand grey frames: one note
                    rgb = read_rgb(path, upright=True)
                depth = est.predict(rgb)
                write_depth(depth, out / name, cfg.format, est.metadata.max_depth)
                if runs_on:  # not before: a run refused at its first image is one line
                    info(runs_on)
                    runs_on = ""
                if Path(name).stem != path.stem:  # its own name went to an input before it: say which file is whose
                    wanted = path.stem + Path(name).suffix
                    taker = owner[wanted]
                    info(f"mde: {shown_path(path)}: its depth map is {name} ({wanted} is {shown_path(taker)}'s"
                         f"{', which was skipped' if taker in skipped else ''})")
            except MdeError as err:
                # at its own size, an image too large for this machine's memory is the image's fault: skipped
                too_large = isinstance(err, OutOfMemory) and cfg.native_resolution and len(items) > 1
                if err.path is not None and err.path != path and not too_large:
                    raise  # not the image's fault (the output folder, a model that fails to run): stop
                if len(items) == 1:  # the one image given is bad input: one line naming it, exit 2
                    raise err if err.path is not None else type(err)(str(err), path) from None
                failed += 1
                skipped.add(path)
                shown = shown_path(path)
                said = f"at its own size, {err.message}" if too_large else str(err).removeprefix(f"{shown}: ")
                err_console.print(one_line(f"mde: skipped {shown}: {said}"), markup=False)
    if failed == len(paths):  # nothing usable among the inputs: bad input, not a partial run
        raise InputError(f"none of the {len(paths)} images could be predicted (each is listed above)")
    return {"images": len(paths), "written": len(paths) - failed, "failed": failed}


def check_outside_dataset(out: Path, written: str = "the depth maps") -> None:
    """Refuse an output folder in a dataset's split (`DATA/val/depth`): what is `written` would replace its ground
    truth, or join its images as samples."""
    target = resolved(out)
    for folder in (target, *target.parents):
        split = folder.parent
        if folder.name in ("rgb", "depth", "mask") and split.name in ("train", "val") \
                and (split / "rgb").is_dir() and (split / "depth").is_dir():  # DATA/train|val/rgb|depth|mask
            raise InputError(f"--out lies inside a dataset split's {folder.name}/ ({split}): {written} "
                             "would replace or join its files; choose a folder outside it", out)
        if folder.name in ("image", "groundtruth_depth", "velodyne_raw", "intrinsics") \
                and (split / "image").is_dir() and (split / "groundtruth_depth").is_dir():  # KITTI's selection
            raise InputError(f"--out lies inside KITTI's {folder.name}/ ({split}): {written} would replace or "
                             "join its files; choose a folder outside it", out)


def check_no_overwrite(inputs: list[Path], outputs: list[Path], force: bool = False) -> None:
    """Refuse an output path that is a folder, an input image, an existing file in the input images' own folder,
    or (without `force`) any existing file.

    `--out` may be a folder of other files of the same names (another camera's `000001.png`): its files are replaced
    only with --force, as `export` and `calibrate` replace theirs; in a folder that holds the images, `photo.png`
    beside `photo.jpg` is the user's file, not an earlier output, even then.
    """
    blocked = next((path for path in outputs if path.exists() and not path.is_file()), None)
    if blocked is not None:  # found now, not after the images before it were predicted
        kind = "a folder" if blocked.is_dir() else "not a regular file (a pipe?)"
        raise InputError(f"a depth map would be written here, but it is {kind}; remove it or choose another "
                         "--out", blocked)
    sources = {input_location(path) for path in inputs}
    clash = next((path for path in outputs if resolved(path) in sources), None)
    if clash is not None:
        raise InputError("the depth map would overwrite this input image; choose another --out "
                         "(or --format npy)", clash)
    # the folders the images are in, and those their names are in (a camera's folder of links to a store)
    folders = {path.parent for path in sources} | {input_location(path.parent) for path in inputs}
    # an existing .npy there is a depth map of an earlier `--format npy` run into this folder, or the user's own
    # file: replaced with --force only, as in any --out (it was refused even then: that run could not be repeated)
    taken = next((path for path in outputs if resolved(path).parent in folders and os.path.lexists(path)
                  and path.suffix.lower() != ".npy"), None)
    if taken is not None:
        raise InputError("the depth map would replace this existing file in the images' own folder; "
                         "choose another --out", taken)
    from mde.runtime.images import IMAGE_SUFFIXES

    joins = next((path for path in outputs if resolved(path).parent in folders
                  and path.suffix.lower() in IMAGE_SUFFIXES), None)
    if joins is not None:  # the next run over the folder would take the depth pictures for camera frames
        raise InputError("--out is the images' own folder: the depth pictures would join the images there (and be "
                         "read as images by the next run over it); choose another --out, or --format npy",
                         joins.parent)
    existing = [path for path in outputs if os.path.lexists(path)]  # a broken link of that name too
    if existing and not force:  # found before the first image, not after it
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(f"exists{more}, and a depth map would replace it; give --force to replace the files of "
                         "the depth maps' names (a rerun's), or choose another --out", existing[0])
