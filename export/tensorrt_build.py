"""ONNX -> TensorRT 10.3+ / 11 engine (strongly typed, profile, timing cache) + `model.engine.json`.

Precision comes from the ONNX (FP16 casts, INT8 Q/DQ), never from builder flags: TensorRT 11
removed BuilderFlag.FP16/INT8 and the INT8 calibrators and makes every network strongly typed
(no creation flags); on TensorRT 10 the network is created STRONGLY_TYPED so the same ONNX
builds the same engine (Jetson Orin on JetPack 6.1+ runs TensorRT 10.3).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import BackendError, CheckFailed, InputError, ModelError
from mde.io import user_cache_dir
from mde.runtime.metadata import INPUT_NAME, sidecar_path

BUILD_DEVICE = 0  # engines are built on CUDA GPU 0, the one the sidecar describes

log = logging.getLogger(__name__)


def profile_size_problem(min_size: int, max_size: int, size: tuple[int, int] | None = None) -> str | None:
    """What is wrong with a dynamic-size profile's bounds: each a multiple of 32 (the network's stride), and
    containing the model's input `size` (H, W) where given; None when nothing is."""
    for value in (min_size, max_size):
        if value % 32:
            return f"profile sizes must be multiples of 32, got {value}"
    if size is not None and not min_size <= min(size) <= max(size) <= max_size:
        return f"profile sizes {min_size}..{max_size} must contain the model size {size[0]}x{size[1]}"
    return None


def default_timing_cache() -> Path:
    """Where timing caches are kept unless `--timing-cache` says: mde's cache folder (`user_cache_dir`)."""
    return user_cache_dir() / "tensorrt-timing.cache"


@dataclass
class BuildConfig:
    """Engine build settings.

    Args:
        precision: the ONNX's precision (its `mde.precision`, checked); the ONNX decides the actual types.
        input_size: (height, width) the model was exported for: the profile's opt size.
        min_batch: profile minimum batch.
        opt_batch: profile batch the tactics are tuned for.
        max_batch: profile maximum batch.
        dynamic_size: the ONNX has dynamic H/W: the profile spans min_size..max_size.
        min_size: smallest H and W (multiple of 32) with dynamic_size.
        max_size: largest H and W (multiple of 32) with dynamic_size.
        workspace_mib: the WORKSPACE memory-pool limit.
        timing_cache: timing cache file (None: `default_timing_cache`, found when a build needs it), read
            before and written after every build; the TensorRT
            version, compute capability and GPU model are added to its name (`timing_cache_file`), so caches
            of different GPUs and TensorRT versions never mix.
    """

    precision: str = "fp32"
    input_size: tuple[int, int] = (224, 224)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    dynamic_size: bool = False
    min_size: int = 32
    max_size: int = 1024
    workspace_mib: int = 4096
    timing_cache: Path | None = None

    def profile(self) -> dict[str, list[list[int]]]:
        """{input name: [min, opt, max] shapes}."""
        h, w = self.input_size
        if self.dynamic_size:
            problem = profile_size_problem(self.min_size, self.max_size, self.input_size)
            if problem:
                raise InputError(problem)
            lo, hi = (self.min_size, self.min_size), (self.max_size, self.max_size)
        else:
            lo = hi = (h, w)
        return {
            INPUT_NAME: [
                [self.min_batch, 3, *lo],
                [self.opt_batch, 3, h, w],
                [self.max_batch, 3, *hi],
            ]
        }


def require_tensorrt() -> tuple[str, str, str]:
    """Check that TensorRT, cuda-python and a CUDA GPU are here; return (trt version, GPU name, "major.minor").

    Raises:
        BackendError: naming what is missing and how to install it (exit 2).
    """
    from mde.runtime.backends.tensorrt import gpu_info, import_cudart, import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendError as err:
        raise BackendError(f"--engine needs TensorRT: {err}") from None
    try:
        cudart = import_cudart()
    except BackendError as err:
        raise BackendError(f"--engine needs cuda-python to find the GPU: {err}") from None
    try:
        name, cc = gpu_info(cudart, BUILD_DEVICE)
    except BackendError as err:
        raise BackendError(
            f"--engine needs a CUDA GPU and none was found ({err}); TensorRT "
            "engines are built on the GPU they run on"
        ) from None
    return str(trt.__version__), name, cc


def network_flags(trt: Any) -> int:
    """`create_network` flags: STRONGLY_TYPED on TensorRT 10 (precision from the ONNX); none on 11 (its default)."""
    from mde.runtime.backends.tensorrt import tensorrt_major

    if tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    """Parse `onnx_path` into `network`; raise `CheckFailed` listing EVERY parser error with its node."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = [str(v) for v in (error.node_name(), error.node_operator()) if v] + [f"node #{error.node()}"]
        errors.append(f"[{' '.join(where)}] {error.code()}: {error.desc()}")
    raise CheckFailed(
        f"TensorRT's ONNX parser failed with {len(errors)} error(s): " + " | ".join(errors),
        onnx_path,
    )


def timing_cache_file(base: Path, trt_version: str, cc: str, gpu_name: str = "") -> Path:
    """`base` with the TensorRT version, compute capability and GPU model in its name: TensorRT rejects a cache
    of another device (an H100's on an H200, both sm_90), and two such GPUs sharing a home folder would each
    reject and replace the other's at every build.

    `~/.cache/mde/tensorrt-timing.cache` -> `~/.cache/mde/tensorrt-timing-11.4.0.106-sm90-NVIDIA-H100.cache`.
    """
    base = Path(base).expanduser()
    model = re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-.")
    return base.with_name(f"{base.stem}-{trt_version}-sm{cc.replace('.', '')}{'-' + model if model else ''}"
                          f"{base.suffix}")


def attach_timing_cache(config: Any, path: Path) -> None:
    """Give `config` the timing cache stored at `path`, or an empty one when there is none or TensorRT rejects it.

    The stored cache is checked (`ignore_mismatch=False`); a rejected one is said in one log line.

    Raises:
        BackendError: TensorRT cannot create even an empty timing cache.
    """
    try:
        blob = path.read_bytes() if path.is_file() else b""
    except OSError as err:
        log.warning("cannot read the TensorRT timing cache %s (%s); starting from an empty cache", path, err)
        blob = b""
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        log.warning(
            "TensorRT rejected the timing cache %s (built by another TensorRT or GPU?); starting from an empty cache",
            path,
        )
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BackendError("TensorRT could not create an empty timing cache (see the TensorRT log above)")


def save_timing_cache(config: Any, path: Path) -> None:
    """Write `config`'s timing cache to `path`; a folder that cannot be written only costs time next build."""
    from mde.io import write_bytes_atomic

    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        write_bytes_atomic(path, bytes(cache.serialize()))
    except (OSError, InputError) as err:
        log.warning("could not save the TensorRT timing cache %s (%s)", path, err)


def onnx_metadata(onnx_path: Path, cfg: BuildConfig) -> dict[str, str]:
    """The ONNX's `mde.*` metadata props; `ModelError` unless its precision, size and dynamic H/W are `cfg`'s."""
    import onnx

    from mde.runtime.metadata import ModelMetadata, read_props

    props = read_props(onnx.load_model(str(onnx_path), load_external_data=False))
    meta = ModelMetadata.from_props(props, onnx_path)
    asked = (cfg.precision, tuple(cfg.input_size), cfg.dynamic_size)
    found = (meta.precision, tuple(meta.input_size), meta.dynamic_size)
    if asked != found:
        def fmt(precision: str, size: tuple[int, int], dynamic: bool) -> str:
            return f"{precision} {size[0]}x{size[1]}" + (" dynamic H/W" if dynamic else "")

        raise ModelError(f"the engine was asked for {fmt(*asked)}, but the ONNX is {fmt(*found)}", onnx_path)
    return props


def _build(trt: Any, onnx_path: Path, cfg: BuildConfig, shapes: dict[str, list[list[int]]],
           cache_path: Path) -> Any:
    """Parse `onnx_path`, set the profile and the timing cache, and build: the serialized engine."""
    from mde.runtime.backends.tensorrt import starting_tensorrt

    logger = trt.Logger(trt.Logger.WARNING)
    with starting_tensorrt(onnx_path):
        builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parse_onnx(trt, network, logger, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    # TF32 (on by default) would round FP32 layers' inputs to 10-bit mantissas: FP32 stays FP32, as typed
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        try:
            profile.set_shape(name, lo, opt, hi)
        except (RuntimeError, ValueError, TypeError) as err:  # TensorRT's own check of min <= opt <= max
            # (TensorRT 10's bindings raise RuntimeError: "Shape provided for min is inconsistent with other
            # shapes."; TensorRT 11's set_shape returns quietly and add_optimization_profile answers -1, below)
            raise InputError(f"TensorRT refused the profile of {name!r} (min {lo}, opt {opt}, max {hi}): {err}",
                             onnx_path) from None
    if config.add_optimization_profile(profile) < 0:
        raise InputError(f"TensorRT refused the optimization profile {shapes}", onnx_path)
    attach_timing_cache(config, cache_path)

    try:
        serialized = builder.build_serialized_network(network, config)
    finally:  # the tactics timed so far, even of a failed or stopped build: the next try starts from them
        save_timing_cache(config, cache_path)
    if serialized is None:
        raise CheckFailed("TensorRT failed to build the engine (see the TensorRT log above)", onnx_path)
    return serialized


def build_engine(onnx_path: Path, engine_path: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Build `engine_path` (plain serialized engine) and `engine_path`.json (sidecar) from `onnx_path`.

    Both files are written atomically. Returns the sidecar dict.
    """
    from mde.io import sha256_file, write_bytes_atomic, write_json_atomic
    from mde.runtime.backends.tensorrt import import_cudart, machine_platform, on_device, tensorrt_major

    props = onnx_metadata(onnx_path, cfg)
    trt_version, gpu_name, cc = require_tensorrt()
    import tensorrt as trt

    shapes = cfg.profile()
    cache = timing_cache_file(cfg.timing_cache or default_timing_cache(), trt_version, cc, gpu_name)
    # the builder builds on this thread's current device: make it the one the sidecar describes
    with on_device(import_cudart(), BUILD_DEVICE):
        serialized = _build(trt, onnx_path, cfg, shapes, cache)
    write_bytes_atomic(engine_path, bytes(serialized))

    sidecar = {
        "tensorrt_version": trt_version,
        "tensorrt_major": tensorrt_major(trt_version),
        "gpu_name": gpu_name,
        "compute_capability": cc,
        "platform": machine_platform(),
        "profile": {
            name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in shapes.items()
        },
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_file": Path(onnx_path).name,
        "build_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workspace_mib": cfg.workspace_mib,
        "metadata": props,  # mde.precision among them: the one record of the engine's precision
    }
    write_json_atomic(sidecar_path(engine_path), sidecar)
    return sidecar


def run_engine(engine_path: Path, image: np.ndarray) -> np.ndarray:
    """Run the engine on `image` with the runtime's TensorRT runner; return `depth`."""
    from mde.runtime.backends.tensorrt import TensorRTRunner

    with TensorRTRunner(engine_path) as runner:
        return runner.infer({INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})["depth"]


def engine_is_plain(engine_path: Path) -> bool:
    """True when the file is nothing but a serialized engine (no JSON prepended): TensorRT can read it."""
    with open(engine_path, "rb") as fh:
        head = fh.read(1)
    return os.path.getsize(engine_path) > 0 and head not in (b"{", b"[")
