"""The real TensorRT Python bindings on a machine without TensorRT: link-only stand-in libraries.

NVIDIA publishes the bindings alone as small wheels (`tensorrt-cu12-bindings` 10.x/11.x,
`tensorrt-cu13-bindings` 11.x) holding the pybind11 module `tensorrt_bindings`. It links
libnvinfer.so.N, libnvonnxparser.so.N and libnvinfer_plugin.so.N but needs only a handful of
C entry points from them to load. This module builds stand-in libraries with those sonames that
define each entry point as a function calling abort(), imports the real module against them in
a subprocess, and returns its API surface: classes, enum members, attributes and pybind11
signatures, plus a few argument conversions tried on objects that need no TensorRT library.
Anything that would reach TensorRT (building, running) aborts the subprocess: this checks the
API surface, never behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# The bindings checked: the oldest TensorRT mde supports (JetPack 6.1/6.2), the newest 10.x, and 11.x.
BINDINGS = {
    "10.3": ("tensorrt-cu12-bindings", "10.3.0"),
    "10.16": ("tensorrt-cu12-bindings", "10.16.1.11"),
    "11.4": ("tensorrt-cu13-bindings", "11.4.0.106"),
}
# Libraries every Linux process has; their symbols are not TensorRT's.
SYSTEM_LIBS = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "libstdc++.so.6", "libgcc_s.so.1")


class Unavailable(Exception):
    """The real bindings cannot be prepared here (no network, no C compiler, no binutils): a skip reason."""


def find_wheel(package: str, version: str, cache: Path) -> Path:
    """The wheel of `package==version` for this Python: from $MDE_TRT_WHEELS or `cache`, else `pip download`."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    for folder in (os.environ.get("MDE_TRT_WHEELS"), cache):
        if folder:
            found = sorted(Path(folder).glob(pattern))
            if found:
                return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
           "--disable-pip-version-check", "-d", str(cache), f"{package}=={version}"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip download {package}=={version} timed out (no network?)") from None
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"cannot download {package}=={version} for this Python ({last})")
    return found[0]


def unpack(wheel: Path, out: Path) -> Path:
    """Unpack `wheel` into `out`; return the binding extension (`tensorrt_bindings/tensorrt*.so`)."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(out)
    found = sorted((out / "tensorrt_bindings").glob("tensorrt*.so"))
    if not found:
        raise Unavailable(f"{wheel.name} holds no tensorrt_bindings/tensorrt*.so")
    return found[0]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise Unavailable(f"no `{name}` on this machine (binutils and a C compiler build the stand-ins)")
    return path


def needed_libraries(extension: Path) -> list[str]:
    """The NVIDIA sonames the extension links (its DT_NEEDED entries named libnv*)."""
    out = subprocess.run([_tool("readelf"), "-d", "-W", str(extension)], capture_output=True, text=True,
                         check=True).stdout
    return [name for name in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
            if name.startswith("libnv")]


def tensorrt_symbols(extension: Path) -> list[str]:
    """The undefined symbols the extension needs from TensorRT's libraries.

    Those are the strong, unversioned undefined symbols that are neither Python's C API nor
    found in the C/C++ runtime libraries every process has.
    """
    out = subprocess.run([_tool("nm"), "-D", "--undefined-only", str(extension)], capture_output=True, text=True,
                         check=True).stdout
    system = []
    for lib in SYSTEM_LIBS:
        try:
            system.append(ctypes.CDLL(lib))
        except OSError:
            continue
    symbols = []
    for line in out.splitlines():
        kind, _, name = line.strip().rpartition(" ")
        if kind.strip() != "U" or "@" in name or name.startswith(("Py", "_Py")):
            continue
        if any(hasattr(lib, name) for lib in system):
            continue
        symbols.append(name)
    return sorted(symbols)


def build_standins(extension: Path, out: Path) -> list[str]:
    """Build link-only stand-ins for the extension's NVIDIA libraries in `out`; return the symbols defined.

    Every symbol is a function that aborts. They all go into the first library: the dynamic
    linker looks a symbol up in every library loaded, so which stand-in defines it does not matter.
    """
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if not cc:
        raise Unavailable("no C compiler (cc/gcc) on this machine to build the stand-in libraries")
    sonames, symbols = needed_libraries(extension), tensorrt_symbols(extension)
    if not sonames or not symbols:
        raise Unavailable(f"{extension.name}: found no NVIDIA libraries or symbols to stand in for")
    out.mkdir(parents=True, exist_ok=True)
    body = "#include <stdlib.h>\n" + "".join(f"void {name}(void) {{ abort(); }}\n" for name in symbols)
    for i, soname in enumerate(sonames):
        source = out / f"{soname}.c"
        source.write_text(body if i == 0 else "/* stand-in: no symbols of its own */\n")
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(source)],
                       capture_output=True, text=True, check=True)
    return symbols


# Runs in the subprocess: imports the real module and prints its API surface as JSON.
DUMP = r'''
import ctypes, json, sys
import tensorrt_bindings as trt

SIG = "^(?:\\d+\\. )?{name}\\((.*)\\)(?: -> (.*))?$"

def signatures(obj, name):
    import re
    doc = getattr(obj, "__doc__", None) or ""
    found = []
    for line in doc.splitlines():
        m = re.match(SIG.format(name=re.escape(name)), line.strip())
        if m and m.group(1) != "*args, **kwargs":
            found.append({"params": m.group(1), "returns": m.group(2) or ""})
    return found

def has_buffer(cls):
    """Whether instances export the buffer protocol (tp_as_buffer), read without making one."""
    if sys.version_info >= (3, 12):
        return hasattr(cls, "__buffer__")
    slot = 20 * ctypes.sizeof(ctypes.c_void_p)  # PyTypeObject.tp_as_buffer in CPython 3.8-3.11
    read = lambda t: ctypes.c_void_p.from_address(id(t) + slot).value
    if not read(bytes) or read(int):
        return None  # the layout is not what we think: unknown
    return bool(read(cls))

def describe(cls):
    entry = {"mro": [c.__name__ for c in cls.__mro__], "attrs": {}, "members": None, "buffer": has_buffer(cls)}
    if hasattr(cls, "__members__"):
        entry["members"] = {k: int(v) for k, v in cls.__members__.items()}
    for name in dir(cls):
        if name.startswith("__") and name != "__init__":
            continue
        raw = None
        for klass in cls.__mro__:
            if name in vars(klass):
                raw = vars(klass)[name]
                break
        value = getattr(cls, name)
        if isinstance(raw, property):
            kind = "property"
        elif callable(value) and not isinstance(value, type) and not hasattr(type(value), "__members__"):
            kind = "method"
        else:
            kind = "value"
        entry["attrs"][name] = {"kind": kind, "signatures": signatures(value, name) if kind == "method" else []}
    return entry

api = {"version": trt.__version__, "module": {}, "classes": {}, "probes": {}}
for name in dir(trt):
    if name.startswith("__") and name != "__version__":
        continue
    value = getattr(trt, name)
    if isinstance(value, type):
        api["module"][name] = {"kind": "class", "signatures": signatures(value.__init__, "__init__")}
        api["classes"][name] = describe(value)
    elif callable(value):
        api["module"][name] = {"kind": "function", "signatures": signatures(value, name)}
    else:
        api["module"][name] = {"kind": "value", "signatures": []}

def probe(name, fn):
    try:
        api["probes"][name] = {"ok": True, "value": fn()}
    except Exception as err:
        api["probes"][name] = {"ok": False, "value": f"{type(err).__name__}: {err}"}

def implicit(value):
    d = trt.Dims([0, 0])
    d[0:1] = value  # Dims.__setitem__(slice, Dims): pybind11 converts `value` to Dims implicitly
    return list(d)

probe("dims_from_list", lambda: list(trt.Dims([1, 3, 64, 64])))
probe("dims_from_tuple", lambda: list(trt.Dims((1, 3, 64, 64))))
probe("dims_implicit_from_list", lambda: implicit([7]))
probe("dims_implicit_from_tuple", lambda: implicit((7,)))
probe("dims_iterates_ints", lambda: [type(v).__name__ for v in trt.Dims([2, 3])])
probe("dims_negative_is_dynamic", lambda: list(trt.Dims([-1, 3])))
def int_param(value):
    d = trt.Dims([0])
    d[0] = value  # Dims.__setitem__(int, int): the same pybind11 integer conversion as stream/pointer arguments
    return d[0]
probe("int_param_from_int", lambda: int_param(2**40 + 5))
probe("int_param_from_str", lambda: int_param("5"))
probe("nptype_float32", lambda: str(trt.nptype(trt.float32)))
probe("nptype_bf16", lambda: str(trt.nptype(trt.bfloat16)))
probe("logger_warning", lambda: int(trt.Logger.WARNING))
print(json.dumps(api))
'''


def dump_api(unpacked: Path, standins: Path, timeout: float = 120) -> dict:
    """Import the real bindings from `unpacked` against the stand-ins in a subprocess; return the API surface."""
    env = {**os.environ, "PYTHONPATH": str(unpacked),
           "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(standins), os.environ.get("LD_LIBRARY_PATH")]))}
    result = subprocess.run([sys.executable, "-c", DUMP], capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"importing the real bindings failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def real_tensorrt_api(label: str, work: Path, cache: Path) -> dict:
    """The API surface of the bindings `BINDINGS[label]`, prepared under `work` (wheels cached in `cache`)."""
    package, version = BINDINGS[label]
    wheel = find_wheel(package, version, cache)
    extension = unpack(wheel, work / "site")
    symbols = build_standins(extension, work / "lib")
    api = dump_api(work / "site", work / "lib")
    api["standin_symbols"] = symbols
    api["wheel"] = wheel.name
    return api
