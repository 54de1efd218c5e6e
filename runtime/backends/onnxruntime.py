"""ONNX Runtime: the one place mde opens a session (providers checked by `ort_providers`), and its runner.

Every ONNX Runtime session in mde — the runner, export's self-check, metadata reads, the
calibration fallback, the benchmarks — comes from `create_session`, so the provider rules live
here once: the providers asked for are compared with the ones the session really uses; a GPU
provider that did not load is a warning (providers chosen automatically) or an error (providers
named by the user), never a silent CPU run; nothing ONNX Runtime prints reaches stdout.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import BackendError, InputError, MdeError, ModelError, OutOfMemory, allocation_failed
from mde.io import is_utf8, sha256_file, user_cache_dir
from mde.printed import printed_by_this_thread
from mde.runtime.backends import ort_providers as eps
from mde.runtime.backends.base import Runner, TensorSpec, register_backend
from mde.runtime.backends.ort_providers import (  # noqa: F401 - the names callers import from here too
    CPU_EP,
    CUDA_EP,
    GPU_EPS,
    PREFERENCE,
    TRT_EP,
    import_ort,
)
from mde.runtime.metadata import ModelMetadata

log = logging.getLogger(__name__)
ORT_ERROR, ORT_FATAL = 3, 4  # ONNX Runtime's log severities

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


def tensorrt_provider_options(model: str | Path | bytes, cache_dir: Path | None = None) -> dict[str, str]:
    """TensorRT EP options: engine and timing caches on disk, so a session start does not rebuild engines. Each
    model has a folder of its own (by default under mde's `user_cache_dir`), named by its content: ONNX Runtime
    keys a cached engine by the file's name and its tensors' names, never its weights, so every re-export's
    `model.onnx` would have loaded the first one's engine. The folder is made here: the provider makes one level
    only, and failed on a new home's missing ~/.cache/mde."""
    content = hashlib.sha256(model).hexdigest() if isinstance(model, bytes) else sha256_file(model)
    folder = (cache_dir or user_cache_dir() / "ort-tensorrt").expanduser() / content[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BackendError(f"cannot make the TensorRT engine cache folder ({err.strerror or err})", folder) from None
    path = str(folder)
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": path,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": path,
    }


def cuda_provider_options(allow_tf32: bool = False) -> dict[str, str]:
    """CUDA EP options: FP32 math in FP32, not TF32, unless `allow_tf32`.

    ONNX Runtime's default lets FP32 convolutions run in TF32 on Ampere and later (10-bit
    mantissas): an FP32 artifact would no longer compute what its name says, nor match PyTorch
    within the FP32 tolerance. A graph that computes in FP16 has no FP32 convolution for TF32 to
    change, and there `use_tf32=0` costs: on an H100 (onnxruntime-gpu 1.31.1) the FP16 artifact
    ran 1.7x slower at batch 8 with it, and cuDNN's frontend logged "No execution plans support
    the graph" for every fused convolution (README "GPU check"). So FP16 artifacts allow it.
    """
    return {"use_tf32": "1" if allow_tf32 else "0"}


def session_options(
    ort: Any,
    threads: int = 0,
    inter_op_threads: int = 0,
    optimization: str = "all",
    optimized_model_path: str | Path | None = None,
) -> Any:
    """SessionOptions: graph optimization level, sequential execution, thread counts (0 = ORT default)."""
    levels = ort.GraphOptimizationLevel
    level = {"disable": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
             "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL}
    if optimization not in level:
        raise InputError(f"unknown optimization level {optimization!r}; choose from {', '.join(level)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = int(inter_op_threads)
    # Fatal only: a session's failures (a model that does not load or run) are raised as well as logged, and mde
    # says them in one line; the log (colour codes, C++ source lines) stood above that line. --verbose shows it.
    # (A provider library that fails to load logs through ONNX Runtime's default logger, which this leaves alone.)
    opts.log_severity_level = ORT_ERROR if log.isEnabledFor(logging.DEBUG) else ORT_FATAL
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


def create_session(
    model: str | Path | bytes,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    inter_op_threads: int = 0,
    optimization: str = "all",
    optimized_model_path: str | Path | None = None,
    source: str | Path | None = None,
    allow_tf32: bool = False,
) -> Any:
    """Open an ONNX Runtime session on `model` (a file or serialized bytes): the one way mde does it.

    Args:
        model: the ONNX file, or the bytes of a serialized ModelProto.
        providers: providers in order of preference; None picks them for this machine (`default_providers`).
        threads: intra-op threads (0 = ONNX Runtime's default).
        inter_op_threads: inter-op threads (0 = default).
        optimization: graph optimization level: disable, basic, extended or all.
        optimized_model_path: where ONNX Runtime writes the graph it actually runs (None: nowhere).
        source: the name used in messages (default: `model` when it is a path).
        allow_tf32: let the CUDA provider use TF32 (`cuda_provider_options`): for graphs that compute in FP16.

    Raises:
        BackendError: a named provider is unknown to this onnxruntime or did not load.
        ModelError: ONNX Runtime cannot load the model.
    """
    ort = import_ort()
    source = source if source is not None else (None if isinstance(model, bytes) else model)
    available = ort.get_available_providers()
    explicit = providers is not None
    if explicit:
        if not providers:
            raise BackendError(f"providers is an empty list; name one or more of {available}, or give None "
                               "for this machine's", source)
        if not all(isinstance(p, str) for p in providers):  # ONNX Runtime's (name, options) pairs
            raise BackendError(f"expected provider names (strings), got {list(providers)!r}", source)
        twice = next((p for p in providers if list(providers).count(p) > 1), None)
        if twice is not None:  # ONNX Runtime warns of it in a Python warning with its own source line
            raise BackendError(f"provider {twice} given twice; name each once, in order of preference", source)
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise BackendError(f"provider(s) {unknown} not available; this onnxruntime has {available}", source)
        problems = [f"{p} cannot run here ({eps.provider_problem(p)})" for p in providers if eps.provider_problem(p)]
        if problems:
            raise BackendError("; ".join(problems), source)
        wanted = list(providers)
    else:
        wanted = eps.default_providers(available)
    if any(p in GPU_EPS for p in wanted):
        eps.preload_gpu_libraries()
    opts = session_options(ort, threads, inter_op_threads, optimization, optimized_model_path)
    options = {CUDA_EP: cuda_provider_options(allow_tf32)}
    if TRT_EP in wanted:  # its cache folder is looked for only where it is used
        options[TRT_EP] = tensorrt_provider_options(model)
    if not isinstance(model, bytes) and not is_utf8(model):  # ONNX Runtime takes a path as UTF-8 text only
        raise ModelError("ONNX Runtime cannot open a file whose path is not UTF-8 text; rename it (or the "
                         "folder above it that is not)", source)

    def open_on(chosen: list[str]) -> tuple[Any, str]:
        # ORT's own fallback is off: it retried with every provider's options dropped, so a CUDA provider
        # after a TensorRT one that failed to start lost use_tf32=0 and ran FP32 models in TF32
        args = [(p, options[p]) if p in options else p for p in chosen]
        with printed_by_this_thread() as printed:  # ORT prints "EP Error ..." on stdout
            session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                           providers=args, enable_fallback=0)
        return session, printed.getvalue()

    chosen = list(wanted)
    while True:
        try:
            session, printed = open_on(chosen)
            break
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types for bad files
            reason = ort_reason(err)
            failed = next((p for p in chosen if p in GPU_EPS), None)
            if failed is None and allocation_failed(err):  # the machine's memory, not the model
                raise OutOfMemory(f"out of memory loading the model in ONNX Runtime ({reason})", source) from None
            if failed is None:
                raise ModelError(f"cannot load ONNX model ({reason})", source) from None
            if explicit:  # the provider named, or the model: the CPU tells them apart
                try:
                    open_on([CPU_EP])
                except Exception:  # noqa: BLE001
                    raise ModelError(f"cannot load ONNX model ({reason})", source) from None
                raise BackendError(f"{failed} did not start with this model ({reason})", source) from None
            chosen = [p for p in chosen if p != failed]  # this machine's choice: the next one, and say so
            log.warning("%s: %s did not start (%s); trying %s", source if source is not None else "onnxruntime",
                        failed, reason, chosen[0])
    check_providers(chosen, session.get_providers(), explicit, printed, source)
    return session


def ort_reason(err: Exception) -> str:
    """An ONNX Runtime error's first line, for a message: without the C++ frames before its reason
    (`/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(args) `, `tensorprotoutils.cc:1876 GetExtData `,
    `bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) `),
    and shortened where long."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    frame = r"(?:/\S+/)?[\w.]+\.(?:cc|cpp|h):\d+ "  # where: `/onnxruntime_src/.../bfc_arena.cc:360 `
    # a function: its return type's words (`void* `, `virtual onnxruntime::common::Status `, a template's), its name and
    # parameters, `const`, a template's `[with ...]`; or a bare name (`GetExtData `)
    name = r"(?:(?:[\w:<>,*&]+ )*?[\w:~<>]+\([^()]*\)(?: const)?(?: \[with [^\]]*\])?|[\w:~]+) "
    first = re.sub(frame + name, " ", first)
    first = re.sub(r"\s{2,}", " ", first).strip()  # where a frame stood
    if len(first) > 300:  # ORT's reason comes last, after the C++ frame it was raised in
        first = f"{first[:100]} ... {first[-180:]}"
    return first


def check_providers(
    wanted: Sequence[str], used: Sequence[str], explicit: bool, printed: str = "", source: str | Path | None = None
) -> None:
    """Compare the providers asked for with those the session uses: an error when the user named them, else a warning.

    Raises:
        BackendError: a provider named by the user did not load (never a silent CPU run).
    """
    lost = [p for p in wanted if p not in used]
    if not lost:
        return
    reasons = []
    for provider in lost:
        reason = eps.provider_problem(provider) or _ep_error(printed) or "see ONNX Runtime's log above"
        reasons.append(f"{provider} did not load ({reason})")
    message = f"{'; '.join(reasons)}; running on {', '.join(used)}"
    if explicit:
        raise BackendError(message, source)
    log.warning("%s: %s", source if source is not None else "onnxruntime", message)


def _ep_error(printed: str) -> str:
    """The first "EP Error" line ONNX Runtime printed while falling back, shortened."""
    for line in printed.splitlines():
        if "EP Error" in line and "****" not in line:
            return line.split("EP Error", 1)[1].strip(" :")[:300]
    return ""


Specs = dict[str, TensorSpec]


def _spec(node: Any, source: str | Path) -> TensorSpec:
    dtype = ORT_DTYPES.get(node.type)
    if dtype is None:
        raise ModelError(f"unsupported tensor type {node.type} for {node.name!r}", source)
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
    return TensorSpec(node.name, np.dtype(dtype), shape)


def describe_session(session: Any, source: str | Path) -> tuple[ModelMetadata, Specs, Specs]:
    """The `mde.*` metadata and the input/output specs of an open session."""
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source)
    inputs = {n.name: _spec(n, source) for n in session.get_inputs()}
    outputs = {n.name: _spec(n, source) for n in session.get_outputs()}
    return meta, inputs, outputs


def max_threads() -> int:
    """The most threads a run may ask for: 4 per CPU (more only oversubscribes; 100000 hung at start-up)."""
    return 4 * (os.cpu_count() or 1)


def check_threads_option(threads: int) -> None:
    """A command's `--threads`, refused in its own words before any model loads."""
    if not 0 <= threads <= max_threads():
        raise InputError(f"--threads must be in 0..{max_threads()} (0: ONNX Runtime's default; at most 4 per CPU "
                         f"here), got {threads}")


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
        for name, count in (("threads", threads), ("inter_op_threads", inter_op_threads)):
            if not (isinstance(count, numbers.Integral) and not isinstance(count, bool)
                    and 0 <= count <= max_threads()):
                raise InputError(f"{name} must be an integer 0..{max_threads()} (0: ONNX Runtime's default; at most "
                                 f"4 per CPU here), got {count!r}")
        if isinstance(providers, str):  # one provider's name, not its letters
            providers = [providers]
        self.requested_providers = None if providers is None else list(providers)
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self._session: Any = None
        self.uses_io_binding = False  # GPU providers: inputs copied once, outputs kept on the device
        self._last_pixels = 0  # N x H x W of the last run (`_run_options`); 0: the exported size, as far as it goes

    def _activate_impl(self) -> None:
        session = create_session(
            self.path, providers=self.requested_providers, threads=self.threads,
            inter_op_threads=self.inter_op_threads, allow_tf32=self._computes_in_fp16(),
        )
        self.metadata, self.input_specs, self.output_specs = describe_session(session, self.path)
        self._session = session
        self.uses_io_binding = session.get_providers()[0] in GPU_EPS

    def _deactivate_impl(self) -> None:
        self._session = None

    def _computes_in_fp16(self) -> bool:
        """Whether this is an FP16 artifact (`mde.precision`) that a CUDA provider may run: read first, in a
        CPU session without optimization (about 0.1 s), only where one of the GPU providers is wanted."""
        wanted = self.requested_providers or eps.default_providers(import_ort().get_available_providers(), say=False)
        if not any(p in GPU_EPS for p in wanted):
            return False
        try:
            return read_onnx_metadata(self.path)[0].precision == "fp16"
        except MdeError:  # opening it for real names the problem
            return False

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, in priority order."""
        if self._session is not None:
            return list(self._session.get_providers())
        return list(self.requested_providers or [])

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; of the runner, only `_run_options`'s last run size changes here.
        session = self._session  # one read: a `deactivate` from another thread may clear it meanwhile
        if session is None:
            raise self.not_active()
        names = list(self.output_specs)
        try:
            if self.uses_io_binding:
                return self._infer_io_binding(session, feed, names)
            outputs = session.run(names, feed, self._run_options(feed))
        except (InputError, BackendError):
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime's pybind11 errors share no base class but Exception
            if allocation_failed(err):  # the input's size or the batch, not the model
                raise OutOfMemory(f"out of memory running the model in ONNX Runtime ({ort_reason(err)})",
                                  self.path) from None
            raise BackendError(f"ONNX Runtime could not run the model ({ort_reason(err)})", self.path) from None
        return dict(zip(names, outputs))

    def _run_options(self, feed: dict[str, np.ndarray]) -> Any:
        """Give the CPU arena's memory back at the end of a run of another size than the run before, where either is
        larger than the exported size: one big native-resolution frame or batch would otherwise keep its memory for
        the life of the session. None for the rest: runs of one size in a row (a camera's frames at native resolution,
        `predict_batch`'s batches) reuse the arena, where a shrink after each made the next allocate it all again,
        10-23 % of its time (`mde bench --batch 16`, or 480x640 frames)."""
        exported = math.prod(self.metadata.input_size) if self.metadata else 0
        pixels = max((a.shape[0] * a.shape[2] * a.shape[3] for a in feed.values() if a.ndim == 4), default=0)
        previous, self._last_pixels = self._last_pixels, pixels  # threads racing here only shrink once more or less
        if pixels == previous or max(pixels, previous) <= exported:
            return None
        options = import_ort().RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options

    @staticmethod
    def _infer_io_binding(session: Any, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """GPU path: inputs copied once, outputs left on the device until the final copy."""
        binding = session.io_binding()  # per call: no shared mutable state
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cuda")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))


def read_onnx_metadata(path: str | Path) -> tuple[ModelMetadata, Specs, Specs]:
    """Metadata and I/O specs of an ONNX file via onnxruntime (CPU, no optimization)."""
    session = create_session(path, providers=[CPU_EP], optimization="disable")
    return describe_session(session, path)
