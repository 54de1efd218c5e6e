"""The TensorRT and cuda-python API that mde uses, checked against the real bindings (the API surface, not behaviour).

The real TensorRT 10.x and 11.x Python bindings are imported on this CPU machine against
link-only stand-in libraries (tests/trt_standin.py); the real cuda-bindings module imports
without a driver. What the code uses is read from its source: every `trt.X.Y` / `cudart.X.Y`
chain, and every method called on a TensorRT object, whose class follows from the constructor
or from the return annotation of the real method that produced it. Each must exist in the real
module, and each call must fit one of the real pybind11 signatures: argument count, keyword
names, the class of TensorRT objects passed, Dims from lists and tuples, stream handles and
pointers as ints. The hand-written fakes of tests/trt_fakes.py are checked against the same
modules. Nothing here builds or runs an engine: any call into TensorRT would abort the
subprocess, so a pass says the names and signatures fit, not that an engine builds or runs.
"""

from __future__ import annotations

import ast
import enum
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import trt_standin
from trt_fakes import FakeCudaDriver, FakeCudart, Recorder, fake_tensorrt

import mde.export.tensorrt_build as build_module
import mde.runtime.backends.tensorrt as runtime_module
from mde.errors import OutOfMemory

# one pytest-xdist worker downloads and imports the binding wheels (they share a cache folder)
pytestmark = pytest.mark.xdist_group("tensorrt-bindings")

SOURCES = (Path(build_module.__file__), Path(runtime_module.__file__))
ROOTS = {"trt": "tensorrt", "cudart": "cudart"}  # the names the code gives the two modules, everywhere
INT_TYPES = {"int", "typing.SupportsInt", "SupportsInt"}
DIMS_PROBES = ("dims_from_list", "dims_from_tuple", "dims_implicit_from_list", "dims_implicit_from_tuple")
# Harmless arguments of the runner's cudart calls, of the types the runner passes (ints for
# pointers and sizes, the cudaMemcpyKind member, the cudaStream_t that cudaStreamCreate returned).
# The test fails when the code calls a cudart function missing here, or with another argument count.
SAMPLE_ARGS = {
    "cudaRuntimeGetVersion": lambda rt, stream: (),
    "cudaGetDeviceCount": lambda rt, stream: (),
    "cudaGetDeviceProperties": lambda rt, stream: (0,),
    "cudaGetDevice": lambda rt, stream: (),
    "cudaSetDevice": lambda rt, stream: (0,),
    "cudaStreamCreate": lambda rt, stream: (),
    "cudaMalloc": lambda rt, stream: (16,),
    "cudaFree": lambda rt, stream: (0,),
    "cudaMemcpyAsync": lambda rt, stream: (0, 0, 0, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
    "cudaStreamSynchronize": lambda rt, stream: (stream,),
    "cudaStreamDestroy": lambda rt, stream: (stream,),
}
VALUE_TYPES = {"cudaGetDeviceProperties": "cudaDeviceProp", "cudaStreamCreate": "cudaStream_t"}


# -- what the code uses, read from its source ------------------------------------------------
@dataclass(frozen=True)
class Use:
    """One use of the real API at `where`: kind "chain" (module attribute chain), "call" (method
    or constructor call), "attr" (attribute of a TensorRT object), "bytes" (bytes(obj)),
    "cudacall" (a cudart function call) or "cudaattr" (attribute of a cudart result)."""

    kind: str
    owner: str
    name: tuple[str, ...]
    where: str
    call: ast.Call | None = None
    value_used: bool = True


def _class_name(annotation: str) -> str:
    """"tensorrt_bindings.tensorrt.IBuilderConfig" -> "IBuilderConfig"; "nvonnxparser::IParserError" -> "IParserError"."""
    return re.split(r"[.:]", annotation.strip())[-1]


class UsageScan:
    """The real API that one source file uses, with the classes of TensorRT objects inferred.

    Args:
        path: the source file.
        api: the real TensorRT API surface (trt_standin.dump_api) that return types come from.
    """

    def __init__(self, path: Path, api: dict):
        self.path, self.api = path, api
        self.tree = ast.parse(path.read_text())
        self.parents = {child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)}
        self.env: dict[tuple[str, str], tuple] = {}
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        self.uses: dict[tuple, Use] = {}
        for _ in range(6):  # types flow through assignments and calls: iterate to a fixed point
            before = dict(self.env)
            self._walk()
            if self.env == before:
                break

    def _scopes(self):
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        yield item, node.name
            elif isinstance(node, ast.FunctionDef) and node.name in self.functions:
                yield node, ""

    def _resolve(self, annotation: str) -> tuple | None:
        name = _class_name(annotation)
        for candidate in (name, name[1:] if name.startswith("I") else name):
            if candidate in self.api["classes"]:
                return ("instance", candidate)
        return None

    def typeof(self, node: ast.AST, scope: str, cls: str) -> tuple | None:
        """The inferred type of an expression, or None."""
        if isinstance(node, ast.Name):
            if node.id in ROOTS:
                return ("module", ROOTS[node.id])
            return self.env.get((scope, node.id))
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.env.get((cls, "self." + node.attr))
            owner = self.typeof(node.value, scope, cls)
            if owner and owner[0] == "module":
                return ("chain", owner[1], (node.attr,))
            if owner and owner[0] == "chain":
                return ("chain", owner[1], owner[2] + (node.attr,))
            return None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "int":
                return ("int",)
            if isinstance(func, ast.Name) and func.id == "_check" and node.args:
                inner = self.typeof(node.args[0], scope, cls)
                return ("cudavalue", inner[1]) if inner and inner[0] == "cudaresult" else None
            if isinstance(func, ast.Attribute):
                owner = self.typeof(func.value, scope, cls)
                if owner == ("module", "tensorrt"):
                    entry = self.api["module"].get(func.attr, {})
                    if entry.get("kind") == "class":
                        return ("instance", func.attr)
                if owner == ("module", "cudart"):
                    return ("cudaresult", func.attr)
                if owner and owner[0] == "instance":
                    attr = self.api["classes"].get(owner[1], {}).get("attrs", {}).get(func.attr)
                    if attr and attr["signatures"]:
                        return self._resolve(attr["signatures"][0]["returns"])
        return None

    def _bind(self, target: ast.AST, value_type: tuple | None, scope: str, cls: str) -> None:
        if value_type is None:
            return
        if isinstance(target, ast.Name):
            self.env[(scope, target.id)] = value_type
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            self.env[(cls, "self." + target.attr)] = value_type

    def _walk(self) -> None:
        for func, cls in self._scopes():
            scope = f"{cls}.{func.name}" if cls else func.name
            for node in ast.walk(func):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            for t, v in zip(target.elts, node.value.elts):
                                self._bind(t, self.typeof(v, scope, cls), scope, cls)
                        else:
                            self._bind(target, self.typeof(node.value, scope, cls), scope, cls)
                elif isinstance(node, ast.Call):
                    self._call(node, scope, cls)
                elif isinstance(node, ast.Attribute):
                    self._attribute(node, scope, cls)

    def _where(self, node: ast.AST) -> str:
        return f"{self.path.name}:{node.lineno}"

    def _add(self, use: Use, node: ast.AST) -> None:
        self.uses[(use.kind, use.owner, use.name, node.lineno, node.col_offset)] = use

    def _call(self, node: ast.Call, scope: str, cls: str) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in self.functions:  # pass argument types into a local function
            params = [a.arg for a in self.functions[func.id].args.args]
            for param, arg in zip(params, node.args):
                self._bind(ast.Name(id=param), self.typeof(arg, scope, cls), func.id, "")
        elif isinstance(func, ast.Name) and func.id == "bytes" and node.args:
            arg = self.typeof(node.args[0], scope, cls)
            if arg and arg[0] == "instance":
                self._add(Use("bytes", arg[1], (), self._where(node)), node)
        elif isinstance(func, ast.Attribute):
            owner = self.typeof(func.value, scope, cls)
            if owner == ("module", "tensorrt") and self.api["module"].get(func.attr, {}).get("kind") == "class":
                self._add(Use("call", func.attr, ("__init__",), self._where(node), node), node)
            elif owner == ("module", "cudart"):
                parent = self.parents.get(node)
                if isinstance(parent, ast.Call):  # _check(cudart.f(...)): what happens to _check's value
                    parent = self.parents.get(parent)
                used = not isinstance(parent, ast.Expr)
                self._add(Use("cudacall", "cudart", (func.attr,), self._where(node), node, used), node)
            elif owner and owner[0] == "instance":
                self._add(Use("call", owner[1], (func.attr,), self._where(node), node), node)

    def _attribute(self, node: ast.Attribute, scope: str, cls: str) -> None:
        if isinstance(self.parents.get(node), ast.Attribute):
            return  # only whole chains: trt.Logger.WARNING, not trt.Logger
        own = self.typeof(node, scope, cls)
        if own and own[0] == "chain":
            self._add(Use("chain", own[1], own[2], self._where(node)), node)
            return
        owner = self.typeof(node.value, scope, cls)
        if owner and owner[0] == "instance":
            self._add(Use("attr", owner[1], (node.attr,), self._where(node)), node)
        elif owner and owner[0] == "cudavalue":
            self._add(Use("cudaattr", owner[1], (node.attr,), self._where(node)), node)


def used_api(api: dict) -> list[Use]:
    """Every use of the real API in export/tensorrt_build.py and runtime/backends/tensorrt.py."""
    uses: list[Use] = []
    for path in SOURCES:
        uses += UsageScan(path, api).uses.values()
    return uses


# -- pybind11 signatures -----------------------------------------------------------------------
def _split_params(text: str) -> list[str]:
    """Split a signature's parameter list at top-level commas (types and defaults nest brackets)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_params(signature: dict) -> list[tuple[str, str, bool]]:
    """[(name, annotation, has default)] of a pybind11 signature, `self` dropped."""
    params = []
    for part in _split_params(signature["params"]):
        head, _, default = part.partition(" = ")
        name, _, annotation = head.partition(": ")
        params.append((name.strip(), annotation.strip(), bool(default)))
    return [p for p in params if p[0] != "self"]


def fits(call: ast.Call, params: list[tuple[str, str, bool]]) -> bool:
    """Whether the call's argument count and keyword names fit one overload."""
    names = [p[0] for p in params]
    keywords = [k.arg for k in call.keywords]
    if len(call.args) > len(params) or any(k not in names[len(call.args):] for k in keywords):
        return False
    return all(has_default or name in keywords for name, _, has_default in params[len(call.args):])


def check_arguments(call: ast.Call, params, api: dict, scan_types: list) -> list[str]:
    """Problems with the argument types of a call that fits `params` (empty when all convert)."""
    problems = []
    for (name, annotation, _), arg_type in zip(params, scan_types):
        cls = _class_name(annotation)
        if arg_type and arg_type[0] == "chain" and arg_type[1] == "tensorrt" and len(arg_type[2]) == 2:
            members = api["classes"].get(arg_type[2][0], {}).get("members") or {}
            if arg_type[2][1] in members:  # trt.MemoryPoolType.WORKSPACE is a MemoryPoolType
                arg_type = ("instance", arg_type[2][0])
        if arg_type and arg_type[0] == "instance" and cls in api["classes"]:
            if cls not in api["classes"][arg_type[1]]["mro"]:
                problems.append(f"{name}: passes a {arg_type[1]}, the real one wants {cls}")
        if cls == "Dims":
            failed = [p for p in DIMS_PROBES if not api["probes"][p]["ok"]]
            if failed:
                problems.append(f"{name}: Dims from a list/tuple does not convert ({failed})")
        if annotation in INT_TYPES and arg_type and arg_type[0] in ("cudavalue", "cudaresult"):
            problems.append(f"{name}: passes a cuda-python object where the real one wants an int: use int(...)")
    return problems


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(trt_standin.BINDINGS), ids=lambda label: f"tensorrt-{label}")
def real_api(request, tmp_path_factory) -> dict:
    """The API surface of the real TensorRT bindings (10.3, 10.16, 11.4), imported against stand-ins."""
    cache_provider = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    cache = (Path(cache_provider.mkdir("mde-tensorrt-bindings")) if cache_provider is not None
             else Path.home() / ".cache" / "mde-test" / "tensorrt-bindings")
    try:
        return trt_standin.real_tensorrt_api(request.param, tmp_path_factory.mktemp(f"trt{request.param}"), cache)
    except trt_standin.Unavailable as err:
        pytest.skip(f"the real TensorRT {request.param} bindings cannot be prepared here: {err}")


@pytest.fixture(scope="module")
def cudart():
    """The real cuda-python runtime module (cuda-bindings), which imports without a driver."""
    return pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed (pip install cuda-bindings)")


# -- TensorRT: the code against the real module ---------------------------------------------------
def test_real_bindings_import_against_the_stand_ins(real_api):
    """The stand-ins define only TensorRT's C entry points; the real module's own version answers."""
    label = next(k for k, v in trt_standin.BINDINGS.items() if v[1] == real_api["version"])
    assert real_api["version"] == trt_standin.BINDINGS[label][1]
    assert "createInferBuilder_INTERNAL" in real_api["standin_symbols"]
    assert len(real_api["standin_symbols"]) < 30 and not any(s.startswith("Py") for s in real_api["standin_symbols"])
    assert {"Builder", "Runtime", "ICudaEngine", "IExecutionContext", "OnnxParser"} <= set(real_api["classes"])


def test_the_scan_sees_the_api_the_code_uses(real_api):
    """The scan is not empty by accident: it finds the calls the build and the runner are made of."""
    uses = used_api(real_api)
    calls = {(u.owner, u.name[0]) for u in uses if u.kind == "call"}
    for expected in [("Builder", "create_network"), ("IBuilderConfig", "set_timing_cache"),
                     ("ITimingCache", "serialize"), ("IOptimizationProfile", "set_shape"),
                     ("OnnxParser", "get_error"), ("ParserError", "node_name"),
                     ("Runtime", "deserialize_cuda_engine"), ("ICudaEngine", "get_tensor_profile_shape"),
                     ("IExecutionContext", "execute_async_v3"), ("IExecutionContext", "set_input_shape")]:
        assert expected in calls, f"the scan lost {expected}"
    assert ("tensorrt", ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")) in {
        (u.owner, u.name) for u in uses if u.kind == "chain"
    }
    assert {u.name[0] for u in uses if u.kind == "cudacall"} == set(SAMPLE_ARGS)


def test_the_modules_are_always_named_trt_and_cudart():
    """The scan follows the names `trt` and `cudart`: the code must not bind the modules to other names."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tensorrt" and alias.asname != "trt":  # only tensorrt.__version__ then
                        assert alias.asname is None, f"{path.name}:{node.lineno}: import tensorrt as {alias.asname}"
                        func = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                                    and f.lineno <= node.lineno <= f.end_lineno)
                        used = {a.attr for a in ast.walk(func) if isinstance(a, ast.Attribute)
                                and isinstance(a.value, ast.Name) and a.value.id == "tensorrt"}
                        assert used <= {"__version__"}, f"{path.name}:{node.lineno}: tensorrt.{used} is not scanned"
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func
                if isinstance(func, ast.Name) and func.id in ("import_tensorrt", "import_cudart"):
                    want = "trt" if func.id == "import_tensorrt" else "cudart"
                    assert [t.id for t in node.targets] == [want], f"{path.name}:{node.lineno}"


def test_every_tensorrt_name_the_code_uses_exists(real_api):
    missing = []
    for use in used_api(real_api):
        if use.kind == "chain" and use.owner == "tensorrt":
            head, *rest = use.name
            if head not in real_api["module"]:
                missing.append(f"{use.where}: trt.{head}")
            elif rest and real_api["module"][head]["kind"] == "class" and rest[0] not in real_api["classes"][head]["attrs"]:
                missing.append(f"{use.where}: trt.{'.'.join(use.name)}")
        elif use.kind in ("call", "attr"):
            attrs = real_api["classes"][use.owner]["attrs"]
            if use.name[0] not in attrs and use.name != ("__init__",):
                missing.append(f"{use.where}: {use.owner}.{use.name[0]}")
            elif use.kind == "call" and use.name != ("__init__",) and attrs[use.name[0]]["kind"] != "method":
                missing.append(f"{use.where}: {use.owner}.{use.name[0]} is a {attrs[use.name[0]]['kind']}, not a method")
    assert not missing, f"TensorRT {real_api['version']} lacks: " + "; ".join(missing)


def test_every_tensorrt_call_fits_a_real_signature(real_api):
    problems = []
    for path in SOURCES:
        scan = UsageScan(path, real_api)
        for use in scan.uses.values():
            if use.kind != "call":
                continue
            if use.name == ("__init__",):
                signatures = real_api["module"][use.owner]["signatures"]
            elif use.name[0] in real_api["classes"][use.owner]["attrs"]:
                signatures = real_api["classes"][use.owner]["attrs"][use.name[0]]["signatures"]
            else:
                continue  # a missing method: test_every_tensorrt_name_the_code_uses_exists names it
            if not signatures:
                problems.append(f"{use.where}: {use.owner}.{use.name[0]} has no signature to check against")
                continue
            scope, cls = _scope_of(scan, use.call)
            arg_types = [scan.typeof(a, scope, cls) for a in use.call.args]
            overloads = [parse_params(s) for s in signatures]
            fitting = [p for p in overloads if fits(use.call, p)]
            if not fitting:
                problems.append(f"{use.where}: {use.owner}.{use.name[0]}({ast.unparse(use.call)}) fits none of "
                                f"{[s['params'] for s in signatures]}")
            elif all(check_arguments(use.call, p, real_api, arg_types) for p in fitting):
                problems.append(f"{use.where}: {check_arguments(use.call, fitting[0], real_api, arg_types)}")
    assert not problems, f"TensorRT {real_api['version']}: " + "; ".join(problems)


def _scope_of(scan: UsageScan, node: ast.AST) -> tuple[str, str]:
    """(scope, class) of the function holding `node`, as UsageScan names them."""
    func = cls = None
    while node in scan.parents:
        node = scan.parents[node]
        if isinstance(node, ast.FunctionDef) and func is None:
            func = node
        if isinstance(node, ast.ClassDef):
            cls = node
            break
    if cls is not None:
        return f"{cls.name}.{func.name}", cls.name
    return func.name, ""


def test_conversions_the_code_relies_on(real_api):
    """Dims from lists and tuples, ints for pointers and stream handles, bytes() of IHostMemory, nptype."""
    probes = real_api["probes"]
    assert probes["dims_from_list"] == {"ok": True, "value": [1, 3, 64, 64]}
    assert probes["dims_from_tuple"] == {"ok": True, "value": [1, 3, 64, 64]}
    assert probes["dims_implicit_from_list"]["ok"] and probes["dims_implicit_from_tuple"]["ok"]
    assert probes["dims_iterates_ints"]["value"] == ["int", "int"]  # tuple(dims), `d >= 0` in the runner
    assert probes["dims_negative_is_dynamic"]["value"] == [-1, 3]
    assert probes["int_param_from_int"] == {"ok": True, "value": 2**40 + 5}  # a 64-bit pointer survives
    assert not probes["int_param_from_str"]["ok"]  # the probe can fail: conversion is really checked
    assert probes["nptype_float32"] == {"ok": True, "value": "<class 'numpy.float32'>"}
    assert probes["nptype_bf16"]["value"].startswith("TypeError")  # why the runner maps TypeError to ModelError
    byte_uses = {u.owner for u in used_api(real_api) if u.kind == "bytes"}
    assert byte_uses == {"IHostMemory"}  # bytes(serialized engine), bytes(timing cache)
    assert real_api["classes"]["IHostMemory"]["buffer"] is True


def test_int_annotated_parameters_are_given_ints(real_api):
    """execute_async_v3(stream_handle: int): the runner passes int(stream), not the cudaStream_t object."""
    calls = [u for u in used_api(real_api) if u.kind == "call" and u.name == ("execute_async_v3",)]
    assert calls, "the scan found no execute_async_v3 call"
    for use in calls:
        assert ast.unparse(use.call.args[0]).startswith("int("), f"{use.where}: {ast.unparse(use.call)}"
    (signature,) = real_api["classes"]["IExecutionContext"]["attrs"]["execute_async_v3"]["signatures"]
    assert parse_params(signature)[0][1] in INT_TYPES


def test_network_flags_match_the_real_enum(real_api):
    """10.x: STRONGLY_TYPED is a flag bit (1 << value); 11.x: no flags at all."""
    members = real_api["classes"]["NetworkDefinitionCreationFlag"]["members"]
    assert "STRONGLY_TYPED" in members
    flag = type("Flag", (), {"STRONGLY_TYPED": members["STRONGLY_TYPED"]})
    trt = type("Trt", (), {"__version__": real_api["version"], "NetworkDefinitionCreationFlag": flag})
    expected = 0 if real_api["version"].startswith("11.") else 1 << members["STRONGLY_TYPED"]
    assert build_module.network_flags(trt) == expected
    if real_api["version"].startswith("10."):
        assert expected == 2  # EXPLICIT_BATCH is 0, STRONGLY_TYPED 1


# -- the fakes against the real modules ---------------------------------------------------------------
def _fake_problems(fake_cls: type, real: dict, label: str, constructs: bool) -> list[str]:
    problems = []
    for name, value in vars(fake_cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if name == "__init__" and not constructs:
            continue  # the fake makes objects that TensorRT creates; the real class has no constructor
        if name not in real["attrs"]:
            problems.append(f"{label}.{name} does not exist in the real class")
            continue
        if callable(value) and real["attrs"][name]["signatures"]:
            fake_params = list(inspect.signature(value).parameters)[1:]
            overloads = [parse_params(s) for s in real["attrs"][name]["signatures"]]
            if not any([p[0] for p in o[: len(fake_params)]] == fake_params and all(p[2] for p in o[len(fake_params):])
                       for o in overloads):
                problems.append(f"{label}.{name}{tuple(fake_params)} fits none of the real signatures")
    return problems


def test_fake_tensorrt_offers_only_real_names(real_api):
    major = real_api["version"].split(".")[0]
    fake = fake_tensorrt(Recorder(), version=real_api["version"])
    problems = []
    for name, value in vars(fake).items():
        if name.startswith("__") and name != "__version__":
            continue
        if name not in real_api["module"]:
            problems.append(f"trt.{name} does not exist")
            continue
        if isinstance(value, type) and issubclass(value, enum.Enum):
            real_members = real_api["classes"][name]["members"] or {}
            problems += [f"trt.{name}.{m} does not exist" for m in value.__members__ if m not in real_members]
            if name == "NetworkDefinitionCreationFlag":  # the fake's values are the real ones
                problems += [f"trt.{name}.{m} = {int(v)}, real {real_members[m]}"
                             for m, v in value.__members__.items() if real_members.get(m) != int(v)]
        elif isinstance(value, type):
            constructs = bool(real_api["module"][name]["signatures"])
            problems += _fake_problems(value, real_api["classes"][name], f"trt.{name}", constructs)
    assert not problems, f"the fake tensorrt (TensorRT {major}) drifted: " + "; ".join(problems)


def test_fake_cudart_offers_only_real_names(cudart):
    fake = FakeCudart()
    problems = []
    for name in dir(FakeCudart):
        if name.startswith("_") or name == "BOOKKEEPING" or name in FakeCudart.BOOKKEEPING:
            continue
        if not hasattr(cudart, name):
            problems.append(f"cudart.{name} does not exist")
            continue
        value, real = getattr(fake, name), getattr(cudart, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            problems += [f"cudart.{name}.{m} = {int(v)}, real {int(getattr(real, m, -1))}"
                         for m, v in value.__members__.items() if int(getattr(real, m, -1)) != int(v)]
        elif isinstance(value, type):
            instance, real_instance = value(), real()
            problems += [f"cudart.{name}().{a} does not exist" for a in vars(instance) if a != "value"
                         and not hasattr(real_instance, a)]
        elif callable(value):
            fake_params = list(inspect.signature(value).parameters)
            real_params = list(inspect.signature(real).parameters)
            if fake_params != real_params:
                problems.append(f"cudart.{name}{tuple(fake_params)} but real {tuple(real_params)}")
    assert not problems, "the fake cudart drifted: " + "; ".join(problems)
    assert int(cudart.cudaStream_t(init_value=7)) == 7  # the fake's init_value keyword is the real one


def test_fake_cuda_driver_offers_only_real_names():
    """The runner asks the driver module one thing (whether a device has its primary context); the fake's call and
    result codes are the real ones, and the real call answers (err, flags, active) even without a driver."""
    driver = pytest.importorskip("cuda.bindings.driver", reason="cuda-bindings is not installed")
    fake = FakeCudaDriver(FakeCudart())
    real = driver.cuDevicePrimaryCtxGetState
    assert list(inspect.signature(fake.cuDevicePrimaryCtxGetState).parameters) == \
        list(inspect.signature(real).parameters) == ["dev"]
    assert {name: int(getattr(driver.CUresult, name)) for name in FakeCudaDriver.CUresult.__members__} == \
        {name: int(value) for name, value in FakeCudaDriver.CUresult.__members__.items()}
    assert runtime_module.primary_context_active(0)  # no driver here: it cannot say, so the device is given back


# -- cuda-python: names and the (err, *values) convention --------------------------------------------------
def test_cudart_names_the_runner_uses_exist(cudart):
    uses = used_api({"module": {}, "classes": {}})
    chains = [u for u in uses if u.kind == "chain" and u.owner == "cudart"]
    assert chains, "the scan found no cudart use"
    for use in chains:
        obj = cudart
        for part in use.name:
            assert hasattr(obj, part), f"{use.where}: cudart.{'.'.join(use.name)} does not exist"
            obj = getattr(obj, part)
    for use in (u for u in uses if u.kind == "cudaattr"):
        real = getattr(cudart, VALUE_TYPES[use.owner])()
        assert hasattr(real, use.name[0]), f"{use.where}: {VALUE_TYPES[use.owner]}.{use.name[0]} does not exist"


def test_cudart_calls_return_err_value_tuples(cudart):
    """Each cudart call the runner makes, with arguments of the runner's types, returns `(cudaError_t, *values)`.

    Without a driver every call returns an error tuple rather than crashing; with one, the
    arguments are harmless (16 bytes, zero-length copies). Calls whose value the runner uses
    must return exactly one value.
    """
    created = cudart.cudaStreamCreate()
    stream = created[1] if int(created[0]) == 0 else cudart.cudaStream_t(0)
    problems = []
    for use in used_api({"module": {}, "classes": {}}):
        if use.kind != "cudacall":
            continue
        fn = use.name[0]
        args = SAMPLE_ARGS[fn](cudart, stream)
        if len(args) != len(use.call.args):
            problems.append(f"{use.where}: {fn} is called with {len(use.call.args)} arguments, the sample has {len(args)}")
            continue
        result = getattr(cudart, fn)(*args)
        if not isinstance(result, tuple) or not isinstance(result[0], cudart.cudaError_t):
            problems.append(f"{use.where}: {fn} returned {result!r}, not (cudaError_t, ...)")
        elif use.value_used and len(result) != 2:
            problems.append(f"{use.where}: {fn} returned {len(result) - 1} values; the runner unpacks one")
        if fn == "cudaMalloc" and int(result[0]) == 0:
            cudart.cudaFree(result[1])
    assert not problems, "; ".join(problems)
    assert int(stream) >= 0  # cudaStream_t converts to the int that execute_async_v3 takes


def test_cuda_error_codes_the_runner_explains_are_real(cudart):
    """The runner's words for CUDA errors 35, 100, 101 belong to the real cudaError_t members of those numbers."""
    names = {code: cudart.cudaError_t(code).name for code in runtime_module.CUDA_MISSING}
    assert names == {34: "cudaErrorStubLibrary", 35: "cudaErrorInsufficientDriver", 100: "cudaErrorNoDevice",
                     101: "cudaErrorInvalidDevice"}
    assert cudart.cudaError_t(runtime_module.CUDA_OUT_OF_MEMORY).name == "cudaErrorMemoryAllocation"
    with pytest.raises(OutOfMemory, match=r"^out of memory on the GPU: CUDA error in cudaMalloc: "
                                          r"cudaErrorMemoryAllocation \(2\)$"):  # a frame too large: not the engine's
        runtime_module._check((cudart.cudaError_t(2), 0), "cudaMalloc")
    err, version = cudart.cudaRuntimeGetVersion()
    assert int(err) == 0 and version >= 12000  # what the no-driver message names, asked without a driver
