"""`mde eval`: a checkpoint or an ONNX model scored with the one metrics module; table, --json, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

KEYS = {"rmse", "ssim", "abs_rel", "sq_rel", "rmse_log", "delta1", "delta2", "delta3", "silog", "images"}
REGION_KEYS = {f"{r}_{m}" for r in ("objects", "structure") for m in ("rmse", "abs_rel", "delta1", "images")}


def test_eval_checkpoint_json(cli, tiny_checkpoint, synth_data):
    res = cli("eval", tiny_checkpoint, "--data", synth_data, "--json", "--device", "cpu")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)  # stdout holds exactly one JSON object
    assert set(metrics) == KEYS | REGION_KEYS | {"pixel_mean_map"}  # the synthetic set has masks
    assert metrics["images"] == 8 and metrics["rmse"] > 0 and -1 <= metrics["ssim"] <= 1
    assert 0 < metrics["objects_images"] <= 8 and metrics["structure_images"] == 8
    assert set(metrics["pixel_mean_map"]) == {"rmse", "abs_rel", "delta1"} | REGION_KEYS


def test_eval_region_figures_match_a_direct_computation(cli, tiny_checkpoint, tiny_export, synth_data, tmp_path):
    """Region figures are per-image region metrics averaged over the images having the region;
    without mask/ folders, or with masks that mark no region, they are absent (from parity too)."""
    import shutil

    from mde.data.readers import open_dataset
    from mde.runtime.metrics import region_metrics
    from mde.train.checkpoint import load_model
    from mde.train.evaluate import torch_predictor

    res = json.loads(cli("eval", tiny_checkpoint, "--data", synth_data, "--json", "--device", "cpu").out)
    model, _ = load_model(tiny_checkpoint)
    data = open_dataset(synth_data, "val")
    predict = torch_predictor(model, 64, model.args.max_depth)
    per = [region_metrics(predict([s.rgb])[0], s.depth, s.mask) for s in data]
    objects = [m["objects_rmse"] for m in per if "objects_rmse" in m]
    assert res["objects_rmse"] == pytest.approx(float(np.mean(objects)), rel=1e-5)
    assert res["objects_images"] == len(objects)
    plain = tmp_path / "plain"
    shutil.copytree(synth_data, plain, ignore=shutil.ignore_patterns("mask"))
    res = cli("eval", tiny_checkpoint, "--data", plain, "--json", "--device", "cpu")
    assert set(json.loads(res.out)) == KEYS | {"pixel_mean_map"} and "no region figures" not in res.err
    # masks that mark every pixel invalid: no region figures either, and it says so
    blank = tmp_path / "blank"
    shutil.copytree(synth_data, blank)
    for mask in (blank / "val" / "mask").iterdir():
        Image.fromarray(np.full_like(np.asarray(Image.open(mask)), 255)).save(mask)
    res = cli("eval", tiny_checkpoint, "--data", blank, "--json", "--device", "cpu")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    assert set(metrics) == KEYS | {"pixel_mean_map"}
    assert set(metrics["pixel_mean_map"]) == {"rmse", "abs_rel", "delta1"}  # the baseline's regions left out too
    assert "the val masks mark no object or structure pixel" in res.err
    # and parity, on the same data, as eval: no region figures, and it says so (it showed rows of 0 images)
    report = tmp_path / "parity.json"
    res = cli("parity", tiny_checkpoint, tiny_export / "model.onnx", "--data", blank, "--json", report)
    assert res.code == 0, res.err
    compared = json.loads(report.read_text())
    assert "regions" not in compared and compared["artifacts"][0]["regions"] == {}
    assert "the val masks mark no object or structure pixel" in res.err and "per region" not in res.out


def test_a_region_no_val_image_shows_keeps_its_keys_as_null(cli, tiny_checkpoint, synth_data, tmp_path):
    """Masks that mark no object left the objects_* keys out of --json, which tools may rely on."""
    import shutil

    plain = tmp_path / "structure-only"
    shutil.copytree(synth_data, plain)
    for mask in (plain / "val" / "mask").iterdir():
        Image.fromarray(np.where(np.asarray(Image.open(mask)) == 1, 0, np.asarray(Image.open(mask)))).save(mask)
    res = cli("eval", tiny_checkpoint, "--data", plain, "--json", "--device", "cpu")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    assert set(metrics) == KEYS | REGION_KEYS | {"pixel_mean_map"} and metrics["structure_images"] == 8
    assert metrics["objects_images"] == 0 and metrics["objects_rmse"] is None and metrics["objects_delta1"] is None
    assert metrics["pixel_mean_map"]["objects_rmse"] is None and metrics["pixel_mean_map"]["objects_images"] == 0
    table = cli("eval", tiny_checkpoint, "--data", plain, "--device", "cpu").out
    assert "objects_rmse" in table and "nan" not in table


def test_eval_and_parity_score_the_pixel_mean_map_alike(cli, tiny_checkpoint, tiny_export, synth_data, tmp_path):
    """Both score the image-blind map as a model of the same range would predict it (clipped to its max
    depth): with training depth beyond that range, eval's figure was unclipped and parity's clipped."""
    import shutil

    from mde.train.checkpoint import load_checkpoint

    max_depth = load_checkpoint(tiny_checkpoint)["model_args"]["max_depth"]
    data = tmp_path / "far"
    shutil.copytree(synth_data, data)
    for depth in (data / "train" / "depth").iterdir():
        mm = np.asarray(Image.open(depth)).copy()
        mm[: mm.shape[0] // 2] = min(65000, round(max_depth * 3000))  # the top half far beyond the range
        Image.fromarray(mm).save(depth)
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0, res.err
    evaluated = json.loads(res.out)["pixel_mean_map"]
    report = tmp_path / "parity.json"
    assert cli("parity", tiny_checkpoint, tiny_export / "model.onnx", "--data", data, "--json", report).code == 0
    compared = json.loads(report.read_text())["regions"]["pixel_mean_map"]
    for region in ("objects", "structure"):
        for metric in ("rmse", "abs_rel", "delta1", "images"):
            assert evaluated[f"{region}_{metric}"] == pytest.approx(compared[region][metric], rel=1e-6), metric


def test_the_baseline_never_stops_scoring_and_never_sees_the_scored_images(cli, tiny_checkpoint, tiny_export,
                                                                          synth_data, tmp_path):
    """A train/ folder that cannot be read stopped eval and parity of val (exit 2), though train is read only
    for the per-pixel mean map; and parity --split train showed that map built from the images it scored."""
    import shutil

    data = tmp_path / "valonly"
    shutil.copytree(synth_data / "val", data / "val")
    shutil.copy(synth_data / "meta.json", data / "meta.json")
    (data / "train").mkdir()  # empty: not a split
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0 and "note: no per-pixel mean map baseline:" in res.err, res.err
    assert "pixel_mean_map" not in json.loads(res.out) and "objects_rmse" in json.loads(res.out)
    report = tmp_path / "parity.json"
    res = cli("parity", tiny_checkpoint, tiny_export / "model.onnx", "--data", data, "--json", report)
    assert res.code == 0 and "pixel_mean_map" not in json.loads(report.read_text())["regions"], res.err
    res = cli("parity", tiny_checkpoint, tiny_export / "model.onnx", "--data", synth_data, "--split", "train",
              "--limit", "4", "--json", report)
    assert res.code == 0 and "pixel_mean_map" not in json.loads(report.read_text())["regions"], res.err


def test_the_baseline_is_shown_without_masks_and_its_absence_is_said(cli, tiny_export, synth_data, tmp_path):
    """Without val masks eval left the per-pixel mean map out in silence (it is a whole-image figure too), and
    without a train/ folder it said nothing of why it was missing."""
    import shutil

    data = tmp_path / "nomask"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "val" / "mask")
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0 and set(json.loads(res.out)["pixel_mean_map"]) == {"rmse", "abs_rel", "delta1"}, res.err
    shutil.rmtree(data / "train")
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0 and "pixel_mean_map" not in json.loads(res.out), res.err
    assert "note: no per-pixel mean map baseline: " in res.err and "split 'train'" in res.err, res.err


def test_no_baseline_is_built_for_a_split_that_holds_the_train_split(synth_data):
    """NYU's "all" holds its train images: a per-pixel mean map from them would be scored on what it saw."""
    from mde.runtime.evaluate import train_split_baseline

    built = []
    for split in ("train", "all"):
        assert train_split_baseline(synth_data, split, None, 20.0, built.append) is None
    assert built == []
    assert train_split_baseline(synth_data, "val", None, 20.0, lambda train: len(train)) > 0


def test_an_images_note_is_said_once_and_the_baseline_reads_no_image(cli, tiny_export, synth_data, tmp_path):
    """The per-pixel mean map reads depth maps and masks only: it read every val image again (each note on an
    image was printed twice) and every train image (an unreadable one would have cost the baseline)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    first = sorted((data / "val" / "rgb").iterdir())[0]
    grey = np.asarray(Image.open(first).convert("L")).astype(np.uint16)  # 8-bit values in a 16-bit PNG
    Image.fromarray(grey).save(first)
    sorted((data / "train" / "rgb").iterdir())[0].write_bytes(b"not a PNG")
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0, res.err
    assert res.err.count("8-bit values in a 16-bit image") == 1, res.err
    assert "pixel_mean_map" in json.loads(res.out) and "note:" not in res.err, res.err


def test_eval_checkpoint_table(cli, tiny_checkpoint, synth_data):
    res = cli("eval", tiny_checkpoint, "--data", synth_data, "--split", "train", "--device", "cpu")
    assert res.code == 0, res.err
    assert "rmse" in res.out and "delta1" in res.out and "24 images" in res.out


def test_eval_matches_a_direct_computation(tiny_checkpoint, synth_data):
    """The shared loop equals scoring each image by hand with the metrics module."""
    from mde.data.readers import dataset_max_depth, open_dataset
    from mde.runtime.evaluate import evaluate
    from mde.runtime.metrics import compute_metrics
    from mde.train.checkpoint import load_model
    from mde.train.evaluate import torch_predictor

    model, _ = load_model(tiny_checkpoint)
    data = open_dataset(synth_data, "val")
    rng = float(dataset_max_depth(synth_data))
    predict = torch_predictor(model, 64, model.args.max_depth)
    got = evaluate(predict, data, rng, batch_size=3)
    by_hand = [compute_metrics(predict([data[i].rgb])[0], data[i].depth, rng)["rmse"]
               for i in range(len(data))]
    assert got["rmse"] == pytest.approx(float(np.mean(by_hand)), rel=1e-5)


def test_eval_onnx_matches_checkpoint(cli, tiny_checkpoint, tiny_export, synth_data):
    pytest.importorskip("onnxruntime")
    pt = json.loads(cli("eval", tiny_checkpoint, "--data", synth_data, "--json", "--device", "cpu").out)
    res = cli("eval", tiny_export / "model.onnx", "--data", synth_data, "--json")
    assert res.code == 0, res.err
    onnx = json.loads(res.out)
    assert onnx["rmse"] == pytest.approx(pt["rmse"], abs=1e-4)
    assert onnx["ssim"] == pytest.approx(pt["ssim"], abs=1e-4)


@pytest.fixture
def other_arch(tmp_path, tiny_checkpoint):
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model_args"]["backbone"] = "resnet50"
    path = tmp_path / "other.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("kind, match", [
    ("corrupt", "corrupt"),
    ("missing", "not found"),
    ("other_arch", "do not match"),
    ("suffix", "expected a .pt, .onnx or .engine"),
    ("split", "split"),
])
def test_eval_bad_input(cli, tmp_path, synth_data, request, kind, match):
    model = {"missing": tmp_path / "nope.pt", "suffix": tmp_path / "model.txt",
             "corrupt": tmp_path / "bad.pt"}.get(kind)
    if kind == "corrupt":
        model.write_bytes(b"\x00garbage" * 10)
    if kind == "suffix":
        model.write_text("hello")
    if kind == "other_arch":
        model = request.getfixturevalue("other_arch")
    if kind == "split":
        model = request.getfixturevalue("tiny_checkpoint")
    extra = ["--split", "test"] if kind == "split" else []
    res = cli("eval", model, "--data", synth_data, "--json", *extra)
    assert res.code == 2, res.err
    assert match in res.err and len(res.err.strip().splitlines()) == 1
    assert res.out == ""


def test_eval_onnx_device_picks_the_provider(cli, tiny_export, synth_data):
    """--device cpu runs an .onnx on ONNX Runtime's CPU provider, and --providers names it as predict, bench and
    parity take it; the figures are those of auto here."""
    auto = cli("eval", tiny_export / "model.onnx", "--data", synth_data, "--json")
    cpu = cli("eval", tiny_export / "model.onnx", "--data", synth_data, "--json", "--device", "cpu")
    named = cli("eval", tiny_export / "model.onnx", "--data", synth_data, "--json",
                "--providers", "CPUExecutionProvider")
    assert auto.code == cpu.code == named.code == 0, cpu.err + named.err
    assert json.loads(cpu.out)["rmse"] == pytest.approx(json.loads(auto.out)["rmse"], rel=1e-6)
    assert json.loads(named.out)["rmse"] == pytest.approx(json.loads(auto.out)["rmse"], rel=1e-6)


@pytest.mark.parametrize("model, options, match", [
    ("pt", ["--providers", "CPUExecutionProvider"], "a .pt checkpoint runs in PyTorch (choose where with --device)"),
    ("pt", ["--device", "cuda:999"], "PyTorch was asked to run on cuda:999; it sees"),
    ("pt", ["--device", "gpu"], "unknown --device 'gpu'; choose from auto, cpu, cuda, cuda:N"),
    ("onnx", ["--device", "cpu", "--providers", "CPUExecutionProvider"],
     "--device cpu and --providers both choose where the model runs"),
    ("onnx", ["--device", "cuda:1"], "for an .onnx give --device cuda with CUDA_VISIBLE_DEVICES=1"),
    ("onnx", ["--providers", "NoSuchExecutionProvider"], "NoSuchExecutionProvider"),
])
def test_eval_device_and_providers_refusals(cli, tiny_checkpoint, tiny_export, synth_data, model, options, match):
    """Where the model runs, as parity and predict say it: a GPU index for PyTorch, providers for ONNX Runtime;
    what cannot be honoured is one line before any image is read."""
    path = tiny_checkpoint if model == "pt" else tiny_export / "model.onnx"
    res = cli("eval", path, "--data", synth_data, "--json", *options)
    assert res.code == 2 and match in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert res.out == ""


def test_eval_onnx_on_cuda_without_cuda_is_one_line(cli, tiny_export, synth_data):
    from mde.runtime.backends.ort_providers import provider_problem

    if not provider_problem("CUDAExecutionProvider"):
        pytest.skip("this machine runs ONNX Runtime on CUDA")
    res = cli("eval", tiny_export / "model.onnx", "--data", synth_data, "--device", "cuda")
    assert res.code == 2 and res.err.count("\n") == 1 and "CUDAExecutionProvider" in res.err, res.err


def test_parity_and_golden_export_note_a_checkpoint_trained_at_another_depth_scale(cli, tiny_checkpoint, tiny_export,
                                                                                   synth_data, tmp_path):
    """eval said it; parity scored the reference on the misread depth (RMSE 30.98 against 22.90, PASS) and export
    --golden-data saved the misread ground truth into golden.npz, each without a word."""
    import torch

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    state["config"]["depth_scale"] = 256.0
    ckpt = tmp_path / "kitti.pt"
    torch.save(state, ckpt)
    note = (f"note: {ckpt} was trained on PNG depth read at 256 units per metre; {synth_data}'s is read at 1000 "
            "here (as its meta.json declares)")
    result = cli("parity", ckpt, tiny_export / "model.onnx", "--data", synth_data, "--limit", "2")
    assert note in result.err, result.err
    result = cli("export", ckpt, "--out", tmp_path / "e", "--precision", "fp32", "--golden-data", synth_data,
                 "--golden-images", "2")
    assert result.code == 0 and note in result.err, result.err


def test_eval_notes_a_checkpoint_trained_at_another_depth_scale(cli, tiny_checkpoint, synth_data, tmp_path):
    """The scale is the dataset's, not the checkpoint's: a run trained with --depth-scale 256 scored on the same
    PNGs without it read them at 1000 units a metre, with no word (RMSE 39.8 against 31.1)."""
    import torch

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    state["config"]["depth_scale"] = 256.0
    ckpt = tmp_path / "kitti.pt"
    torch.save(state, ckpt)
    note = f"note: {ckpt} was trained on PNG depth read at 256 units per metre; {synth_data}'s is read at 1000"
    result = cli("eval", ckpt, "--data", synth_data, "--json")
    assert result.code == 0 and f"{note} here (as its meta.json declares)" in result.err, result.err
    undeclared = tmp_path / "undeclared"  # the same PNGs, with a meta.json that declares no scale
    undeclared.mkdir()
    for split in ("train", "val"):
        (undeclared / split).symlink_to(synth_data / split)
    meta = json.loads((synth_data / "meta.json").read_text())
    del meta["depth_png_scale"]
    (undeclared / "meta.json").write_text(json.dumps(meta))
    result = cli("eval", ckpt, "--data", undeclared, "--json")
    assert result.code == 0 and "(give --depth-scale 256 if it is the same data)" in result.err, result.err
    result = cli("eval", ckpt, "--data", undeclared, "--json", "--depth-scale", "256")
    assert result.code == 0 and "was trained on" not in result.err, result.err


def test_the_scale_a_run_read_its_pngs_at_is_noted_from_meta_json_and_from_an_onnx(cli, tiny_export, synth_data,
                                                                                    tmp_path):
    """A run whose KITTI meta.json declared 256 recorded no scale (only --depth-scale was saved), and an exported
    model's never was looked at: the same PNGs without the meta.json's scale were scored at 1000, unsaid."""
    import onnx

    from mde.data.readers import trained_png_scale
    from mde.runtime.metadata import read_props

    model = onnx.load(str(tiny_export / "model.onnx"))
    source = json.loads(read_props(model)["mde.source"])
    source["config"]["png_depth_scale"] = 1000.0  # what a run on the synth set records (tests/test_train.py)
    next(p for p in model.metadata_props if p.key == "mde.source").value = json.dumps(source)
    onnx.save(model, str(tmp_path / "model.onnx"))
    assert trained_png_scale({"depth_scale": None, "png_depth_scale": 256}) == 256.0
    assert trained_png_scale({"depth_scale": 5000, "png_depth_scale": 5000}) == 5000.0
    assert trained_png_scale({"depth_scale": None}) is None and trained_png_scale(None) is None
    assert trained_png_scale({"depth_scale": 1000.0}) is None  # an older run's saved default: not known as given
    other = tmp_path / "at256"  # the same PNGs, declared at another scale
    other.mkdir()
    for split in ("train", "val"):
        (other / split).symlink_to(synth_data / split)
    meta = json.loads((synth_data / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "depth_png_scale": 256, "max_depth": meta["max_depth"] * 4}))
    result = cli("eval", tmp_path / "model.onnx", "--data", other, "--json")
    assert (f"note: {tmp_path / 'model.onnx'} was trained on PNG depth read at 1000 units per metre; {other}'s "
            "is read at 256 here (as its meta.json declares)") in result.err, result.err


def test_a_train_split_in_another_unit_gives_no_baseline_but_a_note(cli, tiny_export, synth_data, tmp_path):
    """Train depth saved as .npy millimetres: eval scored the per-pixel mean map built from it (14.9 m RMSE against
    5.0) without a word, where train refuses that split. Its baseline is now refused as the scored split would be."""
    import shutil

    data = tmp_path / "train-mm"
    shutil.copytree(synth_data, data)
    for png in (data / "train" / "depth").glob("*.png"):
        np.save(png.with_suffix(".npy"), np.asarray(Image.open(png), np.float32))  # millimetres, as metres
        png.unlink()
    res = cli("eval", tiny_export / "model.onnx", "--data", data, "--json")
    assert res.code == 0, res.err
    assert "pixel_mean_map" not in json.loads(res.out)
    assert "note: no per-pixel mean map baseline: " in res.err and "(millimetres?)" in res.err, res.err
