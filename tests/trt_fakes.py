"""Hand-written stand-ins for `tensorrt` and cuda-python's runtime, for unit tests on machines without a GPU.

They record what the code asks for and behave like the real modules where the code depends
on it (return values, per-thread current device, `nptype` refusing BF16). Every name they offer
exists in the real bindings: tests/test_tensorrt_api.py checks them against the real TensorRT
10.x/11.x bindings and the installed cuda-bindings module, so they cannot drift.
"""

from __future__ import annotations

import ctypes
import enum
import operator
import threading
import types
from pathlib import Path

import numpy as np

FOREIGN_CACHE = b"FOREIGN"  # a timing cache that the fake TensorRT rejects, as one from another GPU


class Recorder:
    """The calls a fake saw, in order."""

    def __init__(self):
        self.calls: list[tuple] = []


def fake_tensorrt(
    rec: Recorder,
    version: str = "11.4.0.106",
    parse_ok: bool = True,
    build_ok: bool = True,
    output_dtype: str = "FLOAT",
) -> types.ModuleType:
    """A `tensorrt` module with the TensorRT 10/11 Python API surface that mde uses.

    Args:
        rec: receives the calls.
        version: `tensorrt.__version__`.
        parse_ok: the ONNX parser succeeds (else three errors).
        build_ok: `build_serialized_network` returns an engine (else None).
        output_dtype: the `DataType` member of the engine's output tensor.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        BF16 = 7

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1 if version.startswith("10.") else 0

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    def nptype(trt_type):
        mapping = {DataType.FLOAT: np.float32, DataType.HALF: np.float16}
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    class Logger:
        WARNING = 2

        def __init__(self, min_severity=2):
            pass

    class ITimingCache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self) -> bytes:
            return b"CACHE<" + self.blob + b">"

    class BuilderFlag(enum.IntEnum):
        TF32 = 2

    class IOptimizationProfile:
        def set_shape(self, input, min, opt, max):  # noqa: A002 - the real parameter names
            rec.calls.append(("set_shape", input, list(min), list(opt), list(max)))
            if not all(lo <= mid <= hi for lo, mid, hi in zip(min, opt, max)):  # the bindings' PY_ASSERT_RUNTIME_ERROR
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    class IBuilderConfig:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, pool_size):
            rec.calls.append(("set_memory_pool_limit", pool, pool_size))

        def clear_flag(self, flag):
            rec.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, serialized_timing_cache):
            rec.calls.append(("create_timing_cache", bytes(serialized_timing_cache)))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache", cache.blob, ignore_mismatch))
            if cache.blob.startswith(FOREIGN_CACHE) and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class INetworkDefinition:
        pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            rec.calls.append(("create_network", flags))
            return INetworkDefinition()

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return b"\x7fSERIALIZED-ENGINE" if build_ok else None

    class ParserError:
        def __init__(self, i):
            self.i = i

        def node_name(self):
            return f"node_conv_{self.i}"

        def node_operator(self):
            return "Conv"

        def node(self):
            return self.i

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

        def desc(self):
            return f"problem {self.i}"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 3

        def parse_from_file(self, model):
            rec.calls.append(("parse_from_file", Path(model).name))
            return parse_ok

        def get_error(self, index):
            return ParserError(index)

    tensors = {  # name -> (mode, dtype, shape); the "model" halves the channel mean
        "image": (TensorIOMode.INPUT, DataType.FLOAT, (-1, 3, 64, 64)),
        "depth": (TensorIOMode.OUTPUT, DataType[output_dtype], (-1, 1, 64, 64)),
    }

    class IExecutionContext:
        def __init__(self):
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n = self.shapes["image"][0]
            return (n, 1, 64, 64) if name == "depth" else self.shapes[name]

        def set_tensor_address(self, name, memory):
            self.addresses[name] = operator.index(memory)  # pybind11's int conversion: ints and __index__
            return True

        def execute_async_v3(self, stream_handle):
            rec.calls.append(("execute_async_v3", operator.index(stream_handle)))
            shape = self.shapes["image"]
            image = _view(self.addresses["image"], shape, np.float32)
            depth = _view(self.addresses["depth"], self.get_tensor_shape("depth"), np.float32)
            depth[:] = image.mean(axis=1, keepdims=True) / 2
            return True

    class ICudaEngine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, index):
            return list(tensors)[index]

        def get_tensor_mode(self, name):
            return tensors[name][0]

        def get_tensor_dtype(self, name):
            return tensors[name][1]

        def get_tensor_shape(self, name):
            return tensors[name][2]

        def get_tensor_profile_shape(self, name, profile_index):
            return [(1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)]

        def create_execution_context(self):
            return IExecutionContext()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            return ICudaEngine() if bytes(serialized_engine).startswith(b"\x7fSERIALIZED") else None

    for cls in (
        DataType, TensorIOMode, NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag, Logger, ITimingCache,
        IOptimizationProfile, IBuilderConfig, INetworkDefinition, Builder, ParserError, OnnxParser,
        IExecutionContext, ICudaEngine, Runtime,
    ):
        setattr(trt, cls.__name__, cls)
    trt.nptype = nptype
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
    return trt


def _view(address: int, shape: tuple, dtype: type) -> np.ndarray:
    """A numpy view of `shape` at host `address` (the fake's "device" memory is host memory)."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class FakeCudart:
    """cuda-python's runtime module: `(err, *values)` tuples, a current device per thread.

    "Device" memory is host memory, so copies and the fake engine really move the data.

    Args:
        devices: number of GPUs; 0 with `driver=False` is a machine without a driver.
        driver: False: every call fails with cudaErrorInsufficientDriver (35), as without a driver.
    """

    class cudaError_t(enum.IntEnum):  # noqa: N801 - the real name
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:  # noqa: N801
        def __init__(self, init_value: int = 0):
            self.value = init_value

        def __int__(self) -> int:
            return self.value

        __index__ = __int__  # as the real one: pybind11 takes it where an int is expected

    class cudaDeviceProp:  # noqa: N801
        def __init__(self):
            self.name, self.major, self.minor = b"Fake GPU\x00\x00", 9, 0

    # the fake's own state, not cudart API
    BOOKKEEPING = ("contexts", "devices", "driver", "local", "log", "memory", "streams")

    def __init__(self, devices: int = 2, driver: bool = True):
        self.devices, self.driver = devices, driver
        self.contexts: set[int] = set()  # devices with a primary context: since CUDA 12 cudaSetDevice makes one
        self.local = threading.local()
        self.log: list[tuple] = []  # (call, device current on the calling thread, value)
        self.memory: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self._next_stream = 1

    def _device(self) -> int:
        return getattr(self.local, "device", 0)

    def _fail(self) -> tuple | None:
        return None if self.driver else (self.cudaError_t.cudaErrorInsufficientDriver,)

    def cudaRuntimeGetVersion(self):  # noqa: N802 - the real names
        return self.cudaError_t.cudaSuccess, 13000

    def cudaGetDeviceCount(self):  # noqa: N802
        if not self.driver:
            return self.cudaError_t.cudaErrorInsufficientDriver, None
        return self.cudaError_t.cudaSuccess, self.devices

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        if not self.driver:
            return self.cudaError_t.cudaErrorInsufficientDriver, None
        return self.cudaError_t.cudaSuccess, self.cudaDeviceProp()

    def cudaGetDevice(self):  # noqa: N802
        if not self.driver:
            return self.cudaError_t.cudaErrorInsufficientDriver, None
        return self.cudaError_t.cudaSuccess, self._device()

    def cudaSetDevice(self, device):  # noqa: N802
        if not self.driver:
            return self._fail()
        if device >= self.devices:
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self.local.device = device
        self.contexts.add(device)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):  # noqa: N802
        stream = self.cudaStream_t(self._next_stream)
        self._next_stream += 1
        self.streams.add(int(stream))
        self.log.append(("cudaStreamCreate", self._device(), int(stream)))
        return self.cudaError_t.cudaSuccess, stream

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.discard(int(stream))
        self.log.append(("cudaStreamDestroy", self._device(), int(stream)))
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    def cudaMalloc(self, size):  # noqa: N802
        block = (ctypes.c_char * size)()
        ptr = ctypes.addressof(block)
        self.memory[ptr] = block
        self.contexts.add(self._device())  # work on the current device starts its context
        self.log.append(("cudaMalloc", self._device(), ptr))
        return self.cudaError_t.cudaSuccess, ptr

    def cudaFree(self, devPtr):  # noqa: N802, N803
        self.memory.pop(int(devPtr), None)
        self.log.append(("cudaFree", self._device(), int(devPtr)))
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        if int(stream) not in self.streams:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), count)
        return (self.cudaError_t.cudaSuccess,)


class FakeCudaDriver:
    """cuda-python's driver module, as far as the runner asks it: whether a device has its primary context
    (the `FakeCudart`'s `contexts`)."""

    class CUresult(enum.IntEnum):  # noqa: N801 - the real name
        CUDA_SUCCESS = 0
        CUDA_ERROR_NOT_INITIALIZED = 3

    BOOKKEEPING = ("cudart",)

    def __init__(self, cudart: FakeCudart):
        self.cudart = cudart

    def cuDevicePrimaryCtxGetState(self, dev):  # noqa: N802 - the real name
        if not self.cudart.driver:
            return self.CUresult.CUDA_ERROR_NOT_INITIALIZED, None, None
        return self.CUresult.CUDA_SUCCESS, 0, int(int(dev) in self.cudart.contexts)
