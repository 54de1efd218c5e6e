"""TensorRT build: the API sequence against a recording fake (everywhere), a real build on a GPU."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mde.errors import CheckFailed, InputError


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def fake_tensorrt(rec: _Recorder, parse_ok: bool = True, build_ok: bool = True) -> types.ModuleType:
    """A stand-in for the `tensorrt` module with the TensorRT 11 Python API surface build_engine uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class Cache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self) -> bytes:
            return b"CACHE<" + self.blob + b">"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.calls.append(("set_shape", name, list(lo), list(opt), list(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            rec.calls.append(("add_optimization_profile",))

        def create_timing_cache(self, blob):
            rec.calls.append(("create_timing_cache", bytes(blob)))
            self.cache = Cache(bytes(blob))
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return b"\x7fSERIALIZED-ENGINE" if build_ok else None

    class Error:
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

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", Path(path).name))
            return parse_ok

        def get_error(self, i):
            return Error(i)

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    from mde.export import tensorrt_build

    def install(**kwargs) -> _Recorder:
        rec = _Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(rec, **kwargs))
        monkeypatch.setattr(
            tensorrt_build, "require_tensorrt", lambda: ("11.0.0", "Fake GPU", "9.0")
        )
        return rec

    return install


def test_build_engine_api_sequence_and_sidecar(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import BuildConfig, build_engine
    from mde.io import sha256_file
    from mde.runtime.backends.tensorrt import read_sidecar, sidecar_metadata

    rec = fake_trt()
    onnx_path = tiny_export / "model.fp16.onnx"
    engine = tmp_path / "model.engine"
    cache = tmp_path / "cache" / "timing.cache"
    cfg = BuildConfig(
        precision="fp16", input_size=(64, 64), max_batch=4, workspace_mib=256, timing_cache=cache
    )
    build_engine(onnx_path, engine, cfg)

    assert ("create_network", 0) in rec.calls  # TensorRT 11: always strongly typed, no flags
    assert ("set_memory_pool_limit", "WORKSPACE", 256 << 20) in rec.calls
    assert ("set_shape", "image", [1, 3, 64, 64], [1, 3, 64, 64], [4, 3, 64, 64]) in rec.calls
    assert ("parse_from_file", "model.fp16.onnx") in rec.calls
    assert engine.read_bytes() == b"\x7fSERIALIZED-ENGINE"  # plain: nothing prepended
    assert cache.read_bytes() == b"CACHE<>"

    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["tensorrt_version"] == "11.0.0" and sidecar["compute_capability"] == "9.0"
    assert sidecar["gpu_name"] == "Fake GPU" and sidecar["precision"] == "fp16"
    assert sidecar["onnx_sha256"] == sha256_file(onnx_path)
    assert sidecar["profile"]["image"] == {
        "min": [1, 3, 64, 64],
        "opt": [1, 3, 64, 64],
        "max": [4, 3, 64, 64],
    }
    assert "build_date" in sidecar
    # the runtime's TensorRT runner reads exactly this sidecar
    meta = sidecar_metadata(read_sidecar(engine), tmp_path / "model.engine.json")
    assert meta.precision == "fp16" and meta.input_size == (64, 64)

    # the timing cache is reused by the next build
    build_engine(onnx_path, engine, cfg)
    assert ("create_timing_cache", b"CACHE<>") in rec.calls


def test_parser_reports_every_error_with_node_names(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import BuildConfig, build_engine

    fake_trt(parse_ok=False)
    with pytest.raises(CheckFailed, match="3 error") as info:
        build_engine(
            tiny_export / "model.onnx", tmp_path / "model.engine", BuildConfig(input_size=(64, 64))
        )
    for i in range(3):
        assert f"node_conv_{i}" in str(info.value) and f"problem {i}" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_build_writes_nothing(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import BuildConfig, build_engine

    fake_trt(build_ok=False)
    with pytest.raises(CheckFailed, match="failed to build"):
        build_engine(
            tiny_export / "model.onnx",
            tmp_path / "model.engine",
            BuildConfig(input_size=(64, 64), timing_cache=tmp_path / "c"),
        )
    assert list(tmp_path.iterdir()) == []


def test_dynamic_size_profile():
    from mde.export.tensorrt_build import BuildConfig

    cfg = BuildConfig(
        input_size=(224, 224),
        dynamic_size=True,
        min_size=128,
        max_size=512,
        min_batch=1,
        opt_batch=2,
        max_batch=8,
    )
    assert cfg.profile() == {"image": [[1, 3, 128, 128], [2, 3, 224, 224], [8, 3, 512, 512]]}
    with pytest.raises(InputError, match="multiples of 32"):
        BuildConfig(dynamic_size=True, min_size=100).profile()
    with pytest.raises(InputError, match="must contain"):
        BuildConfig(input_size=(64, 64), dynamic_size=True, min_size=128).profile()


def _tensorrt_and_gpu() -> str | None:
    """Why the real build cannot run here, or None when it can."""
    from mde.errors import BackendError
    from mde.export.tensorrt_build import require_tensorrt

    try:
        require_tensorrt()
    except BackendError as err:
        return str(err)
    return None


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_build_matches_pytorch(tiny_checkpoint, tmp_path):
    reason = _tensorrt_and_gpu()
    if reason:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {reason}")
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.export.tensorrt_build import engine_is_plain

    artifacts = export_checkpoint(
        ExportConfig(
            checkpoint=tiny_checkpoint,
            out=tmp_path,
            precisions=("fp16",),
            engine=True,
            timing_cache=tmp_path / "timing.cache",
            progress=False,
        )
    )
    engine = tmp_path / "model.engine"
    assert [a.path.name for a in artifacts] == ["model.fp16.onnx", "model.engine"]
    assert engine_is_plain(engine)
    assert artifacts[1].p99_over_range is not None and artifacts[1].p99_over_range <= 5e-3
    assert np.isfinite(artifacts[1].max_abs_diff)


def test_export_with_engine_moves_engine_and_sidecar(
    fake_trt, tiny_checkpoint, tmp_path, monkeypatch
):
    """`export_checkpoint(engine=True)` end to end with the fake TensorRT; the engine run is ONNX Runtime."""
    from mde.export import tensorrt_build
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.export.onnx_export import run_onnxruntime

    fake_trt()
    seen = {}

    def fake_run(engine_path, image):
        seen["sidecar"] = json.loads(tensorrt_build.sidecar_path(engine_path).read_text())
        return run_onnxruntime(tmp_path / "out" / ".." / "source.onnx", image)

    def fake_build(onnx_path, engine_path, cfg):
        (tmp_path / "source.onnx").write_bytes(Path(onnx_path).read_bytes())
        return real_build(onnx_path, engine_path, cfg)

    real_build = tensorrt_build.build_engine
    monkeypatch.setattr(tensorrt_build, "run_engine", fake_run)
    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    out = tmp_path / "out"
    artifacts = export_checkpoint(
        ExportConfig(
            checkpoint=tiny_checkpoint,
            out=out,
            precisions=("fp16",),
            engine=True,
            max_batch=2,
            timing_cache=tmp_path / "timing.cache",
            progress=False,
        )
    )
    assert [a.path.name for a in artifacts] == ["model.fp16.onnx", "model.engine"]
    assert sorted(p.name for p in out.iterdir()) == [
        "golden.npz",
        "model.engine",
        "model.engine.json",
        "model.fp16.onnx",
    ]
    assert seen["sidecar"]["precision"] == "fp16"
    assert seen["sidecar"]["profile"]["image"]["max"] == [2, 3, 64, 64]
    assert artifacts[1].p99_over_range <= 5e-3
