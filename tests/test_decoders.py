"""Both decoders through everything downstream: export FP32/FP16, INT8 calibration, parity, golden mode, info, predict, bench."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_exported_graph_uses_only_the_expected_ops(tiny_model):
    import onnx

    from mde.export.onnx_export import EXPECTED_OPS

    ops = {node.op_type for node in onnx.load(str(tiny_model.export / "model.onnx")).graph.node}
    assert ops <= EXPECTED_OPS
    if tiny_model.decoder == "unet":
        assert {"Resize", "Concat"} <= ops and "ConvTranspose" not in ops
    else:
        assert "ConvTranspose" in ops and not ops & {"Resize", "Concat"}


def test_parity_passes_at_every_precision_with_region_figures(cli, tiny_model, synth_data, tmp_path):
    artifacts = [tiny_model.export / "model.onnx", tiny_model.export / "model.fp16.onnx", tiny_model.int8]
    out_json, report = tmp_path / "parity.json", tmp_path / "parity.md"
    result = cli("parity", tiny_model.checkpoint, *artifacts, "--data", synth_data, "--json", out_json,
                 "--report", report)
    assert result.code == 0, result.out + result.err
    doc = json.loads(out_json.read_text())
    assert doc["passed"] is True
    assert [a["precision"] for a in doc["artifacts"]] == ["fp32", "fp16", "int8"]
    regions = doc["regions"]
    assert set(regions) == {"reference", "pixel_mean_map"}
    assert set(regions["reference"]) == {"objects", "structure"}
    for row in doc["artifacts"]:  # information beside the gates: close to PyTorch's own figures
        for region, ref in regions["reference"].items():
            assert row["regions"][region]["images"] == ref["images"]
            assert row["regions"][region]["rmse"] == pytest.approx(ref["rmse"], rel=0.05, abs=0.05)
    assert "per-pixel mean map" in result.out and "Per region" in report.read_text()


def test_golden_mode_info_and_metadata(cli, tiny_model):
    from mde.runtime.artifact import read_metadata

    result = cli("parity", "--golden", tiny_model.export / "golden.npz", tiny_model.export / "model.onnx",
                 tiny_model.export / "model.fp16.onnx", tiny_model.int8)
    assert result.code == 0, result.out + result.err
    for path in (tiny_model.export / "model.onnx", tiny_model.export / "model.fp16.onnx", tiny_model.int8):
        assert read_metadata(path).decoder == tiny_model.decoder
    info = cli("info", tiny_model.export / "model.onnx", "--json")
    assert info.code == 0, info.err
    assert json.loads(info.out)["metadata"]["decoder"] == tiny_model.decoder
    assert tiny_model.decoder in cli("info", tiny_model.int8).out


def test_predict_and_bench(cli, tiny_model, synth_data, tmp_path):
    images = sorted((synth_data / "val" / "rgb").glob("*.png"))[:2]
    out = tmp_path / "pred"
    result = cli("predict", tiny_model.int8, *images, "--out", out, "--format", "npy")
    assert result.code == 0, result.err
    depth = np.load(out / f"{images[0].stem}.npy")
    assert depth.shape == (64, 64) and np.isfinite(depth).all() and 0 <= depth.min() <= depth.max() <= 20
    result = cli("bench", tiny_model.export / "model.onnx", "--iterations", "2", "--warmup", "0",
                 "--threads", "1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["results"][0]["images_per_s"] > 0
