"""golden.npz from a dataset: ground truth travels with it, so torch-free parity reports RMSE/SSIM deltas."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def export_with_gt(tmp_path_factory, tiny_checkpoint, synth_data):
    from mde.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("export-gt")
    export_checkpoint(ExportConfig(checkpoint=tiny_checkpoint, out=out, precisions=("fp32",),
                                   golden_data=synth_data, golden_images=3, progress=False))
    return out


def test_golden_from_a_dataset_carries_its_ground_truth(export_with_gt, synth_data):
    from mde.data.readers import open_dataset
    from mde.runtime.backends.golden import read_golden

    golden = read_golden(export_with_gt / "golden.npz")
    assert golden["meta"]["ground_truth"] is True and str(synth_data) in golden["meta"]["inputs"]
    val = open_dataset(synth_data, "val")
    for i in range(3):
        np.testing.assert_array_equal(golden[f"gt_{i}"], val[i].depth.astype(np.float32))


def test_golden_parity_reports_rmse_and_ssim_deltas(cli, export_with_gt, tmp_path):
    out = tmp_path / "parity.json"
    result = cli("parity", "--golden", export_with_gt / "golden.npz", export_with_gt / "model.onnx", "--json", out)
    assert result.code == 0, result.err
    row = json.loads(out.read_text())["artifacts"][0]
    assert row["rmse"] > 0 and 0 < row["ssim"] <= 1
    assert abs(row["d_rmse"]) <= 1e-4 and abs(row["d_ssim"]) <= 1e-4


def test_golden_parity_shows_the_artifacts_region_figures_in_its_table_and_report(cli, export_with_gt, tmp_path):
    """A golden file with masks gave the region figures in --json only: the table and the report had none."""
    report, out = tmp_path / "g.md", tmp_path / "g.json"
    result = cli("parity", "--golden", export_with_gt / "golden.npz", export_with_gt / "model.onnx",
                 "--report", report, "--json", out)
    assert result.code == 0, result.err
    regions = json.loads(out.read_text())["artifacts"][0]["regions"]
    assert set(regions) == {"objects", "structure"} and regions["structure"]["images"] == 3
    row = f"| structure | model.onnx | {regions['structure']['rmse']:.4f} |"
    assert "per region (information, not gated)" in result.out and "structure │ model.onnx" in result.out
    assert row in report.read_text() and "| structure | PyTorch |" not in report.read_text()  # no reference here


def test_golden_without_a_dataset_is_noise_and_says_so(tiny_export, cli, tmp_path):
    from mde.runtime.backends.golden import read_golden

    golden = read_golden(tiny_export / "golden.npz")
    assert golden["meta"]["ground_truth"] is False and "noise" in golden["meta"]["inputs"]
    out = tmp_path / "parity.json"
    assert cli("parity", "--golden", tiny_export / "golden.npz", tiny_export / "model.onnx", "--json", out).code == 0
    assert json.loads(out.read_text())["artifacts"][0]["rmse"] is None


def test_bad_golden_data_is_one_line_exit_2_and_writes_nothing(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = cli("export", tiny_checkpoint, "--out", out, "--precision", "fp32", "--golden-data", tmp_path / "nope")
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if line.startswith("mde: error")]
    assert len(errors) == 1 and "nope" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_export_and_calibrate_read_depth_pngs_by_depth_scale(synth_data, tmp_path):
    """`--depth-scale` reaches the readers of `export --golden-data`/`--calib-data` and `calibrate --data`."""
    import shutil

    from PIL import Image

    from mde.calibration.calibrate import open_train_split
    from mde.calibration.config import CalibrationConfig
    from mde.export.config import ExportConfig, calibration_config
    from mde.export.golden import golden_inputs

    kitti = tmp_path / "kitti"
    shutil.copytree(synth_data, kitti)
    for png in kitti.glob("*/depth/*.png"):  # the same depths in KITTI's 1/256 m
        mm = np.asarray(Image.open(png)).astype(np.float64)
        Image.fromarray(np.round(mm / 1000 * 256).astype(np.uint16)).save(png)
    meta = json.loads((kitti / "meta.json").read_text())
    del meta["depth_png_scale"]  # the 1000 the synthetic world declares: the option would contradict it
    (kitti / "meta.json").write_text(json.dumps(meta))
    want = golden_inputs(synth_data, (64, 64), 2, 0).gts
    got = golden_inputs(kitti, (64, 64), 2, 0, depth_scale=256.0).gts
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, atol=1 / 256)
    export = ExportConfig(checkpoint=tmp_path / "c.pt", out=tmp_path, calib_data=kitti, depth_scale=256.0,
                          calib_allow_few=True)
    for cfg in (calibration_config(export, tmp_path / "m.onnx", tmp_path / "q.onnx"),
                CalibrationConfig(model=tmp_path / "m.onnx", data=kitti, out=tmp_path / "q.onnx", depth_scale=256.0,
                                  allow_few=True)):
        dataset, _, _ = open_train_split(cfg)
        reference, _, _ = open_train_split(CalibrationConfig(model=cfg.model, data=synth_data, out=cfg.out,
                                                             allow_few=True))
        np.testing.assert_allclose(dataset[0].depth, reference[0].depth, atol=1 / 256)


def _gt_3d(g):
    g["gt_0"] = g["gt_0"][None]


def _gt_text(g):
    g["gt_0"] = np.array("metres")


def _gt_missing(g):
    del g["gt_1"]


def _gt_invalid(g):
    g["gt_0"] = np.full_like(g["gt_0"], np.nan)


def _mask_value(g):
    g["mask_0"] = np.where(g["mask_0"] == 1, 7, g["mask_0"]).astype(np.uint8)


def _mask_float(g):
    g["mask_0"] = g["mask_0"].astype(np.float32)


def _mask_shape(g):
    g["mask_0"] = g["mask_0"][:5, :5]


def _range_text(g):
    meta = json.loads(str(g["meta"]))
    g["meta"] = np.array(json.dumps({**meta, "data_range": "abc"}))


def _range_negative(g):
    meta = json.loads(str(g["meta"]))
    g["meta"] = np.array(json.dumps({**meta, "data_range": -5}))


def _range_huge(g):
    meta = json.loads(str(g["meta"]))
    g["meta"] = np.array(json.dumps({**meta, "data_range": 1.7e308}))


def _depth_cut(g):
    g["depth"] = g["depth"][:, :, :32, :32]


def _image_empty(g):
    g["image"], g["depth"] = g["image"][:, :, :0, :0], g["depth"][:, :, :0, :0]


def _image_uint8(g):
    g["image"] = np.round(g["image"] * 255).astype(np.uint8)


def _image_times_255(g):
    g["image"] = g["image"] * np.float32(255)


def _meta(**changes):
    def damage(g):
        g["meta"] = np.array(json.dumps({**json.loads(str(g["meta"])), **changes}))
    return damage


def _tolerances(**changes):
    def damage(g):
        g["tolerances"] = np.array(json.dumps({**json.loads(str(g["tolerances"])), **changes}))
    return damage


@pytest.mark.parametrize("damage, says", [
    (_gt_3d, "gt_0 must be an H x W float depth map, got float32 (1, "),
    (_gt_text, "gt_0 must be an H x W float depth map, got <U6 ()"),
    (_gt_missing, "holds ground truth for 2 of its 3 images (gt_1 is missing)"),
    (_gt_invalid, "gt_0 has no valid depth (all 0, negative or NaN)"),
    (_mask_value, "mask_0 must be uint8 region values (0, 1, 255) of gt_0's shape"),
    (_mask_float, "mask_0 must be uint8 region values"),
    (_mask_shape, "got uint8 (5, 5)"),
    (_range_text, "meta.data_range must be a number of metres in [0.001, 1e+06], got abc"),
    (_range_negative, "meta.data_range must be a number of metres in [0.001, 1e+06], got -5"),
    (_range_huge, "meta.data_range must be a number of metres in [0.001, 1e+06], got 1.7e+308"),  # SSIM overflowed
    (_depth_cut, "golden arrays must be N x 3 x H x W and N x 1 x H x W"),
    # inputs of another scale failed every artifact ("parity failed: model.onnx (p99, rmse, ssim)", exit 1)
    (_image_empty, "golden arrays must be N x 3 x H x W and N x 1 x H x W, N, H, W >= 1"),  # min() of nothing
    (_image_uint8, "golden 'image' must be the preprocessed float32 input in [0, 1], found uint8 from "),
    (_image_times_255, "golden 'image' must be the preprocessed float32 input in [0, 1], found float32 from "),
    # a damaged max_depth was a parity failure of the artifact (exit 1, "preprocessing mismatch")
    (_meta(max_depth=float("inf")), "meta.max_depth must be a number of metres in [0.001, 1e+06], got Infinity"),
    (_meta(max_depth=True), "meta.max_depth must be a number of metres in [0.001, 1e+06], got true"),
    # damaged tolerance rows were skipped, and the defaults used, in silence
    (_tolerances(fp32="garbage"), "[fp32] must be a table of tolerances"),
    (_tolerances(fp32=[1, 2]), "[fp32] must be a table of tolerances"),
    (_tolerances(fp32={"ssim_abz": 0.5}), "unknown tolerance ['ssim_abz'] in [fp32]"),
    (_tolerances(bf16={"ssim_abs": 1}), "unknown precision [bf16]"),
])
def test_a_damaged_golden_file_is_named_in_one_line(cli, export_with_gt, tmp_path, damage, says):
    """Internal errors (a 3-D or text gt_0, a text data range), messages that named no file or blamed the artifact
    (a cut depth), or a silent pass without the RMSE and SSIM gates (gt_1 gone, mask values of 7)."""
    with np.load(export_with_gt / "golden.npz") as npz:
        golden = {name: npz[name] for name in npz.files}
    assert "mask_0" in golden  # the synthetic set's golden images carry masks: the mask cases test something
    damage(golden)
    path = tmp_path / "golden.npz"
    np.savez(path, **golden)
    result = cli("parity", "--golden", path, export_with_gt / "model.onnx")
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1].startswith(f"mde: error: {path}: ") and says in result.err, result.err


def test_golden_images_default_to_a_small_val_split_whole(tmp_path, synth_data):
    """A val split of 2 images was refused by default: "--golden-images asks for 4", an option nobody gave."""
    import shutil

    from mde.errors import DataError
    from mde.export.golden import golden_inputs

    small = tmp_path / "small"
    shutil.copytree(synth_data, small)
    for sub in ("rgb", "depth", "mask"):
        for extra in sorted((small / "val" / sub).iterdir())[2:]:
            extra.unlink()
    assert len(golden_inputs(small, (64, 64), None, 0).gts) == 2
    assert len(golden_inputs(synth_data, (64, 64), None, 0).gts) == 4 and golden_inputs(None, (64, 64), None, 0)\
        .image.shape[0] == 4
    with pytest.raises(DataError, match="the val split has 2 images; --golden-images asks for 4"):
        golden_inputs(small, (64, 64), 4, 0)  # asked for: not cut down


def test_a_precision_added_later_keeps_the_folders_dataset_golden(cli, export_with_gt, tiny_checkpoint, tiny_unet,
                                                                  tmp_path):
    """`mde export CKPT -o DIR -p fp16` into a folder exported with --golden-data replaced its golden.npz with
    noise inputs, without a word: the torch-free check on the robot lost its RMSE/SSIM gates."""
    import shutil

    from mde.runtime.backends.golden import read_golden

    folder = tmp_path / "export"
    shutil.copytree(export_with_gt, folder)
    before = read_golden(folder / "golden.npz")
    result = cli("export", tiny_checkpoint, "-o", folder, "-p", "fp16")
    assert result.code == 0, result.err
    assert "golden.npz: keeping its dataset " in result.err and "(3 images) with their ground truth" in result.err
    after = read_golden(folder / "golden.npz")
    assert after["meta"]["ground_truth"] is True and after["meta"]["inputs"] == before["meta"]["inputs"]
    np.testing.assert_array_equal(after["image"], before["image"])
    np.testing.assert_array_equal(after["gt_2"], before["gt_2"])
    checked = cli("parity", "--golden", folder / "golden.npz", folder / "model.fp16.onnx", "--json", tmp_path / "p")
    assert checked.code == 0 and json.loads((tmp_path / "p").read_text())["artifacts"][0]["d_rmse"] is not None
    # a retrained checkpoint over the folder: the dataset's inputs and ground truth stay, its outputs are made anew
    result = cli("export", tiny_unet.checkpoint, "-o", folder, "-p", "fp32", "--force")
    assert result.code == 0 and "golden.npz: keeping its dataset " in result.err, result.err
    retrained = read_golden(folder / "golden.npz")
    np.testing.assert_array_equal(retrained["image"], before["image"])
    assert retrained["meta"]["ground_truth"] is True and not np.array_equal(retrained["depth"], before["depth"])
    result = cli("export", tiny_checkpoint, "-o", folder, "-p", "fp16", "--golden-images", "2", "--force")
    assert result.code == 0 and "keeping" not in result.err, result.err  # asked for other inputs: noise, as asked
    assert read_golden(folder / "golden.npz")["meta"]["ground_truth"] is False
