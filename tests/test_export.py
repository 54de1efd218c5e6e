"""Export: ONNX FP32/FP16 pass the checker, carry metadata, match PyTorch; bad input refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mde.runtime.parity import DEFAULT_TOLERANCES

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


def _ort(path: Path, image: np.ndarray) -> np.ndarray:
    from mde.runtime.backends.onnxruntime import CPU_EP, create_session

    return create_session(path, providers=[CPU_EP]).run(["depth"], {"image": image})[0]


def _torch(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    import torch

    from mde.train.checkpoint import load_model

    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(image)).numpy()


def _p99_over_range(a: np.ndarray, b: np.ndarray, depth_range: float = 20.0) -> float:
    return float(np.percentile(np.abs(a.astype(np.float64) - b), 99)) / depth_range


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_checker_and_metadata(tiny_export, tiny_checkpoint, precision):
    import onnx

    from mde.io import sha256_file
    from mde.runtime.metadata import ModelMetadata

    path = tiny_export / FILES[precision]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for key in (
        "mde.version",
        "mde.preprocess",
        "mde.output",
        "mde.model",
        "mde.source",
        "mde.metrics",
        "mde.precision",
    ):
        json.loads(props[key])  # every value is JSON
    meta = ModelMetadata.from_props(props, path)
    assert meta.precision == precision
    assert meta.input_size == (64, 64)
    assert meta.max_depth == 20.0
    assert meta.backbone == "resnet18"
    assert meta.parameters > 1_000_000
    assert meta.source["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert meta.dynamic_size is False
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["depth"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_pytorch_at_any_batch(tiny_export, tiny_checkpoint, precision, batch):
    image = np.random.default_rng(batch).random((batch, 3, 64, 64), dtype=np.float32)
    got = _ort(tiny_export / FILES[precision], image)
    want = _torch(tiny_checkpoint, image)
    assert got.shape == want.shape == (batch, 1, 64, 64)
    assert got.dtype == np.float32
    error = _p99_over_range(got, want)
    limit = DEFAULT_TOLERANCES[precision].p99_over_range
    assert error <= limit, f"{precision}: p99/range {error:.3g} > {limit}"
    if precision == "fp16":
        assert error > 0  # really computed in half precision


def test_fp16_graph_has_fp32_io_and_fp16_weights(tiny_export):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(tiny_export / "model.fp16.onnx"))
    io_types = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io_types == [TensorProto.FLOAT, TensorProto.FLOAT]
    weight_types = {
        t.data_type for t in model.graph.initializer if len(t.dims) >= 1 and np.prod(t.dims) > 1
    }
    assert weight_types == {TensorProto.FLOAT16}
    assert sum(n.op_type == "Cast" for n in model.graph.node) >= 2
    size32 = (tiny_export / "model.onnx").stat().st_size
    assert (tiny_export / "model.fp16.onnx").stat().st_size < 0.6 * size32


def test_fp32_graph_is_clean_for_tensorrt(tiny_export):
    import onnx

    from mde.export.onnx_export import EXPECTED_OPS

    model = onnx.load(str(tiny_export / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= EXPECTED_OPS
    assert {"ConvTranspose", "Sigmoid"} <= ops
    assert "BatchNormalization" not in ops  # folded
    assert model.opset_import[0].version >= 17


def test_golden_npz(tiny_export, tiny_checkpoint):
    from mde.io import sha256_file

    with np.load(tiny_export / "golden.npz") as golden:
        image, depth = golden["image"], golden["depth"]
        tolerances = json.loads(str(golden["tolerances"]))
        assert str(golden["checkpoint_sha256"]) == sha256_file(tiny_checkpoint)
    assert image.dtype == depth.dtype == np.float32
    assert image.shape == (4, 3, 64, 64) and depth.shape == (4, 1, 64, 64)
    assert 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_allclose(depth, _torch(tiny_checkpoint, image), atol=1e-5)
    assert tolerances["fp32"]["p99_over_range"] == 1e-4
    assert tolerances["fp16"]["p99_over_range"] == 5e-3
    assert tolerances["int8"]["p99_over_range"] == 5e-2
    assert tolerances["depth_range"] == 20.0
    # a torch-free check from the golden file alone
    assert _p99_over_range(_ort(tiny_export / "model.fp16.onnx", image), depth) <= 5e-3


def test_dynamic_size_and_force(tmp_path, tiny_checkpoint, tiny_export, cli):
    """--dynamic-size runs at two sizes; --force replaces an existing artifact."""
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime.metadata import ModelMetadata

    out = tmp_path / "dyn"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    artifacts = export_checkpoint(
        ExportConfig(
            checkpoint=tiny_checkpoint, out=out, dynamic_size=True, force=True, progress=False
        )
    )
    assert [a.path.name for a in artifacts] == ["model.onnx"]
    assert artifacts[0].passed and artifacts[0].p99_over_range <= 1e-4
    assert artifacts[0].size_bytes == (out / "model.onnx").stat().st_size > 1000
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        got = _ort(out / "model.onnx", image)
        assert got.shape == (shape[0], 1, *shape[2:])
        assert _p99_over_range(got, _torch(tiny_checkpoint, image)) <= 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert ModelMetadata.from_props(props).dynamic_size is True
    assert _files(out) == ["golden.npz", "model.onnx"]

    from mde.errors import InputError
    from mde.runtime import DepthEstimator

    with DepthEstimator.open(out / "model.onnx", native_resolution=True) as est:
        with pytest.raises(InputError, match="height and width must be multiples of 32.*got 48x48"):
            est.infer(np.full((1, 3, 48, 48), 0.5, np.float32))  # ONNX Runtime failed, or returned 64x64 for 63
        small, large = np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 64, 96), np.float32)
        batch = np.zeros((4, 3, 64, 64), np.float32)
        shrinks = [est.runner._run_options({"image": x}) is not None for x in (small, large, large, small, batch, batch)]
        # the exported size: ORT's arena as it is; larger than the run before: its memory given back after; the same
        # size again (a camera's next frame, the next batch): kept, as a shrink made the next run allocate it again
        assert shrinks == [False, True, False, True, True, False]
        assert est.predict(np.full((70, 100, 3), 100, np.uint8)).shape == (70, 100)  # run at 64x96
        assert est.check_size(100, 130, batch=2) == (96, 128)  # what bench checks before timing (an engine's profile)
        with pytest.raises(InputError, match=r"a 9000x8 image would run at 8992x32 .* beyond the 8192 pixel side "
                                             r"limit; resize it first, or run it without native_resolution$"):
            est.predict(np.zeros((8, 9000, 3), np.uint8))  # a 2 x 33M frame would have asked for 12 GB
        from PIL import Image

        rgb = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / "frame.png")
        native = est.predict(rgb)

    # `mde predict --native-resolution`: the CLI ran a dynamic-size model at its exported size only
    for flag, folder in (("--native-resolution", "native"), (None, "exported")):
        done = cli("predict", out / "model.onnx", tmp_path / "frame.png", "-o", tmp_path / folder, "--format", "npy",
                   *([flag] if flag else []))
        assert done.code == 0, done.err
    np.testing.assert_allclose(np.load(tmp_path / "native" / "frame.npy"), native, rtol=1e-6, atol=1e-6)
    assert np.abs(np.load(tmp_path / "exported" / "frame.npy") - native).max() > 1e-3
    fixed = cli("predict", tiny_export / "model.onnx", tmp_path / "frame.png", "-o", tmp_path / "no", "--native-resolution")
    assert fixed.code == 2 and fixed.err.strip() == (f"mde: error: {tiny_export / 'model.onnx'}: --native-resolution needs "
                                                     "a model exported with --dynamic-size; this model takes 64x64 images only")
    assert not (tmp_path / "no").exists()
    from PIL import Image

    Image.new("RGB", (9000, 8)).save(tmp_path / "wide.png")
    wide = cli("predict", out / "model.onnx", tmp_path / "wide.png", "-o", tmp_path / "w", "--native-resolution")
    assert wide.code == 2 and wide.err.rstrip().endswith("or run it without --native-resolution"), wide.err  # the CLI's
    # `mde bench --native-resolution`: the latency at the camera's size, which --image-size alone resized away
    runs = {flag: json.loads(cli("bench", out / "model.onnx", "--image-size", "100x130", "--iterations", 2,
                                 "--warmup", 0, "--json", *([flag] if flag else [])).out)["results"][0]
            for flag in ("--native-resolution", None)}
    assert runs["--native-resolution"]["input_size"] == [96, 128] and runs[None]["input_size"] == [64, 64]
    for argv, says in (
            ((tiny_export / "model.onnx", "--image-size", "100x130"), "this model takes 64x64 images only"),
            (("--torch", tiny_checkpoint, "--image-size", "100x130"), "a checkpoint runs 64x64 images only"),
            ((out / "model.onnx",), "--native-resolution times the images of --image-size HxW")):
        refused = cli("bench", *argv, "--native-resolution")
        assert refused.code == 2 and says in refused.err, refused.err
    golden = cli("predict", out / "golden.npz", tmp_path / "frame.png", "-o", tmp_path / "g", "--native-resolution")
    assert golden.code == 2 and "a golden file replays the outputs saved at 64x64" in golden.err, golden.err


def test_with_golden_data_the_self_check_gates_rmse_as_parity_does(tmp_path, tiny_checkpoint, synth_data,
                                                                   monkeypatch, cli):
    """Golden inputs from a dataset carry ground truth: export gates dRMSE / dSSIM like `mde parity`, so it
    cannot write an artifact parity then fails (an FP16 model of 300 m range did); noise inputs gate p99 only."""
    from mde.runtime.parity import Tolerance

    monkeypatch.setitem(DEFAULT_TOLERANCES, "fp32", Tolerance(rmse_abs=0.0, ssim_abs=1.0, p99_over_range=1.0))
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "gt", "--golden-data", synth_data)
    assert result.code == 1 and "|dRMSE| against the ground truth" in result.err, result.err
    assert not (tmp_path / "gt").exists()
    noise = cli("export", tiny_checkpoint, "--out", tmp_path / "noise", "--json")
    assert noise.code == 0 and [(a["d_rmse"], a["d_ssim"]) for a in json.loads(noise.out)["artifacts"]] == [
        (None, None)]
    monkeypatch.undo()  # the gate shown: what was measured, in --json and in the table
    listed = cli("export", tiny_checkpoint, "--out", tmp_path / "listed", "--golden-data", synth_data, "--json")
    (fp32,) = json.loads(listed.out)["artifacts"]
    assert abs(fp32["d_rmse"]) < 1e-3 and abs(fp32["d_ssim"]) < 1e-3
    from mde.commands.export import _checked
    from mde.export.config import Artifact

    shown = _checked(Artifact(**{**fp32, "path": Path(fp32["path"])}))
    assert re.fullmatch(r"p99 .* m\)  dRMSE [+-]\d\.\d\de-\d\d m  dSSIM [+-]\d\.\d\de-\d\d", shown), shown


def test_failed_check_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch, cli):
    """An out-of-tolerance artifact: exit 1, and no artifact, temp file or empty output folder is left."""
    from mde.runtime.parity import Tolerance

    monkeypatch.setitem(DEFAULT_TOLERANCES, "fp32", Tolerance(p99_over_range=0.0))
    out = tmp_path / "out"
    result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32")
    assert result.code == 1, result.err
    assert "differs from PyTorch" in result.err and "Traceback" not in result.err
    assert not out.exists()  # not even the folder it created


def test_refuses_existing_artifact(tmp_path, tiny_checkpoint, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.fp16.onnx").write_text("keep me")
    result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp16")
    assert result.code == 2
    assert "model.fp16.onnx" in result.err and "--force" in result.err
    assert (out / "model.fp16.onnx").read_text() == "keep me"
    assert _files(out) == ["model.fp16.onnx"]


def test_an_output_folder_the_onnx_tools_cannot_name_or_in_a_dataset_split_is_refused_first(
        tmp_path, tiny_checkpoint, synth_data, cli, monkeypatch):
    """A folder name that is not UTF-8 failed after the whole export, in the ONNX checker, as an internal error
    (exit 1); a dataset's `val/rgb` took the artifacts in among its images."""
    import mde.export.exporter as exporter

    monkeypatch.setattr(exporter, "_Steps", None)  # refused before any work: nothing may start
    odd = tmp_path / os.fsdecode(b"out\xff")
    result = cli("export", tiny_checkpoint, "--out", odd)
    assert result.code == 2 and "out\\xff: the ONNX tools take a path as UTF-8 text only" in result.err, result.err
    split = synth_data / "val" / "rgb"
    before = sorted(split.iterdir())
    result = cli("export", tiny_checkpoint, "--out", split)
    assert result.code == 2 and "--out lies inside a dataset split's rgb/" in result.err, result.err
    assert sorted(split.iterdir()) == before and not odd.exists()


def test_engine_without_tensorrt_says_how_to_install(tmp_path, tiny_checkpoint, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    out = tmp_path / "out"
    result = cli("export", tiny_checkpoint, "--out", out, "--engine")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("mde: error:") and "TensorRT" in line
    assert "pip install -e '.[tensorrt]'" in line
    assert not out.exists()  # checked before any work


def test_engine_without_gpu_names_the_gpu(tmp_path, tiny_checkpoint, monkeypatch):
    """TensorRT importable but no CUDA device: the message names the missing GPU."""
    import sys
    import types

    from mde.errors import BackendError
    from mde.export.exporter import ExportConfig, export_checkpoint
    from mde.runtime.backends import tensorrt as trt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.0.0"))
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: object())

    def no_gpu(cudart, device=0):
        raise BackendError("no CUDA GPU 0 on this machine (found 0); TensorRT needs one")

    monkeypatch.setattr(trt_backend, "gpu_info", no_gpu)
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        export_checkpoint(ExportConfig(checkpoint=tiny_checkpoint, out=tmp_path / "o", engine=True))
    assert not (tmp_path / "o").exists()


@pytest.fixture
def corrupt_checkpoint(tmp_path, tiny_checkpoint) -> Path:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    return path


BAD = [
    ("missing-ckpt", ["{missing}", "--out", "{out}"], "missing.pt"),
    ("corrupt-ckpt", ["{corrupt}", "--out", "{out}"], "corrupt.pt"),
    ("unknown-precision", ["{ckpt}", "--out", "{out}", "-p", "fp8"], "fp32, fp16, int8"),
    ("int8-no-calib", ["{ckpt}", "--out", "{out}", "-p", "int8"], "--calib-data"),
    (
        "int8-calib-missing",
        ["{ckpt}", "--out", "{out}", "-p", "int8", "--calib-data", "{missing}"],
        "missing.pt",
    ),
    ("repeated-precision", ["{ckpt}", "--out", "{out}", "-p", "fp16", "-p", "fp16"], "repeated"),
    ("old-opset", ["{ckpt}", "--out", "{out}", "--opset", "13"], "opset"),
    ("unknown-opset", ["{ckpt}", "--out", "{out}", "--opset", "99"], "--opset must be in 17.."),
    (
        "int8-no-calib-images",
        ["{ckpt}", "--out", "{out}", "-p", "int8", "--calib-data", "{data}", "--calib-images", "0"],
        "--calib-images must be >= 1, got 0",
    ),
    (
        "int8-calib-no-train-split",
        ["{ckpt}", "--out", "{out}", "-p", "int8", "--calib-data", "{notrain}"],
        "notrain/train: expected a folder with rgb/ and depth/ for split 'train'",
    ),
    (
        "int8-too-few-calib-images",
        ["{ckpt}", "--out", "{out}", "-p", "int8", "--calib-data", "{data}"],
        "(use --calib-allow-few to accept fewer)",
    ),
    ("out-is-file", ["{ckpt}", "--out", "{file}"], "notes.txt"),
    (
        "bad-profile",
        ["{ckpt}", "--out", "{out}", "--engine", "--min-batch", "4", "--max-batch", "2"],
        "--min-batch/--opt-batch/--max-batch must satisfy 1 <= min <= opt <= max, got 4/1/2",
    ),
    (  # a profile for no engine: it was accepted and shaped nothing
        "engine-options-without-engine",
        ["{ckpt}", "--out", "{out}", "--max-batch", "2", "--timing-cache", "{out}/t.cache"],
        "--max-batch, --timing-cache shape the TensorRT engine; add --engine (or drop them)",
    ),
    (
        "profile-sizes-without-dynamic-size",
        ["{ckpt}", "--out", "{out}", "--engine", "--max-size", "512"],
        "--max-size shapes a dynamic-size engine; add --dynamic-size (or drop it)",
    ),
]


@pytest.mark.parametrize("case,argv,names", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exit_2(case, argv, names, tmp_path, tiny_checkpoint, corrupt_checkpoint, synth_data, cli):
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "notrain" / "val").mkdir(parents=True)
    values = {
        "missing": tmp_path / "missing.pt",
        "corrupt": corrupt_checkpoint,
        "ckpt": tiny_checkpoint,
        "out": tmp_path / "out",
        "file": tmp_path / "notes.txt",
        "data": synth_data,
        "notrain": tmp_path / "notrain",
    }
    result = cli("export", *[a.format(**values) for a in argv])
    assert result.code == 2, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("mde: error:")]
    assert len(errors) == 1 and names in errors[0], result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_the_newest_accepted_opset_exports_and_runs(tiny_checkpoint, tmp_path, cli):
    """`max_opset()` is an opset this ONNX Runtime loads: the export's own check runs the model in it."""
    import onnx

    from mde.export.config import max_opset

    out = tmp_path / "out"
    result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--opset", max_opset())
    assert result.code == 0, result.err
    opsets = {o.domain: o.version for o in onnx.load(out / "model.onnx", load_external_data=False).opset_import}
    assert opsets[""] == max_opset()


def test_read_only_output_folder(tmp_path, tiny_checkpoint, cli, monkeypatch):
    """A folder we cannot write into: exit 2 naming it, nothing written (simulated when running as root)."""
    import os

    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the staging folder's creation fail instead
        real_mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if self.name.startswith(".mde-export-"):
                raise PermissionError(13, "Permission denied")
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refuse)
    out.chmod(0o555)
    try:
        result = cli("export", tiny_checkpoint, "--out", out)
    finally:
        out.chmod(0o755)
    assert result.code == 2, result.err
    assert "not writable" in result.err and str(out) in result.err
    assert _files(out) == []


def test_metrics_and_source_in_metadata(tiny_checkpoint):
    """The checkpoint's validation RMSE/SSIM and training config end up in mde.metrics/mde.source."""
    from mde.export.exporter import ExportConfig, _metadata
    from mde.runtime.metadata import ModelMetadata
    from mde.train.checkpoint import load_model

    model, state = load_model(tiny_checkpoint)
    state = dict(state, metrics={"rmse": 1.25, "ssim": 0.5, "loss": 9.0}, epoch=7)
    cfg = ExportConfig(checkpoint=tiny_checkpoint, out=Path("unused"))
    meta = ModelMetadata.from_props(_metadata(cfg, state, model, "abc", "def", "fp16").to_props())
    assert meta.metrics == {"rmse": 1.25, "ssim": 0.5}
    assert meta.source["epoch"] == 7 and meta.source["checkpoint_sha256"] == "abc"
    assert meta.source["weights_sha256"] == "def"
    assert meta.source["config"]["backbone"] == "resnet18"
    assert meta.precision == "fp16"


def test_an_older_onnx_runtime_lowers_the_newest_opset(tiny_checkpoint, tmp_path, cli, monkeypatch):
    """Where the installed ONNX Runtime refuses an opset (as 1.18 refuses 22), --opset stops below it,
    refused up front in one line instead of after the export."""
    import onnxruntime as ort

    from mde.export import config

    real = ort.InferenceSession

    def old_runtime(model, *args, **kwargs):
        import onnx

        opset = {o.domain: o.version for o in onnx.load_from_string(model).opset_import}[""]
        if opset > 21:
            raise RuntimeError(f"Opset {opset} is under development")
        return real(model, *args, **kwargs)

    config.max_opset.cache_clear()
    monkeypatch.setattr(ort, "InferenceSession", old_runtime)
    try:
        assert config.max_opset() == 21
        out = tmp_path / "out"
        result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--opset", "23")
        assert result.code == 2, result.err
        assert "--opset must be in 17..21, the newest the installed onnx and ONNX Runtime load" in result.err
        assert not out.exists()
    finally:
        config.max_opset.cache_clear()


def test_the_lowest_opset_is_written_without_the_exporters_log_lines(tiny_checkpoint, tmp_path):
    """--opset 17: torch's exporter and onnxscript each logged a long line about converting from opset 18 (a
    "W1128 ..." line above mde's progress), for a conversion that worked."""
    import onnx

    done = subprocess.run([sys.executable, "-m", "mde", "export", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
                           "--opset", "17"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "operator set version 18" not in done.stderr and "version conversion" not in done.stderr, done.stderr
    assert "could not convert" not in done.stderr
    model = onnx.load(str(tmp_path / "o" / "model.onnx"), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_force_removes_artifacts_of_another_checkpoint(cli, tiny_checkpoint, tmp_path):
    """--force into a folder exported from another checkpoint: what it does not rewrite would no longer
    match golden.npz, so it goes (and says so); the same checkpoint's other artifacts stay."""
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}
    other = tmp_path / "other.pt"
    torch.save(state, other)
    out = tmp_path / "out"
    assert cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--precision", "fp16").code == 0
    same = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--force")
    assert same.code == 0, same.err
    assert (out / "model.fp16.onnx").is_file() and "removed" not in same.err
    (out / "golden.npz").unlink()  # without it, only the models tell which checkpoint made them
    refused = cli("export", other, "--out", out, "--precision", "fp32")  # what --force would remove, said before
    assert refused.code == 2 and refused.err == f"mde: error: {out}: would overwrite model.onnx (use --force, which " \
        "also removes model.fp16.onnx, made from another checkpoint)\n"
    (out / "model.onnx").unlink()
    refused = cli("export", other, "--out", out, "--precision", "fp32")
    assert refused.code == 2 and "would leave model.fp16.onnx, made from another checkpoint" in refused.err
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx"]
    result = cli("export", other, "--out", out, "--precision", "fp32", "--force")
    assert result.code == 0, result.err
    assert "removed model.fp16.onnx" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz", "model.onnx"]


def test_a_damaged_golden_file_in_out_is_not_called_another_checkpoints(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "golden.npz").write_text("junk\n")
    refused = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32")
    assert refused.code == 2 and refused.err == (
        f"mde: error: {out}: would overwrite golden.npz (unreadable, or an older mde) (use --force)\n"), refused.err


def test_bad_places_and_mismatched_weights_are_one_line_before_any_work(cli, tiny_checkpoint, tmp_path, monkeypatch):
    """--out under a file was found after the checkpoint was loaded and run ("not writable (Not a directory)");
    --calib-data a file was "not found"; mismatched weights gave PyTorch's heading with no key in it."""
    import torch

    from mde.export import onnx_export

    monkeypatch.setattr(onnx_export, "export_fp32", lambda *a, **k: pytest.fail("exported before the check"))
    (tmp_path / "afile").write_text("x")
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "afile" / "sub")
    assert result.code == 2 and result.err == (
        f"mde: error: {tmp_path / 'afile' / 'sub'}: --out would write under {tmp_path / 'afile'}, which is a file\n")
    monkeypatch.chdir(tmp_path)  # a relative --out is named as given, not made absolute
    result = cli("export", tiny_checkpoint, "--out", "afile/sub")
    assert result.code == 2 and result.err == "mde: error: afile/sub: --out would write under afile, which is a file\n"
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "o", "-p", "int8", "--calib-data", tiny_checkpoint)
    assert result.code == 2 and result.err == (
        f"mde: error: {tiny_checkpoint}: expected a dataset folder or an NYU .mat/.h5/.hdf5 file\n")
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model_args"]["decoder"] = "report" if state["model_args"]["decoder"] == "unet" else "unet"
    torch.save(state, tmp_path / "edited.pt")
    result = cli("export", tmp_path / "edited.pt", "--out", tmp_path / "o")
    assert result.code == 2 and re.search(r"weights do not match a resnet18/\w+ DepthNet \(\d+ missing \(e\.g\. decoder\."
                                          r"[\w.]+\), \d+ unexpected \(e\.g\. decoder\.", result.err), result.err


@pytest.mark.parametrize("edit, said", [
    (lambda s: s.update(epoch="x"), "its epoch is 'x', not a count of epochs"),  # was copied into mde.source
    (lambda s: s.update(config="garbage"), "its config is a str, not an object"),  # silently became {}
    (lambda s: s["config"].update(image_size=96), "its config.image_size 96 is not its network's 64"),
    (lambda s: s.update(metrics="bad"), "its metrics are not an object of numbers"),  # an internal error
    (lambda s: s.update(metrics={"rmse": "x"}), "its metrics are not an object of numbers"),
])
def test_a_damaged_training_record_is_refused_naming_the_checkpoint(cli, tiny_checkpoint, tmp_path, edit, said):
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "edited.pt")
    result = cli("export", tmp_path / "edited.pt", "--out", tmp_path / "o")
    assert result.code == 2 and result.err.endswith(
        f"mde: error: {tmp_path / 'edited.pt'}: damaged checkpoint: {said}\n"), result.err
    assert not (tmp_path / "o").exists()


def test_export_metadata_is_strict_json_and_names_its_source(cli, tiny_checkpoint, tmp_path):
    """A diverged run's NaN val RMSE went into mde.metrics as `NaN`, which no strict JSON parser (a robot's C++ or
    Rust) reads; and the info table did not say which checkpoint an artifact came from."""
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["metrics"] = {"rmse": float("nan"), "ssim": float("inf")}
    torch.save(state, tmp_path / "diverged.pt")
    assert cli("export", tmp_path / "diverged.pt", "--out", tmp_path / "o").code == 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "o" / "model.onnx")).metadata_props}
    assert json.loads(props["mde.metrics"], parse_constant=pytest.fail) == {"rmse": None, "ssim": None}
    shown = cli("info", tmp_path / "o" / "model.onnx")
    assert "rmse -, ssim -" in shown.out and re.search(r"source +│ diverged\.pt, epoch \d+, opset \d+, sha256 [0-9a-f]{12}…",
                                                      shown.out), shown.out


def test_a_file_of_zeros_is_no_checkpoint_not_a_legacy_one(cli, tmp_path):
    """torch said "Cannot use weights_only=True with files saved in the legacy .tar format ... Re-running torch.load
    with weights_only set to False will likely succeed": wrong for 1000 zero bytes, and advice that runs code."""
    (tmp_path / "junk.pt").write_bytes(bytes(1000))
    result = cli("export", tmp_path / "junk.pt", "--out", tmp_path / "o")
    assert result.code == 2 and result.err == (f"mde: error: {tmp_path / 'junk.pt'}: not a PyTorch checkpoint "
                                               "(neither a zip archive nor a pickle)\n")


def test_a_checkpoint_replaced_while_it_is_read_is_refused(cli, tiny_checkpoint, tmp_path, monkeypatch):
    """A training run rewriting best.pt between the digest and the load gave one checkpoint's sha256 with
    another's weights in mde.source."""
    import shutil

    from mde.train import checkpoint

    moving = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, moving)
    real = checkpoint.load_model

    def load_then_replace(path, *args, **kwargs):
        loaded = real(path, *args, **kwargs)
        moving.write_bytes(moving.read_bytes() + b"\0")  # the run's next save
        return loaded

    monkeypatch.setattr(checkpoint, "load_model", load_then_replace)
    result = cli("export", moving, "--out", tmp_path / "o")
    assert result.code == 2 and "the checkpoint changed while it was read (a training run still writing it?)" in \
        result.err, result.err
    assert not (tmp_path / "o").exists()


def test_force_keeps_an_artifact_it_cannot_read_and_says_so(cli, tiny_checkpoint, tmp_path):
    """A model.int8.onnx without metadata was kept beside the new golden.npz without a word."""
    import onnx

    out = tmp_path / "out"
    assert cli("export", tiny_checkpoint, "--out", out).code == 0
    model = onnx.load(str(out / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(out / "model.int8.onnx"))
    result = cli("export", tiny_checkpoint, "--out", out, "--force")
    assert result.code == 0 and f"note: kept model.int8.onnx in {out}: its metadata cannot be read" in result.err
    assert (out / "model.int8.onnx").is_file()


def test_force_onto_a_folder_named_like_an_output_is_refused_before_any_work(cli, tiny_checkpoint, tmp_path):
    """The rename onto it would fail after model.onnx was published beside the old golden.npz."""
    out = tmp_path / "out"
    assert cli("export", tiny_checkpoint, "--out", out).code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "model.fp16.onnx").mkdir()
    result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--precision", "fp16", "--force")
    assert result.code == 2 and result.err.strip().splitlines()[-1] == (
        f"mde: error: {out}: model.fp16.onnx in the output folder is not a file (a folder?); remove it")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_int8_settings_check_leaves_the_holdout_notice_to_calibration(tiny_checkpoint, synth_data, capsys):
    """Export checks the calibration set up front, then calibrates from it: the notice that fewer
    images are held out than asked is printed once, by calibration, not also by the check."""
    from mde.export.config import ExportConfig, validate

    validate(ExportConfig(checkpoint=tiny_checkpoint, out=Path("unused"), precisions=("int8",),
                          calib_data=synth_data, calib_allow_few=True))
    assert "holding out" not in capsys.readouterr().err


def test_int8_calibrates_from_an_nyu_file_as_calibrate_does(tiny_checkpoint, tmp_path):
    """`mde calibrate --data nyu.mat` calibrates on its train images; `export --calib-data nyu.mat` refused the file
    ("--calib-data is a file")."""
    import h5py

    from mde.calibration.calibrate import open_train_split
    from mde.export.config import ExportConfig, calibration_config, validate

    nyu = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(nyu, "w") as f:  # NYU's layout: N x 3 x W x H images, N x W x H depths
        f["images"] = np.zeros((20, 3, 16, 12), np.uint8)
        f["depths"] = np.ones((20, 16, 12), np.float32)
    cfg = ExportConfig(checkpoint=tiny_checkpoint, out=Path("unused"), precisions=("int8",), calib_data=nyu,
                       calib_allow_few=True)
    validate(cfg)
    dataset, holdout, calib = open_train_split(calibration_config(cfg, Path("m.onnx"), Path("m.int8.onnx")))
    assert len(dataset) == 18 and len(holdout) + len(calib) == 18  # train: every index but each tenth's last


def test_one_depth_scale_reads_the_png_dataset_of_two(tmp_path):
    """A KITTI-scaled golden set (PNG) and a calibration set of .npy metres: --depth-scale was refused of the .npy
    one, so the PNGs could only be read as millimetres. It goes to the dataset with PNG depth; with none, to both
    (for the reader to refuse, as for one dataset)."""
    from PIL import Image

    from mde.export.config import ExportConfig, depth_scale_for

    for name, png in (("kitti", True), ("metres", False), ("metres2", False)):
        folder = tmp_path / name / "val" / "depth"
        folder.mkdir(parents=True)
        if png:
            Image.fromarray(np.full((8, 8), 2560, np.uint16)).save(folder / "a.png")
        else:
            np.save(folder / "a.npy", np.full((8, 8), 10.0, np.float32))
    cfg = ExportConfig(checkpoint=tmp_path / "best.pt", out=tmp_path / "out", precisions=("fp32", "int8"),
                       golden_data=tmp_path / "kitti", calib_data=tmp_path / "metres", depth_scale=256.0)
    assert (depth_scale_for(cfg, cfg.golden_data), depth_scale_for(cfg, cfg.calib_data)) == (256.0, None)
    both_npy = ExportConfig(checkpoint=cfg.checkpoint, out=cfg.out, golden_data=tmp_path / "metres2",
                            calib_data=tmp_path / "metres", depth_scale=256.0)
    assert depth_scale_for(both_npy, both_npy.golden_data) == depth_scale_for(both_npy, both_npy.calib_data) == 256.0
    assert depth_scale_for(ExportConfig(checkpoint=cfg.checkpoint, out=cfg.out, golden_data=tmp_path / "kitti"),
                           tmp_path / "kitti") is None  # no --depth-scale: the format's own
    # a calibration set that declares its scale (meta.json, as mde data synth writes) beside a KITTI golden set that
    # needs the option: it was given to both, and the declared one refused it, with no way out
    (tmp_path / "synth" / "train" / "depth").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 10000, np.uint16)).save(tmp_path / "synth" / "train" / "depth" / "a.png")
    (tmp_path / "synth" / "meta.json").write_text('{"max_depth": 20, "depth_png_scale": 1000}')
    mixed = ExportConfig(checkpoint=cfg.checkpoint, out=cfg.out, golden_data=tmp_path / "kitti",
                         calib_data=tmp_path / "synth", depth_scale=256.0)
    assert (depth_scale_for(mixed, mixed.golden_data), depth_scale_for(mixed, mixed.calib_data)) == (256.0, None)
