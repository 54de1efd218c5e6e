"""ONNX Runtime's execution providers: which this machine can really run, and in what order.

onnxruntime-gpu lists its GPU providers whether or not a GPU, a driver or the CUDA/TensorRT
libraries are present; a provider that cannot load then falls back to the CPU without a word.
`provider_problem` says why one cannot run here (no GPU, or a library its own shared library
links is missing, read from its ELF header), and `default_providers` picks those that can.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mde.errors import BackendError, ModelError
from mde.printed import printed_by_this_thread

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)
GPU_EPS = (TRT_EP, CUDA_EP)
# The shared library behind each GPU provider in onnxruntime-gpu's capi/ folder.
PROVIDER_LIBRARIES = {
    TRT_EP: "libonnxruntime_providers_tensorrt.so",
    CUDA_EP: "libonnxruntime_providers_cuda.so",
}
# The cuBLAS wheel of each CUDA major, which onnxruntime-gpu's `cuda` extra lacks (torch's install brings it)
CUBLAS_WHEELS = {"12": "nvidia-cublas-cu12", "13": "'nvidia-cublas>=13,<14'"}


def cuda_libraries_hint(missing: Sequence[str]) -> str:
    """Where a torch-free install gets the CUDA and cuDNN libraries the CUDA provider links, by the CUDA major its
    sonames name (`libcublasLt.so.13`: onnxruntime-gpu 1.31's; `.so.12`: the 1.19-1.2x builds')."""
    major = next((name.rsplit(".so.", 1)[1].split(".")[0] for name in missing
                  if name.startswith(("libcublas", "libcudart", "libcurand", "libcufft")) and ".so." in name), None)
    wheels = f"'onnxruntime-gpu[cuda,cudnn]' {CUBLAS_WHEELS[major]}" if major in CUBLAS_WHEELS \
        else "'onnxruntime-gpu[cuda,cudnn]'"
    return f"without torch, pip install {wheels}; or install the CUDA toolkit and cuDNN this onnxruntime was built for"
# Loaded by the providers when they run, so not among their ELF needed entries: onnxruntime-gpu 1.31's CUDA
# provider opens cuDNN 9 at its first convolution ("cuDNN library was not found"), after the session was made
RUNTIME_LOADED = ("libcudnn.so.9",)


def import_ort() -> Any:
    """Import onnxruntime or raise `BackendError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError(f"onnxruntime is not installed ({err}); pip install {onnxruntime_package()}") from None
    return onnxruntime


def onnxruntime_package() -> str:
    """The ONNX Runtime package mde depends on on this machine, as pyproject.toml chooses it: PyPI has
    onnxruntime-gpu for x86_64 Linux only (where the CPU build, installed beside it, would replace its module)."""
    import platform
    import sys

    return "onnxruntime-gpu" if sys.platform == "linux" and platform.machine() == "x86_64" else "onnxruntime"


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


# -- which GPU providers can load here -------------------------------------------------
def elf_needed(path: str | Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF shared library (what the dynamic loader must find to load it).

    A reader of just the dynamic section, so the runtime needs no ELF package for one field.

    Raises:
        ModelError: not an ELF file, or no dynamic section.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        raise ModelError("not an ELF shared library", path)
    is64, endian = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 0x3A)
        sh_fmt, dyn_fmt = endian + "IIQQQQIIQQ", endian + "qQ"
    else:
        shoff, = struct.unpack_from(endian + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 0x2E)
        sh_fmt, dyn_fmt = endian + "IIIIIIIIII", endian + "iI"
    sections = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = [s for s in sections if s[1] == 6]  # SHT_DYNAMIC
    if not dynamic:
        raise ModelError("ELF file has no dynamic section", path)
    _, _, _, _, offset, size, link, *_ = dynamic[0]
    strtab_offset = sections[link][4]
    needed = []
    for pos in range(offset, offset + size, struct.calcsize(dyn_fmt)):
        tag, value = struct.unpack_from(dyn_fmt, data, pos)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            end = data.index(b"\0", strtab_offset + value)
            needed.append(data[strtab_offset + value:end].decode())
    return needed


def load_library(soname: str) -> Any:
    """dlopen `soname` (found by the system's search path, or already loaded by preload_dlls)."""
    return ctypes.CDLL(soname)


def missing_libraries(library: str | Path, load: Callable[[str], Any] | None = None) -> list[str]:
    """The sonames `library` needs that cannot be loaded here ([] when it can load): its ELF needed entries, and
    for a provider library the ones it opens when it runs (`RUNTIME_LOADED`)."""
    load = load or load_library
    missing = []
    provider = Path(library).name in PROVIDER_LIBRARIES.values()
    for soname in [*elf_needed(library), *(RUNTIME_LOADED if provider else ())]:
        try:
            load(soname)
        except OSError:
            missing.append(soname)
    return missing


@functools.lru_cache(maxsize=1)
def preload_gpu_libraries() -> str:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels (`onnxruntime.preload_dlls`), once; return its output.

    Without it the CUDA provider finds `libcublas.so.13` only when torch happened to be imported
    first. What preload_dlls prints goes to the debug log, never to stdout.
    """
    ort = import_ort()
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is None:
        return ""
    with printed_by_this_thread() as printed:
        try:
            preload()
        except Exception as err:  # noqa: BLE001 - a failed preload shows up as a provider that did not load
            print(f"preload_dlls failed: {err}")
    text = printed.getvalue().strip()
    if text:
        log.debug("onnxruntime.preload_dlls: %s", text)
    return text


@functools.cache
def provider_problem(provider: str) -> str:
    """Why a GPU provider cannot run on this machine ("" when it can): no GPU, or libraries it needs are missing.

    The libraries are read from the provider's own shared library (its ELF needed entries), so
    the check follows the installed onnxruntime-gpu: 1.31's TensorRT provider needs
    `libnvinfer.so.10`, and a TensorRT 11 install does not satisfy it.
    """
    if provider not in GPU_EPS:
        return ""
    if cuda_device_count() == 0:
        return "no CUDA GPU or NVIDIA driver on this machine"
    preload_gpu_libraries()
    library = Path(import_ort().__file__).parent / "capi" / PROVIDER_LIBRARIES[provider]
    if not library.is_file():
        return f"{library.name} is not part of this onnxruntime"
    missing = missing_libraries(library)
    if not missing:
        return ""
    problem = f"{library.name} needs {', '.join(missing)}, not found"
    if provider == CUDA_EP and set(missing) - {"libcuda.so.1"}:  # the driver's own is not a wheel's
        problem += f" ({cuda_libraries_hint(missing)})"
    return problem


def default_providers(available: Sequence[str], say: bool = True) -> list[str]:
    """TensorRT EP, then CUDA EP, then CPU: those built into ORT *and* able to run on this machine.

    onnxruntime-gpu lists the GPU providers even where there is no GPU or no CUDA/TensorRT
    library, so both are checked (`provider_problem`). On a machine with a GPU, a CUDA provider
    that cannot run is a warning naming the reason: the model will run on the CPU (`say=False`:
    the choice alone, for a caller whose session will say it).
    """
    chosen = []
    for provider in PREFERENCE:
        if provider not in available:
            continue
        problem = provider_problem(provider)
        if not problem:
            chosen.append(provider)
        elif say and cuda_device_count() > 0:
            level = logging.WARNING if provider == CUDA_EP else logging.INFO
            log.log(level, "%s cannot run here: %s", provider, problem)
    return chosen or [CPU_EP]
