"""`DepthEstimator`: RGB image in, metric depth map (or point cloud) out, on any registered backend."""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mde.errors import InputError, ModelError
from mde.runtime.backends.base import Runner, open_runner, providers_refused, runs_on_onnxruntime
from mde.runtime.images import to_rgb8
from mde.runtime.metadata import MAX_INPUT_SIDE, OUTPUT_NAME, PREPROCESS, ModelMetadata
from mde.runtime.preprocess import postprocess, preprocess

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

SIZE_MULTIPLE = PREPROCESS["size_multiple"]  # the encoder's stride: H and W of a dynamic-size model
# `infer` takes [0, 1] pixels; values this far outside are another convention (0-255, or normalized
# already), not a resampling overshoot
INPUT_SLACK = 0.5
# the network's head is max_depth * sigmoid: depth beyond [0, max_depth] by more than this share of max_depth is
# a broken model (a negated head read as "0 m: no obstacle anywhere"), not FP16 or INT8 rounding
OUTPUT_SLACK = 0.01


def check_depth_output(depth: np.ndarray, max_depth: float, source: str | Path | None) -> None:
    """Refuse a model output no robot should trust: NaN or infinite depth, or depth outside 0..`max_depth` (the
    metadata's range) by more than `OUTPUT_SLACK` of it.

    Raises:
        ModelError: naming `source` and what the model predicted.
    """
    if not np.isfinite(depth).all():  # a depth map a robot would trust: never pass NaN on
        raise ModelError("the model predicts NaN or infinite depth: a diverged or broken model", source)
    if depth.size and (depth.min() < -OUTPUT_SLACK * max_depth or depth.max() > (1 + OUTPUT_SLACK) * max_depth):
        raise ModelError(f"the model predicts depth from {float(depth.min()):.4g} to {float(depth.max()):.4g} m, "
                         f"outside the 0 to {max_depth:g} m its metadata gives: a broken model, or metadata that is "
                         f"not its own", source)


def round_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Round an image size to the nearest multiples of `multiple` (at least one multiple)."""
    return (
        max(multiple, round(height / multiple) * multiple),
        max(multiple, round(width / multiple) * multiple),
    )


class DepthEstimator:
    """Metric depth from one RGB image, using the preprocessing stored in the artifact's metadata.

    Every image is resized to the model's input size (`metadata.input_size`, the size it
    was trained and exported at), run, and the depth resized back to the image's own
    resolution. With `native_resolution=True` and a model exported with dynamic H/W
    (`metadata.dynamic_size`), images run at their own size rounded to multiples of 32
    instead (sharper, slower, and outside the resolution parity was checked at).

    Thread-safe: the estimator keeps no per-call state, so one instance may serve several
    threads (ONNX Runtime's `run` is thread-safe; the TensorRT runner serializes calls).

    Args:
        runner: an activated backend runner (see `DepthEstimator.open`).
        native_resolution: see above; ignored unless the model has dynamic H/W.
        batch_size: largest chunk `predict_batch` sends through a dynamic-batch model.
    """

    def __init__(self, runner: Runner, native_resolution: bool = False, batch_size: int = 8):
        if not isinstance(runner, Runner):
            raise InputError(f"DepthEstimator takes a Runner (or use DepthEstimator.open(path)), "
                             f"got {type(runner).__name__}")
        if not runner.is_active or runner.metadata is None or not runner.input_specs:  # never opened, or closed
            raise InputError("DepthEstimator needs an activated runner", runner.path)
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(native_resolution, (bool, np.bool_)):
            raise InputError(f"native_resolution must be True or False, got {native_resolution!r}")
        self.runner = runner
        self.native_resolution = native_resolution and runner.metadata.dynamic_size
        self._native_option = "native_resolution"  # what turned it on, as its messages name it
        if native_resolution and not self.native_resolution:  # said once, where the estimator is made
            h, w = runner.metadata.input_size
            log.warning("native_resolution=True has no effect: this model takes %dx%d images only (export it "
                        "with --dynamic-size for other sizes)", h, w)
        self.batch_size = batch_size
        self.input_name = next(iter(runner.input_specs))
        self.output_name = OUTPUT_NAME  # the runner checked that the graph has it
        self.input_dtype = runner.input_specs[self.input_name].dtype

    @classmethod
    def open(
        cls,
        path: str | Path,
        backend: str = "auto",
        providers: Sequence[str] | None = None,
        threads: int = 0,
        **options: Any,
    ) -> DepthEstimator:
        """Open an `.onnx` or `.engine` artifact (or, for checks: a `golden.npz`, and a `.pt` with PyTorch).

        Args:
            path: the artifact.
            backend: "auto" (from the suffix), "onnxruntime" or "tensorrt"; also "golden" and "torch" (which
                imports PyTorch, not a robot's runtime).
            providers: ONNX Runtime providers (None: chosen for this machine); refused for another backend,
                which would run where it runs and ignore them.
            threads: ONNX Runtime intra-op threads (0: its default).
            options: `native_resolution`, `batch_size` for the estimator; the rest go to the runner.
        """
        est_opts = {k: options.pop(k) for k in ("native_resolution", "batch_size") if k in options}
        runner_opts: dict[str, Any] = dict(options)
        if providers is not None:
            runner_opts["providers"] = providers
        if not (type(threads) is int and threads == 0):  # anything but the default goes to the runner to check
            runner_opts["threads"] = threads                 # (`if threads:` let 0.0 and False through as it)
        if (providers is not None and isinstance(path, (str, os.PathLike)) and Path(path).is_file()
                and not runs_on_onnxruntime(path, backend)):
            raise providers_refused(path, backend)  # before the model loads
        runner = open_runner(path, backend, **runner_opts)
        try:
            return cls(runner, **est_opts)
        except BaseException:  # a refused option: do not leave the session (or a GPU context) behind
            runner.deactivate()
            raise

    # -- properties ---------------------------------------------------------------
    @property
    def metadata(self) -> ModelMetadata:
        return self.runner.metadata  # type: ignore[return-value]

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def providers(self) -> list[str]:
        return self.runner.providers

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is run at."""
        if self.native_resolution:
            size = round_size(height, width)
            if max(size) > MAX_INPUT_SIDE:
                raise InputError(f"a {width}x{height} image would run at {size[1]}x{size[0]} at native resolution, "
                                 f"beyond the {MAX_INPUT_SIDE} pixel side limit; resize it first, or run it without "
                                 f"{self._native_option}")
            return size
        return tuple(self.metadata.input_size)  # type: ignore[return-value]

    def require_native_resolution(self, option: str = "--native-resolution") -> None:
        """Turn `native_resolution` on, or refuse, naming why (`InputError`), where it cannot apply: a model of
        one input size, a checkpoint (run at its training size), a golden file (outputs saved at that size).
        `DepthEstimator(..., native_resolution=True)` only warns: a command's option is refused instead."""
        h, w = self.metadata.input_size
        if self.backend == "golden":
            raise InputError(f"{option} runs each image at its own size; a golden file replays the outputs saved "
                             f"at {h}x{w}: give the ONNX model or the engine", self.runner.path)
        if not self.metadata.dynamic_size:
            what = "a checkpoint runs" if self.backend == "torch" else "this model takes"
            raise InputError(f"{option} needs a model exported with --dynamic-size; {what} {h}x{w} images only",
                             self.runner.path)
        self.native_resolution = True
        self._native_option = option

    def check_size(self, height: int, width: int, batch: int = 1) -> tuple[int, int]:
        """The size an image of `height` x `width` runs at, in batches of `batch`, refused now (`InputError`)
        where the model would refuse it when run (an engine's profile, the side limit)."""
        size = self.network_size(height, width)
        dtype = next(iter(self.runner.input_specs.values())).dtype
        self.runner.check_feed({self.input_name: np.broadcast_to(np.zeros((), dtype), (batch, 3, *size))})
        return size

    # -- inference ----------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw model call: N x 3 x h x w float32 in [0, 1] -> N x 1 x h x w depth in metres.

        Raises:
            InputError: not a float batch of that shape, values that are not [0, 1] pixels (NaN, raw
                0-255 values, or input already normalized: the model normalizes inside), or h and w
                not multiples of 32 on a dynamic-size model.
        """
        batch = np.asarray(batch)
        model = self.runner.path
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputError(f"expected a float32 batch, got {batch.dtype}", model)
        if batch.size:
            lo, hi = float(batch.min()), float(batch.max())  # NaN propagates into both
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise InputError("input batch has NaN or infinite values", model)
            if lo < -INPUT_SLACK or hi > 1 + INPUT_SLACK:
                raise InputError(f"input batch values run from {lo:.4g} to {hi:.4g}; expected pixels in [0, 1] "
                                 f"(ImageNet normalization is inside the model; predict() takes images)", model)
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        depth = self.runner.infer({self.input_name: batch})[self.output_name]
        check_depth_output(depth, self.metadata.max_depth, self.runner.path)
        return depth

    def predict(self, rgb: np.ndarray | Image) -> np.ndarray:
        """H x W x 3 uint8 RGB -> H x W float32 depth in metres, at the image's resolution.

        Grayscale, RGBA, 16-bit and float [0, 1] images are converted first; a PIL image is taken as its pixels,
        converted as `read_rgb` converts a file's (palette, CMYK ...).
        """
        rgb = to_rgb8(rgb, "image")
        size = rgb.shape[:2]
        out = self.infer(preprocess([rgb], self.network_size(*size)))
        return postprocess(out[0], size, self.metadata.max_depth)

    def predict_batch(self, images: Sequence[np.ndarray | Image]) -> list[np.ndarray]:
        """Several images of any sizes -> their depth maps, in order.

        Images that run at the same network size go through the model together, in chunks
        of up to `batch_size` when the model has a dynamic batch axis.
        """
        if isinstance(images, np.ndarray) and (images.ndim < 3 or (images.ndim == 3 and images.shape[2] <= 4)):
            raise InputError(f"predict_batch takes a sequence of images (a list, or an N x H x W [x C] array), "
                             f"got an array of shape {images.shape}: one image; call predict()")
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[0] in (3, 4):
            raise InputError(f"predict_batch got an array of shape {images.shape}: {images.shape[0]} grey images, "
                             f"or one channels-first image? Pass a list of images, or N x H x W x C "
                             f"(one image: predict() on H x W x C)")
        if not isinstance(images, Iterable) or isinstance(images, (str, bytes)):
            raise InputError(f"predict_batch takes a sequence of images, got {type(images).__name__}")
        rgbs = [to_rgb8(img, f"image {i}") for i, img in enumerate(images)]
        limit = self.runner.max_batch()
        chunk = self.batch_size if limit is None else max(1, min(self.batch_size, limit))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            groups.setdefault(self.network_size(*rgb.shape[:2]), []).append(i)
        results: list[np.ndarray | None] = [None] * len(rgbs)
        for size, idx in groups.items():
            for start in range(0, len(idx), chunk):
                part = idx[start : start + chunk]
                out = self.infer(preprocess([rgbs[i] for i in part], size))
                for j, i in enumerate(part):
                    results[i] = postprocess(out[j], rgbs[i].shape[:2], self.metadata.max_depth)
        return results  # type: ignore[return-value]

    @staticmethod
    def to_points(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
        """Back-project a depth map (z in metres) to an N x 3 float32 camera-frame point cloud.

        Pinhole model, pixel (u, v) = (column, row) indices: x = (u - cx) z / fx,
        y = (v - cy) z / fy, z = depth. Invalid pixels (0, negative, NaN, inf, or masked in a
        `np.ma.MaskedArray`) are dropped; points are in row-major pixel order. Depth must be
        floating-point metres: integer maps (a depth camera's millimetres) are refused, not guessed.
        """
        masked = np.ma.getmaskarray(depth) if isinstance(depth, np.ma.MaskedArray) else None  # invalid pixels
        depth = np.asarray(depth)
        if depth.ndim == 3 and depth.shape[0] == 1:
            depth = depth[0]
            masked = None if masked is None else masked[0]
        if depth.ndim != 2 or depth.size == 0:
            raise InputError(f"expected an H x W depth map, got shape {depth.shape}")
        if not np.issubdtype(depth.dtype, np.floating):
            hint = " (a depth camera's millimetres: divide by 1000)" if depth.dtype.kind in "ui" else ""
            raise InputError(f"expected depth in metres as floating point, got {depth.dtype}{hint}")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in (fx, fy, cx, cy)):
            raise InputError(f"intrinsics must be numbers, got fx={fx!r}, fy={fy!r}, cx={cx!r}, cy={cy!r}")
        try:
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                fx32, fy32, cx32, cy32 = (np.float32(v) for v in (fx, fy, cx, cy))
        except OverflowError:  # an int beyond even float64
            fx32 = fy32 = cx32 = cy32 = np.float32("nan")
        if not (fx32 > 0 and fy32 > 0 and all(np.isfinite(v) for v in (fx32, fy32, cx32, cy32))):
            raise InputError(f"focal lengths must be finite and > 0 (and centres finite), got fx={fx}, fy={fy}, "
                             f"cx={cx}, cy={cy}")
        valid = np.isfinite(depth) & (depth > 0)  # before the cast: 1e-300 m is valid, not the 0 float32 makes it
        if masked is not None:
            valid &= ~masked
        v, u = np.nonzero(valid)
        with np.errstate(over="ignore", under="ignore"):
            z = depth[v, u].astype(np.float32, copy=False)
        if not np.isfinite(z).all():  # float64 metres past float32's 3.4e38: no point it could hold
            raise InputError(f"depth values up to {float(depth[v, u].max()):.4g} m lie beyond float32's range")
        if not z.all():  # below float32's 1e-45: 0, a point at the camera's centre; dropped as a 0 depth is
            v, u, z = v[z > 0], u[z > 0], z[z > 0]
        with np.errstate(over="ignore"):
            x = (u.astype(np.float32) - cx32) * z / fx32
            y = (v.astype(np.float32) - cy32) * z / fy32
        points = np.stack([x, y, z], axis=1)
        if not np.isfinite(points).all():  # a tiny focal length or huge centre: beyond float32
            raise InputError(f"intrinsics fx={fx}, fy={fy}, cx={cx}, cy={cy} put points beyond float32 range")
        return points

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        self.runner.deactivate()

    def __reduce__(self) -> Any:
        raise InputError("a DepthEstimator holds a native session and cannot be pickled; pass the model's path "
                         "and call DepthEstimator.open(path) in each process")

    def __enter__(self) -> DepthEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DepthEstimator({str(self.runner.path)!r}, backend={self.backend!r}, providers={self.providers})"
