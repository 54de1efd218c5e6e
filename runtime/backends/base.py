"""The runner base class (Polygraphy's shape) and the backend registry behind `--backend`."""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mde.errors import InputError, ModelError
from mde.runtime.metadata import PREPROCESS, ModelMetadata, check_graph_input, check_graph_output, shape_text

# Backend modules shipped with mde; importing one registers it (each imports its library lazily,
# so listing the backends imports neither torch nor TensorRT).
BUILTIN_BACKENDS = {
    "onnxruntime": "mde.runtime.backends.onnxruntime",
    "tensorrt": "mde.runtime.backends.tensorrt",
    "golden": "mde.runtime.backends.golden",
    "torch": "mde.train.runner",
}
# File suffix -> backend for `backend="auto"`.
AUTO_BACKENDS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch",
                 ".npz": "golden"}

BACKENDS: dict[str, type[Runner]] = {}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype, shape (an int per static axis, None when dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        return f"{self.name}: {np.dtype(self.dtype).name}[{shape_text(self.shape)}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}


class Runner(abc.ABC):
    """One model on one backend: `activate()`, `infer(feed)`, `deactivate()`; a context manager.

    Subclasses implement `_activate_impl` (load the model, fill `metadata`, `input_specs`,
    `output_specs`), `_infer_impl` and `_deactivate_impl`. `infer` is safe to call from
    several threads at once when the subclass's `_infer_impl` is.
    """

    name: ClassVar[str] = "base"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.is_active = False
        self.metadata: ModelMetadata | None = None
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_specs: dict[str, TensorSpec] = {}

    # -- lifecycle ---------------------------------------------------------------
    def activate(self) -> Runner:
        """Load the model (idempotent); return self."""
        if not self.is_active:
            self._activate_impl()
            try:
                self._check_image_input()
            except ModelError:
                self._deactivate_impl()
                raise
            self.is_active = True
        return self

    def _check_image_input(self) -> None:
        """One input, the float32 N x 3 x H x W image the runtime feeds (`check_graph_input`), and the
        `depth` output (`check_graph_output`)."""
        if self.metadata is not None:
            check_graph_io(self.input_specs, self.output_specs, self.metadata, self.path)

    def deactivate(self) -> None:
        """Release the model and its buffers (idempotent)."""
        if self.is_active:
            self._deactivate_impl()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference ---------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feed` against the model's inputs, run the model, return its outputs by name.

        Raises:
            InputError: not activated, or a missing/unexpected input, wrong dtype or shape.
        """
        if not self.is_active:
            raise self.not_active()
        if isinstance(feed, dict):  # big-endian float32 (read from a file) is the same numbers: run in native order
            feed = {name: array.astype(array.dtype.newbyteorder("=")) if isinstance(array, np.ndarray)
                    and not array.dtype.isnative and name in self.input_specs
                    and array.dtype.newbyteorder("=") == self.input_specs[name].dtype else array
                    for name, array in feed.items()}
        self.check_feed(feed)
        return self._infer_impl(feed)

    def not_active(self) -> InputError:
        """The error for a call on a closed runner (also raised by a call that a `deactivate` overtook)."""
        return InputError(f"{self.name} runner is not active (closed, or never activated)", self.path)

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise `InputError` (expected vs found) unless `feed` matches `input_specs` exactly."""
        if not isinstance(feed, dict):
            raise InputError(f"feed must be a dict of name -> numpy array, got {type(feed).__name__}")
        expected = set(self.input_specs)
        if set(feed) != expected:
            raise InputError(f"the model's inputs are {sorted(expected)}; the feed names {sorted(feed)}", self.path)
        for name, spec in self.input_specs.items():
            array = feed[name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != spec.dtype:
                got = array.dtype.name
                if not array.dtype.isnative:
                    got += f" ({array.dtype.str}: other byte order)"
                raise InputError(f"input {name!r}: expected dtype {np.dtype(spec.dtype).name}, got {got}", self.path)
            shape_ok = array.ndim == len(spec.shape) and all(
                (want is None and got > 0) or got == want for want, got in zip(spec.shape, array.shape)
            )
            if not shape_ok:
                no_images = array.ndim == len(spec.shape) and array.ndim > 0 and array.shape[0] == 0
                raise InputError(
                    f"input {name!r}: expected shape {_fmt_shape(spec.shape)}, got {tuple(array.shape)}"
                    + (" (an empty batch)" if no_images else ""),
                    self.path,
                )
            multiple = PREPROCESS["size_multiple"]  # the encoder's stride
            if self.metadata is not None and self.metadata.dynamic_size and array.ndim == 4 and (
                    array.shape[2] % multiple or array.shape[3] % multiple):
                raise InputError(f"input {name!r}: height and width must be multiples of {multiple} (the encoder's "
                                 f"stride), got {array.shape[2]}x{array.shape[3]}", self.path)

    def max_batch(self) -> int | None:
        """The largest batch the model takes in one call: 1 when static, None when unbounded."""
        spec = next(iter(self.input_specs.values()))
        return spec.shape[0] if spec.shape and spec.shape[0] is not None else None

    @property
    def providers(self) -> list[str]:
        """What executes the model (ONNX Runtime providers, or the backend name)."""
        return [self.name]

    @property
    def label(self) -> str:
        """The backend and what it actually runs on, for tables: "onnxruntime (CUDA)"."""
        first = self.providers[0].removesuffix("ExecutionProvider") if self.providers else "?"
        return self.name if first == self.name else f"{self.name} ({first})"

    # -- for subclasses ------------------------------------------------------------
    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate_impl(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources; the default drops nothing."""


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def register_backend(name: str) -> Callable[[type[Runner]], type[Runner]]:
    """Class decorator: register a `Runner` subclass under `name` (its `--backend` value)."""

    def wrap(cls: type[Runner]) -> type[Runner]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    for name, module in BUILTIN_BACKENDS.items():
        if name not in BACKENDS:
            importlib.import_module(module)


def backend_names() -> list[str]:
    """Registered backend names (built-ins included), sorted."""
    _load_builtin()
    return sorted(BACKENDS)


def resolve_backend(path: str | Path, backend: str = "auto") -> str:
    """The backend name for `path`: `backend` itself, or from the file suffix when "auto"."""
    names = backend_names()
    if backend != "auto" and backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from: auto, {', '.join(names)}")
    suffix = Path(path).suffix.lower()
    if backend != "auto":
        kind = AUTO_BACKENDS.get(suffix)
        if kind is not None and backend in AUTO_BACKENDS.values() and kind != backend:  # .onnx to golden
            wants = ", ".join(sorted(s for s, b in AUTO_BACKENDS.items() if b == backend)) or "its own files"
            raise InputError(f"a {suffix} file is read by the {kind} backend; the {backend} backend reads {wants}",
                             path)
        return backend
    if suffix not in AUTO_BACKENDS:
        raise InputError(
            f"cannot pick a backend for a {suffix or 'suffix-less'} file; expected one of "
            f"{', '.join(sorted(AUTO_BACKENDS))} or an explicit --backend",
            path,
        )
    return AUTO_BACKENDS[suffix]


def check_graph_io(inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], meta: ModelMetadata,
                   path: str | Path) -> None:
    """One input, the float32 N x 3 x H x W image the runtime feeds (`check_graph_input`), and the `depth` output
    (`check_graph_output`): what every runner and `mde info` check of a graph.

    Raises:
        ModelError: naming what the graph has instead.
    """
    if len(inputs) != 1:
        raise ModelError(f"graph has {len(inputs)} inputs ({', '.join(inputs)}); expected one image input", path)
    spec = next(iter(inputs.values()))
    check_graph_input(spec.dtype, spec.shape, meta, path)
    check_graph_output({name: (out.dtype, out.shape) for name, out in outputs.items()}, path,
                       None if meta.dynamic_size else tuple(meta.input_size))


def runs_on_onnxruntime(path: str | Path, backend: str = "auto") -> bool:
    """Whether `path` opens with the ONNX Runtime backend, the one that takes execution providers."""
    return resolve_backend(path, backend) == "onnxruntime"


def providers_refused(path: str | Path, backend: str = "auto") -> InputError:
    """The refusal of ONNX Runtime providers for a model another backend runs where it runs (a checkpoint in
    PyTorch on the CPU, an engine on its GPU): ignored, they would be a silent run somewhere else."""
    return InputError(f"providers name ONNX Runtime execution providers, for .onnx models; this file "
                      f"runs on the {resolve_backend(path, backend)} backend, which takes none", path)


def open_runner(path: str | Path, backend: str = "auto", **options: Any) -> Runner:
    """Open `path` with the named backend ("auto": `.engine` -> tensorrt, `.onnx` -> onnxruntime).

    Returns an activated runner; `options` go to the runner's constructor
    (e.g. providers=, threads= for onnxruntime).

    Raises:
        InputError: unknown backend name (the message lists the valid ones).
        ModelError: missing, empty, truncated or metadata-less model file.
        BackendError: the backend cannot run here (not installed, no GPU, engine mismatch).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"expected a model path, got {type(path).__name__}")
    if os.fspath(path) == "":  # Path("") is the current folder
        raise InputError("expected a model path, got an empty string")
    if backend != "auto" and backend not in backend_names():
        resolve_backend(path, backend)  # raises the error listing the valid names
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found" if not path.exists() else "expected a model file", path)
    if path.stat().st_size == 0:
        raise ModelError("model file is empty (0 bytes)", path)
    name = resolve_backend(path, backend)
    try:
        runner = BACKENDS[name](path, **options)
    except TypeError as err:
        raise InputError(f"bad option for the {name} backend ({err})") from None
    return runner.activate()
