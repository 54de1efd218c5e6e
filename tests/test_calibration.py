"""INT8 calibration: symmetric Q/DQ, metadata, saved ranges reused, accuracy-driven float fallback, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_int8_model_is_symmetric_qdq_and_runs_on_ort_cpu(tiny_int8):
    from onnx import numpy_helper

    from mde.runtime.backends.base import open_runner

    path, report = tiny_int8
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert sum(n.op_type == "QuantizeLinear" for n in qdq) >= 10
    for node in qdq:  # every zero-point is an int8 (or int32 bias) zero
        zp = numpy_helper.to_array(inits[node.input[2]])
        assert zp.dtype in (np.int8, np.int32) and not zp.any(), node.name
    # Every weighted layer reads INT8 weights quantized per output channel.
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight = numpy_helper.to_array(inits[dq.input[0]])
        assert weight.dtype == np.int8
        out_axis = 1 if conv.op_type == "ConvTranspose" else 0
        # Per-channel: one scale per output channel, along the output-channel axis.
        assert numpy_helper.to_array(inits[dq.input[1]]).size == weight.shape[out_axis]
        if weight.shape[out_axis] > 1:
            axis = next(a.i for a in dq.attribute if a.name == "axis")
            assert axis == out_axis, conv.name
    assert report.qdq["nonzero_zero_points"] == 0
    with open_runner(path, "onnxruntime") as runner:
        out = runner.infer({"image": np.random.default_rng(0).random((1, 3, 64, 64), np.float32)})["depth"]
    assert out.shape == (1, 1, 64, 64) and np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 20.0


def test_int8_close_to_fp32_on_heldout(tiny_int8):
    _, report = tiny_int8
    # 1 - SSIM(INT8, FP32) on held-out images, and the difference in metres.
    assert 0.0 <= report.before["drop"] < 0.01
    assert report.before["rmse_vs_fp32"] < 0.02 * 20.0
    assert abs(report.before["rmse"] - report.fp32["rmse"]) <= 0.02 * report.fp32["rmse"]
    assert report.num_images == 12 and report.holdout_images == 6


def test_metadata_carried_and_calibration_added(tiny_int8, tiny_export):
    from mde.runtime.metadata import ModelMetadata

    path, report = tiny_int8
    src, dst = _props(tiny_export / "model.onnx"), _props(path)
    for key, value in src.items():
        if key != "mde.precision":
            assert dst[key] == value, key
    meta = ModelMetadata.from_props(dst, path)
    assert meta.precision == "int8"
    cal = json.loads(dst["mde.calibration"])
    assert cal["method"] == "entropy" and cal["images"] == 12 and cal["seed"] == 0
    assert cal["float_nodes"] == [] and cal["ssim_drop"] == pytest.approx(report.after["drop"], abs=1e-6)


def test_ranges_saved_and_reused_without_recalibrating(tiny_int8, tiny_export, synth_data, tmp_path,
                                                       monkeypatch):
    from mde.calibration import quantize
    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig

    path, first = tiny_int8
    ranges = path.with_suffix(".ranges.json")
    assert first.ranges_reused is False and ranges.is_file()
    doc = json.loads(ranges.read_text())
    assert doc["key"]["seed"] == 0 and len(doc["key"]["images"]) == 12 and doc["ranges"]
    shutil.copy(ranges, tmp_path / "again.ranges.json")

    def no_calibration(*args, **kwargs):
        raise AssertionError("recalibrated although the saved ranges match")

    monkeypatch.setattr(quantize, "collect_ranges", no_calibration)
    cfg = CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=tmp_path / "again.onnx",
                            num_images=12, holdout_images=6, allow_few=True, max_float_nodes=0,
                            progress=False)
    second = calibrate(cfg)
    assert second.ranges_reused is True
    assert second.before["drop"] == pytest.approx(first.before["drop"], abs=1e-9)
    # Another seed draws other images: the saved ranges do not apply and calibration must run.
    cfg.seed, cfg.force = 1, True
    with pytest.raises(AssertionError, match="recalibrated"):
        calibrate(cfg)


def test_fallback_keeps_sensitive_nodes_float(cli, tiny_export, synth_data, tmp_path):
    out = tmp_path / "fallback.int8.onnx"
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", out,
                 "--num-images", 12, "--holdout-images", 6, "--allow-few", "--target-ssim-drop", 1e-9,
                 "--max-float-nodes", 2, "--method", "minmax", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert 1 <= len(report["float_nodes"]) <= 2
    assert report["after"]["drop"] < report["before"]["drop"]
    assert report["ranking"] and report["steps"][0][0] == 0
    model = onnx.load(str(out))
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for node in model.graph.node:
        if node.name in report["float_nodes"]:
            assert not any(i in dq_out for i in node.input), node.name
    cal = json.loads(_props(out)["mde.calibration"])
    assert cal["float_nodes"] == report["float_nodes"] and cal["method"] == "minmax"


def _no_metadata(src, dst):
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(dst))


@pytest.mark.parametrize("case, match", [
    ("not_onnx", "not an ONNX model"),
    ("no_metadata", "no mde metadata"),
    ("quantized", "already quantized"),
    ("fp16", "expected an FP32 model"),
    ("few_images", "at least 32"),
    ("bad_method", "--method must be one of"),
])
def test_bad_inputs_exit_2(cli, case, match, tiny_export, tiny_int8, synth_data, tmp_path):
    model, extra = tiny_export / "model.onnx", []
    if case == "not_onnx":
        model = tmp_path / "model.onnx"
        model.write_text("this is not a protobuf\n" * 10)
    elif case == "no_metadata":
        model = tmp_path / "bare.onnx"
        _no_metadata(tiny_export / "model.onnx", model)
    elif case == "quantized":
        model = tiny_int8[0]
    elif case == "fp16":
        model = tiny_export / "model.fp16.onnx"
    elif case == "few_images":
        extra = ["--num-images", "8"]
    elif case == "bad_method":
        extra = ["--method", "kl"]
    out = tmp_path / "out.int8.onnx"
    result = cli("calibrate", model, "--data", synth_data, "--out", out, *extra)
    assert result.code == 2
    assert match in result.err and result.err.startswith("mde: error:")
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()
