"""Dataset readers: the folder format, NYU Depth v2 .mat (HDF5), KITTI PNG/256, and their bad inputs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mde.data.readers import (
    FolderDataset,
    KittiDataset,
    NYUDataset,
    dataset_max_depth,
    open_dataset,
)
from mde.data.synth import read_cameras
from mde.errors import DataError, InputError
from mde.runtime.images import check_plausible_depth, quiet_folder_notes, read_rgb

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_pair(root: Path, split: str, name: str, depth_m: np.ndarray, scale: float = 1000.0,
                rgb: np.ndarray | None = None, npy: bool = False, ext: str = ".png") -> np.ndarray:
    (root / split / "rgb").mkdir(parents=True, exist_ok=True)
    (root / split / "depth").mkdir(parents=True, exist_ok=True)
    rgb = _rgb(*depth_m.shape) if rgb is None else rgb
    Image.fromarray(rgb).save(root / split / "rgb" / f"{name}{ext}", quality=95)
    if npy:
        np.save(root / split / "depth" / f"{name}.npy", depth_m.astype(np.float32))
    else:
        Image.fromarray(np.round(depth_m * scale).astype(np.uint16)).save(root / split / "depth" / f"{name}.png")
    return rgb


def _depth(h: int = 12, w: int = 16) -> np.ndarray:
    return RNG.uniform(0.5, 15.0, (h, w)).astype(np.float32)


def _write_nyu(path: Path, n: int = 12, h: int = 12, w: int = 16, **override) -> tuple[np.ndarray, np.ndarray]:
    """A tiny file in the NYU labeled layout: images N x 3 x W x H uint8, depths N x W x H."""
    import h5py

    rgbs = RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = RNG.uniform(0.7, 9.0, (n, h, w)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["images"] = override.get("images", rgbs.transpose(0, 3, 2, 1))
        f["depths"] = override.get("depths", depths.transpose(0, 2, 1))
    return rgbs, depths


def test_folder_dataset_on_synthetic_data(synth_data):
    meta = json.loads((synth_data / "meta.json").read_text())
    train, val = FolderDataset(synth_data, "train"), FolderDataset(synth_data, "val")
    assert len(train) == 24 and len(val) == 8
    assert val.names == sorted(read_cameras(synth_data)["val"]) and meta["cameras_file"] == "cameras.json"
    s = val[3]
    assert s.name == val.names[3]
    assert s.rgb.shape == (64, 64, 3) and s.rgb.dtype == np.uint8
    assert s.depth.shape == (64, 64) and s.depth.dtype == np.float32
    assert 0.5 <= s.depth.min() and s.depth.max() <= 20.0
    assert dataset_max_depth(synth_data) == 20.0
    assert isinstance(open_dataset(synth_data, "train"), FolderDataset)
    assert s.mask.shape == (64, 64) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask).tolist()) <= {0, 1, 255}
    assert np.all(s.depth[s.mask == 255] == 20.0)  # the sky


def _write_mask(root: Path, split: str, name: str, mask: np.ndarray) -> None:
    (root / split / "mask").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(root / split / "mask" / f"{name}.png")


def test_masks_are_optional_per_image(tmp_path):
    _write_pair(tmp_path, "val", "a", _depth())
    _write_pair(tmp_path, "val", "b", _depth())
    assert all(s.mask is None for s in FolderDataset(tmp_path, "val"))  # no mask/ folder at all
    mask = RNG.choice(np.array([0, 1, 255], np.uint8), (12, 16))
    _write_mask(tmp_path, "val", "a", mask)
    ds = FolderDataset(tmp_path, "val")
    np.testing.assert_array_equal(ds[0].mask, mask)
    assert ds[1].mask is None  # b has none
    kitti = open_dataset(tmp_path, "val", fmt="kitti")
    np.testing.assert_array_equal(kitti[0].mask, mask)


def test_hidden_files_are_not_samples_and_mask_suffixes_take_any_case(tmp_path):
    """macOS's `._NAME.png` companions (copied from a Mac, in rgb/ and depth/ alike) are not samples;
    a mask named `.PNG` is read like an image named so."""
    _write_pair(tmp_path, "val", "a", _depth())
    _write_pair(tmp_path, "val", "b", _depth())
    for sub in ("rgb", "depth"):
        (tmp_path / "val" / sub / "._a.png").write_bytes(b"\0\x05\x16\x07 AppleDouble")
    mask = RNG.choice(np.array([0, 1, 255], np.uint8), (12, 16))
    _write_mask(tmp_path, "val", "b", mask)
    (tmp_path / "val" / "mask" / "b.png").rename(tmp_path / "val" / "mask" / "b.PNG")
    ds = FolderDataset(tmp_path, "val")
    assert ds.names == ["a", "b"]
    np.testing.assert_array_equal(ds[1].mask, mask)


def test_folder_npy_jpeg_and_depth_scale(tmp_path):
    d1, d2 = _depth(), _depth()
    d2[0, :3] = np.nan  # NaN = invalid in .npy
    _write_pair(tmp_path, "val", "a", d1, scale=256.0)
    _write_pair(tmp_path, "val", "b", d2, npy=True, ext=".jpg")
    ds = open_dataset(tmp_path, "val", depth_scale=256.0)
    assert ds.names == ["a", "b"]
    np.testing.assert_allclose(ds[0].depth, np.round(d1 * 256) / 256, atol=1e-6)
    b = ds[1]
    assert b.rgb.shape == (12, 16, 3)
    assert np.all(b.depth[0, :3] == 0) and np.allclose(b.depth[1:], d2[1:])


def test_depth_scale_is_refused_where_no_depth_map_is_a_png(tmp_path):
    """.npy depth is metres already: a --depth-scale given for such a dataset would change nothing, silently."""
    _write_pair(tmp_path, "val", "a", _depth(), npy=True)
    assert open_dataset(tmp_path, "val").names == ["a"]
    with pytest.raises(InputError, match=rf"^{tmp_path}: --depth-scale reads 16-bit PNG depth; this dataset's depth "
                                         r"maps are all \.npy \(metres\)$"):
        open_dataset(tmp_path, "val", depth_scale=256.0)


def test_depth_scale_is_the_dataset_s_a_split_of_npy_metres_reads_as_it_is(tmp_path):
    """PNG depth in train/, .npy in val/: --depth-scale was refused of val/ (so the PNGs could only be read as
    millimetres, silently, without it); it applies to the PNGs, and the .npy holds metres."""
    d = _depth()
    _write_pair(tmp_path, "train", "a", d, scale=256.0)
    _write_pair(tmp_path, "val", "b", d, npy=True)
    from mde.data.readers import has_png_depth

    assert has_png_depth(tmp_path) and not has_png_depth(tmp_path / "train")
    np.testing.assert_allclose(open_dataset(tmp_path, "val", depth_scale=256.0)[0].depth, d)
    np.testing.assert_allclose(open_dataset(tmp_path, "train", depth_scale=256.0)[0].depth, np.round(d * 256) / 256,
                               atol=1e-6)


def test_depth_in_another_unit_than_the_range_is_refused(tmp_path, cli, tiny_export):
    """Millimetres in a .npy, or a meta.json max_depth far too small, trained and scored without a word (val RMSE
    10647 m); NYU files were already judged so. A depth a little beyond the range (a far wall) stays."""
    from mde.data.readers import check_depth_units

    d = _depth()  # 0.5 to 15 m
    _write_pair(tmp_path / "mm", "val", "a", d * 1000, npy=True)
    (tmp_path / "mm" / "meta.json").write_text('{"max_depth": 20}')
    result = cli("eval", tiny_export / "model.onnx", "--data", tmp_path / "mm")
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"mde: error: {tmp_path / 'mm' / 'val' / 'depth' / 'a.npy'}: depth is {np.median(d) * 1000:.4g} m at the "
        f"median, {np.median(d) * 1000 / 20:.0f}x the dataset's 20 m range (meta.json's max_depth, else the model's): "
        "a .npy holds metres (millimetres?); or the range is too small"], result.err
    _write_pair(tmp_path / "png", "val", "a", d)
    with pytest.raises(DataError, match=r"a\.png: depth is .* 0\.5 m range .*: its PNG depth is read at 1000 units per "
                       r"metre; the units per metre are --depth-scale, else meta\.json's depth_png_scale, else 1000"):
        check_depth_units(open_dataset(tmp_path / "png", "val"), 0.5)
    check_depth_units(open_dataset(tmp_path / "png", "val"), 2.0)  # the median within 5x: a deep scene, not a unit
    (tmp_path / "png" / "meta.json").write_text('{"max_depth": 0.5, "depth_png_scale": 1}')  # the scale in force
    with pytest.raises(DataError, match=r"is read at 1 units per metre"):  # was "1000 unless given": none was
        check_depth_units(open_dataset(tmp_path / "png", "val"), 0.5)


@pytest.mark.parametrize("stored_scale, max_depth, says", [
    (256, 80.0, "the deepest valid depth of 3 maps is 19.2 m, under a third of the 80 m range"),  # KITTI read as mm
    (5000, 10.0, "of the valid depths of 3 maps lie beyond the 10 m range"),  # TUM's 5000 per metre read as mm
])
def test_a_png_scale_a_few_times_off_is_warned_of(tmp_path, caplog, stored_scale, max_depth, says):
    """KITTI's 256 units per metre read at the default 1000 (or TUM's 5000) passed the 5x median test: every
    command trained and scored in the wrong unit, without a word."""
    from mde.data.readers import check_depth_units, open_dataset

    for root in ("d", "declared"):
        for name in "abc":
            depth = np.zeros((12, 16), np.float32)
            depth[6:] = np.linspace(3.0, 75.0 if max_depth == 80 else 9.5, 16)  # sparse: the lower half only
            _write_pair(tmp_path / root, "val", name, depth, scale=stored_scale)
    (tmp_path / "d" / "meta.json").write_text(f'{{"max_depth": {max_depth}}}')
    with caplog.at_level("WARNING", logger="mde.data.readers"):
        check_depth_units(open_dataset(tmp_path / "d", "val"), max_depth)
        check_depth_units(open_dataset(tmp_path / "d", "val"), max_depth)  # said once for the folder
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(f"{tmp_path / 'd' / 'val' / 'depth'}: ") and says in warned[0]
    assert "is the PNG scale right? its PNG depth is read at 1000 units per metre" in warned[0]
    caplog.clear()
    (tmp_path / "declared" / "meta.json").write_text(f'{{"max_depth": {max_depth}, "depth_png_scale": {stored_scale}}}')
    with caplog.at_level("WARNING", logger="mde.data.readers"):
        check_depth_units(open_dataset(tmp_path / "declared", "val"), max_depth)  # declared: nothing to say
    assert caplog.records == []


def test_a_dataset_s_image_notes_are_said_once_per_folder(tmp_path, caplog):
    """A grey dataset said "grayscale image converted to RGB" for every image, every epoch (76 lines for 32 images
    over 2 epochs); once per folder now. A grey picture read on its own is still said."""
    for split in ("train", "val"):
        for name in "abc":
            _write_pair(tmp_path, split, name, _depth(), rgb=np.full((12, 16), 90, np.uint8))
    with caplog.at_level("INFO", logger="mde.runtime.images"):
        for _ in range(2):  # two epochs
            for split in ("train", "val"):
                dataset = open_dataset(tmp_path, split)
                for i in range(len(dataset)):
                    dataset[i]
        said = [r.getMessage() for r in caplog.records if "grayscale" in r.getMessage()]
        assert said == [f"{tmp_path / split / 'rgb' / 'a.png'}: grayscale image converted to RGB (said once for the "
                        f"images of {tmp_path / split / 'rgb'})" for split in ("train", "val")]
        caplog.clear()
        read_rgb(tmp_path / "val" / "rgb" / "b.png")
        assert [r.getMessage() for r in caplog.records] == [
            f"{tmp_path / 'val' / 'rgb' / 'b.png'}: grayscale image converted to RGB"]
        # a training loader's worker (a fresh process each epoch) says none: the main process spoke for them
        from mde.data import readers
        from mde.train.loader import epoch_loader

        caplog.clear()
        _write_pair(tmp_path / "other", "val", "a", _depth(), rgb=np.full((12, 16), 90, np.uint8))
        assert epoch_loader(None, [], 1, 2, False).worker_init_fn is readers.quiet_image_notes
        try:
            readers.quiet_image_notes()
            open_dataset(tmp_path / "other", "val")[0]
        finally:
            quiet_folder_notes(False)
        assert not caplog.records


def test_out_of_range_depth_advice_fits_the_file(tmp_path):
    """Only a PNG's depth is divided by --depth-scale; an NYU file's or a .npy's is float metres."""
    for source, advice in (("d.png", "--depth-scale"), ("d.npy", "store metres"), ("nyu.mat[3]", "store metres")):
        with pytest.raises(DataError, match=advice):
            check_plausible_depth(2e6, source)


def test_ground_truth_reads_depth_and_mask_but_no_image(tmp_path):
    """What image-blind baselines score: the depth map and mask as `ds[i]` has them, and a black image of the
    image's size; the folder reader reads the image file's header only."""
    _write_pair(tmp_path, "val", "a", _depth())
    _write_mask(tmp_path, "val", "a", RNG.choice(np.array([0, 1, 255], np.uint8), (12, 16)))
    nyu = tmp_path / "nyu.mat"
    _write_nyu(nyu)
    for ds in (open_dataset(tmp_path, "val"), open_dataset(nyu, "all")):
        full, truth = ds[0], ds.ground_truth(0)
        np.testing.assert_array_equal(truth.depth, full.depth)
        assert (truth.mask is None) == (full.mask is None) and truth.name == full.name
        assert truth.rgb.shape == full.rgb.shape and not truth.rgb.any()
    (tmp_path / "val" / "rgb" / "a.png").write_bytes(b"not a PNG")
    assert open_dataset(tmp_path, "val").ground_truth(0).depth.shape == (12, 16)


def test_ground_truth_names_a_depth_map_of_another_size_than_its_image(tmp_path):
    """The image-blind baseline took the depth map's size for the image's: a depth map of the wrong size was
    measured against its mask, and `mde eval` told the user to fix the mask."""
    _write_pair(tmp_path, "val", "a", _depth())
    _write_mask(tmp_path, "val", "a", np.zeros((12, 16), np.uint8))
    Image.fromarray((_depth(10, 16) * 1000).astype(np.uint16)).save(tmp_path / "val" / "depth" / "a.png")
    for read in (lambda ds: ds[0], lambda ds: ds.ground_truth(0)):
        with pytest.raises(DataError, match=r"val/depth/a.png: depth map is 16x10 but its image is 16x12"):
            read(open_dataset(tmp_path, "val"))


def test_nyu_images_under_8_pixels_are_refused_as_image_files_are(tmp_path):
    path = tmp_path / "nyu.mat"
    _write_nyu(path, h=6, w=16)
    with pytest.raises(DataError, match=r"nyu.mat: images are 16x6, smaller than 8 pixels on a side"):
        open_dataset(path, "all")


def test_nyu_images_past_the_pixel_limit_are_refused_from_the_shape(tmp_path):
    """Refused only once image 0 was read (1.4 GB for a 9000 x 9000 file of 1.6 KB), as "image 0", no file named."""
    import h5py

    path = tmp_path / "huge.mat"
    with h5py.File(path, "w") as f:  # chunked and never written: nothing of it is stored
        f.create_dataset("images", (2, 3, 9000, 9000), np.uint8, chunks=(1, 1, 1000, 1000))
        f.create_dataset("depths", (2, 9000, 9000), np.float32, chunks=(1, 1000, 1000))
    with pytest.raises(DataError, match=r"huge.mat: images are 9000x9000, larger than the 67108864 pixel limit"):
        open_dataset(path, "all")


def test_nyu_portrait_frames_are_warned_of_once(tmp_path, caplog):
    """An NYU-layout file written from numpy (N x 3 x H x W) was read transposed, each landscape frame a portrait
    one, without a word."""
    path = tmp_path / "rowmajor.h5"
    _write_nyu(path, h=16, w=12)  # stored N x 3 x 12 x 16: read as 16 rows of 12
    with caplog.at_level("WARNING", logger="mde.data.readers"):
        open_dataset(path, "train"), open_dataset(path, "val")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: its images read as 12x16 portrait frames (W x H); NYU's labeled file stores them N x 3 x W x H, "
        "MATLAB's order, so one written N x 3 x H x W (numpy's) is read transposed"]


def test_an_nyu_file_another_process_holds_open_is_read(tmp_path):
    """Another process's handle (a notebook's `h5py.File(path, 'r+')`) locks the file: it was "not a readable HDF5
    file". mde only reads it, without the lock."""
    path = tmp_path / "nyu.mat"
    _write_nyu(path)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('open', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert len(open_dataset(path, "all")) == 12 and open_dataset(path, "all")[3].depth.shape == (12, 16)
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_dataset_is_told_what_split_all_and_kittis_other_sets_are(synth_data, tmp_path):
    """`--split all` named a folder all/ the format has not; KITTI's annotated set was told only that rgb/ and depth/
    were missing."""
    with pytest.raises(InputError, match=rf"^{synth_data}: split 'all' \(every image\) is an NYU file's or KITTI's "
                                         r"selection's; a dataset folder has train/ and val/$"):
        open_dataset(synth_data, "all")
    annotated = tmp_path / "data_depth_annotated"
    (annotated / "val" / "2011_09_26_drive_0002_sync" / "proj_depth" / "groundtruth" / "image_02").mkdir(parents=True)
    for root in (annotated, annotated / "val" / "2011_09_26_drive_0002_sync"):
        with pytest.raises(DataError, match=r"found none; of KITTI, the depth-selection layout is read "
                                            r"\(depth_selection/val_selection_cropped, with image/ and "
                                            r"groundtruth_depth/\); arrange other sets in the folder format$"):
            open_dataset(root, "val")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"found none$"):  # no KITTI name: the folder format's message alone
        open_dataset(tmp_path / "plain", "val")


def test_kittis_own_scale_is_not_advised_against(tmp_path, capsys):
    """A model trained on millimetre PNGs, scored on KITTI's selection (256 per metre, its format's own), was told to
    "give --depth-scale 1000 if it is the same data"."""
    from PIL import Image

    from mde.data.readers import note_trained_depth_scale

    selection = tmp_path / "val_selection_cropped"
    for folder in ("image", "groundtruth_depth"):
        (selection / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(selection / "image" / "d_sync_image_0000000005_image_02.png")
    Image.fromarray(np.full((16, 16), 2560, np.uint16)).save(
        selection / "groundtruth_depth" / "d_sync_groundtruth_depth_0000000005_image_02.png")
    note_trained_depth_scale("m.onnx", 1000.0, 256.0, selection)
    assert capsys.readouterr().err.endswith("is read at 256 here (KITTI's own scale: the model was trained on other "
                                            "data)\n")
    note_trained_depth_scale("m.onnx", 256.0, 1000.0, selection)  # --depth-scale 1000 given on KITTI: the usual advice
    assert capsys.readouterr().err.endswith("is read at 1000 here (give --depth-scale 256 if it is the same data)\n")


def test_an_image_of_a_format_not_read_is_named_not_its_depth_map(tmp_path):
    """`val/rgb/img001.gif` beside `val/depth/img001.png` was said as "depth map has no image": the .gif is there,
    in a format the reader does not take."""
    from PIL import Image

    for sub in ("rgb", "depth"):
        (tmp_path / "val" / sub).mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "val" / "rgb" / "img001.gif")
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(tmp_path / "val" / "depth" / "img001.png")
    with pytest.raises(DataError, match=r"val/rgb/img001.gif: a file of a format the dataset reader does not take "
                                        r"here \(.png .jpg"):
        open_dataset(tmp_path, "val")


def test_nyu_mat_layout_is_transposed(tmp_path):
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    rgbs, depths = _write_nyu(path)
    ds = open_dataset(path, split="all")
    assert isinstance(ds, NYUDataset) and len(ds) == 12
    s = ds[5]
    np.testing.assert_array_equal(s.rgb, rgbs[5])
    np.testing.assert_array_equal(s.depth, depths[5])
    assert s.rgb.shape == (12, 16, 3) and s.name == "00005"
    assert open_dataset(path, "val").names == ["00009"]
    assert len(open_dataset(path, "train")) == 11
    assert dataset_max_depth(path) == 10.0
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers re-open the file
    np.testing.assert_array_equal(clone[5].depth, depths[5])


def test_kitti_folder_format_png_over_256(tmp_path):
    depth = _depth()
    depth[:4] = 0  # KITTI ground truth is sparse: 0 = invalid
    _write_pair(tmp_path, "val", "0000000005", depth, scale=256.0)
    ds = open_dataset(tmp_path, "val", fmt="kitti")
    assert isinstance(ds, KittiDataset)
    np.testing.assert_allclose(ds[0].depth, np.round(depth * 256) / 256, atol=1e-6)
    assert np.all(ds[0].depth[:4] == 0)


def test_kitti_selection_layout(tmp_path):
    sel = tmp_path / "depth_selection" / "val_selection_cropped"
    (sel / "image").mkdir(parents=True)
    (sel / "groundtruth_depth").mkdir()
    depth = _depth()
    stem = "2011_09_26_drive_0002_sync_{}_0000000005_image_02.png"
    Image.fromarray(_rgb()).save(sel / "image" / stem.format("image"))
    Image.fromarray(np.round(depth * 256).astype(np.uint16)).save(sel / "groundtruth_depth" / stem.format("groundtruth_depth"))
    ds = open_dataset(tmp_path / "depth_selection")
    assert isinstance(ds, KittiDataset) and len(ds) == 1
    np.testing.assert_allclose(ds[0].depth, np.round(depth * 256) / 256, atol=1e-6)
    assert dataset_max_depth(tmp_path / "depth_selection") == 80.0
    # a --depth-scale the user states is used as stated, 1000 (the folder format's default) included
    np.testing.assert_allclose(open_dataset(tmp_path / "depth_selection", depth_scale=1000)[0].depth,
                               np.round(depth * 256) / 1000, atol=1e-6)
    with pytest.raises(DataError, match="val_selection_cropped: KITTI's depth-selection layout holds only "
                                        "validation images; it has no 'train' split"):
        open_dataset(tmp_path / "depth_selection", "train")  # training would pick best.pt on its own images
    # the image's suffix in another case, or a JPEG image: paired by name with its PNG ground truth
    image = sel / "image" / stem.format("image")
    image.rename(image.with_suffix(".PNG"))
    assert len(KittiDataset(sel)) == 1
    gt = sel / "groundtruth_depth" / stem.format("groundtruth_depth")
    gt.unlink()
    gt.symlink_to(tmp_path / "gone.png")  # a broken link is named as such, not as a missing depth map
    with pytest.raises(DataError, match=f"{gt.name}: not a readable file"):
        KittiDataset(sel)
    gt.unlink()
    # two files of one name in a folder: refused as the folder format does (one was scored twice, one ignored)
    gt.write_bytes(b"")
    gt.with_suffix(".PNG").write_bytes(b"")
    with pytest.raises(DataError, match="groundtruth_depth: two files share the name"):
        KittiDataset(sel)
    gt.with_suffix(".PNG").unlink()
    gt.unlink()
    expected = "groundtruth_depth/" + stem.format("groundtruth_depth")
    with pytest.raises(DataError, match=f"image has no depth map \\(expected {expected}\\)"):  # .png, not .PNG
        KittiDataset(sel)


def test_a_split_is_a_name_not_a_path(synth_data):
    """For API users as for `--split`: `../other/val` read another folder."""
    from mde.errors import InputError

    with pytest.raises(InputError, match="unknown split '../val'; expected train, val"):
        open_dataset(synth_data / "train", split="../val")


def test_dataset_max_depth_rules(tmp_path):
    _write_pair(tmp_path, "val", "a", _depth())
    with pytest.raises(DataError, match=r"no meta.json, so the depth range is unknown .*pass --max-depth METRES"):
        dataset_max_depth(tmp_path)  # no guess: 20 m would cap a deeper dataset's model without a word
    assert dataset_max_depth(tmp_path, model_range=80.0) == 80.0  # scoring a model: its output range
    (tmp_path / "meta.json").write_text(json.dumps({"max_depth": 15.5}))
    assert dataset_max_depth(tmp_path) == 15.5
    for text, match in (("{not json", "meta.json"), ('{"max_depth": true}', "max_depth is true"),
                        ('{"max_depth": NaN}', "max_depth of 0.001 to 1e\\+06 m, found nan"),
                        ('{"max_depth": 1e200}', "to 1e\\+06 m, found 1e\\+200"),  # SSIM overflowed
                        ('{"max_depth": 1e-300}', "max_depth of 0.001 to 1e\\+06 m, found 1e-300"),  # underflowed
                        ('{"max_depth": "20"}', 'max_depth is "20", not a number'),  # float("20") read it
                        ('{"max_depth": 1' + "0" * 400 + "}", "numeric 'max_depth' \\(int too large"),
                        ("[20]", "\\(found a JSON array\\)"),
                        ('{"max_depth": 20, "max_depth": 80}', 'the key "max_depth" is given twice')):  # 80 won
        (tmp_path / "meta.json").write_text(text)
        with pytest.raises(DataError, match=match):
            dataset_max_depth(tmp_path)
    (tmp_path / "meta.json").write_text('{"depth_png_scale": 256}')  # a KITTI set that declares only its scale
    with pytest.raises(DataError, match=r"meta.json gives no max_depth, so the depth range is unknown"):
        dataset_max_depth(tmp_path)  # was refused even with --max-depth: "it has no 'max_depth'"
    assert dataset_max_depth(tmp_path, model_range=80.0) == 80.0
    (tmp_path / "meta.json").write_bytes(b'{"max_depth": 20, "note": "\xff"}')  # was an internal error, exit 1
    with pytest.raises(DataError, match=r"meta.json: not UTF-8 text, so not JSON \(byte 27\)"):
        dataset_max_depth(tmp_path)
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").mkdir()
    with pytest.raises(DataError, match=r"cannot read meta.json \(a folder, not a file\)"):
        dataset_max_depth(tmp_path)


def _bad_rgb_without_depth(root):
    _write_pair(root, "val", "a", _depth())
    Image.fromarray(_rgb()).save(root / "val" / "rgb" / "orphan.png")
    return lambda: FolderDataset(root, "val"), "orphan.png.*no depth map"


def _bad_depth_without_rgb(root):
    _write_pair(root, "val", "a", _depth())
    np.save(root / "val" / "depth" / "lonely.npy", _depth())
    return lambda: FolderDataset(root, "val"), "lonely.npy.*no image"


def _bad_empty_split(root):
    (root / "val" / "rgb").mkdir(parents=True)
    (root / "val" / "depth").mkdir(parents=True)
    return lambda: FolderDataset(root, "val"), "val.*is empty"


def _bad_missing_split(root):
    _write_pair(root, "train", "a", _depth())
    return lambda: FolderDataset(root, "val"), "val.*rgb/ and depth/"


def _bad_truncated_image(root):
    _write_pair(root, "val", "a", _depth())
    path = root / "val" / "rgb" / "a.png"
    path.write_bytes(path.read_bytes()[:60])
    return lambda: FolderDataset(root, "val")[0], "a.png.*(truncated|corrupt|readable)"


def _bad_size_mismatch(root):
    _write_pair(root, "val", "a", _depth(), rgb=_rgb(10, 16))
    return lambda: FolderDataset(root, "val")[0], "depth/a.png.*16x12 but its image is 16x10"


def _bad_mask_size(root):
    _write_pair(root, "val", "a", _depth())
    _write_mask(root, "val", "a", np.zeros((8, 16), np.uint8))
    return lambda: FolderDataset(root, "val")[0], "mask/a.png.*16x8 but its depth map is 16x12"


def _bad_mask_mode(root):
    _write_pair(root, "val", "a", _depth())
    (root / "val" / "mask").mkdir()
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(root / "val" / "mask" / "a.png")
    return lambda: FolderDataset(root, "val")[0], "mask/a.png.*8-bit single-channel"


def _bad_depth_32bit(root):  # a 32-bit TIFF named .png: 70000 units would read as 70 m
    _write_pair(root, "val", "a", _depth())
    for old in (root / "val" / "depth").iterdir():
        old.unlink()
    Image.fromarray(np.full((12, 16), 70000, np.int32)).save(root / "val" / "depth" / "a.png", format="TIFF")
    return lambda: FolderDataset(root, "val")[0], r"depth/a.png.*expected 16-bit depth values \(0..65535\), found 70000"


def _bad_depth_8bit(root):  # a depth picture saved as 8-bit grey: values up to 0.255 m
    _write_pair(root, "val", "a", _depth())
    for old in (root / "val" / "depth").iterdir():
        old.unlink()
    Image.fromarray(np.full((12, 16), 200, np.uint8)).save(root / "val" / "depth" / "a.png")
    return lambda: FolderDataset(root, "val")[0], "depth/a.png.*16-bit single-channel depth PNG, got mode L"


def _bad_mask_value(root):  # object instance ids, say
    _write_pair(root, "val", "a", _depth())
    mask = np.zeros((12, 16), np.uint8)
    mask[3:5, 4:9], mask[0, 0] = 7, 255
    _write_mask(root, "val", "a", mask)
    return lambda: FolderDataset(root, "val")[0], "mask/a.png: mask has value 7; expected 0 structure, 1 object"


def _bad_no_valid_pixel(root):
    _write_pair(root, "val", "a", np.zeros((12, 16), np.float32))
    return lambda: FolderDataset(root, "val")[0], "depth/a.png.*no valid pixel"


def _bad_depth_absurd(root):  # a "no return" code of 1e30 m would overflow the loss in float32
    depth = _depth()
    depth[0, 0] = 1e30
    _write_pair(root, "val", "a", depth, npy=True)
    return lambda: FolderDataset(root, "val")[0], "depth/a.npy: depth reaches 1e\\+30 m, beyond any plausible"


def _bad_nyu_depth_absurd(root):
    depths = np.ones((3, 16, 12), np.float32)
    depths[2, 0, 0] = 3e38
    _write_nyu(root / "nyu.mat", n=3, depths=depths)
    return lambda: NYUDataset(root / "nyu.mat")[2], r"nyu.mat\[2\].*depth reaches 3e\+38 m"


def _bad_npy_not_numpy(root):  # numpy would call any such file a pickle
    _write_pair(root, "val", "a", _depth(), npy=True)
    (root / "val" / "depth" / "a.npy").write_text("0.5 0.7 0.9\n")
    return lambda: FolderDataset(root, "val")[0], "depth/a.npy: not a NumPy .npy file"


def _bad_npy_header_promises_terabytes(root):  # np.load allocated it: MemoryError, "out of memory"
    _write_pair(root, "val", "a", _depth(), npy=True)
    with open(root / "val" / "depth" / "a.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
        fh.write(bytes(1000))
    return lambda: FolderDataset(root, "val")[0], r"depth/a.npy: cannot read depth .npy \(mmap length is greater"


def _bad_duplicate_stem(root):
    rgb = _write_pair(root, "val", "a", _depth())
    Image.fromarray(rgb).save(root / "val" / "rgb" / "a.jpg")
    return lambda: FolderDataset(root, "val"), "two files share the name 'a'"


def _bad_broken_link_among_images(root):  # left out of the split without a word; a mask's was refused
    _write_pair(root, "val", "a", _depth())
    (root / "val" / "rgb" / "zzz.png").symlink_to(root / "nowhere.png")
    return lambda: FolderDataset(root, "val"), "zzz.png: not a readable file \\(a broken link"


def _bad_folder_named_like_a_depth_map(root):
    _write_pair(root, "val", "a", _depth())
    (root / "val" / "depth" / "zzz.png").mkdir()
    return lambda: FolderDataset(root, "val"), "depth/zzz.png: not a readable file"


def _bad_names_in_two_unicode_forms(root):  # "image has no depth map (expected depth/café.png)": it was there
    import unicodedata

    _write_pair(root, "val", unicodedata.normalize("NFC", "café"), _depth())
    depth = root / "val" / "depth"
    (depth / unicodedata.normalize("NFC", "café.png")).rename(depth / unicodedata.normalize("NFD", "café.png"))
    return lambda: FolderDataset(root, "val"), "looks the same but is written in another Unicode form"


def _bad_nyu_not_hdf5(root):
    path = root / "nyu.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" * 10)
    return lambda: open_dataset(path), "nyu.mat.*HDF5"


def _bad_nyu_missing_key(root):
    import h5py

    with h5py.File(root / "nyu.mat", "w") as f:
        f["images"] = np.zeros((2, 3, 16, 12), np.uint8)
    return lambda: NYUDataset(root / "nyu.mat"), "nyu.mat.*missing \\['depths'\\]"


def _bad_nyu_shapes(root):
    _write_nyu(root / "nyu.mat", n=3, depths=np.ones((3, 12, 16), np.float32))
    return lambda: NYUDataset(root / "nyu.mat"), "nyu.mat.*'depths' of shape"


def _bad_nyu_no_valid_pixel(root):
    _write_nyu(root / "nyu.mat", n=3, depths=np.zeros((3, 16, 12), np.float32))
    return lambda: NYUDataset(root / "nyu.mat")[1], r"nyu.mat\[1\].*no valid pixel"


def _bad_nyu_millimetres(root):
    _write_nyu(root / "nyu.mat", n=3, depths=np.full((3, 16, 12), 2500, np.uint16))
    return lambda: NYUDataset(root / "nyu.mat"), "nyu.mat.*'depths' as floating-point metres, found uint16"


def _bad_nyu_millimetres_as_floats(root):
    _write_nyu(root / "nyu.mat", n=3, depths=np.full((3, 16, 12), 2500.0, np.float32))
    return lambda: NYUDataset(root / "nyu.mat"), r"nyu.mat.*must be metres .*holds 2500 \(millimetres\?\)"


def _bad_nyu_struct(root):
    import h5py

    with h5py.File(root / "nyu.mat", "w") as f:
        f["images"] = np.zeros((2, 3, 16, 12), np.uint8)
        f.create_group("depths")["data"] = np.ones((2, 16, 12), np.float32)
    return lambda: open_dataset(root / "nyu.mat"), "nyu.mat.*'depths' is an HDF5 group"


def _bad_nyu_dangling_link(root):  # h5py's KeyError was an internal error
    import h5py

    with h5py.File(root / "nyu.mat", "w") as f:
        f["images"] = np.zeros((2, 3, 16, 12), np.uint8)
        f["depths"] = h5py.SoftLink("/nothere")
    return lambda: open_dataset(root / "nyu.mat"), "nyu.mat: cannot open 'depths'"


def _bad_nyu_damaged_first_image(root):  # read by the unit check in __init__, unguarded: an internal error
    import h5py

    with h5py.File(root / "nyu.mat", "w") as f:
        f["images"] = np.zeros((2, 3, 16, 12), np.uint8)
        f.create_dataset("depths", data=np.ones((2, 16, 12), np.float32), chunks=(1, 16, 12), compression="gzip")
    with h5py.File(root / "nyu.mat", "r") as f:
        chunk = f["depths"].id.get_chunk_info(0)
    with open(root / "nyu.mat", "r+b") as fh:
        fh.seek(chunk.byte_offset)
        fh.write(b"\xff" * chunk.size)
    return lambda: open_dataset(root / "nyu.mat"), r"nyu.mat: cannot read image 0 \("


def _bad_not_a_dataset(root):
    (root / "notes.txt").write_text("hello")
    return lambda: open_dataset(root / "notes.txt"), "notes.txt.*expected a dataset folder"


def _bad_mask_without_image(root):  # a mask whose name matches no image was dropped without a word
    _write_pair(root, "val", "a", _depth())
    _write_mask(root, "val", "ax", np.zeros((12, 16), np.uint8))
    return lambda: FolderDataset(root, "val"), r"mask/ax.png: mask has no image \(expected rgb/ax.png or .jpg\)"


def _bad_rgb_broken_link(root):  # the depth map was blamed for an image that is a dangling link
    _write_pair(root, "val", "a", _depth())
    _write_pair(root, "val", "b", _depth())
    (root / "val" / "rgb" / "b.png").unlink()
    (root / "val" / "rgb" / "b.png").symlink_to(root / "gone.png")
    return lambda: FolderDataset(root, "val"), r"rgb/b.png: not a readable file \(a broken link, a folder, a FIFO or a device\)"


def _bad_image_turned_by_exif(root):  # a phone photo, stored sideways; its depth map upright
    _write_pair(root, "val", "a", _depth(12, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb(16, 12)).save(root / "val" / "rgb" / "a.png", exif=exif.tobytes())
    return lambda: FolderDataset(root, "val")[0], r"depth/a.png: .*the image's EXIF turns it a quarter"


def _bad_depth_beyond_float32(root):  # float64 1e300 became inf (invalid) in float32: accepted silently
    _write_pair(root, "val", "a", _depth(), npy=True)
    np.save(root / "val" / "depth" / "a.npy", np.full((12, 16), 1e300))
    return lambda: FolderDataset(root, "val")[0], r"a.npy: depth reaches 1e\+300 m, beyond any plausible"


def _bad_missing_path(root):
    return lambda: open_dataset(root / "nowhere"), "nowhere.*not found"


@pytest.mark.parametrize(
    "make",
    [_bad_rgb_without_depth, _bad_depth_without_rgb, _bad_empty_split, _bad_missing_split,
     _bad_truncated_image, _bad_size_mismatch, _bad_mask_size, _bad_mask_mode, _bad_mask_value,
     _bad_depth_8bit, _bad_depth_32bit,
     _bad_no_valid_pixel, _bad_depth_absurd, _bad_npy_not_numpy, _bad_npy_header_promises_terabytes,
     _bad_duplicate_stem,
     _bad_broken_link_among_images,
     _bad_names_in_two_unicode_forms,
     _bad_folder_named_like_a_depth_map,
     _bad_nyu_not_hdf5, _bad_nyu_missing_key, _bad_nyu_shapes, _bad_nyu_no_valid_pixel, _bad_nyu_depth_absurd,
     _bad_nyu_millimetres, _bad_nyu_millimetres_as_floats, _bad_nyu_struct, _bad_nyu_dangling_link,
     _bad_nyu_damaged_first_image, _bad_not_a_dataset, _bad_missing_path, _bad_mask_without_image, _bad_rgb_broken_link,
     _bad_image_turned_by_exif, _bad_depth_beyond_float32],
    ids=lambda f: f.__name__[5:],
)
def test_bad_inputs_raise_data_error_naming_the_file(tmp_path, make):
    action, match = make(tmp_path)
    with pytest.raises(DataError, match=match):
        action()


def _nyu_with_scale(root: Path):
    _write_nyu(root / "nyu.mat", n=3)
    return open_dataset(root / "nyu.mat", "val", depth_scale=1000)


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda p: open_dataset(p, fmt="coco"), "unknown dataset format 'coco'"),
     (lambda p: FolderDataset(p, "val", depth_scale=0), "--depth-scale must be a positive number"),
     (lambda p: _nyu_with_scale(p), "nyu.mat: --depth-scale reads 16-bit PNG depth; NYU's depths are float metres")],
)
def test_bad_options_raise_input_error(tmp_path, call, match):
    _write_pair(tmp_path, "val", "a", _depth())
    with pytest.raises(InputError, match=match):
        call(tmp_path)


def test_data_module_imports_no_torch():
    code = ("import sys\nfor m in ('torch', 'torchvision', 'onnx'): sys.modules[m] = None\n"
            "import mde.data.readers, mde.runtime.metrics, mde.data.synth\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_files_in_subfolders_are_said_not_read(synth_data, tmp_path, caplog):
    """One folder per sequence, as some datasets come: an image moved into one vanished without a word, and a
    split held only in subfolders was "empty"."""
    import shutil

    from mde.data.readers import FolderDataset

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    for kind in ("rgb", "depth", "mask"):
        (data / "val" / kind / "seq01").mkdir()
        for path in sorted((data / "val" / kind).glob("000000.*")):
            path.rename(data / "val" / kind / "seq01" / path.name)
    with caplog.at_level("WARNING"):
        assert len(FolderDataset(data, "val")) == 7
    assert "the files in subfolders (rgb/seq01/, depth/seq01/, mask/seq01/) are not read: the format is flat" \
        in caplog.text
    for kind in ("rgb", "depth", "mask"):
        for path in (data / "val" / kind).glob("*.*"):
            path.rename(data / "val" / kind / "seq01" / path.name)
    with pytest.raises(DataError, match=r"split 'val' is empty: no images in rgb/ and depth/ \(the files in "
                                        r"subfolders \(rgb/seq01/, depth/seq01/, mask/seq01/\) are not read"):
        FolderDataset(data, "val")


def test_a_jpeg_mask_is_said_to_be_ignored(tmp_path, caplog):
    """mask/NAME.jpg was skipped in silence: eval then showed no region figures and did not say why."""
    _write_pair(tmp_path, "val", "a", _depth())
    (tmp_path / "val" / "mask").mkdir()
    Image.fromarray(np.ones((12, 16), np.uint8)).save(tmp_path / "val" / "mask" / "a.jpg")
    with caplog.at_level("WARNING", logger="mde.data.readers"):
        dataset = open_dataset(tmp_path, "val")
    assert dataset[0].mask is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'val' / 'mask'}: 1 mask(s) in a lossy format ignored (a.jpg): masks are 8-bit PNGs, as a "
        "JPEG's compression changes the 0, 1 and 255 it holds"]


def test_a_bmp_tiff_or_npy_mask_is_said_to_be_ignored(tmp_path, caplog):
    """A lossless mask in another format than PNG was left out without a word (eval counted one image fewer for
    the objects; --object-weight weighed its objects as 1)."""
    for name in ("a", "b", "c"):
        _write_pair(tmp_path, "val", name, _depth())
    (tmp_path / "val" / "mask").mkdir()
    Image.fromarray(np.ones((12, 16), np.uint8)).save(tmp_path / "val" / "mask" / "a.bmp")
    Image.fromarray(np.ones((12, 16), np.uint8)).save(tmp_path / "val" / "mask" / "b.tif")
    np.save(tmp_path / "val" / "mask" / "c.npy", np.ones((12, 16), np.uint8))
    with caplog.at_level("WARNING", logger="mde.data.readers"):
        dataset = open_dataset(tmp_path, "val")
    assert dataset[0].mask is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'val' / 'mask'}: 3 mask(s) not read (a.bmp, ...): masks are 8-bit PNGs; save them as such"]


def test_images_without_a_mask_beside_masked_ones_are_said(tmp_path, caplog):
    """mask/ holding masks for some images only: the region figures were over fewer images, without a word."""
    for name in ("a", "b", "c"):
        _write_pair(tmp_path, "val", name, _depth())
    (tmp_path / "val" / "mask").mkdir()
    Image.fromarray(np.ones((12, 16), np.uint8)).save(tmp_path / "val" / "mask" / "a.png")
    with caplog.at_level("INFO", logger="mde.data.readers"):
        open_dataset(tmp_path, "val")
    assert f"{tmp_path / 'val' / 'mask'}: 2 of 3 images have no mask; the objects / structure figures are over " \
        "the other 1" in caplog.text


def test_check_headers_reads_whole_only_the_pairs_whose_headers_disagree(tmp_path, monkeypatch):
    """`mde train` checks every train pair from its headers before the run folder is made; a pair they find
    wrong is read whole, for the reader's own message. A 1 x H x W .npy the reader takes is no disagreement."""
    from mde.data.readers import FolderDataset, open_dataset

    for name in ("a", "b"):
        _write_pair(tmp_path, "train", name, _depth(), npy=name == "b")
    np.save(tmp_path / "train" / "depth" / "b.npy", _depth()[None])  # 1 x 12 x 16
    (tmp_path / "meta.json").write_text('{"max_depth": 20}')
    dataset = open_dataset(tmp_path, "train")
    read = []
    monkeypatch.setattr(FolderDataset, "__getitem__", lambda self, index: read.append(index))
    dataset.check_headers("check train files")
    assert read == []
    Image.fromarray(np.zeros((6, 8), np.uint16)).save(tmp_path / "train" / "depth" / "a.png")  # half the size
    dataset.check_headers("check train files")
    assert read == [0]


def test_a_file_name_in_an_error_is_escaped_on_its_one_line(cli, tiny_export, synth_data, tmp_path):
    """The error's path was escaped, but names inside its words were not: "expected depth/a<newline>b<ESC>[31m.png"
    split the line and sent an escape sequence to the terminal, and a name that is not UTF-8 came out as
    '\\udcff'."""
    import os
    import shutil

    data = tmp_path / "names"
    shutil.copytree(synth_data, data)
    for name in ("a\nb\x1b[31m", os.fsdecode(b"\xff\xfe")):
        for sub in ("rgb", "mask"):
            (data / "val" / sub / "000003.png").rename(data / "val" / sub / f"{name}.png")
        (data / "val" / "depth" / "000003.png").unlink()
        result = cli("eval", tiny_export / "model.onnx", "--data", data)
        assert result.code == 2 and result.err.count("\n") == 1 and "\x1b" not in result.err, result.err
        assert "image has no depth map (expected depth/" in result.err and "\\udc" not in result.err
        shutil.rmtree(data)
        shutil.copytree(synth_data, data)


def test_the_header_check_refuses_a_depth_npy_that_is_not_float(synth_data, tmp_path):
    """A train .npy of int32 passed the header check (only its shape was read) and was found when an epoch read it,
    after whole epochs and checkpoints where `drop_last` had left it out of the first."""
    import shutil

    from mde.data.readers import open_dataset

    data = tmp_path / "npy-int"
    shutil.copytree(synth_data, data)
    png = sorted((data / "train" / "depth").glob("*.png"))[-1]
    np.save(png.with_suffix(".npy"), np.asarray(Image.open(png), np.int32))
    png.unlink()
    with pytest.raises(DataError, match=r"expected an H x W float depth map in metres, got int32 \(64, 64\); "
                                         r"integers are a unit other than metres \(millimetres\? save depth / 1000"):
        open_dataset(data, split="train").check_headers("check train files")


def test_a_depth_npy_larger_than_any_image_is_refused_before_it_is_read(tmp_path):
    """An .npy whose header said 60000 x 60000 was read whole (14 GB) before its shape met the image's."""
    from numpy.lib import format as npy_format

    from mde.errors import DataError
    from mde.runtime.images import read_depth

    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:  # sparse: the header and a hole the size of its data
        npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8193, 8193)})
        f.truncate(f.tell() + 8193 * 8193 * 4)
    with pytest.raises(DataError, match=r"huge.npy: depth map of shape \(8193, 8193\) is larger than the 67108864 "):
        read_depth(path)


def test_a_depth_npy_with_its_channel_axis_last_is_read(synth_data, tmp_path):
    """H x W x 1 (as a channel-last tool saves it) was refused, where 1 x H x W was read."""
    import shutil

    from mde.data.readers import open_dataset
    from mde.runtime.images import read_depth

    data = tmp_path / "hw1"
    shutil.copytree(synth_data, data)
    png = sorted((data / "train" / "depth").glob("*.png"))[-1]
    metres = read_depth(png)
    np.save(png.with_suffix(".npy"), metres[:, :, None])
    png.unlink()
    train = open_dataset(data, split="train")
    train.check_headers("check train files")
    np.testing.assert_array_equal(train[len(train) - 1].depth, metres)


@pytest.mark.parametrize("kind", ["broken link", "file"])
def test_a_mask_entry_that_is_no_folder_is_refused_not_taken_for_no_masks(synth_data, tmp_path, kind):
    """val/mask as a broken link or a plain file: eval reported no region figures and said nothing."""
    import shutil

    from mde.data.readers import open_dataset

    data = tmp_path / "maskdir"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "val" / "mask")
    if kind == "file":
        (data / "val" / "mask").write_text("not a folder")
    else:
        (data / "val" / "mask").symlink_to(tmp_path / "nowhere")
    said = "a broken link" if kind != "file" else "not a folder"
    with pytest.raises(DataError, match=f"mask/ is {said}; the optional region masks are a folder"):
        open_dataset(data, split="val")


def test_an_orphan_depth_map_is_named_before_its_mask(synth_data, tmp_path):
    """A depth map and a mask with no image: the error named the mask ("mask has no image")."""
    import shutil

    from mde.data.readers import open_dataset

    data = tmp_path / "orphan"
    shutil.copytree(synth_data, data)
    (data / "val" / "rgb" / "000003.png").unlink()
    with pytest.raises(DataError, match=r"depth/000003\.png: depth map has no image"):
        open_dataset(data, split="val")


def test_units_are_judged_on_the_first_map_with_depth_and_npy_runs_record_no_png_scale(tmp_path):
    """A train split may begin with a map of no valid pixel (it is trained past): its millimetres in .npy passed
    the units check, judged on that empty first map. Such a split records no PNG scale for eval's note."""
    from mde.data.readers import check_depth_units, open_dataset, png_scale_read

    _write_pair(tmp_path / "mm", "train", "a", np.zeros((12, 16), np.float32), npy=True)
    _write_pair(tmp_path / "mm", "train", "b", _depth() * 1000, npy=True)
    train = open_dataset(tmp_path / "mm", "train", empty_depth_ok=True)
    with pytest.raises(DataError, match=r"b\.npy: depth is .* a \.npy holds metres"):
        check_depth_units(train, 20.0)
    assert png_scale_read(train) is None
    _write_pair(tmp_path / "png", "train", "a", _depth())
    assert png_scale_read(open_dataset(tmp_path / "png", "train")) == 1000.0
