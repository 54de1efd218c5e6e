"""TensorRT build: the API sequence against the recording fake of tests/trt_fakes.py (everywhere), a real build on a GPU."""

from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FOREIGN_CACHE, FakeCudaDriver, FakeCudart, Recorder, fake_tensorrt

from mde.errors import BackendError, CheckFailed, InputError, ModelError
from mde.export.tensorrt_build import BuildConfig


@pytest.fixture
def fake_trt(monkeypatch):
    """Install the fake `tensorrt` and cuda-python (tests/trt_fakes.py) on two fake 9.0 GPUs; return the recorder."""
    from mde.export import tensorrt_build
    from mde.runtime.backends import tensorrt as trt_backend

    def install(version: str = "11.4.0.106", cudart: FakeCudart | None = None, **kwargs) -> Recorder:
        rec = Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(rec, version=version, **kwargs))
        monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: (version, "Fake GPU", "9.0"))
        fake_cudart = cudart or FakeCudart(devices=2)
        monkeypatch.setattr(trt_backend, "import_cudart", lambda: fake_cudart)
        monkeypatch.setattr(trt_backend, "import_cuda_driver", lambda: FakeCudaDriver(fake_cudart))
        return rec

    return install


def _cfg(tmp_path: Path, **kwargs) -> BuildConfig:
    return BuildConfig(input_size=(64, 64), timing_cache=tmp_path / "cache" / "timing.cache", **kwargs)


def test_build_engine_api_sequence_and_sidecar(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import build_engine
    from mde.io import sha256_file
    from mde.runtime.backends.tensorrt import read_sidecar, sidecar_metadata

    rec = fake_trt()
    onnx_path = tiny_export / "model.fp16.onnx"
    engine = tmp_path / "model.engine"
    cfg = _cfg(tmp_path, precision="fp16", max_batch=4, workspace_mib=256)
    build_engine(onnx_path, engine, cfg)

    assert ("create_network", 0) in rec.calls  # TensorRT 11: always strongly typed, no flags
    assert ("set_memory_pool_limit", 0, 256 << 20) in rec.calls
    assert ("clear_flag", sys.modules["tensorrt"].BuilderFlag.TF32) in rec.calls  # FP32 layers stay FP32
    assert ("set_shape", "image", [1, 3, 64, 64], [1, 3, 64, 64], [4, 3, 64, 64]) in rec.calls
    assert ("parse_from_file", "model.fp16.onnx") in rec.calls
    assert engine.read_bytes() == b"\x7fSERIALIZED-ENGINE"  # plain: nothing prepended

    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["tensorrt_version"] == "11.4.0.106" and sidecar["tensorrt_major"] == 11
    assert sidecar["compute_capability"] == "9.0" and sidecar["gpu_name"] == "Fake GPU"
    assert sidecar["platform"] == f"{platform.system().lower()}-{platform.machine().lower()}"  # "linux-x86_64"
    assert "precision" not in sidecar  # one record of the precision: the metadata
    assert json.loads(sidecar["metadata"]["mde.precision"]) == "fp16"
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


def test_tensorrt_10_network_is_strongly_typed(fake_trt, tiny_export, tmp_path):
    """TensorRT 10 obeys the ONNX's precision only in a STRONGLY_TYPED network (11 is always strongly typed)."""
    from mde.export.tensorrt_build import build_engine

    rec = fake_trt(version="10.3.0")
    sidecar = build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert ("create_network", 1 << 1) in rec.calls  # STRONGLY_TYPED is 1 in TensorRT 10
    assert sidecar["tensorrt_major"] == 10


def test_timing_cache_is_keyed_by_version_and_gpu_and_checked(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import build_engine

    rec = fake_trt()
    build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["timing-11.4.0.106-sm90-Fake-GPU.cache"]
    assert ("set_timing_cache", b"", False) in rec.calls  # the mismatch check stays on
    assert not any(call[0] == "set_timing_cache" and call[2] for call in rec.calls)

    # the next build on the same TensorRT and GPU starts from the saved cache
    build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert ("create_timing_cache", b"CACHE<>") in rec.calls and ("set_timing_cache", b"CACHE<>", False) in rec.calls

    # another TensorRT version reads and writes its own file
    fake_trt(version="11.5.0.1")
    build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert (tmp_path / "cache" / "timing-11.5.0.1-sm90-Fake-GPU.cache").read_bytes() == b"CACHE<>"


def test_timing_cache_file_names_the_gpu_model():
    """TensorRT rejects another device's cache, of the same architecture too: an H100 and an H200 sharing a home
    folder each replaced the other's at every build."""
    from mde.export.tensorrt_build import timing_cache_file

    base = Path("/c/tensorrt-timing.cache")
    h100, h200 = (timing_cache_file(base, "11.4.0.106", "9.0", name) for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"))
    assert h100.name == "tensorrt-timing-11.4.0.106-sm90-NVIDIA-H100-80GB-HBM3.cache" and h100 != h200
    assert timing_cache_file(base, "10.3.0", "8.7", "Orin (nvgpu)/").name == "tensorrt-timing-10.3.0-sm87-Orin-nvgpu.cache"
    assert timing_cache_file(base, "10.3.0", "8.7").name == "tensorrt-timing-10.3.0-sm87.cache"


def test_rejected_timing_cache_starts_empty_and_says_so(fake_trt, tiny_export, tmp_path, caplog):
    from mde.export.tensorrt_build import build_engine

    rec = fake_trt()
    stored = tmp_path / "cache" / "timing-11.4.0.106-sm90-Fake-GPU.cache"
    stored.parent.mkdir()
    stored.write_bytes(FOREIGN_CACHE)
    with caplog.at_level(logging.WARNING, logger="mde"):
        build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert ("set_timing_cache", FOREIGN_CACHE, False) in rec.calls
    assert ("set_timing_cache", b"", False) in rec.calls  # then an empty cache
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rejected the timing cache" in warnings[0] and stored.name in warnings[0]
    assert stored.read_bytes() == b"CACHE<>"  # replaced by the cache of this build


def test_timing_cache_that_cannot_be_created_is_backend_error(fake_trt, tiny_export, tmp_path, monkeypatch):
    from mde.export.tensorrt_build import build_engine

    fake_trt()
    trt = sys.modules["tensorrt"]
    monkeypatch.setattr(trt.IBuilderConfig, "create_timing_cache", lambda self, serialized_timing_cache: None)
    with pytest.raises(BackendError, match="could not create an empty timing cache"):
        build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert not (tmp_path / "model.engine").exists()


def test_engine_precision_and_size_must_match_the_onnx(fake_trt, tiny_export, tmp_path):
    from mde.export.tensorrt_build import build_engine

    fake_trt()
    with pytest.raises(ModelError, match="asked for int8 64x64, but the ONNX is fp16 64x64"):
        build_engine(tiny_export / "model.fp16.onnx", tmp_path / "model.engine", _cfg(tmp_path, precision="int8"))
    with pytest.raises(ModelError, match="asked for fp32 224x224, but the ONNX is fp32 64x64"):
        build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", BuildConfig(timing_cache=tmp_path / "c"))


def test_tensorrt_older_than_10_3_is_refused(monkeypatch):
    from mde.export.tensorrt_build import require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(Recorder(), version="8.6.2"))
    with pytest.raises(BackendError, match=r"TensorRT 8\.6\.2 is too old: mde needs TensorRT 10\.3 or newer"):
        require_tensorrt()


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
            BuildConfig(input_size=(64, 64), timing_cache=tmp_path / "cache" / "c"),
        )
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no engine, no sidecar
    # the tactics it timed are kept: a retry (the GPU check's, after its time ran out) starts from them
    assert [p.read_bytes()[:6] for p in (tmp_path / "cache").iterdir()] == [b"CACHE<"]


def test_a_profile_tensorrt_refuses_is_one_line(fake_trt, tiny_export, tmp_path):
    """The bindings' set_shape raises RuntimeError on min > opt (a caller's BuildConfig: the CLI checks its own)."""
    from mde.export.tensorrt_build import build_engine

    fake_trt()
    with pytest.raises(InputError, match=r"TensorRT refused the profile of 'image' \(min \[4, 3, 64, 64\], opt "):
        build_engine(tiny_export / "model.onnx", tmp_path / "model.engine",
                     _cfg(tmp_path, min_batch=4, opt_batch=1, max_batch=8))
    assert not (tmp_path / "model.engine").exists()


def test_engine_is_built_on_gpu_0_and_the_callers_device_is_restored(fake_trt, tiny_export, tmp_path, monkeypatch):
    """The sidecar describes GPU 0, so the build runs there even when the thread had GPU 1 current."""
    from mde.export.tensorrt_build import build_engine

    cudart = FakeCudart(devices=2)
    fake_trt(cudart=cudart)
    cudart.cudaSetDevice(1)
    trt = sys.modules["tensorrt"]
    built_on: list[int] = []
    build = trt.Builder.build_serialized_network
    monkeypatch.setattr(trt.Builder, "build_serialized_network",
                        lambda self, *a: built_on.append(cudart.cudaGetDevice()[1]) or build(self, *a))
    build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert built_on == [0]
    assert cudart.cudaGetDevice()[1] == 1


def test_a_builder_tensorrt_cannot_start_is_one_line(fake_trt, tiny_export, tmp_path, monkeypatch):
    """TensorRT that cannot start CUDA (a driver older than its CUDA) makes trt.Builder raise a bare TypeError."""
    from mde.export.tensorrt_build import build_engine

    fake_trt()

    def refuse(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(sys.modules["tensorrt"], "Builder", refuse)
    with pytest.raises(BackendError, match="TensorRT could not start on this GPU .*factory function returned "
                                           "nullptr") as err:
        build_engine(tiny_export / "model.onnx", tmp_path / "model.engine", _cfg(tmp_path))
    assert err.value.path == tiny_export / "model.onnx" and not (tmp_path / "model.engine").exists()


def test_refused_profile_is_input_error_and_writes_nothing(fake_trt, tiny_export, tmp_path, monkeypatch):
    from mde.export.tensorrt_build import build_engine

    fake_trt()
    trt = sys.modules["tensorrt"]
    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, profile: -1)
    with pytest.raises(InputError, match="model.onnx: TensorRT refused the optimization profile"):
        build_engine(tiny_export / "model.onnx", tmp_path / "out" / "model.engine", _cfg(tmp_path))
    assert not (tmp_path / "out").exists()


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


@pytest.mark.tensorrt
def test_real_engine_build_matches_pytorch(tiny_checkpoint, tmp_path):
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
    assert json.loads(seen["sidecar"]["metadata"]["mde.precision"]) == "fp16"
    assert seen["sidecar"]["profile"]["image"]["max"] == [2, 3, 64, 64]
    assert artifacts[1].p99_over_range <= 5e-3
