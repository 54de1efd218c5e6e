"""TensorRT runner (TensorRT 10.3+ / 11 Python API + cuda-python): sidecar check, then deserialize and run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import BackendError, InputError, ModelError, OutOfMemory
from mde.io import parse_json, read_small_text
from mde.runtime.backends.base import Runner, TensorSpec, providers_refused, register_backend
from mde.runtime.metadata import ModelMetadata, sidecar_path

log = logging.getLogger(__name__)

INSTALL_HINT = ("in the mde checkout: pip install -e '.[tensorrt]' (beside PyPI's CUDA 13 PyTorch: "
                "'.[tensorrt-cu13]'; on a Jetson: JetPack's own TensorRT, see the README)")
MIN_TENSORRT = (10, 3)
SIDECAR_KEYS = ("tensorrt_version", "compute_capability", "profile", "metadata")
# cudaError_t values that mean "this machine cannot run CUDA at all", and what to tell the user.
CUDA_MISSING = {
    34: "the CUDA driver found is a stub (a CUDA toolkit's lib64/stubs/libcuda.so on LD_LIBRARY_PATH?); put the "
    "NVIDIA driver's libcuda.so first, or take the stubs folder off the path",
    35: "no NVIDIA driver, or one older than {needs} (on an older driver use the cuda-python of its CUDA major)",
    100: "no CUDA GPU",
    101: "no such CUDA device",
}
CUDA_OUT_OF_MEMORY = 2  # cudaErrorMemoryAllocation


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """Load and check the engine's JSON sidecar; `ModelError` naming it when missing or malformed."""
    path = sidecar_path(engine)
    if not path.is_file():
        if os.path.lexists(path):  # a folder, a FIFO, a broken link: there, but no file to read
            raise ModelError("engine sidecar is not a readable file (a folder, a FIFO or a broken link?)", path)
        raise ModelError(f"engine sidecar {path.name} not found (written by `mde export --engine`)", path)
    try:
        sidecar = parse_json(read_small_text(path))
    except (OSError, ValueError) as err:
        raise ModelError(f"unreadable engine sidecar ({err})", path) from None
    if not isinstance(sidecar, dict):
        raise ModelError("engine sidecar must be a JSON object", path)
    missing = [key for key in SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise ModelError(f"engine sidecar lacks {', '.join(missing)}", path)
    expected = {"tensorrt_version": str, "compute_capability": str, "profile": dict, "metadata": dict}
    wrong = [f"{key} ({type(sidecar[key]).__name__}, expected {kind.__name__})" for key, kind in expected.items()
             if not isinstance(sidecar[key], kind)]
    wrong += [f"{key} (empty)" for key in ("tensorrt_version", "compute_capability") if sidecar[key] == ""]
    wrong += [f"profile of {name!r} (expected {{\"min\", \"opt\", \"max\"}} lists of whole numbers, "
              "min <= opt <= max)"
              for name, shapes in (sidecar["profile"] if isinstance(sidecar["profile"], dict) else {}).items()
              if not _profile_entry(shapes)]
    if isinstance(sidecar["tensorrt_version"], str) and sidecar["tensorrt_version"] and not version_numbers(
            sidecar["tensorrt_version"]):
        wrong.append(f"tensorrt_version ({sidecar['tensorrt_version'][:40]!r}, expected a version like 10.3.0)")
    if wrong:
        raise ModelError(f"engine sidecar has a malformed {', '.join(wrong)}", path)
    sidecar_major(sidecar, path)  # a tensorrt_major that is no integer: refused here, not shown as if valid
    return sidecar


def _profile_entry(shapes: Any) -> bool:
    """Whether a sidecar profile entry is {"min", "opt", "max"}: shapes of equal length, whole numbers >= 0."""
    if not isinstance(shapes, dict) or not all(isinstance(shapes.get(k), list) for k in ("min", "opt", "max")):
        return False
    dims = [shapes[k] for k in ("min", "opt", "max")]
    return len({len(d) for d in dims}) == 1 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for d in dims for v in d) and all(
        lo <= opt <= hi for lo, opt, hi in zip(*dims))


def sidecar_metadata(sidecar: dict[str, Any], source: str | Path) -> ModelMetadata:
    """The `mde.*` metadata stored in a sidecar (same JSON strings as the ONNX props)."""
    props = {key: _as_json_text(key, value) for key, value in sidecar["metadata"].items()}
    return ModelMetadata.from_props(props, source)


# The metadata keys whose values are JSON objects; the others (mde.version, mde.precision) are strings.
OBJECT_KEYS = ("mde.preprocess", "mde.output", "mde.model", "mde.source", "mde.metrics", "mde.calibration")


def _as_json_text(key: str, value: Any) -> str:
    """A sidecar metadata value as the JSON text an ONNX prop holds. `mde export` writes that text; a person
    may write the value itself: an object, or a plain string (`"fp16"`, `"1.10"` stays "1.10")."""
    if not isinstance(value, str):
        return json.dumps(value)
    if key in OBJECT_KEYS or value.startswith('"'):  # already JSON text
        return value
    return json.dumps(value)


def version_numbers(version: str) -> tuple[int, ...]:
    """The leading numeric parts of a version string: "10.3.0.30" -> (10, 3, 0, 30), "11.0rc1" -> (11,)."""
    numbers = []
    for part in str(version).split("."):
        if not part.isdecimal() or not part.isascii():
            break
        numbers.append(int(part))
    return tuple(numbers)


def tensorrt_major(version: str) -> int:
    """The major of a TensorRT version ("10.3.0.30" -> 10); `BackendError` when it does not start with one."""
    numbers = version_numbers(version)
    if not numbers:
        raise BackendError(f"cannot read a TensorRT major version from {version!r}")
    return numbers[0]


def sidecar_major(sidecar: dict[str, Any], source: str | Path = "engine") -> int:
    """The TensorRT major that built the engine: `tensorrt_major`, or from `tensorrt_version` in older sidecars."""
    major = sidecar.get("tensorrt_major")
    if major is None:
        try:
            return tensorrt_major(sidecar.get("tensorrt_version", "?"))
        except BackendError as err:
            raise ModelError(f"malformed engine sidecar: {err}", source) from None
    if not isinstance(major, int) or isinstance(major, bool):
        raise ModelError(f"malformed engine sidecar: tensorrt_major must be an integer, got {major!r}", source)
    return major


def machine_platform() -> str:
    """This machine's operating system and CPU architecture, as the sidecar records them ("linux-x86_64")."""
    return f"{platform.system().lower()}-{platform.machine().lower()}"


def check_sidecar(
    sidecar: dict[str, Any],
    installed_version: str,
    compute_capability: str,
    gpu_name: str = "",
    source: str | Path = "engine",
    here_platform: str | None = None,
) -> None:
    """Raise `BackendError` unless the engine was built by this TensorRT for this GPU architecture, on a
    machine of this operating system and CPU architecture (engines are not portable across platforms: an
    x86-64 H100's engine does not load on an Arm GH200, both sm_90).

    Pure: no TensorRT or GPU needed, so it is tested everywhere.

    Args:
        sidecar: the engine's `model.engine.json` (one written before `platform` was recorded is not
            checked for it).
        installed_version: `tensorrt.__version__` here.
        compute_capability: this GPU's, as "major.minor" (e.g. "8.7").
        gpu_name: this GPU's name, for the message.
        source: the engine path, for the message.
        here_platform: this machine's `machine_platform()` (the default).
    """
    built_platform = sidecar.get("platform")
    here_platform = here_platform or machine_platform()
    if isinstance(built_platform, str) and built_platform and built_platform != here_platform:
        raise BackendError(f"engine built on {built_platform}, and this machine is {here_platform}: TensorRT engines "
                           "do not move between operating systems or CPU architectures. Rebuild it here with `mde "
                           "export --engine`, or run the .onnx with --backend onnxruntime", source)
    built_version = str(sidecar.get("tensorrt_version", "?"))
    built_major = sidecar_major(sidecar, source)
    here_major = tensorrt_major(installed_version)
    built_cc = str(sidecar.get("compute_capability", "?"))
    here_gpu = f" ({gpu_name})" if gpu_name else ""
    built_gpu = sidecar.get("gpu_name") or "unknown GPU"
    rebuild = "Rebuild it here with `mde export --engine`, or run the .onnx with --backend onnxruntime"

    def sm(cc: object) -> str:
        return "sm_" + str(cc).replace(".", "")

    if built_major != here_major:
        raise BackendError(
            f"engine built by TensorRT {built_major} ({built_version}, {sm(built_cc)}, {built_gpu}), but this "
            f"machine has TensorRT {here_major} ({installed_version}, {sm(compute_capability)}{here_gpu}); "
            f"TensorRT {here_major} cannot load a TensorRT {built_major} engine. {rebuild}",
            source,
        )
    # Engines are tied to TensorRT's major.minor.patch ("11.0.1.5" -> "11.0.1", compared as written, so
    # "11.0rc1" and "11.1rc1" differ) and to the GPU architecture.
    if built_version.split(".")[:3] == str(installed_version).split(".")[:3] and built_cc == str(compute_capability):
        if gpu_name and sidecar.get("gpu_name") and sidecar["gpu_name"] != gpu_name:  # an H100's engine on an H200
            log.warning("%s: engine built on %s, running on %s (both %s): TensorRT runs it, with tactics timed on "
                        "the other GPU; rebuild it here (`mde export --engine`) for this one's best speed",
                        source, built_gpu, gpu_name, sm(built_cc))
        return
    raise BackendError(
        f"engine built with TensorRT {built_version} for {sm(built_cc)} ({built_gpu}); "
        f"this machine has TensorRT {installed_version} / {sm(compute_capability)}{here_gpu}. {rebuild}",
        source,
    )


def import_tensorrt() -> Any:
    """The `tensorrt` module; `BackendError` when it is missing or older than TensorRT 10.3."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendError(f"TensorRT is not installed ({err}); {INSTALL_HINT}") from None
    version = str(tensorrt.__version__)
    found = version_numbers(version)[:2]
    if len(found) < 2 or found < MIN_TENSORRT:
        raise BackendError(
            f"TensorRT {version} is too old: mde needs TensorRT {'.'.join(map(str, MIN_TENSORRT))} or newer "
            f"(JetPack 6.1+ on a Jetson); {INSTALL_HINT}"
        )
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings (new `cuda.bindings.runtime`, or the older `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise BackendError(f"cuda-python is not installed ({err}); {INSTALL_HINT}") from None
    return cudart


def _cuda_runtime_version(cudart: Any) -> str:
    """The version ("13.0") of the CUDA runtime inside cuda-python (asking needs no driver); "?" when unknown."""
    try:
        err, version = cudart.cudaRuntimeGetVersion()
    except (AttributeError, TypeError, ValueError):
        return "?"
    return f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else "?"


def _check(result: Any, what: str, cudart: Any = None) -> Any:
    """Unpack a cuda-python `(err, *values)` tuple; raise `BackendError` on a CUDA error.

    A driver or GPU that is missing altogether is said in words, not only as an error number.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(err)
    if code != 0:
        name = getattr(err, "name", str(err))
        if code in CUDA_MISSING:
            runtime = _cuda_runtime_version(cudart) if cudart is not None else "?"
            needs = ("the CUDA runtime inside cuda-python" if runtime == "?" else  # any driver of its major will do
                     f"CUDA {runtime.split('.')[0]}.0, which the CUDA {runtime} runtime inside cuda-python needs")
            reason = CUDA_MISSING[code].format(needs=needs)
            raise BackendError(f"TensorRT needs a CUDA GPU: {reason} ({what}: {name}, CUDA error {code})")
        if code == CUDA_OUT_OF_MEMORY:  # a larger frame on a dynamic engine, say: the input's size, not the engine
            raise OutOfMemory(f"out of memory on the GPU: CUDA error in {what}: {name} ({code})")
        raise BackendError(f"CUDA error in {what}: {name} ({code})")
    return values[0] if len(values) == 1 else values


def import_cuda_driver() -> Any:
    """cuda-python's driver bindings, or None where this cuda-python has none under that name."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    return driver


def primary_context_active(device: int) -> bool:
    """Whether CUDA device `device` has its primary context in this process already; True when the driver
    cannot say (then the caller's device is given back as before)."""
    driver = import_cuda_driver()
    if driver is None:
        return True
    try:
        err, _flags, active = driver.cuDevicePrimaryCtxGetState(device)
    except (AttributeError, TypeError, ValueError, RuntimeError, OSError):
        return True
    return int(err) != 0 or bool(active)


@contextlib.contextmanager
def on_device(cudart: Any, device: int) -> Iterator[None]:
    """Make CUDA device `device` current on this thread for the block, then give back the one that was.

    The current device is per thread and shared with whatever else the caller runs (PyTorch
    among them), so a runner must not leave its own device selected behind it. A device that nothing in
    this process has used yet (GPU 0, which `cudaGetDevice` names before any choice) is not chosen again
    on the way out: since CUDA 12 choosing a device creates its context at once, hundreds of MiB on a
    GPU the process never runs on (PyTorch's device guard skips it for the same reason).
    """
    previous = _check(cudart.cudaGetDevice(), "cudaGetDevice", cudart)
    if previous != device:
        _check(cudart.cudaSetDevice(device), "cudaSetDevice", cudart)
    try:
        yield
    finally:
        if previous != device and primary_context_active(previous):
            cudart.cudaSetDevice(previous)


@contextlib.contextmanager
def starting_tensorrt(source: str | Path) -> Iterator[None]:
    """Around `trt.Builder(logger)` or `trt.Runtime(logger)` alone: where TensorRT cannot start on this GPU the
    bindings raise a bare TypeError ("factory function returned nullptr"), said here as `BackendError` naming
    `source`."""
    try:
        yield
    except TypeError as err:
        raise BackendError(f"TensorRT could not start on this GPU ({err}; the TensorRT log above says why: a "
                           "driver older than this TensorRT's CUDA, or a GPU in prohibited compute mode?)",
                           source) from None


def gpu_info(cudart: Any, device: int = 0) -> tuple[str, str]:
    """(name, "major.minor") of CUDA device `device`."""
    count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", cudart)
    if count <= device:
        raise BackendError(f"no CUDA GPU {device} on this machine (found {count}); TensorRT needs one")
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", cudart)
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return name, f"{props.major}.{props.minor}"


def tensor_dtype(trt: Any, engine: Any, name: str, source: Path) -> np.dtype:
    """The numpy dtype of engine tensor `name`; `ModelError` for types numpy lacks (BF16, FP8, FP4, INT4)."""
    dtype = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise ModelError(
            f"engine tensor {name!r} is {getattr(dtype, 'name', dtype)}, which has no numpy type; "
            "export the model with FP32 inputs and outputs (FP16/INT8 compute inside)",
            source,
        ) from None


@register_backend("tensorrt")
class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (`.engine` + `.engine.json` sidecar) on CUDA device `device`.

    One execution context per runner; calls are serialized by a lock (a TensorRT context
    is not thread-safe), and each call selects `device` on its own thread first (the
    current CUDA device is per thread). Device buffers grow on demand and are reused.
    """

    def __init__(self, path: str | Path, device: int = 0, threads: int = 0, providers: Sequence[str] | None = None):
        # `threads` (CPU threads of ONNX Runtime and PyTorch) is taken and unused, so one `mde bench --threads` times
        # engines beside ONNX models; ONNX Runtime's providers would be a silent run elsewhere: refused.
        if providers is not None:
            raise providers_refused(path, "tensorrt")
        super().__init__(path)
        self.device = device
        self.sidecar: dict[str, Any] = {}
        self.profile: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None

    def _activate_impl(self) -> None:
        self.sidecar = read_sidecar(self.path)
        self.metadata = sidecar_metadata(self.sidecar, sidecar_path(self.path))
        try:
            trt, cudart = import_tensorrt(), import_cudart()
            gpu_name, cc = gpu_info(cudart, self.device)
        except BackendError as err:  # name the engine the user asked to run
            raise BackendError(str(err), self.path) from None
        check_sidecar(self.sidecar, trt.__version__, cc, gpu_name, self.path)
        self._cudart = cudart
        try:
            self._open(trt, cudart)
        except BaseException:
            self._release()
            raise

    def _open(self, trt: Any, cudart: Any) -> None:
        """Deserialize the engine, read its I/O tensors, create the context and the stream (on `device`)."""
        with on_device(cudart, self.device):
            self._open_on_device(trt, cudart)

    def _open_on_device(self, trt: Any, cudart: Any) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        with starting_tensorrt(self.path):
            runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ModelError("TensorRT could not deserialize the engine (truncated or corrupt?)", self.path)
        self._trt, self._engine = trt, engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = tensor_dtype(trt, engine, name, self.path)
            shape = tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, shape)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_specs[name] = spec
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                self.profile[name] = (tuple(lo), tuple(opt), tuple(hi))
            else:
                self.output_specs[name] = spec
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError("could not create a TensorRT execution context (GPU memory?)", self.path)
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate", cudart)

    def max_batch(self) -> int | None:
        name = next(iter(self.input_specs))
        return int(self.profile[name][2][0]) if name in self.profile else super().max_batch()

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        super().check_feed(feed)
        for name, (lo, _, hi) in self.profile.items():
            shape = feed[name].shape
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise InputError(
                    f"input {name!r}: shape {tuple(shape)} is outside the engine's profile "
                    f"(min {tuple(lo)}, max {tuple(hi)})",
                    self.path,
                )

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                del self._buffers[name]  # forgotten even when the free fails: never freed twice
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._context is None:  # a `deactivate` from another thread got the lock first
                raise self.not_active()
            # the current device is per thread: this call may come from a thread that never chose it
            with on_device(self._cudart, self.device):
                return self._run(feed)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference on the current device, under the lock: copy in, execute, copy out, synchronize."""
        cudart, ctx, stream = self._cudart, self._context, self._stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {}
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            hosts[name] = array  # keep alive until the stream is synchronized
            if not ctx.set_input_shape(name, tuple(int(d) for d in array.shape)):
                raise InputError(f"TensorRT rejected shape {array.shape} for {name!r}", self.path)
            ptr = self._buffer(name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, stream), "copy in")
            ctx.set_tensor_address(name, ptr)
        outputs = {}
        for name, spec in self.output_specs.items():
            out = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=spec.dtype)
            ptr = self._buffer(name, max(out.nbytes, 1))
            ctx.set_tensor_address(name, ptr)
            outputs[name] = out
        if not ctx.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execution failed", self.path)
        for name, out in outputs.items():
            ptr = self._buffers[name][0]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, stream), "copy out")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return outputs

    def _deactivate_impl(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        """Free the buffers and the stream on this runner's device, then drop the context and engine."""
        cudart = self._cudart
        if cudart is not None:
            try:  # the thread that deactivates may have another device current
                with on_device(cudart, self.device):
                    self._free_all(cudart)
            except BackendError:  # the device could not be chosen: free anyway, best effort
                self._free_all(cudart)
        self._buffers.clear()
        self._context = self._engine = self._stream = None

    def _free_all(self, cudart: Any) -> None:
        """Free every buffer and the stream; CUDA's answers are not checked (closing never raises)."""
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)

    @property
    def providers(self) -> list[str]:
        version = self.sidecar.get("tensorrt_version", "?")
        return [f"TensorRT {version}"]


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)
