"""A minimal robot loop on `mde.runtime` only (no torch): frames -> depth -> point cloud, with latency.

    python examples/robot_loop.py demo/export/model.onnx demo/data/val/rgb --fov 60

To run on a camera, replace `frames()` with your driver and drop the folder argument and its
two checks in `main()`; `run()` stays as it is. Frames are RGB: an OpenCV driver's BGR frame
needs `frame[..., ::-1]` (or `cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)`) first.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mde.errors import STDOUT_CLOSED, InputError, MdeError, one_line
from mde.runtime import DepthEstimator, read_rgb
from mde.runtime.images import list_images


def frames(folder: Path, dropped: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Stand-in for a camera: the images of a folder, in name order. A file that cannot be read is dropped, as a
    camera driver drops a damaged frame: said on stderr and added to `dropped`, and the loop goes on."""
    for path in list_images(folder, broken_links=True):  # a broken link is a dropped frame, not a silent one
        try:
            rgb = read_rgb(path, upright=True)  # as a viewer shows it (a phone's EXIF-turned JPEG)
        except MdeError as err:  # damaged, gone since the listing, not an image after all
            if err.path is not None and Path(err.path) != path:
                raise
            print(f"robot_loop: dropped: {err}", file=sys.stderr)
            dropped.append(path.name)
            continue
        yield path.name, rgb


def field_of_view(text: str) -> float:
    degrees = float(text)
    if not 1 <= degrees <= 179:  # a pinhole camera's; near 0 or 180 the focal length leaves float's range
        raise argparse.ArgumentTypeError(f"must be between 1 and 179 degrees, got {text}")
    return degrees


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as the mde commands answer (no usage block)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main() -> None:
    parser = Parser(prog="robot_loop", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model.onnx, model.fp16.onnx, model.int8.cpu.onnx (INT8 for a "
                        "CPU), model.int8.onnx (INT8 for TensorRT) or model.engine")
    parser.add_argument("frames", type=Path, help="a folder of RGB images")
    parser.add_argument("--fov", type=field_of_view, default=60.0, help="horizontal field of view, degrees")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                        help="auto (from the file suffix), onnxruntime or tensorrt (default: auto)")
    opts = parser.parse_args()
    if opts.model.suffix.lower() == ".pt":  # the torch backend would run it, importing what a robot lacks
        parser.error(f"{opts.model}: a .pt checkpoint runs in PyTorch; this loop runs on mde.runtime alone: "
                     f"export it first (mde export {opts.model} --out DIR), then give DIR/model.onnx")
    if not opts.frames.is_dir():
        parser.error(f"{opts.frames}: not a folder of images")
    if not list_images(opts.frames):
        parser.error(f"{opts.frames}: folder has no images")
    if sys.stdout is None:  # `>&-`: every frame's line would be lost, and the run with it
        parser.error(STDOUT_CLOSED)
    latencies: list[float] = []
    dropped: list[str] = []
    try:
        try:
            run(opts.model, opts.frames, opts.fov, opts.backend, latencies, dropped)
        except MdeError as err:  # a bad model: one line and its exit code, as the mde commands do
            print(f"robot_loop: error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:  # how a camera loop ends: the figures so far, then 130 as a shell expects
            print("robot_loop: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            summary(latencies)
            sys.stdout.flush()  # here, not at exit, where a closed pipe is an "Exception ignored" message
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, with nothing more to write there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as err:  # stdout on a full disk, or /dev/full: nothing more can be written there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"robot_loop: error: cannot write to standard output ({err.strerror or err})", file=sys.stderr)
        raise SystemExit(2) from None
    if dropped:  # as `mde predict` ends: 1 when some of its images failed, 2 when all did
        print(f"robot_loop: {len(dropped)} of {len(dropped) + len(latencies)} frames dropped", file=sys.stderr)
        raise SystemExit(1 if latencies else 2)


def run(model: Path, folder: Path, fov: float, backend: str, latencies: list[float], dropped: list[str]) -> None:
    """Predict every frame and back-project it; each frame's milliseconds are appended to `latencies`, the names of
    frames that could not be read to `dropped`."""
    with DepthEstimator.open(model, backend=backend) as estimator:
        if estimator.backend == "golden":
            raise InputError("golden.npz replays the outputs saved for its own images, not a camera's; give the "
                             "ONNX model or the engine next to it", model)
        print(f"{one_line(model.name)}: backend {estimator.backend}, precision {estimator.metadata.precision}")
        for name, rgb in frames(folder, dropped):
            h, w = rgb.shape[:2]
            fx = fy = 0.5 * w / math.tan(math.radians(fov) / 2)        # pinhole intrinsics
            start = time.perf_counter()
            depth = estimator.predict(rgb)                            # H x W metres
            points = estimator.to_points(depth, fx, fy, (w - 1) / 2, (h - 1) / 2)
            latencies.append((time.perf_counter() - start) * 1e3)
            nearest = float(np.min(points[:, 2])) if len(points) else float("nan")
            # a file's name, escaped: a byte that is not UTF-8 or a newline in it would break the line (or the print)
            print(f"{one_line(name)}: {latencies[-1]:6.1f} ms  {len(points)} points  nearest {nearest:.2f} m")


def summary(latencies: list[float]) -> None:
    if latencies:
        print(f"{len(latencies)} frames: median {np.median(latencies):.1f} ms, "
              f"p90 {np.percentile(latencies, 90):.1f} ms")


if __name__ == "__main__":
    main()
