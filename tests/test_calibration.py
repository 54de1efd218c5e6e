"""INT8 calibration: symmetric Q/DQ, metadata, saved ranges reused, accuracy-driven float fallback, bad inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    for node in qdq:  # every zero-point is an int8 zero (biases stay float)
        zp = numpy_helper.to_array(inits[node.input[2]])
        assert zp.dtype == np.int8 and not zp.any(), node.name
    # Every weighted layer but the depth head reads INT8 weights quantized per output channel.
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in report.float_head]
    assert convs and len(report.float_head) == 1
    head = next(n for n in model.graph.node if n.name == report.float_head[0])
    assert head.input[1] in inits and inits[head.input[1]].data_type == onnx.TensorProto.FLOAT  # float weights
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    assert producers[sigmoid.input[0]] is head  # no Q/DQ between the logits and the Sigmoid
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
    assert len(np.unique(out)) > 1000  # a float head: quantized logits gave at most 256 depths


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
    assert cal["method"] == "percentile" and cal["images"] == 12 and cal["seed"] == 0
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
    # Another dataset whose files have the same names (every synthesized set's): calibration must run too.
    other = tmp_path / "other"
    shutil.copytree(synth_data, other)
    for png in (other / "train" / "rgb").glob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(png))).save(png)
    cfg.seed, cfg.data = 0, other
    with pytest.raises(AssertionError, match="recalibrated"):
        calibrate(cfg)


def _damage(doc: dict, damage: str) -> str:
    """The text of the ranges file `doc` with one kind of `damage`."""
    first = sorted(doc["ranges"])[0]
    if damage == "nan":
        doc["ranges"][first] = [float("nan"), 1.0]
    elif damage == "inverted":
        doc["ranges"][first] = [5.0, -5.0]
    elif damage == "missing":
        del doc["ranges"][first]
    elif damage == "string":
        doc["ranges"][first] = "x"
    elif damage == "huge":
        doc["ranges"][first] = [-1e300, 1e300]
    elif damage == "list":
        doc["ranges"] = []
    elif damage == "truncated":
        return json.dumps(doc)[:100]
    return json.dumps(doc)


@pytest.mark.parametrize("damage, match", [
    ("nan", "has [NaN, 1.0], expected two numbers low <= high within float32's range"),
    ("inverted", "has [5.0, -5.0], expected two numbers low <= high"),
    ("huge", "has [-1e+300, 1e+300], expected two numbers low <= high within float32's range"),  # an inf scale
    ("missing", "no range for "),
    ("string", 'has "x", expected two numbers'),
    ("list", "expected an object of ranges, found list"),
    ("truncated", "unreadable: JSONDecodeError"),
])
def test_damaged_ranges_file_is_ignored_with_a_warning(damage, match, tmp_path, caplog):
    """The ranges file is a cache: a damaged one for the right key is reported in one line and not used."""
    from mde.calibration.ranges import load_ranges, save_ranges

    path, key = tmp_path / "q.ranges.json", {"model_sha256": "abc"}
    good = {"conv_out": (-1.0, 2.0), "add_out": (0.0, 0.0)}
    save_ranges(path, key, good)
    assert load_ranges(path, key, set(good)) == good
    path.write_text(_damage(json.loads(path.read_text()), damage))
    with caplog.at_level("WARNING", logger="mde"):
        assert load_ranges(path, key, set(good)) is None
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert line.startswith(f"{path}: ignoring the saved ranges") and match in line and "\n" not in line
    assert load_ranges(tmp_path / "absent.ranges.json", key, set(good)) is None  # no file: silently calibrate


@pytest.mark.parametrize("damage", ["nan", "missing"])
def test_calibrate_recomputes_damaged_ranges(damage, cli, tiny_int8, tiny_export, synth_data, tmp_path):
    """A damaged OUT.ranges.json whose key matches: a one-line warning, fresh ranges, a valid model (exit 0)."""
    out = tmp_path / "q.onnx"
    ranges = out.with_suffix(".ranges.json")
    saved = tiny_int8[0].with_suffix(".ranges.json").read_text()
    ranges.write_text(_damage(json.loads(saved), damage))
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", out, "--num-images", 12,
                 "--holdout-images", 6, "--allow-few", "--max-float-nodes", 0, "--json")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "ignoring the saved ranges" in line]
    assert len(warnings) == 1 and str(ranges) in warnings[0], result.err
    assert json.loads(result.out)["ranges_reused"] is False
    assert set(json.loads(ranges.read_text())["ranges"]) == set(json.loads(saved)["ranges"])  # rewritten whole
    assert out.is_file()


def test_a_folder_of_images_without_depth_calibrates(cli, tiny_export, synth_data, tmp_path):
    """A robot's own frames have no depth maps: calibration and its accuracy check compare INT8 with FP32 only,
    yet a dataset's depth was required ("image has no depth map"). RMSE/SSIM vs ground truth are then null."""
    import shutil

    frames = tmp_path / "frames"
    shutil.copytree(synth_data / "train" / "rgb", frames)
    for path in frames.iterdir():  # a grey camera's frames, one named in bytes no UTF-8 decodes
        Image.open(path).convert("L").save(path)
    first = sorted(frames.iterdir())[0]
    first.rename(os.fsdecode(bytes(frames) + b"/x\xff.png"))
    out = tmp_path / "q.onnx"
    argv = ["calibrate", tiny_export / "model.onnx", "--data", frames, "--out", out, "--num-images", 20,
            "--holdout-images", 8, "--allow-few", "--max-float-nodes", 0, "--target-ssim-drop", 1, "--json"]
    result = cli(*argv)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["fp32"] == {"rmse": None, "ssim": None} and report["after"]["rmse"] is None
    assert 0 <= report["after"]["drop"] < 1 and report["num_images"] == 18 and out.is_file()
    assert f"{frames}: holding out 6 of its 24 images" in result.err  # not "train images": a folder has no split
    assert result.err.count("grayscale image converted to RGB") == 1, result.err  # was one line per frame
    # the reading has its bar (a few hundred camera frames: half a minute of silence before the first)
    assert re.search(r"^read held-out: 6/6 .*\n(.*\n)*read: 18/18 ", result.err, re.MULTILINE), result.err
    calibration = json.loads(_props(out)["mde.calibration"])
    assert calibration["drop_definition"].endswith("on held-out images of the folder")
    model = onnx.load(str(out))  # the quantizer's notes and opset imports are not the model's
    assert not {"onnx.infer", "onnx.quant.pre_process"} & {p.key for p in model.metadata_props}
    assert {o.domain for o in model.opset_import} <= {n.domain for n in model.graph.node} | {""}
    # the key held the name as \xff text, which never matched: every run calibrated again
    result = cli(*argv, "--force")
    assert result.code == 0 and "reusing calibration ranges" in result.err, result.err
    (tmp_path / "empty").mkdir()
    kitti = tmp_path / "val_selection_cropped"  # KITTI's 16-bit depth PNGs passed for grey frames as well
    for folder in ("image", "groundtruth_depth"):
        (kitti / folder).mkdir(parents=True)
    for args, said in (([frames, "--depth-scale", "256"], f"{frames}: --depth-scale reads a dataset's PNG depth"),
                       ([kitti / "groundtruth_depth"], f"{kitti / 'groundtruth_depth'}: KITTI's groundtruth_depth/ "
                                                       f"holds depth maps, not camera images; give its image/ folder"),
                       ([synth_data / "train"], f"{synth_data / 'train'}: a dataset split's folder; give the dataset"),
                       ([tmp_path / "empty"], f"{tmp_path / 'empty'}: no images here, and no train/ split"),
                       # its 16-bit PNGs passed for grey frames, and it calibrated on depth maps
                       ([synth_data / "train" / "depth"], f"{synth_data / 'train' / 'depth'}: a dataset split's depth "
                                                          f"maps, not camera images; give the dataset ({synth_data})")):
        result = cli("calibrate", tiny_export / "model.onnx", "--data", *args, "--out", tmp_path / "r.onnx")
        assert result.code == 2 and result.err.startswith(f"mde: error: {said}") and result.err.count("\n") == 1


def test_fallback_keeps_sensitive_nodes_float(cli, tiny_export, synth_data, tmp_path):
    out = tmp_path / "fallback.int8.onnx"
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", out,
                 "--num-images", 12, "--holdout-images", 6, "--allow-few", "--target-ssim-drop", 1e-9,
                 "--max-float-nodes", 6, "--method", "minmax", "--json")
    # 1e-9 is out of reach: the search runs to its limit, the file is written, and the unmet target is exit 1
    assert result.code == 1 and "is above the target 1e-09" in result.err.strip().splitlines()[-1], result.err
    report = json.loads(result.out)
    assert not report["target_met"] and out.is_file()
    assert 1 <= len(report["float_nodes"]) <= 6
    assert report["after"]["drop"] < report["before"]["drop"]
    assert report["ranking"] and report["steps"][0][0] == 0
    # the file written is the graph the search measured (re-quantizing with those nodes excluded was not)
    assert report["after"]["drop"] == pytest.approx(dict(report["steps"])[len(report["float_nodes"])], abs=1e-7)
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
    ("nan_ssim_drop", "--target-ssim-drop must be in [0, 1], got nan"),
    ("zero_holdout", "--holdout-images must be >= 1, got 0"),
    ("negative_seed", "--seed must be in 0..4294967295, got -1"),
    ("ranges_is_folder", "out.int8.ranges.json: the output is a folder; expected a file name"),
    ("json_model", "meta.json: expected an .onnx model, got .json"),  # onnx.load parsed it as text: internal error
    # refused after the calibration pass, which had saved OUT.ranges.json; not UTF-8 was an internal error
    ("meta_text_range", "meta.json: expected a JSON object with a numeric 'max_depth' (max_depth is \"20\""),
    ("meta_not_utf8", "meta.json: not UTF-8 text, so not JSON"),
    ("out_in_dataset", "q.int8.onnx: the output would lie inside the dataset"),
    # ONNX Runtime's pre-processing printed its traceback, then the calibrator's failure on a scratch copy: exit 1
    ("opset_too_new", "model.onnx: cannot load ONNX model ("),
    # a user's own FP16 conversion keeping model.onnx's metadata: the "INT8" model kept float16 weights
    ("fp16_weights", "fp16lie.onnx: its metadata says fp32, but "),
    ("nothing_to_quantize", "identity.onnx: nothing to quantize: the graph has no Conv, ConvTranspose, Gemm or MatMul layer"),
    ("fifo", "pipe.onnx: expected an ONNX model, found a pipe, socket or device"),  # was "empty (0 bytes)"
    ("broken_link_in_folder", "zz.png: not a readable file (a broken link"),  # left out in silence
    # calibrated, exit 0, into INT8 files info, parity and predict then refused
    ("output_renamed", "renamed.onnx: graph has no output 'depth' (its outputs: out)"),
    ("out_not_utf8", "ONNX Runtime opens a path as UTF-8 text only"),
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
    elif case == "nan_ssim_drop":
        extra = ["--target-ssim-drop", "nan"]
    elif case == "zero_holdout":
        extra = ["--holdout-images", "0"]
    elif case == "negative_seed":
        extra = ["--seed", "-1"]
    elif case == "ranges_is_folder":  # found before calibrating, not by the last write
        (tmp_path / "out.int8.ranges.json").mkdir()
    elif case == "json_model":
        model = synth_data / "meta.json"
    elif case in ("opset_too_new", "fp16_weights"):
        graph = onnx.load(str(tiny_export / ("model.onnx" if case == "opset_too_new" else "model.fp16.onnx")))
        if case == "opset_too_new":
            graph.opset_import[0].version = 99
            model = tmp_path / "model.onnx"
        else:
            next(p for p in graph.metadata_props if p.key == "mde.precision").value = '"fp32"'
            model = tmp_path / "fp16lie.onnx"
        onnx.save(graph, str(model))
    elif case == "nothing_to_quantize":
        graph = onnx.load(str(tiny_export / "model.onnx"))
        del graph.graph.node[:], graph.graph.initializer[:]
        graph.graph.node.append(onnx.helper.make_node("Identity", ["image"], [graph.graph.output[0].name]))
        model = tmp_path / "identity.onnx"
        onnx.save(graph, str(model))
    elif case == "fifo":
        model = tmp_path / "pipe.onnx"
        os.mkfifo(model)
    elif case == "output_renamed":
        graph = onnx.load(str(tiny_export / "model.onnx"))
        old_name = graph.graph.output[0].name
        graph.graph.output[0].name = "out"
        next(n for n in graph.graph.node if old_name in n.output).output[0] = "out"
        model = tmp_path / "renamed.onnx"
        onnx.save(graph, str(model))
    data, out = synth_data, tmp_path / "out.int8.onnx"
    if case == "out_not_utf8":
        out = tmp_path / os.fsdecode(b"\xfe.int8.onnx")
    if case == "broken_link_in_folder":
        data = tmp_path / "frames"
        shutil.copytree(synth_data / "train" / "rgb", data)
        (data / "zz.png").symlink_to(tmp_path / "gone.png")
    if case.startswith("meta_"):
        data = tmp_path / "data"
        shutil.copytree(synth_data, data)
        (data / "meta.json").write_bytes(b'{"max_depth": "20"}' if case == "meta_text_range" else b'{"\xff": 1}')
        extra = ["--allow-few"]
    elif case == "out_in_dataset":
        data = tmp_path / "data"
        shutil.copytree(synth_data, data)
        out = data / "q.int8.onnx"
    result = cli("calibrate", model, "--data", data, "--out", out, *extra)
    assert result.code == 2
    assert match in result.err and result.err.startswith("mde: error:")
    assert len(result.err.strip().splitlines()) == 1
    assert "--max-float-nodes" not in result.err  # only the bad option is named
    assert not out.exists() and not (tmp_path / "out.int8.ranges.json").is_file()
    assert not out.with_name("q.int8.ranges.json").exists()


def test_a_model_predicting_beyond_its_metadatas_range_is_refused_before_any_file(cli, tiny_export, synth_data,
                                                                                  tmp_path):
    """Metadata whose max_depth is not the model's (1 m for a model of 20): calibrate wrote, exit 0, an INT8 file
    that predict then refused; the ranges file is not written either."""
    graph = onnx.load(str(tiny_export / "model.onnx"))
    output = next(p for p in graph.metadata_props if p.key == "mde.output")
    output.value = json.dumps({**json.loads(output.value), "max_depth": 1.0})
    onnx.save(graph, str(tmp_path / "small.onnx"))
    result = cli("calibrate", tmp_path / "small.onnx", "--data", synth_data, "--out", tmp_path / "out.int8.onnx",
                 "--allow-few", "--num-images", "4", "--holdout-images", "2")
    assert result.code == 2 and re.fullmatch(
        rf"mde: error: {re.escape(str(tmp_path / 'small.onnx'))}: the model predicts depth from [\d.]+ to [\d.]+ m, "
        r"outside the 0 to 1 m its metadata gives: a broken model, or metadata that is not its own",
        result.err.strip().splitlines()[-1]), result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]


@pytest.mark.parametrize("value, method", [(np.nan, "entropy"), (np.nan, "minmax"), (np.inf, "percentile")])
def test_a_model_that_computes_nan_is_refused_in_one_line(cli, value, method, tiny_export, synth_data, tmp_path):
    """A diverged model: ONNX Runtime's calibrator failed inside numpy (entropy: "supplied range of [nan, nan] is
    not finite"; minmax: "scale issue", after writing a ranges file of nulls): one line naming the model, exit 2.
    An infinite logit leaves the depth finite (max_depth · sigmoid): the inner tensor is found."""
    from onnx import numpy_helper

    model = onnx.load(str(tiny_export / "model.onnx"))
    bias = [n for n in model.graph.node if n.op_type == "Conv"][-1].input[2]
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == bias:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                np.full_like(numpy_helper.to_array(tensor), value), bias))
    nan_model, out = tmp_path / "nan.onnx", tmp_path / "out.int8.onnx"
    onnx.save(model, str(nan_model))
    result = cli("calibrate", nan_model, "--data", synth_data, "--out", out, "--allow-few", "--num-images", "4",
                 "--method", method, "--holdout-images", "2")
    assert result.code == 2, result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith(f"mde: error: {nan_model}: computes NaN or infinite values (tensor ") and \
        "Warning" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.onnx"]


def test_a_bad_held_out_file_is_found_before_the_calibration_pass(cli, tiny_export, synth_data, tmp_path):
    """The held-out images were read after the ranges were collected and saved: a bad one left OUT.ranges.json
    without OUT.onnx (with --force, beside the old model it did not belong to)."""
    from mde.calibration.calibrate import open_train_split
    from mde.calibration.config import CalibrationConfig

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    model, out = tiny_export / "model.onnx", tmp_path / "out.int8.onnx"
    dataset, holdout, calib = open_train_split(CalibrationConfig(model=model, data=data, out=out, allow_few=True),
                                               notice=False)
    held = dataset.names[holdout[0]]
    assert holdout[0] not in calib  # not read by the calibration pass
    (data / "train" / "depth" / f"{held}.png").write_text("not a picture")
    result = cli("calibrate", model, "--data", data, "--out", out, "--allow-few")
    assert result.code == 2 and result.err.strip().splitlines()[-1].endswith(f"{held}.png: not a readable image "
                                                                             "(unknown or corrupt format)")
    assert not out.exists() and not (tmp_path / "out.int8.ranges.json").exists()


def test_tensorrt_int8_has_only_int8_dequantize_inputs_and_zero_points(tiny_int8):
    """TensorRT's IDequantizeLayer takes int8 inputs only: Conv biases stay float, every zero point is 0."""
    from onnx import numpy_helper

    from mde.calibration.quantize import check_tensorrt_qdq

    path, _ = tiny_int8
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    elem = {i.name: i.data_type for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs
    for dq in dqs:
        src = dq.input[0]
        if src in elem:
            assert elem[src] == onnx.TensorProto.INT8, (dq.name, elem[src])
        else:
            q = producers[src]
            assert q.op_type == "QuantizeLinear"
            assert numpy_helper.to_array(inits[q.input[2]]).dtype == np.int8, q.name
        assert not numpy_helper.to_array(inits[dq.input[2]]).any(), dq.name
    # Conv biases are read as float initializers, not through an INT32 DequantizeLinear.
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 2]
    assert convs and all(n.input[2] in inits for n in convs)
    check_tensorrt_qdq(model, path)  # the writer's own check accepts it


def _int32_bias_model():
    """A one-Conv Q/DQ model whose bias is an INT32 DequantizeLinear (what QuantizeBias=True writes)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.array(1.0, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp8"),
        numpy_helper.from_array(np.zeros(1, np.int32), "b_q"),
        numpy_helper.from_array(np.array([0], np.int32), "zp32"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp8"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp8"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "s", "zp8"], ["w"], name="dq_w"),
        helper.make_node("DequantizeLinear", ["b_q", "s"], ["b"], name="dq_b"),
        helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])], inits)
    return helper.make_model(graph)


@pytest.mark.parametrize("edit, match", [
    ("int32_bias", "dq_b reads INT32"),
    ("nonzero_zero_point", "dq_w has a zero point that is not a constant 0"),
    ("uint8_activation", "dq_x reads UINT8"),
])
def test_tensorrt_qdq_check_rejects(edit, match, tmp_path):
    from onnx import numpy_helper

    from mde.calibration.quantize import check_tensorrt_qdq
    from mde.errors import ModelError

    model = _int32_bias_model()
    inits = {i.name: i for i in model.graph.initializer}
    if edit != "int32_bias":
        model.graph.node[3].input[:] = ["b_q_f"]  # make the bias float
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "b_q_f"))
        model.graph.node[4].input[2] = "b_q_f"
        del model.graph.node[3]
    if edit == "nonzero_zero_point":
        model.graph.node[2].input[2] = "zp1"
        model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int8), "zp1"))
    if edit == "uint8_activation":
        inits["zp8"].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), "zp8"))
        inits["w_q"].CopyFrom(numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.uint8), "w_q"))
    with pytest.raises(ModelError, match=match) as err:
        check_tensorrt_qdq(model, tmp_path / "m.onnx")
    assert "m.onnx" in str(err.value)


def test_every_tensorrt_int8_written_is_checked(tiny_int8, tiny_export, synth_data, tmp_path, monkeypatch):
    """An INT32 bias DequantizeLinear (ONNX Runtime's default) is refused before anything is written."""
    from dataclasses import replace

    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import TARGETS, CalibrationConfig
    from mde.errors import ModelError

    out = tmp_path / "int32bias.onnx"
    shutil.copy(tiny_int8[0].with_suffix(".ranges.json"), out.with_suffix(".ranges.json"))  # no recalibration
    monkeypatch.setitem(TARGETS, "tensorrt", replace(TARGETS["tensorrt"], quantize_bias=True))
    cfg = CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=out, num_images=12,
                            holdout_images=6, allow_few=True, max_float_nodes=0, progress=False)
    with pytest.raises(ModelError, match="reads INT32; TensorRT's DequantizeLinear takes INT8 only"):
        calibrate(cfg)
    assert not out.exists()


def test_a_folder_of_images_says_its_subfolders_are_not_read(synth_data, tmp_path, caplog):
    """A camera's frames with one more sequence in a subfolder: its images were left out without a word."""
    import shutil

    from mde.calibration.calibrate import UnlabelledImages

    frames = tmp_path / "frames"
    shutil.copytree(synth_data / "train" / "rgb", frames)
    shutil.copytree(synth_data / "val" / "rgb", frames / "seq02")
    with caplog.at_level("WARNING", logger="mde.calibration.calibrate"):
        images = UnlabelledImages(frames)
    assert len(images) == len(list((synth_data / "train" / "rgb").iterdir()))
    assert [r.getMessage() for r in caplog.records] == [
        f"{frames}: the images in subfolders (seq02/) are not read: calibration reads the folder's own images"]


def test_select_images_says_when_it_holds_out_fewer_than_asked(tmp_path, capsys):
    from mde.calibration.calibrate import CalibrationConfig, select_images

    names = [f"{i:06d}" for i in range(24)]
    cfg = CalibrationConfig(model=tmp_path / "m.onnx", data=tmp_path, out=tmp_path / "o.onnx", num_images=8,
                            holdout_images=100, allow_few=True)
    holdout, calib = select_images(names, cfg, tmp_path)
    assert len(holdout) == 6 and len(calib) == 8 and not set(holdout) & set(calib)
    assert "holding out 6 of its 24 train images for the accuracy check, not 100" in capsys.readouterr().err
    select_images(names, CalibrationConfig(model=tmp_path / "m.onnx", data=tmp_path, out=tmp_path / "o.onnx",
                                           num_images=8, holdout_images=4, allow_few=True), tmp_path)
    assert "holding out" not in capsys.readouterr().err


def test_the_drop_is_measured_on_the_datasets_depth_range(tiny_int8, tiny_export, synth_data):
    """1 - SSIM against FP32 with SSIM's data range at the model's max depth: a 300 m model on 20 m scenes
    would score every INT8 error as no drop, so calibrate takes the dataset's range (`data_range`)."""
    from mde.calibration.fallback import Evaluator
    from mde.data.readers import open_dataset
    from mde.runtime.preprocess import preprocess

    samples = [open_dataset(synth_data, "train")[i] for i in range(4)]
    inputs = np.concatenate([preprocess(s.rgb, (64, 64)) for s in samples])
    fp32 = (tiny_export / "model.onnx").read_bytes()
    int8 = tiny_int8[0].read_bytes()
    scene = Evaluator(fp32, inputs, [s.depth for s in samples], max_depth=20.0, data_range=20.0).measure(int8)
    wide = Evaluator(fp32, inputs, [s.depth for s in samples], max_depth=20.0, data_range=300.0).measure(int8)
    assert scene.drop > 5 * wide.drop > 0


def test_calibrate_measures_the_drop_at_the_datasets_range(tiny_export, synth_data, tmp_path, monkeypatch):
    """The wiring: calibrate hands the dataset's max depth (meta.json), not the model's, to the evaluator."""
    import shutil

    from mde.calibration import fallback
    from mde.calibration.calibrate import CalibrationConfig, calibrate

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "max_depth": 12.0}))
    seen = {}

    class Recording(fallback.Evaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update(max_depth=self.max_depth, data_range=self.data_range)

    monkeypatch.setattr(fallback, "Evaluator", Recording)
    calibrate(CalibrationConfig(model=tiny_export / "model.onnx", data=data, out=tmp_path / "m.int8.onnx",
                                num_images=12, holdout_images=6, allow_few=True, max_float_nodes=0, progress=False))
    assert seen == {"max_depth": 20.0, "data_range": 12.0}


def test_the_greedy_search_keeps_only_layers_that_lower_the_drop():
    """A layer whose step did not lower the drop was kept float all the same (the file held a float layer that
    made it no better), and layers that, float alone, raised the drop were still tried."""
    from types import SimpleNamespace

    from mde.calibration.fallback import greedy_fallback

    drops = {("a",): 0.5, ("a", "b"): 0.55, ("a", "c"): 0.3}
    measured: list[tuple[str, ...]] = []

    def measure(nodes):
        measured.append(nodes)
        return SimpleNamespace(drop=drops[nodes])

    evaluator = SimpleNamespace(measure=measure)
    ranking = [("a", 0.5), ("b", 0.6), ("c", 0.7), ("d", 1.2)]  # d alone: worse than all INT8 (1.0)
    result = greedy_fallback(tuple, ranking, evaluator, target=0.1, max_nodes=10, initial_drop=1.0)
    assert result.float_nodes == ["a", "c"] and result.rejected == [("b", 0.55)]
    assert result.steps == [(0, 1.0), (1, 0.5), (2, 0.3)] and result.exhausted
    assert ("a", "c", "d") not in measured  # not tried: it did not help alone
    met = greedy_fallback(tuple, ranking, evaluator, target=0.4, max_nodes=10, initial_drop=1.0)
    assert met.float_nodes == ["a", "c"] and not met.exhausted  # stopped at the target
    limited = greedy_fallback(tuple, ranking, evaluator, target=0.1, max_nodes=1, initial_drop=1.0)
    assert limited.float_nodes == ["a"] and not limited.exhausted  # stopped by --max-float-nodes


@pytest.mark.parametrize("report, message", [
    ({"quantized_nodes": 0, "target_met": True}, "every weighted layer (convolution, matrix product) was kept float"),
    ({"quantized_nodes": 5, "target_met": False}, "SSIM drop 0.0123 is above the target 0.01 with 2 layer(s) kept float"
                                                   " (written anyway); raise --max-float-nodes or --target-ssim-drop"),
    # every layer that could help tried (a --max-float-nodes of 100000 never reached): more of it cannot help
    ({"quantized_nodes": 5, "target_met": False, "search_exhausted": True},
     "kept float (written anyway); raise --target-ssim-drop (the search tried every layer that could lower the drop"),
])
def test_a_calibration_that_misses_its_purpose_is_a_failed_check(report, message):
    """Exit 1: the model is written, but it is not the INT8 model asked for."""
    from types import SimpleNamespace

    from mde.commands.calibrate import _check_result
    from mde.errors import CheckFailed

    result = SimpleNamespace(**{"out": "q.onnx", "after": {"drop": 0.0123}, "target_ssim_drop": 0.01,
                                "float_nodes": ["a", "b"], "ranking": [("a", 0.1), ("b", 0.2), ("c", 0.3)],
                                "steps": [(0, 0.5), (1, 0.3), (2, 0.0123)], "search_exhausted": False, **report})
    with pytest.raises(CheckFailed, match=re.escape(message)) as failed:
        _check_result(result)
    assert failed.value.exit_code == 1
    _check_result(SimpleNamespace(**{**vars(result), "quantized_nodes": 5, "target_met": True}))  # met: no error


def test_calibrate_refuses_an_output_under_a_file_and_says_when_it_has_fewer_images(cli, tiny_export, synth_data,
                                                                                    tmp_path):
    under = tmp_path / "golden.npz" / "q.onnx"
    (tmp_path / "golden.npz").write_bytes(b"a file")
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", under)
    assert result.code == 2 and result.err.strip() == (
        f"mde: error: {under}: --out would write under {tmp_path / 'golden.npz'}, which is a file")
    out = tmp_path / "q.onnx"
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", out, "--num-images", 100,
                 "--holdout-images", 6, "--allow-few", "--max-float-nodes", 0, "--target-ssim-drop", 1)
    assert result.code == 0, result.err
    assert f"{synth_data}: calibrating on 18 images, all its train split has besides the held-out ones, not 100" \
        in result.err


def test_entropy_searches_a_clipping_threshold_where_minmax_takes_the_whole_range(tiny_export, synth_data, tmp_path):
    """With ONNX Runtime's default histogram (128 bins, 128 quantized bins) its KL search had one candidate, the
    whole histogram: `--method entropy` gave the min-max ranges, with no word."""
    from mde.calibration import quantize as qz
    from mde.calibration.calibrate import open_train_split
    from mde.calibration.config import CalibrationConfig
    from mde.runtime.preprocess import preprocess

    cfg = CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=tmp_path / "q.onnx",
                            allow_few=True)
    dataset, _, _ = open_train_split(cfg)
    batches = [preprocess(dataset[i].rgb, (64, 64)) for i in range(8)]
    pre = tmp_path / "pre.onnx"
    qz.pre_process(cfg.model, pre)
    # the stem's MaxPool tensors only: entropy's search costs about a second a tensor
    searched = {"total": None, "done": 0}

    def on_search(total):  # the progress bar's: each tensor's search is reported
        searched["total"] = total
        return lambda: searched.update(done=searched["done"] + 1)

    entropy = qz.collect_ranges(pre, batches, "entropy", ["MaxPool"], on_search=on_search)
    minmax = qz.collect_ranges(pre, batches, "minmax", ["MaxPool"], on_search=on_search)  # no search to report
    assert searched == {"total": len(entropy), "done": len(entropy)}, searched
    assert entropy.keys() == minmax.keys()
    clipped = [name for name in entropy if entropy[name][1] < 0.99 * minmax[name][1]]
    assert len(clipped) >= 0.9 * len(entropy), (len(clipped), len(entropy))
    assert all(entropy[name][1] <= minmax[name][1] * (1 + 1e-6) for name in entropy)


def test_an_output_name_in_capitals_is_an_onnx_file_too(tmp_path):
    """`--out C/up.ONNX` was refused as "not ending in .onnx", while every reader takes UP.ONNX."""
    from mde.calibration.calibrate import _check_config
    from mde.calibration.config import CalibrationConfig
    from mde.errors import InputError

    _check_config(CalibrationConfig(model=tmp_path / "m.onnx", data=tmp_path, out=tmp_path / "up.ONNX"))
    with pytest.raises(InputError, match="expected an output file name ending in .onnx"):
        _check_config(CalibrationConfig(model=tmp_path / "m.onnx", data=tmp_path, out=tmp_path / "up.onnx.txt"))


def test_a_model_with_its_weights_in_a_file_beside_it_calibrates(cli, tiny_export, synth_data, tmp_path):
    """`onnx.save(..., save_as_external_data=True)`: the pre-processing's optimizer ran the graph from a scratch
    folder without the weights file (refused, naming that folder); and a ranges cache keyed on the graph file alone
    would outlive new weights."""
    import onnx

    from mde.calibration.quantize import model_sha256
    from mde.io import sha256_file

    model = tmp_path / "ext" / "model.onnx"
    model.parent.mkdir()
    onnx.save(onnx.load(str(tiny_export / "model.onnx")), str(model), save_as_external_data=True,
              location="model.onnx.data")
    result = cli("calibrate", model, "--data", synth_data, "--out", tmp_path / "q.onnx", "--num-images", 8,
                 "--holdout-images", 4, "--allow-few", "--max-float-nodes", 0, "--target-ssim-drop", 1)
    assert result.code == 0, result.err
    assert (tmp_path / "q.onnx").is_file() and sorted(p.name for p in model.parent.iterdir()) == [
        "model.onnx", "model.onnx.data"]  # nothing left beside the source
    before = model_sha256(model)
    weights = bytearray((model.parent / "model.onnx.data").read_bytes())
    weights[-1] ^= 1
    (model.parent / "model.onnx.data").write_bytes(bytes(weights))
    assert model_sha256(model) != before
    assert model_sha256(tiny_export / "model.onnx") == sha256_file(tiny_export / "model.onnx")  # one file: as before
    # an output over the weights file (as --out, or as the ranges file beside it) replaced what the model reads
    for case, (location, out) in enumerate((("weights.onnx", "weights.onnx"), ("q.ranges.json", "q.onnx"))):
        other = tmp_path / f"case{case}" / "model.onnx"
        other.parent.mkdir()
        onnx.save(onnx.load(str(tiny_export / "model.onnx")), str(other), save_as_external_data=True,
                  location=location)
        result = cli("calibrate", other, "--data", synth_data, "--out", other.parent / out, "--force")
        assert result.code == 2 and result.err.strip().endswith(
            f"{location}: the output would overwrite the input model's weights file"), result.err


def test_a_model_whose_nodes_have_no_names_calibrates(cli, tiny_export, synth_data, tmp_path):
    """ONNX allows unnamed nodes; the float fallback finds layers by name, took every unnamed one for the head and
    built a cyclic graph: "the graph is not acyclic", after the whole calibration, naming no file."""
    graph = onnx.load(str(tiny_export / "model.onnx"))
    for node in graph.graph.node:
        node.name = ""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/m\xff"))  # and a path that is not UTF-8, as before
    folder.mkdir()
    model, out = folder / "unnamed.onnx", tmp_path / "q.onnx"
    onnx.save(graph, str(model))
    result = cli("calibrate", model, "--data", synth_data, "--out", out, "--num-images", 12, "--holdout-images", 4,
                 "--allow-few", "--max-float-nodes", 0, "--target-ssim-drop", 1)
    assert result.code == 0, result.err
    names = [node.name for node in onnx.load(str(out)).graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_the_quantizers_leftovers_go_and_the_opsets_of_subgraphs_stay():
    """Only the opset imports no node uses are removed: a domain used inside an If's branch stays (onnx.checker
    refuses the model without it)."""
    from onnx import TensorProto, helper

    from mde.calibration.calibrate import _drop_quantizer_leftovers

    branch = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml")], "then", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3),
                                                    helper.make_opsetid("com.microsoft", 1)])
    helper.set_model_props(model, {"onnx.infer": "onnxruntime.quant", "mde.version": '"0"'})
    _drop_quantizer_leftovers(model)
    assert [o.domain for o in model.opset_import] == ["", "ai.onnx.ml"]
    assert [p.key for p in model.metadata_props] == ["mde.version"]
    onnx.checker.check_model(model)


def test_a_model_whose_input_is_not_named_image_calibrates(cli, tiny_export, synth_data, tmp_path):
    """The runtime feeds a graph's one input by whatever name it has; calibrate fed "image" and died with an internal
    error ("Required inputs (['x']) are missing from input feed (['image'])")."""
    model = onnx.load(str(tiny_export / "model.onnx"))
    old = model.graph.input[0].name
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        node.input[:] = ["x" if name == old else name for name in node.input]
    for prop in model.metadata_props:
        if prop.key == "mde.preprocess":
            prop.value = json.dumps({**json.loads(prop.value), "input_name": "x"})
    onnx.save(model, str(tmp_path / "x.onnx"))
    out = tmp_path / "x.int8.onnx"
    result = cli("calibrate", tmp_path / "x.onnx", "--data", synth_data, "--out", out, "--num-images", 4,
                 "--holdout-images", 4, "--allow-few")
    assert result.code in (0, 1) and "internal error" not in result.err and out.is_file(), result.err


def test_a_model_path_that_is_not_utf8_is_pre_processed_from_a_copy(tiny_export, synth_data, tmp_path):
    """ONNX Runtime's pre-processing opens the model by path, and no path that is not UTF-8: it printed its own
    traceback ("Model Optimization Failed!") and skipped the optimization, and the run went on to exit 0."""
    import os

    model = tmp_path / os.fsdecode(b"\xffbad.onnx")
    model.write_bytes((tiny_export / "model.onnx").read_bytes())
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mde", "calibrate", os.fsencode(model), "--data", str(synth_data),
                           "--out", str(tmp_path / "q.onnx"), "--num-images", "4", "--holdout-images", "4",
                           "--allow-few"], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1) and (tmp_path / "q.onnx").is_file(), done.stderr
    assert "Traceback" not in done.stderr and "Optimization Failed" not in done.stderr, done.stderr


def test_a_closed_stdout_or_a_dangling_folder_is_refused_before_the_calibration(cli, tiny_export, synth_data,
                                                                                 tmp_path):
    """Both were found only after the whole calibration: `>&-` ended in "standard output is closed" with the model
    written, and an --out under a link to nothing in "cannot write here (File exists)"."""
    import subprocess
    import sys

    out = tmp_path / "q.onnx"
    done = subprocess.run(["bash", "-c", 'exec "$0" -m mde calibrate "$1" --data "$2" --out "$3" >&-', sys.executable,
                           str(tiny_export / "model.onnx"), str(synth_data), str(out)],
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2 and "standard output is closed" in done.stderr and not out.exists(), done.stderr
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    result = cli("calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", tmp_path / "gone" / "q.onnx")
    assert result.code == 2 and result.err == (f"mde: error: {tmp_path / 'gone' / 'q.onnx'}: --out would write under "
                                               f"{tmp_path / 'gone'}, a link to nothing\n"), result.err
    assert "read" not in result.err


def test_a_ctrl_c_inside_onnxruntime_leaves_no_temporary_folder(tiny_export, synth_data, tmp_path, monkeypatch):
    """ONNX Runtime's pre-processing makes its own folder under the system's temporary one: a Ctrl-C between
    its making it and entering its `with` left it there (3 in 20 tries). Now it lies within calibrate's own."""
    import tempfile

    from onnxruntime.quantization import shape_inference

    from mde.calibration.calibrate import calibrate
    from mde.calibration.config import CalibrationConfig

    system_temp = tmp_path / "tmp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    made = []

    def stopped_after_mkdtemp(*args, **kwargs):
        made.append(Path(tempfile.mkdtemp(prefix="pre.quant.")))
        raise KeyboardInterrupt

    monkeypatch.setattr(shape_inference, "quant_pre_process", stopped_after_mkdtemp)
    with pytest.raises(KeyboardInterrupt):
        calibrate(CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=tmp_path / "q.onnx",
                                    num_images=8, holdout_images=4, allow_few=True, progress=False))
    assert made and not made[0].exists()
    assert list(system_temp.iterdir()) == [] and tempfile.tempdir == str(system_temp)
    assert not (tmp_path / "q.onnx").exists()


def test_an_int8_beside_another_checkpoints_golden_is_refused_without_force(cli, tiny_export, tiny_unet, synth_data,
                                                                           tmp_path):
    """Export refuses to mix checkpoints in a folder; calibrate put another checkpoint's INT8 beside a golden.npz,
    and only `mde parity --golden` found it later (FAIL, source)."""
    from mde.calibration.calibrate import _check_golden_beside, load_source
    from mde.calibration.config import CalibrationConfig

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(tiny_export / "golden.npz", folder)
    out = folder / "model.int8.cpu.onnx"
    result = cli("calibrate", tiny_unet.export / "model.onnx", "--data", synth_data, "--out", out, "--target", "cpu")
    assert result.code == 2 and re.search(r"model.int8.cpu.onnx: would put a model of checkpoint \w{12} beside "
                                          r"golden.npz of checkpoint \w{12}, whose torch-free parity check it would "
                                          r"fail; choose another folder, or use --force", result.err), result.err
    assert sorted(p.name for p in folder.iterdir()) == ["golden.npz"]
    _, meta = load_source(tiny_unet.export / "model.onnx")
    _check_golden_beside(CalibrationConfig(model=tiny_unet.export / "model.onnx", data=synth_data, out=out,
                                           force=True), meta)  # --force: as asked
    _, own = load_source(tiny_export / "model.onnx")  # the golden's own checkpoint: fine
    _check_golden_beside(CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=out), own)


def test_a_golden_of_the_same_weights_from_another_checkpoint_file_is_no_mix(tiny_export, synth_data, tmp_path):
    """best.pt and last.pt of one epoch hold the same weights in two files: parity's source check matches the
    weights first, so calibrate must not refuse what `mde parity --golden` passes."""
    from mde.calibration.calibrate import _check_golden_beside, load_source
    from mde.calibration.config import CalibrationConfig
    from mde.errors import InputError

    shutil.copy(tiny_export / "golden.npz", tmp_path)
    _, meta = load_source(tiny_export / "model.onnx")
    meta.source["checkpoint_sha256"] = "0" * 64  # another file
    cfg = CalibrationConfig(model=tiny_export / "model.onnx", data=synth_data, out=tmp_path / "m.int8.onnx")
    _check_golden_beside(cfg, meta)
    meta.source["weights_sha256"] = "1" * 64  # and other weights: a mix
    with pytest.raises(InputError, match="would put a model of checkpoint 000000000000 beside golden.npz"):
        _check_golden_beside(cfg, meta)
