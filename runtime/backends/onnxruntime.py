"""ONNX Runtime runner: providers picked for the machine, full graph optimization, one thread-safe session."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import BackendError, InputError, ModelError
from mde.runtime.backends.base import Runner, TensorSpec, register_backend
from mde.runtime.metadata import ModelMetadata

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)
GPU_EPS = (TRT_EP, CUDA_EP)

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def import_ort() -> Any:
    """Import onnxruntime or raise `BackendError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError(f"onnxruntime is not installed ({err}); pip install onnxruntime") from None
    return onnxruntime


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver sees (0 without a driver or GPU); no CUDA toolkit needed."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.lru_cache(maxsize=1)
def tensorrt_libs_present() -> bool:
    """Whether TensorRT's shared library can be loaded (what ORT's TensorRT EP needs)."""
    for name in ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def default_providers(available: Sequence[str]) -> list[str]:
    """TensorRT EP, then CUDA EP, then CPU: those built into ORT *and* usable on this machine.

    onnxruntime-gpu lists the GPU providers even where there is no GPU, so a GPU and
    (for the TensorRT EP) TensorRT's library are checked too.
    """
    usable = {CPU_EP}
    if cuda_device_count() > 0:
        usable.add(CUDA_EP)
        if tensorrt_libs_present():
            usable.add(TRT_EP)
    return [p for p in PREFERENCE if p in available and p in usable] or [CPU_EP]


def session_options(ort: Any, threads: int = 0, inter_op_threads: int = 0) -> Any:
    """SessionOptions: all graph optimizations, sequential execution, thread counts (0 = ORT default)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = int(inter_op_threads)
    opts.log_severity_level = 3  # errors only: provider fall-back notices are not user errors
    return opts


def _spec(node: Any) -> TensorSpec:
    dtype = ORT_DTYPES.get(node.type)
    if dtype is None:
        raise ModelError(f"unsupported tensor type {node.type} for {node.name!r}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
    return TensorSpec(node.name, np.dtype(dtype), shape)


@register_backend("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """Runs an `.onnx` file with ONNX Runtime.

    Args:
        path: the ONNX model (with `mde.*` metadata_props).
        providers: execution providers in order of preference; None picks them for this machine.
        threads: intra-op threads (0 = ONNX Runtime's default, one per physical core).
        inter_op_threads: inter-op threads (0 = default; execution is sequential).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        inter_op_threads: int = 0,
    ):
        super().__init__(path)
        if threads < 0 or inter_op_threads < 0:
            raise InputError(f"thread counts must be >= 0, got {threads} and {inter_op_threads}")
        self.requested_providers = None if providers is None else list(providers)
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self._session: Any = None
        self._use_io_binding = False

    def _activate_impl(self) -> None:
        ort = import_ort()
        available = ort.get_available_providers()
        if self.requested_providers is None:
            providers = default_providers(available)
        else:
            unknown = [p for p in self.requested_providers if p not in available]
            if unknown or not self.requested_providers:
                raise BackendError(
                    f"provider(s) {unknown or '[]'} not available; this onnxruntime has {available}"
                )
            providers = self.requested_providers
        opts = session_options(ort, self.threads, self.inter_op_threads)
        try:
            session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types for bad files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"cannot load ONNX model ({first[:300]})", self.path) from None
        props = session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, self.path)
        self.input_specs = {n.name: _spec(n) for n in session.get_inputs()}
        self.output_specs = {n.name: _spec(n) for n in session.get_outputs()}
        self._session = session
        self._use_io_binding = session.get_providers()[0] in GPU_EPS

    def _deactivate_impl(self) -> None:
        self._session = None

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, in priority order."""
        if self._session is not None:
            return list(self._session.get_providers())
        return list(self.requested_providers or [])

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; nothing here mutates the runner.
        names = list(self.output_specs)
        if self._use_io_binding:
            return self._infer_io_binding(feed, names)
        outputs = self._session.run(names, feed)
        return dict(zip(names, outputs))

    def _infer_io_binding(self, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """GPU path: inputs copied once, outputs left on the device until the final copy."""
        binding = self._session.io_binding()  # per call: no shared mutable state
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))


def read_onnx_metadata(path: str | Path) -> tuple[ModelMetadata, dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Metadata and I/O specs of an ONNX file via onnxruntime (CPU, no optimization)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=[CPU_EP])
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load ONNX model ({first[:300]})", path) from None
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, path)
    inputs = {n.name: _spec(n) for n in session.get_inputs()}
    outputs = {n.name: _spec(n) for n in session.get_outputs()}
    return meta, inputs, outputs
