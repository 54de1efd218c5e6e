"""ONNX Runtime providers: the GPU libraries preloaded, the TensorRT EP probed from its own ELF, no silent CPU run.

The GPU paths cannot run here (no GPU); they are driven through the real onnxruntime module with
its session class and device count replaced, so what is checked is mde's provider logic.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import mde.runtime.backends.onnxruntime as ortb
import mde.runtime.backends.ort_providers as eps
from mde.errors import BackendError, ModelError
from mde.runtime.backends.onnxruntime import CPU_EP, CUDA_EP, TRT_EP

ort = pytest.importorskip("onnxruntime")
CAPI = Path(ort.__file__).parent / "capi"
REAL_SESSION = ort.InferenceSession


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine with one GPU as far as mde can tell; caches cleared before and after."""
    eps.provider_problem.cache_clear()
    monkeypatch.setattr(eps, "cuda_device_count", lambda: 1)
    preloads = []
    monkeypatch.setattr(eps, "preload_gpu_libraries", lambda: preloads.append(1) or "")
    yield preloads
    eps.provider_problem.cache_clear()


def _loader(missing: set[str]):
    def load(soname: str) -> object:
        if soname in missing:
            raise OSError(f"{soname}: cannot open shared object file")
        return object()

    return load


class FakeSession:
    """Stands in for InferenceSession: records its providers, uses only `uses`; a provider it cannot use fails
    the session as ORT's does with its fallback off (with it on: printed, and the CPU taken, as ORT's fallback)."""

    uses: list[str] = [CPU_EP]
    calls: list = []
    fallbacks: list = []

    def __init__(self, model, sess_options=None, providers=None, enable_fallback=1):
        FakeSession.calls.append(providers)
        FakeSession.fallbacks.append(enable_fallback)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        if any(p not in self.uses for p in names):
            if not enable_fallback:
                raise RuntimeError(f"EP Error libcublasLt.so.13: cannot open shared object file when using {names}")
            print("*************** EP Error ***************")
            print(f"EP Error libcublasLt.so.13: cannot open shared object file when using {names}")
        self._providers = [p for p in names if p in self.uses] or [CPU_EP]
        self.fallback = bool(enable_fallback)  # ORT's _enable_fallback: a provider failing at run time re-runs
        self._model = model

    def __getattr__(self, name):
        """Metadata and I/O specs (what a runner reads) from a real CPU session on the same model."""
        if name.startswith("_"):
            raise AttributeError(name)
        real = REAL_SESSION(self._model, providers=[CPU_EP])
        return getattr(real, name)

    def get_providers(self):
        return self._providers

    def disable_fallback(self):
        self.fallback = False


@pytest.fixture
def fake_session(monkeypatch):
    FakeSession.calls, FakeSession.fallbacks = [], []
    FakeSession.uses = [CPU_EP]
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    return FakeSession


# -- the ELF reader and the TensorRT EP probe (defect 3) ---------------------------------
@pytest.mark.skipif(not (CAPI / "libonnxruntime_providers_tensorrt.so").is_file(),
                    reason="this onnxruntime has no TensorRT provider library")
def test_elf_needed_reads_the_tensorrt_provider_sonames():
    needed = eps.elf_needed(CAPI / "libonnxruntime_providers_tensorrt.so")
    nvinfer = [n for n in needed if n.startswith("libnvinfer.so.")]
    assert len(nvinfer) == 1 and any(n.startswith("libnvonnxparser.so.") for n in needed)
    assert "libc.so.6" in needed


def test_elf_needed_rejects_a_non_elf_file(tmp_path):
    bogus = tmp_path / "libfake.so"
    bogus.write_bytes(b"not an elf at all")
    with pytest.raises(ModelError, match="not an ELF"):
        eps.elf_needed(bogus)


@pytest.mark.skipif(not (CAPI / "libonnxruntime_providers_tensorrt.so").is_file(),
                    reason="this onnxruntime has no TensorRT provider library")
def test_tensorrt_ep_probe_wants_the_sonames_its_library_links(gpu_machine, monkeypatch):
    """A TensorRT of another major (what `mde[tensorrt]` may install) does not make the EP usable."""
    needed = eps.elf_needed(CAPI / "libonnxruntime_providers_tensorrt.so")
    linked = {n for n in needed if n.startswith(("libnvinfer.so.", "libnvonnxparser.so."))}
    other_major = {n.rsplit(".", 1)[0] + ".99" for n in linked}
    present = set(needed) - linked | other_major  # everything but the exact TensorRT sonames
    monkeypatch.setattr(eps, "load_library", _loader(set(needed) - present))
    problem = eps.provider_problem(TRT_EP)
    assert all(n in problem for n in linked), problem
    assert TRT_EP not in eps.default_providers([TRT_EP, CUDA_EP, CPU_EP])


def test_a_cuda_provider_without_its_libraries_says_how_to_get_them(gpu_machine, monkeypatch):
    """A torch-free install with a GPU ran on the CPU, the warning naming libcublasLt.so.13 and the like but not
    where they come from (torch's install brings them; onnxruntime-gpu's extras alone lack cuBLAS)."""
    needed = eps.elf_needed(CAPI / "libonnxruntime_providers_cuda.so")
    monkeypatch.setattr(eps, "load_library", _loader({n for n in needed if n.startswith("libcublas")}))
    problem = eps.provider_problem(CUDA_EP)
    assert "libcublas" in problem and problem.endswith(f"({eps.cuda_libraries_hint(needed)})"), problem
    major = next(n for n in needed if n.startswith("libcublas")).rsplit(".so.", 1)[1]  # this onnxruntime's CUDA
    assert eps.CUBLAS_WHEELS[major] in problem  # a CUDA 12 build's hint named CUDA 13's cuBLAS
    assert "nvidia-cublas-cu12" in eps.cuda_libraries_hint(["libcublasLt.so.12", "libcudnn.so.9"])
    assert "'nvidia-cublas>=13,<14'" in eps.cuda_libraries_hint(["libcublasLt.so.13"])
    eps.provider_problem.cache_clear()
    monkeypatch.setattr(eps, "load_library", _loader({"libcuda.so.1"}))  # no driver: no wheel gives it
    assert eps.provider_problem(CUDA_EP) == "libonnxruntime_providers_cuda.so needs libcuda.so.1, not found"


def test_provider_problem_needs_a_gpu_first(monkeypatch):
    eps.provider_problem.cache_clear()
    monkeypatch.setattr(eps, "cuda_device_count", lambda: 0)
    try:
        assert "no CUDA GPU" in eps.provider_problem(CUDA_EP)
        assert eps.provider_problem(CPU_EP) == ""
        assert eps.default_providers([TRT_EP, CUDA_EP, CPU_EP]) == [CPU_EP]
    finally:
        eps.provider_problem.cache_clear()


def test_tensorrt_ep_gets_engine_and_timing_caches(gpu_machine, fake_session, monkeypatch, tiny_export, tmp_path):
    """One cache folder per model, by content: ORT keys an engine by file and tensor names, never weights, so a
    re-export's model.onnx loaded the first one's engine; made beforehand (the provider makes one level only)."""
    from mde.io import sha256_file

    monkeypatch.setattr(eps, "load_library", _loader(set()))
    monkeypatch.setenv("HOME", str(tmp_path))
    fake_session.uses = [TRT_EP, CUDA_EP, CPU_EP]
    folders = []
    for model in ("model.onnx", "model.fp16.onnx"):
        ortb.create_session(tiny_export / model)
        trt = [p for p in fake_session.calls[-1] if isinstance(p, tuple)]
        assert trt and trt[0][0] == TRT_EP
        options = trt[0][1]
        assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
        folder = Path(options["trt_engine_cache_path"])
        assert folder == Path(options["trt_timing_cache_path"]) and folder.is_dir()
        assert folder == tmp_path / ".cache" / "mde" / "ort-tensorrt" / sha256_file(tiny_export / model)[:16]
        folders.append(folder)
    assert folders[0] != folders[1]


def test_cuda_ep_computes_fp32_in_fp32(gpu_machine, fake_session, monkeypatch, tiny_export):
    """ORT's CUDA EP would run FP32 convolutions in TF32 on Ampere+; the session asks for FP32 math."""
    monkeypatch.setattr(eps, "load_library", _loader(set()))
    fake_session.uses = [CUDA_EP, CPU_EP]
    ortb.create_session(tiny_export / "model.onnx", providers=[CUDA_EP, CPU_EP])
    assert (CUDA_EP, {"use_tf32": "0"}) in fake_session.calls[-1]


@pytest.mark.parametrize("providers", [[CUDA_EP, CPU_EP], None])
def test_cuda_ep_allows_tf32_for_an_fp16_artifact_only(gpu_machine, fake_session, monkeypatch, tiny_export,
                                                      providers):
    """An FP16 graph has no FP32 convolution for TF32 to change, and without it cuDNN finds no fused FP16
    plans (1.7x slower on an H100); FP32 artifacts keep FP32 math. Named or chosen for this machine alike."""
    monkeypatch.setattr(eps, "load_library", _loader(set()))
    fake_session.uses = [CUDA_EP, CPU_EP]
    for name, precision, tf32 in (("model.fp16.onnx", "fp16", "1"), ("model.onnx", "fp32", "0")):
        with ortb.OnnxRuntimeRunner(tiny_export / name, providers=providers) as runner:
            assert runner.providers[0] == CUDA_EP and runner.metadata.precision == precision
        cuda = [p for p in fake_session.calls[-1] if isinstance(p, tuple) and p[0] == CUDA_EP]
        assert cuda == [(CUDA_EP, {"use_tf32": tf32})], name


def test_a_provider_that_cannot_run_is_said_once_per_session(gpu_machine, fake_session, monkeypatch, tiny_export,
                                                               caplog):
    """The FP16 check chose the providers a second time, and said the TensorRT provider's problem twice."""
    monkeypatch.setattr(eps, "missing_libraries", lambda lib: ["libnvinfer.so.10"] if "tensorrt" in lib.name else [])
    fake_session.uses = [CUDA_EP, CPU_EP]
    with caplog.at_level(logging.INFO, logger=eps.log.name):
        with ortb.OnnxRuntimeRunner(tiny_export / "model.fp16.onnx") as runner:
            assert runner.providers[0] == CUDA_EP
    said = [r.getMessage() for r in caplog.records if "cannot run here" in r.getMessage()]
    assert len(said) == 1 and TRT_EP in said[0], said
    assert (CUDA_EP, {"use_tf32": "1"}) in fake_session.calls[-1]


def test_cpu_session_reads_no_metadata_first(fake_session, tiny_export):
    """The FP16 check opens a session of its own; where no GPU provider is wanted it is not made."""
    with ortb.OnnxRuntimeRunner(tiny_export / "model.fp16.onnx", providers=[CPU_EP]):
        pass
    assert fake_session.calls == [[CPU_EP]]


@pytest.mark.skipif(not (CAPI / "libonnxruntime_providers_cuda.so").is_file(),
                    reason="this onnxruntime has no CUDA provider library")
def test_cuda_ep_knows_the_options_mde_gives_it():
    """Every CUDA EP option key mde passes is one this onnxruntime's CUDA provider library parses."""
    import mmap

    with open(CAPI / "libonnxruntime_providers_cuda.so", "rb") as f, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as library:
        for key in ortb.cuda_provider_options():
            assert library.find(b"\0" + key.encode() + b"\0") >= 0, key


# -- no silent CPU run (defect 2) ----------------------------------------------------------
def test_gpu_libraries_are_preloaded_before_a_gpu_session(gpu_machine, fake_session, monkeypatch, tiny_export):
    monkeypatch.setattr(eps, "load_library", _loader(set()))
    fake_session.uses = [CUDA_EP, CPU_EP]
    session = ortb.create_session(tiny_export / "model.onnx", providers=[CUDA_EP, CPU_EP])
    assert gpu_machine, "preload_gpu_libraries was not called"
    assert session.get_providers() == [CUDA_EP, CPU_EP]
    assert session.fallback is False, "a run-time provider failure would silently re-run on the CPU"


def test_the_real_session_takes_the_fallback_off(tiny_export):
    """The fake's enable_fallback is the real InferenceSession's keyword: its fallback is off from the start."""
    assert ortb.create_session(tiny_export / "model.onnx", providers=[CPU_EP])._enable_fallback is False


def test_named_provider_that_did_not_load_is_an_error(gpu_machine, fake_session, monkeypatch, tiny_export, capsys):
    monkeypatch.setattr(eps, "load_library", _loader(set()))  # the probe passes, the session still falls back
    with pytest.raises(BackendError, match="CUDAExecutionProvider did not start with this model .*libcublasLt"):
        ortb.create_session(tiny_export / "model.onnx", providers=[CUDA_EP, CPU_EP])
    assert capsys.readouterr().out == "", "ONNX Runtime's fallback notice reached stdout"


def test_named_provider_that_cannot_run_is_refused_before_onnxruntime_tries(
    gpu_machine, fake_session, monkeypatch, tiny_export
):
    monkeypatch.setattr(eps, "load_library", _loader({"libcublas.so.13", "libcublasLt.so.13"}))
    with pytest.raises(BackendError, match="CUDAExecutionProvider cannot run here .*libcublas"):
        ortb.create_session(tiny_export / "model.onnx", providers=[CUDA_EP])
    assert fake_session.calls == []


def test_automatic_providers_warn_when_a_gpu_provider_did_not_load(
    gpu_machine, fake_session, monkeypatch, tiny_export, caplog, capsys, tmp_path
):
    monkeypatch.setattr(eps, "load_library", _loader(set()))
    fake_session.uses = [CPU_EP]
    monkeypatch.setenv("HOME", str(tmp_path))  # the TensorRT provider's cache folder
    with caplog.at_level(logging.WARNING, logger="mde"):
        session = ortb.create_session(tiny_export / "model.onnx")
    assert session.get_providers() == [CPU_EP]
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{TRT_EP} did not start" in m and f"trying {CUDA_EP}" in m for m in said), said
    assert any(f"{CUDA_EP} did not start" in m and f"trying {CPU_EP}" in m for m in said), said
    # ORT's own fallback is never used: it retried without any provider's options (CUDA's use_tf32=0 lost)
    assert fake_session.fallbacks == [0, 0, 0] and (CUDA_EP, {"use_tf32": "0"}) in fake_session.calls[1]
    assert capsys.readouterr().out == ""


def test_automatic_providers_warn_when_cuda_libraries_are_missing(gpu_machine, monkeypatch, caplog):
    cuda_lib = CAPI / "libonnxruntime_providers_cuda.so"
    if not cuda_lib.is_file():
        pytest.skip("this onnxruntime has no CUDA provider library")
    monkeypatch.setattr(eps, "load_library", _loader({"libcublas.so.13", "libcublasLt.so.13"}))
    with caplog.at_level(logging.WARNING, logger="mde"):
        chosen = eps.default_providers([CUDA_EP, CPU_EP])
    assert chosen == [CPU_EP]
    assert any("libcublas" in r.getMessage() for r in caplog.records)


# -- through the CLI, on this machine ---------------------------------------------------------
@pytest.mark.skipif(CUDA_EP not in ort.get_available_providers() or eps.cuda_device_count() > 0,
                    reason="needs onnxruntime-gpu on a machine without a GPU")
@pytest.mark.parametrize("command", ["predict", "bench", "parity"])
def test_cli_named_gpu_provider_without_gpu_exits_2(cli, command, tiny_export, synth_data, tmp_path):
    model = tiny_export / "model.onnx"
    image = sorted((synth_data / "val" / "rgb").iterdir())[0]
    args = {
        "predict": ["predict", model, image, "--out", tmp_path / "out"],
        "bench": ["bench", model, "--iterations", "2", "--json"],
        "parity": ["parity", "--golden", tiny_export / "golden.npz", model],
    }[command]
    result = cli(*args, "--backend", "onnxruntime", "--providers", CUDA_EP)
    assert result.code == 2, result.err
    assert result.out == ""
    lines = [line for line in result.err.splitlines() if line.startswith("mde: error")]
    assert len(lines) == 1 and CUDA_EP in lines[0] and "no CUDA GPU" in lines[0]


def test_cli_bench_json_names_the_provider_used(cli, tiny_export):
    result = cli("bench", tiny_export / "model.onnx", "--iterations", "2", "--warmup", "1", "--json",
                 "--providers", CPU_EP)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["results"][0]["providers"] == [CPU_EP]


def test_runner_label_names_what_it_runs_on(tiny_export):
    from mde.runtime.backends.base import open_runner

    with open_runner(tiny_export / "model.onnx") as runner:
        assert runner.label == "onnxruntime (CPU)"
        out = runner.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert out["depth"].shape[-2:] == (64, 64)


def test_a_missing_cudnn_is_found_before_the_session(gpu_machine, monkeypatch, caplog):
    """The CUDA provider's ELF header lists no cuDNN (it opens it at the first convolution): without the
    nvidia-cudnn wheel it was chosen, and the first run failed instead of the documented warning and CPU run."""
    if not (CAPI / "libonnxruntime_providers_cuda.so").is_file():
        pytest.skip("this onnxruntime has no CUDA provider library")
    monkeypatch.setattr(eps, "load_library", _loader({"libcudnn.so.9"}))
    with caplog.at_level(logging.WARNING, logger="mde"):
        chosen = eps.default_providers([CUDA_EP, CPU_EP])
    assert chosen == [CPU_EP]
    assert any("libcudnn.so.9, not found" in r.getMessage() for r in caplog.records), caplog.text
