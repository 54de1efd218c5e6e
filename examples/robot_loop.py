"""A minimal robot loop on `mde.runtime` only (no torch): frames -> depth -> point cloud, with latency.

    python examples/robot_loop.py demo/export/model.onnx demo/data/val/rgb --fov 60

To run on a camera, give `run()` your driver's frames instead of `frames(folder)` (and drop the
folder argument and its two checks in `main()`); `run()` stays as it is. Frames are RGB: an
OpenCV driver's BGR frame needs `frame[..., ::-1]` (or `cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)`)
first. It stops on Ctrl-C (exit 130) and on SIGTERM (systemd, `docker stop`, roslaunch; exit 143)
alike, with the latency figures so far; they cover the last `WINDOW` frames, so a camera can run
for days in bounded memory.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mde.errors import STDOUT_CLOSED, InputError, MdeError, one_line
from mde.runtime import DepthEstimator, read_rgb
from mde.runtime.images import list_images

WINDOW = 1000  # the frames whose latencies the summary takes: the last this many


@dataclass
class Tally:
    """What the loop has done: frames predicted, frames dropped, and the latencies of the last `WINDOW` frames (ms)."""

    frames: int = 0
    dropped: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next: the loop stops as on Ctrl-C, its `with` blocks left in order."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def frames(folder: Path, tally: Tally) -> Iterator[tuple[str, np.ndarray]]:
    """Stand-in for a camera: the images of a folder, in name order. A file that cannot be read is dropped, as a
    camera driver drops a damaged frame: said on stderr and counted in `tally`, and the loop goes on."""
    for path in list_images(folder, broken_links=True):  # a broken link is a dropped frame, not a silent one
        try:
            rgb = read_rgb(path, upright=True)  # as a viewer shows it (a phone's EXIF-turned JPEG)
        except MdeError as err:  # damaged, gone since the listing, not an image after all
            if err.path is not None and Path(err.path) != path:
                raise
            print(f"robot_loop: dropped: {err}", file=sys.stderr)
            tally.dropped += 1
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
    tally = Tally()
    signal.signal(signal.SIGTERM, _terminate)  # how a service manager stops it: as Ctrl-C does
    try:
        try:
            run(opts.model, frames(opts.frames, tally), opts.fov, opts.backend, tally)
        except MdeError as err:  # a bad model: one line and its exit code, as the mde commands do
            print(f"robot_loop: error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt as stop:  # how a camera loop ends: the figures so far, then 130 (143 for SIGTERM)
            terminated = isinstance(stop, Terminated)
            print(f"robot_loop: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            raise SystemExit(143 if terminated else 130) from None
        finally:
            summary(tally)
            sys.stdout.flush()  # here, not at exit, where a closed pipe is an "Exception ignored" message
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, with nothing more to write there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as err:  # stdout on a full disk, or /dev/full: nothing more can be written there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"robot_loop: error: cannot write to standard output ({err.strerror or err})", file=sys.stderr)
        raise SystemExit(2) from None
    if tally.dropped:  # as `mde predict` ends: 1 when some of its images failed, 2 when all did
        print(f"robot_loop: {tally.dropped} of {tally.dropped + tally.frames} frames dropped", file=sys.stderr)
        raise SystemExit(1 if tally.frames else 2)


def run(model: Path, camera: Iterable[tuple[str, np.ndarray]], fov: float, backend: str, tally: Tally) -> None:
    """Predict every (name, RGB frame) of `camera` and back-project it; each frame is counted in `tally`, with its
    milliseconds."""
    with DepthEstimator.open(model, backend=backend) as estimator:
        if estimator.backend == "golden":
            raise InputError("golden.npz replays the outputs saved for its own images, not a camera's; give the "
                             "ONNX model or the engine next to it", model)
        print(f"{one_line(model.name)}: backend {estimator.backend}, precision {estimator.metadata.precision}")
        for name, rgb in camera:
            h, w = rgb.shape[:2]
            fx = fy = 0.5 * w / math.tan(math.radians(fov) / 2)        # pinhole intrinsics
            start = time.perf_counter()
            depth = estimator.predict(rgb)                            # H x W metres
            points = estimator.to_points(depth, fx, fy, (w - 1) / 2, (h - 1) / 2)
            tally.latencies.append((time.perf_counter() - start) * 1e3)
            tally.frames += 1
            # the nearest point's distance from the camera (not its depth along the axis: at the frame's edge a
            # point is farther than its depth says)
            nearest = float(np.sqrt(np.min(np.sum(points * points, axis=1)))) if len(points) else float("nan")
            # a file's name, escaped: a byte that is not UTF-8 or a newline in it would break the line (or the print)
            print(f"{one_line(name)}: {tally.latencies[-1]:6.1f} ms  {len(points)} points  nearest {nearest:.2f} m")


def summary(tally: Tally) -> None:
    if tally.latencies:
        window = f" (the last {len(tally.latencies)})" if len(tally.latencies) < tally.frames else ""
        print(f"{tally.frames} frames: median {np.median(tally.latencies):.1f} ms, "
              f"p90 {np.percentile(tally.latencies, 90):.1f} ms{window}")


if __name__ == "__main__":
    main()
