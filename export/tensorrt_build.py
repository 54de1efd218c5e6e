"""ONNX -> TensorRT 11 engine (strongly typed, profile, timing cache) + `model.engine.json`.

TensorRT 11 has no precision builder flags (BuilderFlag.FP16/INT8 and the INT8 calibrators
were removed) and every network is strongly typed; `NetworkDefinitionCreationFlag.STRONGLY_TYPED`
is deprecated and ignored there, and `EXPLICIT_BATCH` no longer exists. So precision comes
from the ONNX (FP16 casts, INT8 Q/DQ) and the network is created with no flags; on TensorRT 10
the STRONGLY_TYPED flag is set so the same code builds the same engine.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import BackendError, CheckFailed, InputError
from mde.runtime.backends.tensorrt import sidecar_path  # the one name of the sidecar contract
from mde.runtime.metadata import INPUT_NAME

INSTALL_HINT = "pip install 'mde[tensorrt]' (TensorRT 11 and cuda-python; needs an NVIDIA driver)"


@dataclass
class BuildConfig:
    """Engine build settings.

    Args:
        precision: recorded in the sidecar (the ONNX decides the actual types).
        input_size: (height, width) the model was exported for: the profile's opt size.
        min_batch: profile minimum batch.
        opt_batch: profile batch the tactics are tuned for.
        max_batch: profile maximum batch.
        dynamic_size: the ONNX has dynamic H/W: the profile spans min_size..max_size.
        min_size: smallest H and W (multiple of 32) with dynamic_size.
        max_size: largest H and W (multiple of 32) with dynamic_size.
        workspace_mib: the WORKSPACE memory-pool limit.
        timing_cache: timing cache file, read before and written after every build.
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
    timing_cache: Path = field(
        default_factory=lambda: Path.home() / ".cache" / "mde" / "tensorrt-timing.cache"
    )

    def profile(self) -> dict[str, list[list[int]]]:
        """{input name: [min, opt, max] shapes}."""
        h, w = self.input_size
        if self.dynamic_size:
            for value in (self.min_size, self.max_size):
                if value % 32:
                    raise InputError(f"profile sizes must be multiples of 32, got {value}")
            if not self.min_size <= min(h, w) <= max(h, w) <= self.max_size:
                raise InputError(
                    f"profile sizes {self.min_size}..{self.max_size} must contain the model size {h}x{w}"
                )
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
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendError(
            f"--engine needs TensorRT, which is not installed ({err}); {INSTALL_HINT}"
        ) from None
    from mde.runtime.backends.tensorrt import gpu_info, import_cudart

    try:
        cudart = import_cudart()
    except BackendError as err:
        raise BackendError(f"--engine needs cuda-python to find the GPU: {err}") from None
    try:
        name, cc = gpu_info(cudart, 0)
    except BackendError as err:
        raise BackendError(
            f"--engine needs a CUDA GPU and none was found ({err}); TensorRT "
            "engines are built on the GPU they run on"
        ) from None
    return str(trt.__version__), name, cc


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    """Parse `onnx_path` into `network`; raise `CheckFailed` listing EVERY parser error with its node."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = []
        for attr in ("node_name", "node_operator"):
            getter = getattr(error, attr, None)
            value = getter() if callable(getter) else None
            if value:
                where.append(str(value))
        node = error.node() if callable(getattr(error, "node", None)) else -1
        where.append(f"node #{node}")
        errors.append(f"[{' '.join(where)}] {error.code()}: {error.desc()}")
    raise CheckFailed(
        f"TensorRT's ONNX parser failed with {len(errors)} error(s): " + " | ".join(errors),
        onnx_path,
    )


def build_engine(onnx_path: Path, engine_path: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Build `engine_path` (plain serialized engine) and `engine_path`.json (sidecar) from `onnx_path`.

    Both files are written atomically. Returns the sidecar dict.
    """
    import onnx
    import tensorrt as trt

    from mde.io import sha256_file, write_bytes_atomic, write_json_atomic

    trt_version, gpu_name, cc = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11 and hasattr(
        trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"
    ):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parse_onnx(trt, network, logger, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    shapes = cfg.profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_path = Path(cfg.timing_cache).expanduser()
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=True)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailed(
            "TensorRT failed to build the engine (see the TensorRT log above)", onnx_path
        )
    write_bytes_atomic(engine_path, bytes(serialized))
    try:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    except (OSError, InputError):
        pass  # a read-only cache folder only costs build time next time

    props = {
        p.key: p.value
        for p in onnx.load_model(str(onnx_path), load_external_data=False).metadata_props
        if p.key.startswith("mde.")
    }
    sidecar = {
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": cc,
        "profile": {
            name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in shapes.items()
        },
        "precision": cfg.precision,
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_file": Path(onnx_path).name,
        "build_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workspace_mib": cfg.workspace_mib,
        "metadata": props,
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
