"""Backend registry, runner input validation, ONNX Runtime providers, TensorRT sidecar checks and runner (on fakes)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeCudaDriver, FakeCudart, Recorder, fake_tensorrt

from mde.errors import BackendError, InputError, ModelError
from mde.runtime.backends import base
from mde.runtime.backends.base import (
    BACKENDS,
    Runner,
    TensorSpec,
    backend_names,
    open_runner,
    register_backend,
)
from mde.runtime.backends.onnxruntime import CPU_EP, OnnxRuntimeRunner
from mde.runtime.backends.ort_providers import default_providers
from mde.runtime.backends.tensorrt import (
    TensorRTRunner,
    check_sidecar,
    read_sidecar,
    sidecar_metadata,
    tensorrt_major,
    version_numbers,
)
from mde.runtime.metadata import ModelMetadata


@pytest.fixture(scope="module")
def onnx_path(tiny_export) -> Path:
    return tiny_export / "model.onnx"


@pytest.fixture(scope="module")
def runner(onnx_path):
    with open_runner(onnx_path, threads=1) as r:
        yield r


def _sidecar(version: str = "11.0.1.5", cc: str = "9.0") -> dict:
    meta = ModelMetadata(input_size=(64, 64), max_depth=20.0, precision="fp16", backbone="resnet18")
    return {
        "tensorrt_version": version,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": cc,
        "profile": {"image": {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [8, 3, 64, 64]}},
        "precision": "fp16",
        "onnx_sha256": "0" * 64,
        "build_date": "2025-01-01T00:00:00Z",
        "metadata": meta.to_props(),
    }


@pytest.fixture
def fake_engine(tmp_path) -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(_sidecar()))
    return engine


# -- registry -----------------------------------------------------------------------
def test_builtin_backends_registered():
    names = backend_names()
    assert {"onnxruntime", "tensorrt"} <= set(names)
    assert BACKENDS["onnxruntime"] is OnnxRuntimeRunner and BACKENDS["tensorrt"] is TensorRTRunner


def test_register_backend_adds_a_runner(monkeypatch, tmp_path):
    # register into the real registry and take "echo" out again afterwards: a patched copy of the
    # dict would swallow every built-in backend first imported during the test
    monkeypatch.setitem(BACKENDS, "echo", None)

    @register_backend("echo")
    class EchoRunner(Runner):
        def _activate_impl(self) -> None:
            self.metadata = ModelMetadata(input_size=(2, 2), max_depth=1.0)
            self.input_specs = {"x": TensorSpec("x", np.dtype(np.float32), (None, 3, 2, 2))}
            self.output_specs = {"depth": TensorSpec("depth", np.dtype(np.float32), (None, 1, 2, 2))}

        def _infer_impl(self, feed):
            return {"depth": feed["x"][:, :1] * 2}

    model = tmp_path / "m.onnx"  # a registered backend may read any file, an .onnx too
    model.write_bytes(b"x")
    assert "echo" in base.backend_names()
    with open_runner(model, backend="echo") as r:
        assert r.name == "echo" and r.is_active
        x = np.ones((3, 3, 2, 2), np.float32)
        np.testing.assert_array_equal(r.infer({"x": x})["depth"], np.full((3, 1, 2, 2), 2.0))
    assert not r.is_active
    with pytest.raises(InputError, match="not active"):
        r.infer({"x": x})


def test_what_a_runner_of_ones_own_needs_is_in_mde_runtime():
    """`register_backend`, `Runner` and `TensorSpec` (each runner declares its tensors with it) from the package
    itself; TensorSpec had to be found in mde.runtime.backends.base."""
    import mde.runtime

    assert {"register_backend", "Runner", "TensorSpec"} <= set(mde.runtime.__all__)
    assert mde.runtime.TensorSpec is TensorSpec and mde.runtime.Runner is Runner


def test_unknown_backend_lists_valid_names(onnx_path):
    with pytest.raises(InputError, match="unknown backend 'tflite'; choose from: auto, golden, onnxruntime, tensorrt, torch"):
        open_runner(onnx_path, backend="tflite")


@pytest.mark.parametrize(
    "name, content, error, match",
    [
        ("missing.onnx", None, ModelError, "not found"),
        ("empty.onnx", b"", ModelError, "empty"),
        ("garbage.onnx", b"\x08\x07garbage" * 10, ModelError, "cannot load ONNX model"),
        ("model.tflite", b"abc", InputError, "cannot pick a backend"),
        ("model.engine", b"abc", ModelError, "sidecar model.engine.json not found"),
    ],
)
def test_open_runner_bad_files(tmp_path, name, content, error, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        open_runner(path)
    assert name in str(info.value)


def test_onnx_without_metadata_is_model_error(tmp_path, onnx_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="no mde metadata"):
        open_runner(bare)


def test_a_tensor_of_an_unsupported_type_is_refused_naming_the_file(tmp_path, onnx_path):
    """The message named the tensor only: with several models (`mde bench a.onnx b.onnx`) nobody knew whose."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    model.graph.node.append(helper.make_node("Cast", ["depth"], ["extra"], to=TensorProto.INT16))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.INT16, None))
    path = tmp_path / "extra.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"extra\.onnx: unsupported tensor type tensor\(int16\) for 'extra'"):
        open_runner(path)


# -- input validation -----------------------------------------------------------------
def test_runner_specs(runner):
    spec = runner.input_specs["image"]
    assert spec.dtype == np.float32 and spec.shape[1:] == (3, 64, 64)
    assert list(runner.output_specs) == ["depth"]
    assert runner.providers == [CPU_EP]


@pytest.mark.parametrize(
    "feed, match",
    [
        ({"img": np.zeros((1, 3, 64, 64), np.float32)}, r"the model's inputs are \['image'\]; the feed names \['img'\]"),
        ({"image": np.zeros((1, 3, 64, 64), np.float32), "extra": np.zeros(1)}, "the model's inputs are"),
        ({"image": np.zeros((1, 3, 64, 64), np.float64)}, "expected dtype float32, got float64"),
        ({"image": np.zeros((1, 3, 32, 32), np.float32)}, r"expected shape \(\?, 3, 64, 64\), got \(1, 3, 32, 32\)"),
        ({"image": np.zeros((3, 64, 64), np.float32)}, "expected shape"),
        ({"image": np.zeros((0, 3, 64, 64), np.float32)}, r"got \(0, 3, 64, 64\) \(an empty batch\)"),
        ({"image": [[0.0]]}, "numpy array"),
        ([np.zeros((1, 3, 64, 64), np.float32)], "dict"),
    ],
    ids=["name", "extra", "dtype", "shape", "ndim", "zero-batch", "list-value", "not-dict"],
)
def test_runner_rejects_bad_feeds(runner, feed, match):
    with pytest.raises(InputError, match=match):
        runner.infer(feed)


def test_runner_takes_a_big_endian_feed_as_its_numbers(runner):
    """float32 stored big-endian (`np.load` of another machine's file) was refused as "expected dtype float32, got
    float32"; it is the same numbers, run in this machine's byte order. A check of it names the order."""
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(runner.infer({"image": x.astype(">f4")})["depth"], runner.infer({"image": x})["depth"])
    with pytest.raises(InputError, match=r"expected dtype float32, got float64 \(>f8: other byte order\)"):
        runner.infer({"image": x.astype(">f8")})


def test_runner_infers_batches(runner):
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    out = runner.infer({"image": x})["depth"]
    assert out.shape == (3, 1, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[1:2], runner.infer({"image": x[1:2]})["depth"], atol=1e-5)


# -- onnxruntime providers ------------------------------------------------------------
def test_default_providers_order_and_fallback():
    assert default_providers(["CPUExecutionProvider"]) == [CPU_EP]
    chosen = default_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen[-1] == CPU_EP
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen == [p for p in order if p in chosen]


def test_explicit_unknown_provider_is_backend_error(onnx_path):
    with pytest.raises(BackendError, match="NopeExecutionProvider"):
        open_runner(onnx_path, providers=["NopeExecutionProvider"])


def test_explicit_cpu_provider_and_threads(onnx_path):
    with open_runner(onnx_path, providers=[CPU_EP], threads=1, inter_op_threads=1) as r:
        assert r.providers == [CPU_EP]


def test_negative_threads_rejected(onnx_path):
    with pytest.raises(InputError, match="thread"):
        open_runner(onnx_path, threads=-1)


# -- tensorrt: sidecar (pure, runs everywhere) -------------------------------------------
def test_check_sidecar_accepts_same_version_and_arch():
    check_sidecar(_sidecar("11.0.1.5", "9.0"), "11.0.1.5", "9.0")
    check_sidecar(_sidecar("11.0.1.5", "9.0"), "11.0.1", "9.0")  # build number not significant


def test_check_sidecar_warns_of_another_gpu_of_the_same_architecture(caplog):
    """An sm_90 engine built on an H100 loads on an H200 (TensorRT only warns, in its own log): said in mde's."""
    with caplog.at_level("WARNING", logger="mde.runtime.backends.tensorrt"):
        check_sidecar(_sidecar(), "11.0.1.5", "9.0", gpu_name="NVIDIA H100 80GB HBM3", source="m.engine")
        assert caplog.text == ""
        check_sidecar(_sidecar(), "11.0.1.5", "9.0", gpu_name="NVIDIA H200", source="m.engine")
    assert "m.engine: engine built on NVIDIA H100 80GB HBM3, running on NVIDIA H200 (both sm_90)" in caplog.text


def test_check_sidecar_refuses_another_platform():
    """An x86-64 machine's engine on an Arm one of the same GPU architecture (an H100's on a GH200) is refused by
    name, not left to fail in deserialization as "truncated or corrupt"; a sidecar from before `platform` passes."""
    built = {**_sidecar("11.4.0.106", "9.0"), "platform": "linux-x86_64"}
    check_sidecar(built, "11.4.0.106", "9.0", here_platform="linux-x86_64")
    check_sidecar(_sidecar("11.4.0.106", "9.0"), "11.4.0.106", "9.0", here_platform="linux-aarch64")
    with pytest.raises(BackendError, match="engine built on linux-x86_64, and this machine is linux-aarch64") as err:
        check_sidecar(built, "11.4.0.106", "9.0", source="m.engine", here_platform="linux-aarch64")
    assert err.value.path == Path("m.engine")


def test_check_sidecar_tells_prereleases_apart():
    with pytest.raises(BackendError, match=r"TensorRT 11\.0rc1 for sm_90.*this machine has TensorRT 11\.1rc1"):
        check_sidecar(_sidecar("11.0rc1", "9.0"), "11.1rc1", "9.0")


@pytest.mark.parametrize(
    "installed, cc, match",
    [
        ("10.3.0", "9.0", (r"engine built by TensorRT 11 \(11\.0\.1\.5, sm_90, NVIDIA H100 80GB HBM3\), but this "
                           r"machine has TensorRT 10 \(10\.3\.0, sm_90 \(Orin\)\); TensorRT 10 cannot load a "
                           r"TensorRT 11 engine")),
        ("11.0.1.5", "8.7", r"TensorRT 11\.0\.1\.5 for sm_90 .*this machine has TensorRT 11\.0\.1\.5 / sm_87 \(Orin\)"),
        ("10.3", "8.7", r"TensorRT 11 \(11\.0\.1\.5, sm_90.*TensorRT 10 \(10\.3, sm_87 \(Orin\)\)"),
        ("11.1.0", "9.0", "this machine has TensorRT 11.1.0 / sm_90"),
    ],
    ids=["major", "arch", "both", "minor"],
)
def test_check_sidecar_mismatch_names_both(installed, cc, match):
    with pytest.raises(BackendError, match=match):
        check_sidecar(_sidecar("11.0.1.5", "9.0"), installed, cc, gpu_name="Orin", source="model.engine")


@pytest.mark.parametrize("version, numbers", [("10.3.0.30", (10, 3, 0, 30)), ("11.4", (11, 4)),
                                              ("11.0rc1", (11,)), ("11.1.post2", (11, 1)), ("dev", ()),
                                              ("1²", ())])
def test_version_numbers_stop_at_the_first_non_number(version, numbers):
    assert version_numbers(version) == numbers


def test_tensorrt_major_needs_a_leading_number():
    assert tensorrt_major("11.4.0.106") == 11
    with pytest.raises(BackendError, match="cannot read a TensorRT major version from 'dev'"):
        tensorrt_major("dev")


def test_check_sidecar_major_from_the_key_or_from_old_sidecars():
    """`tensorrt_major` names the builder's major; sidecars written before it existed derive it from the version."""
    old = _sidecar("10.3.0.30", "8.7")
    assert "tensorrt_major" not in old
    check_sidecar(old, "10.3.0", "8.7")
    with pytest.raises(BackendError, match="engine built by TensorRT 10 .* this machine has TensorRT 11"):
        check_sidecar(old, "11.4.0.106", "8.7")
    new = {**_sidecar("10.3.0.30", "8.7"), "tensorrt_major": 10}
    new.pop("precision")  # written once, in the metadata
    check_sidecar(new, "10.3.0.30", "8.7")
    assert sidecar_metadata(new, "model.engine.json").precision == "fp16"
    with pytest.raises(ModelError, match="tensorrt_major must be an integer"):
        check_sidecar({**new, "tensorrt_major": "ten"}, "10.3.0", "8.7")


def test_read_sidecar_errors(tmp_path):
    engine = tmp_path / "model.engine"
    with pytest.raises(ModelError, match="model.engine.json not found"):
        read_sidecar(engine)
    (tmp_path / "model.engine.json").mkdir()  # there, but no file: not "not found"
    with pytest.raises(ModelError, match="model.engine.json: engine sidecar is not a readable file"):
        read_sidecar(engine)
    (tmp_path / "model.engine.json").rmdir()
    (tmp_path / "model.engine.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable engine sidecar"):
        read_sidecar(engine)
    (tmp_path / "model.engine.json").write_text(json.dumps({"tensorrt_version": "11.0"}))
    with pytest.raises(ModelError, match="lacks compute_capability, profile, metadata"):
        read_sidecar(engine)
    good = {"tensorrt_version": "11.0", "compute_capability": "9.0", "metadata": {"a": 1},
            "profile": {"input": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [2, 3, 64, 64]}}}
    for key, value, match in [("metadata", "str", r"metadata \(str, expected dict\)"),
                              ("profile", {"input": {}}, r"malformed profile of 'input'"),
                              ("compute_capability", None, r"compute_capability \(NoneType, expected str\)"),
                              ("profile", [], r"malformed profile \(list"),
                              ("tensorrt_version", "", r"malformed tensorrt_version \(empty\)"),
                              # shown by `mde info` as if valid before; the runner refused them later
                              ("tensorrt_version", "abc", r"tensorrt_version \('abc', expected a version"),
                              ("tensorrt_major", "10", r"tensorrt_major must be an integer, got '10'"),
                              ("profile", {"input": {"min": [2, 3, 64, 64], "opt": [1, 3, 64, 64],
                                                     "max": [1, 3, 64, 64]}}, r"min <= opt <= max")]:
        (tmp_path / "model.engine.json").write_text(json.dumps({**good, key: value}))
        with pytest.raises(ModelError, match=match):
            read_sidecar(engine)
    listed = _sidecar()
    listed["metadata"]["mde.model"] = "[1]"  # a list where an object belongs
    (tmp_path / "model.engine.json").write_text(json.dumps(listed))
    with pytest.raises(ModelError, match="model.engine: malformed mde metadata"):
        sidecar_metadata(read_sidecar(engine), engine)


def test_sidecar_metadata_roundtrip(fake_engine):
    meta = sidecar_metadata(read_sidecar(fake_engine), fake_engine)
    assert meta.precision == "fp16" and meta.input_size == (64, 64)


def test_tensorrt_missing_is_backend_error_with_install_hint(fake_engine):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; the not-installed message cannot be tested")
    with pytest.raises(BackendError, match=r"model.engine: TensorRT is not installed .*pip install -e '\.\[tensorrt\]'"):
        open_runner(fake_engine)


# -- tensorrt: the runner on the fakes of tests/trt_fakes.py (everywhere) ----------------------
@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Install a fake TensorRT 11.4 and a fake cuda-python; return a function (**fake options) -> (engine, cudart)."""
    from mde.runtime.backends import tensorrt as trt_backend

    def install(devices: int = 2, driver: bool = True, output_dtype: str = "FLOAT") -> tuple[Path, FakeCudart]:
        cudart = FakeCudart(devices=devices, driver=driver)
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(Recorder(), output_dtype=output_dtype))
        monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
        monkeypatch.setattr(trt_backend, "import_cuda_driver", lambda: FakeCudaDriver(cudart))
        engine = tmp_path / "model.engine"
        engine.write_bytes(b"\x7fSERIALIZED-ENGINE")
        sidecar = {**_sidecar("11.4.0.106", "9.0"), "tensorrt_major": 11}
        del sidecar["precision"]
        (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
        return engine, cudart

    return install


def test_tensorrt_runner_moves_data_through_the_engine(fake_gpu):
    engine, cudart = fake_gpu()
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    with open_runner(engine) as runner:
        assert runner.input_specs["image"].shape == (None, 3, 64, 64) and runner.max_batch() == 8
        out = runner.infer({"image": x})["depth"]
        with pytest.raises(InputError, match="outside the engine's profile"):
            runner.infer({"image": np.zeros((9, 3, 64, 64), np.float32)})
    np.testing.assert_allclose(out, x.mean(axis=1, keepdims=True) / 2, rtol=1e-6)
    assert cudart.memory == {} and cudart.streams == set()  # deactivate released everything


def test_tensorrt_runner_sets_its_device_on_every_calling_thread(fake_gpu):
    """The current CUDA device is per thread: infer and deactivate from other threads still use GPU 1."""
    engine, cudart = fake_gpu(devices=2)
    runner = open_runner(engine, device=1)
    x = np.ones((1, 3, 64, 64), np.float32)
    worker = threading.Thread(target=lambda: runner.infer({"image": x}))
    worker.start()
    worker.join()
    closer = threading.Thread(target=runner.deactivate)
    closer.start()
    closer.join()
    calls = [(call, device) for call, device, _ in cudart.log]
    assert ("cudaMalloc", 1) in calls and ("cudaFree", 1) in calls and ("cudaStreamDestroy", 1) in calls
    assert all(device == 1 for _, device in calls), calls


def test_tensorrt_runner_gives_the_callers_device_back(fake_gpu):
    """A runner on GPU 1 leaves the calling thread's current device (shared with PyTorch) as it found it."""
    engine, cudart = fake_gpu(devices=2)
    cudart.cudaSetDevice(0)  # the caller works on GPU 0 (PyTorch, say): its context exists
    assert cudart.cudaGetDevice()[1] == 0
    runner = open_runner(engine, device=1)
    assert cudart.cudaGetDevice()[1] == 0
    runner.infer({"image": np.ones((1, 3, 64, 64), np.float32)})
    assert cudart.cudaGetDevice()[1] == 0
    runner.deactivate()
    assert cudart.cudaGetDevice()[1] == 0
    assert ("cudaMalloc", 1) in [(call, device) for call, device, _ in cudart.log]


def test_tensorrt_runner_on_gpu_1_starts_no_context_on_gpu_0(fake_gpu):
    """In a process that never used GPU 0, a runner on GPU 1 does not choose GPU 0 on its way out: since CUDA 12
    that would create GPU 0's context (hundreds of MiB) for nothing."""
    engine, cudart = fake_gpu(devices=2)
    with open_runner(engine, device=1) as runner:
        runner.infer({"image": np.ones((1, 3, 64, 64), np.float32)})
    assert cudart.contexts == {1}


def test_a_runtime_tensorrt_cannot_start_is_backend_error(fake_gpu, monkeypatch):
    engine, _ = fake_gpu()

    def refuse(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(sys.modules["tensorrt"], "Runtime", refuse)
    with pytest.raises(BackendError, match="TensorRT could not start on this GPU") as err:
        open_runner(engine)
    assert err.value.path == Path(engine)


def test_tensorrt_runner_frees_even_when_its_device_cannot_be_chosen(fake_gpu, monkeypatch):
    """Closing never raises and never leaks: a failing cudaGetDevice still lets the buffers and stream go."""
    engine, cudart = fake_gpu()
    runner = open_runner(engine)
    runner.infer({"image": np.ones((1, 3, 64, 64), np.float32)})
    monkeypatch.setattr(cudart, "cudaGetDevice", lambda: (cudart.cudaError_t.cudaErrorInvalidValue, None))
    runner.deactivate()
    assert cudart.memory == {} and cudart.streams == set()


def test_tensorrt_runner_never_frees_a_buffer_twice(fake_gpu, monkeypatch):
    """A failed cudaFree while a buffer grows is an error once; closing does not free that pointer again."""
    engine, cudart = fake_gpu()
    runner = open_runner(engine)
    runner.infer({"image": np.ones((1, 3, 64, 64), np.float32)})
    freed: list[int] = []
    monkeypatch.setattr(cudart, "cudaFree", lambda ptr: freed.append(int(ptr)) or (cudart.cudaError_t.cudaErrorInvalidValue,))
    with pytest.raises(BackendError, match="cudaFree"):
        runner.infer({"image": np.ones((2, 3, 64, 64), np.float32)})
    runner.deactivate()
    assert len(freed) == len(set(freed)), freed


def test_tensorrt_runner_without_driver_says_what_is_missing(fake_gpu):
    engine, _ = fake_gpu(driver=False)
    with pytest.raises(BackendError, match=r"TensorRT needs a CUDA GPU: no NVIDIA driver, or one older than CUDA "
                       r"13\.0, which the CUDA 13\.0 runtime inside cuda-python needs .*cudaErrorInsufficientDriver, "
                       "CUDA error 35") as err:
        open_runner(engine)
    assert err.value.path == Path(engine)  # the message names the engine, as every refusal does


def test_tensorrt_runner_missing_device_is_backend_error(fake_gpu):
    engine, cudart = fake_gpu(devices=1)
    with pytest.raises(BackendError, match="no CUDA GPU 1 on this machine") as err:
        open_runner(engine, device=1)
    assert cudart.log == [] and err.value.path == Path(engine)


def test_tensorrt_runner_unmappable_dtype_is_model_error_and_releases(fake_gpu):
    """A BF16 output has no numpy type (`trt.nptype` raises TypeError): a ModelError, nothing left allocated."""
    engine, cudart = fake_gpu(output_dtype="BF16")
    with pytest.raises(ModelError, match="engine tensor 'depth' is BF16, which has no numpy type") as info:
        open_runner(engine)
    assert "model.engine" in str(info.value)
    assert cudart.memory == {} and cudart.streams == set()


# -- tensorrt: real engine (GPU + TensorRT only) -------------------------------------------
@pytest.mark.tensorrt
def test_tensorrt_engine_runs(tiny_checkpoint, tmp_path):
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime import DepthEstimator

    export_checkpoint(ExportConfig(checkpoint=tiny_checkpoint, out=tmp_path, precisions=("fp32",), engine=True))
    with DepthEstimator.open(tmp_path / "model.engine") as est, DepthEstimator.open(tmp_path / "model.onnx") as ref:
        assert est.backend == "tensorrt"
        rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
        np.testing.assert_allclose(est.predict(rgb), ref.predict(rgb), atol=5e-3 * est.metadata.max_depth)
        with pytest.raises(InputError, match="outside the engine's profile"):
            limit = est.runner.max_batch()
            est.infer(np.zeros((limit + 1, 3, 64, 64), np.float32))


@pytest.mark.parametrize("backend, suffix", [("golden", ".npz"), ("tensorrt", ".engine"), ("torch", ".pt"),
                                             ("onnxruntime", ".onnx")])
def test_a_mistyped_option_is_refused_by_every_backend(backend, suffix, tmp_path):
    """The engine, golden and torch runners took any keyword and dropped it: `devcie=1` ran on GPU 0 unsaid."""
    from mde.runtime.backends.base import open_runner

    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not read: the option is refused first")
    with pytest.raises(InputError, match=rf"^bad option for the {backend} backend \(.*'devcie'\)"):
        open_runner(path, backend, devcie=1)
    if backend != "onnxruntime":  # ONNX Runtime's own providers, elsewhere a silent run somewhere else
        with pytest.raises(InputError, match=f"runs on the {backend} backend, which takes none"):
            open_runner(path, backend, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("raw, said", [
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
     "Name:'/encoder/conv1/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* "
     "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory for "
     "requested buffer of size 4294967296",
     "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
     "Name:'/encoder/conv1/Conv' Status Message: Failed to allocate memory for requested buffer of size 4294967296"),
    ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/model.cc:"
     "256 onnxruntime::Model::Model(args) Unsupported model IR version: 13",
     "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed: Unsupported model IR version: 13"),
    ("tensorprotoutils.cc:1876 GetExtData External data path does not exist", "External data path does not exist"),
    ("Status Message: conv.cc:123 virtual onnxruntime::common::Status onnxruntime::Conv<float>::Compute(onnxruntime::"
     "OpKernelContext*) const X num_dims does not match W num_dims", "Status Message: X num_dims does not match W num_dims"),
    ("expr=cudaMalloc; /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:123 std::conditional_t<THRW, void, "
     "onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, int) [with ERRTYPE = cudaError; bool "
     "THRW = true] out of memory", "expr=cudaMalloc; out of memory"),
], ids=["return-type", "qualified", "plain", "virtual", "template"])
def test_ort_reason_drops_the_cpp_frame(raw, said):
    """An out-of-memory message kept `bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(...)`: a
    frame with a return type before its name was not recognised."""
    from mde.runtime.backends.onnxruntime import ort_reason

    assert ort_reason(RuntimeError(raw)) == said
