"""`mde predict`, `mde bench` and `mde info` on the tiny export."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mde.runtime.metadata import ModelMetadata


@pytest.fixture(scope="module")
def onnx_path(tiny_export) -> Path:
    return tiny_export / "model.onnx"


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder: two RGB images of odd sizes, a grayscale and a 16-bit one; plus a nested glob target."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 65535, (36, 48), dtype=np.uint16)).save(folder / "deep.png")
    other = tmp_path / "more"
    other.mkdir()
    Image.fromarray(rng.integers(0, 256, (50, 52, 3), dtype=np.uint8)).save(other / "c.png")
    return folder


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {"a": (45, 61), "b": (70, 33), "gray": (40, 40), "deep": (36, 48)}


@pytest.mark.parametrize("fmt", ["color", "png16", "npy"])
def test_predict_formats_keep_resolution(cli, onnx_path, images, tmp_path, fmt):
    out = tmp_path / "out"
    result = cli("predict", onnx_path, images, "--out", out, "--format", fmt)
    assert result.code == 0, result.err
    suffix = ".npy" if fmt == "npy" else ".png"
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{stem}{suffix}" for stem in _sizes(images))
    for stem, size in _sizes(images).items():
        path = out / f"{stem}{suffix}"
        if fmt == "npy":
            depth = np.load(path)
            assert depth.dtype == np.float32 and depth.shape == size
            assert 0 < depth.min() and depth.max() <= 20.0
        else:
            array = np.asarray(Image.open(path))
            if fmt == "color":
                assert array.dtype == np.uint8 and array.shape == (*size, 3)
            else:
                assert array.dtype == np.uint16 and array.shape == size
                assert 0 < array.min() and array.max() <= 20000  # millimetres, max_depth 20 m


def test_png16_is_millimetres_of_npy(cli, onnx_path, images, tmp_path):
    assert cli("predict", onnx_path, images / "a.png", "--out", tmp_path / "n", "--format", "npy").code == 0
    assert cli("predict", onnx_path, images / "a.png", "--out", tmp_path / "p", "--format", "png16").code == 0
    metres = np.load(tmp_path / "n" / "a.npy")
    mm = np.asarray(Image.open(tmp_path / "p" / "a.png")).astype(np.float64)
    np.testing.assert_allclose(mm, np.rint(metres.astype(np.float64) * 1000.0), atol=0)


def test_png16_rounds_to_the_nearest_millimetre(tmp_path):
    """In float32, 6.0805 m (6080.50012 mm) became 6080 mm: the product is taken in float64."""
    from mde.runtime.predict import write_depth

    depth = np.array([[6.0805, 19.7905, 0.0004, np.nan]], np.float32)
    write_depth(depth, tmp_path / "d.png", "png16", 20.0)
    assert np.asarray(Image.open(tmp_path / "d.png")).tolist() == [[6081, 19791, 0, 0]]


def test_predict_folder_plus_glob(cli, onnx_path, images, tmp_path):
    out = tmp_path / "out"
    pattern = str(tmp_path / "mo*" / "*.png")
    result = cli("predict", onnx_path, images / "a.png", pattern, "--out", out, "--format", "npy")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "c.npy"]
    assert np.load(out / "c.npy").shape == (50, 52)


def test_a_pattern_takes_its_matches_as_if_named(cli, onnx_path, tmp_path):
    """A pattern matching a GIF or folders of images said "no images match the pattern"; named, each was read."""
    for folder in ("cams/left", "cams/right"):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 44, 3), np.uint8)).save(tmp_path / folder / f"{folder[5:]}.png")
    Image.fromarray(np.zeros((40, 44, 3), np.uint8)).save(tmp_path / "anim.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = cli("predict", onnx_path, str(tmp_path / "cams" / "*"), str(tmp_path / "*.gif"), "--out", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["anim.png", "left.png", "right.png"]
    result = cli("predict", onnx_path, str(tmp_path / "*.txt"), "--out", tmp_path / "none")
    assert result.code == 2 and "matches 1 path(s), none an image" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "none").exists()


def test_every_photo_format_pillow_reads_is_an_image_in_a_folder_and_a_pattern(cli, onnx_path, tmp_path):
    """A phone's IMG_0001.jfif, a .jpe, an AVIF or a JPEG 2000 predicted when named, but a folder left them out
    without a word and a pattern said it matched "none an image"."""
    from PIL import features

    photos = tmp_path / "phone"
    photos.mkdir()
    rgb = Image.fromarray(np.full((40, 44, 3), 120, np.uint8))
    formats = [("a.jfif", "JPEG", True), ("b.JPE", "JPEG", True), ("c.avif", "AVIF", features.check("avif")),
               ("d.jp2", "JPEG2000", features.check("jpg_2000"))]  # where this Pillow decodes them
    for name, fmt, decoded in formats:
        if decoded:
            rgb.save(photos / name, format=fmt)
    result = cli("predict", onnx_path, photos, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{name[0]}.png" for name, _, decoded in formats if decoded]
    result = cli("predict", onnx_path, str(photos / "*.jfif"), "--out", tmp_path / "out2")
    assert result.code == 0 and [p.name for p in (tmp_path / "out2").iterdir()] == ["a.png"], result.err
    (tmp_path / "heic").mkdir()
    (tmp_path / "heic" / "IMG_0002.HEIC").write_bytes(b"ftypheic")
    result = cli("predict", onnx_path, tmp_path / "heic", "--out", tmp_path / "out3")
    assert result.code == 2 and "heic: folder has no images (.png .jpg" in result.err, result.err


def test_predict_gives_every_input_its_own_output(cli, onnx_path, images, tmp_path):
    """`img.png`, `img.jpg` and `img_1.png`: the second must not take the third's name (one map lost)."""
    rng = np.random.default_rng(1)
    sizes = {"img.png": (30, 34), "img.jpg": (36, 40), "img_1.png": (42, 46)}
    for name, size in sizes.items():
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    result = cli("predict", onnx_path, *(tmp_path / name for name in sizes), "--out", out, "--format", "npy")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["img.npy", "img_1.npy", "img_1_1.npy"]
    assert [np.load(out / name).shape for name in ("img.npy", "img_1.npy", "img_1_1.npy")] == list(sizes.values())
    assert result.err.count("its depth map is") == 2, result.err  # said for the renamed only, once written:
    assert f"mde: {tmp_path / 'img.jpg'}: its depth map is img_1.npy (img.npy is {tmp_path / 'img.png'}'s)" \
        in result.err
    assert f"mde: {tmp_path / 'img_1.png'}: its depth map is img_1_1.npy (img_1.npy is {tmp_path / 'img.jpg'}'s)" \
        in result.err


def test_a_renamed_output_is_said_only_once_written_and_a_dangling_link_is_skipped_by_name(cli, onnx_path,
                                                                                         tmp_path):
    """The renaming was said before any image was read: of a file then skipped, and naming an input's output
    that a skipped file never wrote. A broken link among a folder's images was left out in silence."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "a.jpg").write_bytes((folder / "a.jpg").read_bytes()[:100])  # a.jpg, first, is skipped
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    result = cli("predict", onnx_path, folder, "--out", tmp_path / "out", "--format", "npy")
    assert result.code == 1 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_1.npy"], result.err
    assert f"mde: skipped {folder / 'a.jpg'}: " in result.err
    assert f"mde: skipped {folder / 'gone.png'}: a symbolic link to nothing (or a loop of links)" in result.err
    assert f"mde: {folder / 'a.png'}: its depth map is a_1.npy (a.npy is {folder / 'a.jpg'}'s, which was skipped)" \
        in result.err
    assert "2 of 3 images failed" in result.err
    # a loop of links is skipped by name too: it stopped the whole run ("cannot follow this path")
    (folder / "loop.png").symlink_to("loop.png")
    result = cli("predict", onnx_path, folder, "--out", tmp_path / "out2", "--format", "npy")
    assert result.code == 1 and sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["a_1.npy"], result.err
    assert f"mde: skipped {folder / 'loop.png'}: a symbolic link to nothing (or a loop of links)" in result.err
    result = cli("predict", onnx_path, folder / "loop.png", "--out", tmp_path / "out3")  # named: "input not found"
    assert result.code == 2 and result.err.strip().endswith(
        f"mde: error: {folder / 'loop.png'}: a symbolic link to nothing (or a loop of links)"), result.err


def test_a_depth_map_name_too_long_for_a_file_is_refused_before_predicting(cli, onnx_path, images, tmp_path):
    """`A` x 250 in .jpg and .png: the second map's name `A…_1.png` is 256 bytes; found after the first map was
    written, it stopped the folder there."""
    for suffix in (".jpg", ".png", ""):
        name = ("A" * 250 + suffix) if suffix else "zz.png"
        (tmp_path / name).write_bytes((images / "a.png").read_bytes())
    out = tmp_path / "out"
    for existing in (False, True):  # a folder there: its check of the names (ENAMETOOLONG) came first
        result = cli("predict", onnx_path, *sorted(tmp_path.glob("*.*")), "--out", out)
        assert result.code == 2 and result.err.strip().splitlines()[-1] == (
            f"mde: error: {tmp_path / ('A' * 250 + '.png')}: its depth map's name, {'A' * 250}_1.png, would be 256 "
            "bytes, more than a file name may hold (255); rename the image")
        assert out.exists() == existing and not (out.exists() and any(out.iterdir()))
        out.mkdir(exist_ok=True)


def test_predict_skips_corrupt_image_and_exits_1(cli, onnx_path, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (images / "truncated.jpg").write_bytes((images / "b.jpg").read_bytes()[:200])
    out = tmp_path / "out"
    result = cli("predict", onnx_path, images, "--out", out, "--format", "npy")
    assert result.code == 1
    assert "skipped" in result.err and "broken.png" in result.err and "truncated.jpg" in result.err
    assert "2 of 6 images failed" in result.err
    assert "Traceback" not in result.err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.npy" for s in _sizes(images))


@pytest.mark.parametrize(
    "args, match",
    [
        (["--backend", "tflite"], "unknown --backend 'tflite'; choose from: auto, golden, onnxruntime, tensorrt, torch"),
        (["--format", "jpeg"], "unknown --format 'jpeg'"),
    ],
)
def test_predict_bad_options_exit_2(cli, onnx_path, images, tmp_path, args, match):
    out = tmp_path / "out"
    result = cli("predict", onnx_path, images, "--out", out, *args)
    assert result.code == 2
    assert match in result.err and len(result.err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "model, inputs, match",
    [
        ("missing.onnx", None, "model file not found"),
        (None, ["nope.png"], "input not found"),
        (None, ["*.nothing"], "matches nothing"),
    ],
)
def test_predict_bad_paths_exit_2(cli, onnx_path, images, tmp_path, model, inputs, match):
    model_path = tmp_path / model if model else onnx_path
    args = [str(tmp_path / i) for i in inputs] if inputs else [images]
    result = cli("predict", model_path, *args, "--out", tmp_path / "out")
    assert result.code == 2 and match in result.err
    assert not (tmp_path / "out").exists()  # nothing opened, no folder made


def test_providers_for_a_checkpoint_are_refused_not_ignored(cli, tiny_checkpoint, onnx_path, images, tmp_path):
    """PyTorch ran the checkpoint on the CPU, exit 0, though --providers asked for CUDA (the help promises "never a
    silent CPU run")."""
    cuda = ("--providers", "CUDAExecutionProvider")
    result = cli("predict", tiny_checkpoint, images / "a.png", "--out", tmp_path / "out", *cuda)
    assert result.code == 2 and "runs on the torch backend, which takes none" in result.err, result.err
    assert str(tiny_checkpoint) in result.err and not (tmp_path / "out").exists()
    result = cli("bench", "--torch", tiny_checkpoint, "--iterations", "1", *cuda)
    assert result.code == 2 and f"{tiny_checkpoint}: providers name" in result.err, result.err
    engine = _fake_engine(tmp_path)
    for command in (("bench", engine), ("parity", "--golden", onnx_path.parent / "golden.npz", engine)):
        result = cli(*command, *cuda)  # an engine alone: refused before it is opened (TensorRT is not here)
        assert result.code == 2 and "runs on the tensorrt backend, which takes none" in result.err, result.err
    # beside an ONNX model they are its providers; the engine and the checkpoint run where they run
    if importlib.util.find_spec("tensorrt") is None:
        result = cli("bench", onnx_path, engine, "--providers", "CPUExecutionProvider")
        assert result.code == 2 and "TensorRT is not installed" in result.err, result.err  # not the providers
    result = cli("bench", onnx_path, "--torch", tiny_checkpoint, "--iterations", "1", "--warmup", "0",
                 "--providers", "CPUExecutionProvider", "--json")
    assert result.code == 0, result.err
    assert [r["backend"] for r in json.loads(result.out)["results"]] == ["onnxruntime", "torch"]


def test_predict_refuses_an_output_that_is_a_folder_or_a_pipe_before_predicting(cli, onnx_path, images, tmp_path):
    import os

    first, second = sorted(p for p in images.iterdir() if p.is_file())[:2]
    out = tmp_path / "out"
    (out / f"{second.stem}.png").mkdir(parents=True)
    result = cli("predict", onnx_path, first, second, "--out", out)
    assert result.code == 2 and result.err.strip() == (
        f"mde: error: {out / (second.stem + '.png')}: a depth map would be written here, but it is a folder; "
        "remove it or choose another --out")
    assert [p.name for p in out.iterdir()] == [f"{second.stem}.png"]  # the first image's map not written either
    (out / f"{second.stem}.png").rmdir()
    os.mkfifo(out / f"{second.stem}.png")  # a depth map written into it would wait for a reader
    result = cli("predict", onnx_path, first, second, "--out", out)
    assert result.code == 2 and "but it is not a regular file (a pipe?)" in result.err


def test_predict_skips_hidden_files_in_a_folder_and_refuses_a_pipe(cli, onnx_path, images, tmp_path):
    import os

    folder = tmp_path / "from-a-mac"
    folder.mkdir()
    good = sorted(p for p in images.iterdir() if p.is_file())[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / f"._{good.name}").write_bytes(b"\0\x05\x16\x07 AppleDouble")  # copied from a Mac
    result = cli("predict", onnx_path, folder, "--out", tmp_path / "out")
    assert result.code == 0 and "skipped" not in result.err, result.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{good.stem}.png"]
    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait for a writer forever
    result = cli("predict", onnx_path, tmp_path / "pipe.png", "--out", tmp_path / "out2")
    assert result.code == 2 and result.err.strip().splitlines()[-1] == (
        f"mde: error: {tmp_path / 'pipe.png'}: not a regular file (a pipe, socket or device)")


def test_a_link_by_another_name_gets_its_own_depth_map_and_a_file_named_twice_one(cli, onnx_path, images, tmp_path):
    """`latest.png -> frame.png` beside its target: each name is an input (the link had been taken for its
    target, and frame.png, sorted after it, got no depth map and no word)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame.png").write_bytes((images / "a.png").read_bytes())
    (folder / "latest.png").symlink_to("frame.png")
    result = cli("predict", onnx_path, folder, folder / "frame.png", folder / "." / "latest.png",
                 "--out", tmp_path / "out", "--format", "npy")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frame.npy", "latest.npy"]
    assert "wrote 2 of 2" in result.err + result.out
    assert np.array_equal(np.load(tmp_path / "out" / "frame.npy"), np.load(tmp_path / "out" / "latest.npy"))


def test_a_file_name_with_a_newline_stays_one_line(cli, onnx_path, tmp_path):
    bad = tmp_path / "two\nlines.png"
    bad.write_text("not a picture")
    result = cli("predict", onnx_path, bad, "--out", tmp_path / "out")
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"mde: error: {tmp_path}/two\\nlines.png: not a readable image (unknown or corrupt format)"]


def test_a_file_name_that_is_not_utf8_is_predicted(cli, onnx_path, images, tmp_path):
    """Linux names are bytes (a camera's, a USB stick's): one that is not UTF-8 was an internal error that stopped
    the whole folder at that image."""
    import os

    folder = tmp_path / "raw"
    folder.mkdir()
    odd = os.fsdecode(b"bad\xffname.png")
    (folder / odd).write_bytes((images / "a.png").read_bytes())
    (folder / "zz.png").write_bytes((images / "gray.png").read_bytes())
    out = tmp_path / os.fsdecode(b"out\xfe")
    result = cli("predict", onnx_path, folder, "--out", out, "--format", "npy")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == sorted([os.fsdecode(b"bad\xffname.npy"), "zz.npy"])
    assert np.load(out / os.fsdecode(b"bad\xffname.npy")).shape == (45, 61)


@pytest.mark.parametrize("fmt", ["npy", "png16"])
def test_an_output_that_does_not_fit_is_one_line_naming_it(onnx_path, images, tmp_path, fmt):
    """numpy's short write (a full disk) is an OSError with no errno: `--format npy` said "internal error",
    exit 1. A file size limit makes the same short write here."""
    import subprocess
    import sys

    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
              "from mde.cli import main\n"
              "main(sys.argv[1:])\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", script, "predict", str(onnx_path), str(images / "a.png"),
                           "--out", str(out), "--format", fmt], capture_output=True, text=True, timeout=120)
    name = "a.npy" if fmt == "npy" else "a.png"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith(f"{out}/{name}: cannot write (File too large)"), proc.stderr
    assert not out.exists() or not list(out.iterdir())  # no half-written file, no temporary one


def test_a_folder_of_grey_frames_gets_one_note(cli, onnx_path, images, tmp_path):
    """A camera's grey frames said "grayscale image converted to RGB" once for every frame; once per folder now."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("f1.png", "f2.png", "f3.png"):
        (frames / name).write_bytes((images / "gray.png").read_bytes())
    result = cli("predict", onnx_path, frames, images / "gray.png", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    notes = [line for line in result.err.splitlines() if "grayscale" in line]
    assert notes == [f"mde: {frames}/f1.png: grayscale image converted to RGB (said once for the images of {frames})",
                     f"mde: {images}/gray.png: grayscale image converted to RGB (said once for the images of "
                     f"{images})"]


def test_each_kind_of_note_is_said_once_per_folder(cli, onnx_path, images, tmp_path):
    """Once per folder and kind: the folder's first note (a grey image) silenced every other kind (an RGBA image's
    dropped alpha) for the rest of the folder."""
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_gray.png").write_bytes((images / "gray.png").read_bytes())
    (mixed / "b_gray.png").write_bytes((images / "gray.png").read_bytes())
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(mixed / "c_rgba.png")
    result = cli("predict", onnx_path, mixed, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    notes = [line for line in result.err.splitlines() if "said once" in line]
    assert len(notes) == 2 and "a_gray.png: grayscale" in notes[0] and "c_rgba.png: RGBA image" in notes[1], notes


def test_log_lines_escape_the_names_they_show_and_name_a_multi_frame_file(cli, onnx_path, images, tmp_path):
    """A gray image's "converted to RGB" line printed the newline of its name raw (two lines); an animation
    was predicted from its first frame without a word."""
    gray = tmp_path / "two\nlines.png"
    gray.write_bytes((images / "gray.png").read_bytes())
    model = tmp_path / "m\nx.onnx"  # named by a status line (rich), not a log record
    model.write_bytes(onnx_path.read_bytes())
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    whole = (tmp_path / "anim.gif").read_bytes()  # cut off in a later frame: counting them failed (IndexError)
    (tmp_path / "cut.gif").write_bytes(whole[:int(len(whole) * 0.7)])
    frames[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=frames[1:2])  # a gain map
    result = cli("predict", model, gray, *(tmp_path / n for n in ("anim.gif", "cut.gif", "phone.jpg")),
                 "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert f"mde: {tmp_path}/two\\nlines.png: grayscale image converted to RGB (said once for the images of " \
           f"{tmp_path})\n" in result.err
    assert "m\\nx.onnx: onnxruntime on" in result.err
    assert f"mde: {tmp_path}/anim.gif: 3 frames (an animation or a multi-page file); the first is used" in result.err
    assert "cut.gif: " not in result.err and "phone.jpg: " not in result.err  # one picture each, predicted
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anim.png", "cut.png", "phone.png",
                                                                   "two\nlines.png"]


def test_a_model_whose_path_is_not_utf8_is_refused_in_words(cli, onnx_path, images, tmp_path):
    """ONNX Runtime takes UTF-8 text only: its pybind error blamed the model ("incompatible constructor")."""
    import os

    model = tmp_path / os.fsdecode(b"mod\xff.onnx")
    model.write_bytes(onnx_path.read_bytes())
    result = cli("predict", model, images / "a.png", "--out", tmp_path / "out")
    assert result.code == 2 and result.err.strip() == (
        f"mde: error: {tmp_path}/mod\\xff.onnx: ONNX Runtime cannot open a file whose path is not UTF-8 text; "
        "rename it (or the folder above it that is not)")


def test_predict_never_overwrites_its_inputs(cli, onnx_path, images):
    before = {p.name: p.read_bytes() for p in images.iterdir() if p.is_file()}
    result = cli("predict", onnx_path, images, "--out", images)  # color PNGs named like a.png
    assert result.code == 2 and "would overwrite this input image" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in images.iterdir() if p.is_file()} == before
    result = cli("predict", onnx_path, images, "--out", images, "--format", "npy")  # a.npy beside a.png
    assert result.code == 0 and (images / "a.npy").is_file()


def test_predict_never_writes_into_kittis_selection(cli, onnx_path, images, tmp_path):
    """`--out .../groundtruth_depth --format png16` replaced KITTI's ground truth with the model's own maps (the
    folder format's split folders were guarded, KITTI's were not): its next eval scored the model against itself."""
    selection = tmp_path / "depth_selection" / "val_selection_cropped"
    for folder in ("image", "groundtruth_depth"):
        (selection / folder).mkdir(parents=True)
    for folder in ("groundtruth_depth", "image"):
        result = cli("predict", onnx_path, images / "a.png", "--out", selection / folder, "--format", "png16")
        assert result.code == 2 and result.err.strip() == (
            f"mde: error: {selection / folder}: --out lies inside KITTI's {folder}/ ({selection}): the depth maps "
            "would replace or join its files; choose a folder outside it"), result.err
        assert not any((selection / folder).iterdir())


def test_predict_never_replaces_a_users_file_beside_the_images(cli, onnx_path, images, tmp_path):
    """`b.png` beside the input `b.jpg` is the user's photo, not an earlier depth map; `--out` of its own is rewritten."""
    photo = images / "b.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    before = photo.read_bytes()
    result = cli("predict", onnx_path, images / "b.jpg", "--out", images)
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"mde: error: {photo}: the depth map would replace this existing file in the images' own folder; "
        "choose another --out"]
    assert photo.read_bytes() == before
    result = cli("predict", onnx_path, images / "b.jpg", "--out", images, "--force")  # not even then
    assert result.code == 2 and "existing file in the images' own folder" in result.err and photo.read_bytes() == before
    out = tmp_path / "depth"
    result = cli("predict", onnx_path, images / "b.jpg", "--out", out)
    assert result.code == 0, result.err


def test_depth_pictures_never_join_the_images_in_their_folder(cli, onnx_path, tmp_path):
    """`--out` the images' folder writes `b.png` beside `b.jpg` only as `--format npy`: a picture there was read as a
    camera frame by the next run over the folder (the docs said so; the code took any new name). A broken link of
    a depth map's name in --out is an existing file too."""
    folder = tmp_path / "cam"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "b.jpg")
    for fmt in ("color", "png16"):
        result = cli("predict", onnx_path, folder, "--out", folder, "--format", fmt)
        assert result.code == 2 and result.err.strip() == (
            f"mde: error: {folder}: --out is the images' own folder: the depth pictures would join the images there "
            "(and be read as images by the next run over it); choose another --out, or --format npy"), result.err
    assert sorted(p.name for p in folder.iterdir()) == ["b.jpg"]
    assert cli("predict", onnx_path, folder, "--out", folder, "--format", "npy").code == 0
    rerun = cli("predict", onnx_path, folder, "--out", folder, "--format", "npy")  # the way the message offers
    assert rerun.code == 2 and "exists, and a depth map would replace it; give --force" in rerun.err, rerun.err
    assert cli("predict", onnx_path, folder, "--out", folder, "--format", "npy", "--force").code == 0  # was refused
    links = tmp_path / "links"  # a camera's folder of links to a store: depth pictures were written beside them
    links.mkdir()
    (links / "f1.jpg").symlink_to(folder / "b.jpg")
    result = cli("predict", onnx_path, links, "--out", links)
    assert result.code == 2 and f"{links}: --out is the images' own folder" in result.err, result.err
    assert sorted(p.name for p in links.iterdir()) == ["f1.jpg"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").symlink_to(tmp_path / "gone.png")
    result = cli("predict", onnx_path, folder / "b.jpg", "--out", out)
    assert result.code == 2 and "exists, and a depth map would replace it" in result.err, result.err


def test_predict_replaces_a_file_in_out_only_with_force(cli, onnx_path, images, tmp_path):
    """Another camera's `b.png` in --out was replaced by a depth map without a word: --out was "rewritten freely"."""
    out = tmp_path / "frames"
    out.mkdir()
    theirs = out / "b.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(theirs)
    before = theirs.read_bytes()
    result = cli("predict", onnx_path, images / "b.jpg", images / "a.png", "--out", out)
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"mde: error: {theirs}: exists, and a depth map would replace it; give --force to replace the files of the "
        "depth maps' names (a rerun's), or choose another --out"]
    assert theirs.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["b.png"]  # not a.png either
    result = cli("predict", onnx_path, images / "b.jpg", "--out", out, "--force")  # a rerun, as export's
    assert result.code == 0 and theirs.read_bytes() != before, result.err


def test_paths_are_printed_as_they_are(cli, onnx_path, images, tmp_path):
    """A folder named like rich markup ("[/x]", "[bold]") is neither a crash nor a different name."""
    for name in ("o[/x]", "o[bold]y"):
        out = tmp_path / name
        result = cli("predict", onnx_path, images / "a.png", "--out", out)
        assert result.code == 0, result.err
        assert f"to {out}" in result.err and (out / "a.png").is_file()


def test_predict_out_under_a_file_exit_2(cli, onnx_path, images, tmp_path):
    (tmp_path / "file").write_text("x")
    result = cli("predict", onnx_path, images, "--out", tmp_path / "file" / "sub")
    assert result.code == 2 and "cannot create output folder" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_predict_of_one_image_golden_has_no_output_for_names_it(cli, tiny_export, images, tmp_path):
    result = cli("predict", tiny_export / "golden.npz", images / "a.png", "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1] == (f"mde: error: {images / 'a.png'}: not one of the inputs saved "
                                                   "in golden.npz; the golden backend only replays those")


def test_predict_on_golden_skips_images_it_has_no_output_for(cli, tiny_export, synth_data, images, tmp_path):
    """The golden backend answers only its saved inputs: any other image is skipped, named, and the rest written."""
    from mde.runtime.images import read_rgb
    from mde.runtime.preprocess import preprocess

    with np.load(tiny_export / "golden.npz") as npz:
        golden = {name: npz[name] for name in npz.files}
    first_val = sorted((synth_data / "val" / "rgb").iterdir())[0]
    golden["image"][0] = preprocess([read_rgb(first_val)], golden["image"].shape[2:])[0]  # a saved input
    np.savez(tmp_path / "golden.npz", **golden)
    out = tmp_path / "out"
    result = cli("predict", tmp_path / "golden.npz", first_val, images / "a.png", "--out", out, "--format", "npy")
    assert result.code == 1, result.err
    assert f"skipped {images / 'a.png'}: not one of the inputs saved in golden.npz" in result.err
    assert sorted(p.name for p in out.iterdir()) == [f"{first_val.stem}.npy"]


def test_predict_skipping_every_image_exits_2_and_leaves_no_folder(cli, onnx_path, tmp_path):
    """Nothing usable among the inputs is bad input (exit 2), not a partial run (exit 1)."""
    bad = [tmp_path / "bad.png", tmp_path / "worse.png"]
    for path in bad:
        path.write_bytes(b"not a png")
    result = cli("predict", onnx_path, *bad, "--out", tmp_path / "out")
    assert result.code == 2 and all(f"skipped {p}" in result.err for p in bad), result.err
    assert result.err.strip().splitlines()[-1] == "mde: error: none of the 2 images could be predicted (each is listed above)"
    assert not (tmp_path / "out").exists()


def test_png16_refuses_a_model_whose_depths_it_cannot_hold(cli, onnx_path, images, tmp_path):
    """16-bit millimetres end at 65.535 m: a KITTI-range (80 m) model's far depths would be clipped unseen."""
    import dataclasses

    import onnx

    from mde.runtime.metadata import ModelMetadata, read_props, stamp

    model = onnx.load(onnx_path)
    stamp(model, dataclasses.replace(ModelMetadata.from_props(read_props(model)), max_depth=80.0))
    far = tmp_path / "far.onnx"
    onnx.save(model, far)
    result = cli("predict", far, images / "a.png", "--out", tmp_path / "out", "--format", "png16")
    assert result.code == 2 and result.err.strip().splitlines()[-1] == (
        f"mde: error: {far}: --format png16 holds depths up to 65.535 m; this model predicts up to 80 m "
        "(use --format npy)"), result.err
    assert not (tmp_path / "out").exists()
    assert cli("predict", far, images / "a.png", "--out", tmp_path / "out", "--format", "npy").code == 0


def test_predict_writing_nothing_leaves_no_folder(cli, onnx_path, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = cli("predict", onnx_path, bad, "--out", tmp_path / "out")
    # one line: the line that says where the model runs came first; it is said once a depth map is written
    assert result.code == 2 and result.err.strip().splitlines() == [f"mde: error: {bad}: not a readable image "
                                                                     "(unknown or corrupt format)"], result.err
    assert not (tmp_path / "out").exists()


def test_predict_truncated_model_exit_2(cli, onnx_path, images, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(onnx_path.read_bytes()[:4096])
    result = cli("predict", bad, images, "--out", tmp_path / "out")
    assert result.code == 2 and str(bad) in result.err and "cannot load ONNX model" in result.err


# -- bench ------------------------------------------------------------------------------
def test_bench_json(cli, onnx_path, tiny_export, tiny_checkpoint):
    fp16 = tiny_export / "model.fp16.onnx"
    result = cli("bench", onnx_path, fp16, "--torch", tiny_checkpoint, "--iterations", "3", "--warmup", "1",
                 "--batch", "2", "--threads", "1", "--image-size", "48x80", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["config"]["batch"] == 2 and report["config"]["iterations"] == 3
    rows = report["results"]
    assert [r["backend"] for r in rows] == ["onnxruntime", "onnxruntime", "torch"]
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "fp32"]
    for row in rows:
        lat = row["latency_ms"]
        assert set(lat) == {"p50", "p90", "p99", "mean"}
        assert 0 < lat["p50"] <= lat["mean"] * 2 and lat["p90"] is lat["p99"] is None  # 3 runs: no tail figure
        assert row["preprocess_ms"] > 0 and row["postprocess_ms"] > 0 and row["images_per_s"] > 0
        assert row["end_to_end_ms"]["mean"] >= lat["mean"]
        # img/s is end to end (the table's title says so): batch 2 per end-to-end call
        assert row["images_per_s"] == pytest.approx(2 * 1e3 / row["end_to_end_ms"]["mean"])
    # progress on stderr (plain lines here: not a terminal), one task per model; stdout stays JSON
    for name in ("model.onnx", "model.fp16.onnx", tiny_checkpoint.name):
        assert f"{name}: 1 warm-up + 3 timed runs" in result.err, result.err
    assert [r["name"] for r in rows] == ["model.onnx", "model.fp16.onnx", tiny_checkpoint.name]


def test_bench_names_two_models_of_one_file_name_by_their_paths(cli, onnx_path, tmp_path):
    other = tmp_path / "copy" / "model.onnx"
    other.parent.mkdir()
    other.write_bytes(onnx_path.read_bytes())
    result = cli("bench", onnx_path, other, "--iterations", "1", "--warmup", "0", "--threads", "1", "--json",
                 "--image-size", "48x80")
    assert result.code == 0, result.err
    results = json.loads(result.out)["results"]
    assert [r["name"] for r in results] == [str(onnx_path), str(other)]
    assert [(r["image_size"], r["input_size"]) for r in results] == [([48, 80], [64, 64])] * 2  # what was timed


def test_bench_shows_a_name_with_a_newline_or_an_escape_on_one_line(cli, onnx_path, tmp_path):
    """The table row and the progress line were split by a newline in a file's name, and its escape sequence
    reached the terminal."""
    odd = tmp_path / "n\nl\x1b[31m.onnx"
    odd.write_bytes(onnx_path.read_bytes())
    result = cli("bench", odd, "--iterations", "1", "--warmup", "0", "--threads", "1")
    assert result.code == 0, result.err
    assert "\x1b" not in result.out + result.err and "n\\nl\\x1b[31m.onnx" in result.out
    assert not any(line.startswith("l") for line in (result.out + result.err).splitlines())


def test_bench_names_a_torch_checkpoint_of_the_same_file_name_by_its_path(cli, tiny_checkpoint, tmp_path):
    other = tmp_path / "b" / tiny_checkpoint.name
    other.parent.mkdir()
    other.write_bytes(tiny_checkpoint.read_bytes())
    result = cli("bench", tiny_checkpoint, "--torch", other, "--iterations", "1", "--warmup", "0", "--threads", "1",
                 "--json")
    assert result.code == 0, result.err
    assert [r["name"] for r in json.loads(result.out)["results"]] == [str(tiny_checkpoint), str(other)]


def test_bench_table_and_errors(cli, onnx_path):
    result = cli("bench", onnx_path, "--iterations", "2", "--warmup", "0", "--threads", "1")
    assert result.code == 0 and "p99" in result.out and "model.onnx" in result.out
    assert cli("bench").code == 2
    bad = cli("bench", onnx_path, "--iterations", "0")
    assert bad.code == 2 and "--iterations" in bad.err
    assert cli("bench", onnx_path, "--backend", "nope").code == 2
    golden = cli("bench", onnx_path.parent / "golden.npz")
    assert golden.code == 2 and "golden.npz: golden.npz replays the outputs saved" in golden.err


def test_bench_checks_every_model_before_timing_the_first(cli, onnx_path, tiny_checkpoint, tmp_path, monkeypatch):
    """Each refusal comes before any model is timed: a damaged checkpoint, a missing one, an engine without
    TensorRT and one file given twice (by a hard link, or as an argument and --torch) were found only after
    the models before them had been timed, and their figures thrown away."""
    import mde.runtime.bench as bench

    timed = []
    monkeypatch.setattr(bench, "bench_artifact", lambda path, cfg: timed.append(path))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_path.read_bytes()[:1000])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 20)
    png = tmp_path / "junk.png.pt"  # an image saved under a checkpoint's name
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    linked = tmp_path / "linked.onnx"
    os.link(onnx_path, linked)
    engine = _fake_engine(tmp_path, max_batch=1)
    cases = [((onnx_path, broken), "broken.onnx: cannot load ONNX model"),
             ((onnx_path, onnx_path.parent / "." / onnx_path.name), "model given twice"),
             ((onnx_path, linked), "linked.onnx: model given twice"),
             ((tiny_checkpoint, "--torch", tiny_checkpoint), "model given twice (as an argument and --torch"),
             ((onnx_path, junk), "junk.pt: not a PyTorch checkpoint (neither a zip archive nor a pickle)"),
             ((onnx_path, "--torch", junk), "junk.pt: not a PyTorch checkpoint"),
             ((onnx_path, "--torch", png), "junk.png.pt: not a PyTorch checkpoint"),  # was "Unsupported operand 80"
             ((onnx_path, tmp_path / "missing.pt"), "missing.pt: model file not found"),
             ((onnx_path, "--iterations", "99999999999999999999"), "--iterations must be in 1..1000000"),
             ((onnx_path, "--torch", onnx_path), "--torch takes a PyTorch checkpoint"),
             (("--torch", tiny_checkpoint, "--backend", "onnxruntime"),  # it was timed in PyTorch, exit 0
              "--backend onnxruntime picks how the artifacts run, and none is given")]
    if importlib.util.find_spec("tensorrt") is None:
        cases.append(((onnx_path, engine), "TensorRT is not installed"))
    for args, said in cases:
        result = cli("bench", *args)
        assert result.code == 2 and said in result.err and result.err.count("\n") == 1, result.err
    assert timed == []


def test_bench_torch_checkpoint_that_is_not_there_is_refused_before_timing(cli, onnx_path, tmp_path):
    result = cli("bench", onnx_path, "--torch", tmp_path / "nosuch.pt", "--iterations", "2", "--warmup", "0")
    assert result.code == 2 and result.err.strip() == f"mde: error: {tmp_path / 'nosuch.pt'}: model file not found"


def test_bench_torch_without_pytorch_is_refused_before_timing(cli, onnx_path, tiny_checkpoint, monkeypatch):
    """A runtime-only install: `--torch` says what to install before any artifact is timed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = cli("bench", onnx_path, "--torch", tiny_checkpoint, "--iterations", "2", "--warmup", "0")
    assert result.code == 2 and result.err.strip() == (
        f"mde: error: {tiny_checkpoint}: --torch needs PyTorch, which is not installed; in the mde checkout: "
        "pip install -e '.[train]'")


# -- info -------------------------------------------------------------------------------
def test_info_onnx_json(cli, onnx_path):
    from mde.io import sha256_file

    result = cli("info", onnx_path, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["kind"] == "onnx" and info["precision"] == "fp32"
    assert info["sha256"] == sha256_file(onnx_path) and info["size_bytes"] == onnx_path.stat().st_size
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["shape"][1:] == [3, 64, 64]
    assert info["outputs"][0]["name"] == "depth"
    assert info["metadata"]["input_size"] == [64, 64]
    assert "CPUExecutionProvider" in info["machine"]["providers_available"]


def test_info_table(cli, onnx_path, tiny_export):
    result = cli("info", onnx_path)
    assert result.code == 0 and "resnet18" in result.out and "CPUExecutionProvider" in result.out
    # the figures export stamps are the checkpoint's validation, not the artifact's (an INT8 model scores apart):
    # "metrics" gave them as raw JSON, with no word of whose they are
    from mde.commands.info import _figures

    assert re.search(r"checkpoint's val\W+-\W", cli("info", tiny_export / "model.onnx").out)  # never validated
    assert _figures({"rmse": 1.80951234, "ssim": 0.82561}) == "rmse 1.8095, ssim 0.8256"


def test_info_escapes_what_the_artifact_says(cli, onnx_path, tmp_path):
    """Metadata and a file name come from whoever made the model: an escape code in them (clear the screen,
    set the window title) reached the terminal raw."""
    import onnx

    model = onnx.load(onnx_path)
    for prop in model.metadata_props:
        if prop.key == "mde.version":
            prop.value = json.dumps("0.1\x1b[2J\x1b]0;pwned\x07")
        if prop.key == "mde.model":
            prop.value = json.dumps({**json.loads(prop.value), "backbone": "r18\x1b[31mEVIL"})
    path = tmp_path / "ctl\n\x1b[31m.onnx"
    onnx.save(model, path)
    result = cli("info", path)
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "\x07" not in result.out
    assert "r18\\x1b[31mEVIL" in result.out and "ctl\\n\\x1b[31m.onnx" in result.out


def _fake_engine(folder: Path, max_batch: int = 8) -> Path:
    """`folder/model.engine` (bytes no TensorRT reads) and a sidecar as `mde export --engine` writes it."""
    engine = folder / "model.engine"
    engine.write_bytes(b"engine bytes")
    meta = ModelMetadata(input_size=(64, 64), max_depth=20.0, precision="fp16", backbone="resnet18")
    opt = min(4, max_batch)
    (folder / "model.engine.json").write_text(json.dumps({
        "tensorrt_version": "11.0.1", "gpu_name": "H100", "compute_capability": "9.0",
        "profile": {"image": {"min": [1, 3, 64, 64], "opt": [opt, 3, 64, 64], "max": [max_batch, 3, 64, 64]}},
        "precision": "fp16", "onnx_sha256": "0" * 64, "build_date": "2025-01-01", "metadata": meta.to_props(),
    }))
    return engine


def test_info_engine_from_sidecar(cli, tmp_path):
    engine = _fake_engine(tmp_path)
    result = cli("info", engine, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["kind"] == "engine" and info["precision"] == "fp16"
    assert info["inputs"][0]["shape"] == [None, 3, 64, 64] and info["inputs"][0]["dtype"] == "float32"
    assert info["engine"]["tensorrt_version"] == "11.0.1"
    assert "tensorrt" in info["machine"]
    from mde.runtime import inspect_artifact

    spec = inspect_artifact(engine)["inputs"][0]  # a numpy dtype, as an ONNX input's: it was the string "float32"
    assert spec.dtype == np.float32 and spec.dtype.itemsize == 4


@pytest.mark.parametrize("profile, said", [
    ({"a": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]},
      "b": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}, "profile has 2 inputs (a, b)"),
    ({}, "profile has 0 inputs"),
    ({"image": {"min": [1, 3, 96, 96], "opt": [1, 3, 96, 96], "max": [1, 3, 96, 96]}},
     "graph input is float32 1x3x96x96; the runtime feeds float32 ?x3x64x64"),
])
def test_info_refuses_an_engine_sidecar_whose_profile_is_not_its_metadatas(cli, tmp_path, profile, said):
    """For an ONNX, info refuses what a runner would; for an engine it listed whatever inputs the sidecar's profile
    named (two, none, another size than the metadata's)."""
    engine = _fake_engine(tmp_path)
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    (tmp_path / "model.engine.json").write_text(json.dumps({**sidecar, "profile": profile}))
    result = cli("info", engine)
    assert result.code == 2 and "model.engine.json: " in result.err and said in result.err, result.err


def test_info_json_of_a_folder_that_is_not_utf8_is_valid_unicode(cli, tmp_path):
    """The name's byte came out as a lone surrogate (`\\udcff`), which strict JSON parsers refuse."""
    import os

    folder = tmp_path / os.fsdecode(b"cam\xff")
    folder.mkdir()
    result = cli("info", _fake_engine(folder), "--json")
    assert result.code == 0, result.err
    assert "\\udc" not in result.out and json.loads(result.out)["path"] == f"{tmp_path}/cam\\xff/model.engine"


def test_info_reads_a_hand_written_sidecar_and_refuses_a_malformed_one(cli, tmp_path):
    """Plain JSON values (`"mde.precision": "fp16"`) as a person writes them are read; a profile that is not
    min/opt/max shapes, and calibration metadata that is not an object, are one line (they were AttributeErrors)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    meta = {key: json.loads(value) for key, value in
            ModelMetadata(input_size=(64, 64), max_depth=20.0, precision="fp16", version="1.10").to_props().items()}
    sidecar = {"tensorrt_version": "11.4.0", "compute_capability": "9.0", "metadata": meta,
               "profile": {"image": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]}}}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    result = cli("info", engine, "--json")
    assert result.code == 0 and json.loads(result.out)["precision"] == "fp16", result.err
    assert json.loads(result.out)["metadata"]["version"] == "1.10"  # a plain string that JSON would read as 1.1
    for profile, metadata in (({"image": [1, 3, 64, 64]}, meta), ({"image": {"min": None}}, meta),
                              (sidecar["profile"], {**meta, "mde.calibration": [1, 2]})):
        (tmp_path / "model.engine.json").write_text(json.dumps({**sidecar, "profile": profile, "metadata": metadata}))
        result = cli("info", engine)
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
        assert result.err.startswith(f"mde: error: {tmp_path / 'model.engine.json'}: ")
        assert ("profile of 'image'" in result.err) != ("mde.calibration must be a JSON object" in result.err)


@pytest.mark.parametrize("name, content, match", [("x.onnx", None, "not found"), ("x.txt", b"abc", "expected an .onnx")])
def test_info_bad_file_exit_2(cli, tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = cli("info", path)
    assert result.code == 2 and match in result.err


def test_predict_turns_a_photo_as_its_exif_orientation_says(cli, onnx_path, tmp_path):
    """A phone photo stored 64 wide x 48 high with orientation 6 (turn 90 degrees) is shown 48 x 64:
    its depth map is too."""
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "phone.jpg", exif=exif)
    out = tmp_path / "out"
    result = cli("predict", onnx_path, tmp_path / "phone.jpg", "--out", out, "--format", "npy")
    assert result.code == 0, result.err
    assert np.load(out / "phone.npy").shape == (64, 48)


def test_a_user_with_no_home_gets_no_onnx_runtime_telemetry_warning(onnx_path, tmp_path):
    """onnxruntime 1.31 warned "Failed to persist telemetry device ID" on stderr where ~/.cache is not writable:
    on every run of a robot's service user, and a second line beside an error's one."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = "/proc/nonexistent"
    proc = subprocess.run([sys.executable, "-m", "mde", "info", str(onnx_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and "resnet18" in proc.stdout, proc.stderr
    assert "telemetry" not in proc.stderr and not proc.stderr, proc.stderr



@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_standard_output_is_named(onnx_path):
    """`mde info > /dev/full` said "No space left on device" and no more: a table's write carries no file name."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mde", "info", str(onnx_path)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "mde: error: cannot write to standard output (No space left on device)\n"


def test_a_model_that_fails_to_run_stops_predict_at_once_naming_the_model(cli, onnx_path, images, tmp_path,
                                                                          monkeypatch):
    """A model that loads but fails when run was blamed on every image in turn ("skipped a.png: model.onnx: ..."),
    ending in a line that named no file."""
    from mde.errors import BackendError
    from mde.runtime.estimator import DepthEstimator

    def fails(self, rgb):
        raise BackendError("ONNX Runtime could not run the model (Reshape)", onnx_path)

    monkeypatch.setattr(DepthEstimator, "predict", fails)
    result = cli("predict", onnx_path, images, "--out", tmp_path / "out")
    assert result.code == 2 and "skipped" not in result.err, result.err
    assert result.err.strip().splitlines()[-1] == f"mde: error: {onnx_path}: ONNX Runtime could not run the model " \
                                                  "(Reshape)"
    assert not (tmp_path / "out").exists()


def test_a_table_to_a_gone_reader_or_a_closed_stdout_is_one_line_and_exit_2(onnx_path):
    """`mde info M | true` exited 1 (rich's broken-pipe exit, which says a check failed) without a word, and
    `mde info M >&-` exited 0 having shown nothing; `--json` already said both, exit 2."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone
    try:
        proc = subprocess.run([sys.executable, "-m", "mde", "info", str(onnx_path)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "mde: error: cannot write the results to standard output (Broken pipe: its reader " \
                          "stopped)\n"
    proc = subprocess.run(["bash", "-c", 'exec "$0" -m mde info "$1" >&-', sys.executable, str(onnx_path)],
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2 and "standard output is closed; nothing takes the results" in proc.stderr, \
        proc.stderr


def test_bench_offers_no_backend_it_refuses(cli, onnx_path):
    """`bench --help` and the unknown-backend error offered `golden`, which bench always refuses (nothing to time)."""
    result = cli("bench", onnx_path, "--backend", "tflite")
    assert result.code == 2 and "choose from: auto, onnxruntime, tensorrt, torch" in result.err, result.err
    assert "golden" not in cli("bench", "--help").out
    assert "golden" in cli("predict", "--help").out


def test_bench_gives_a_percentile_only_from_enough_runs():
    """p99 of 3 runs was numpy's interpolation between the two slowest: a tail figure no run measured."""
    from mde.runtime.bench import latency_stats

    few, some, many = (latency_stats([i / 1000 for i in range(1, n + 1)]) for n in (9, 10, 100))
    assert few["p90"] is few["p99"] is None and few["p50"] == pytest.approx(5.0) and few["mean"] == pytest.approx(5.0)
    assert some["p90"] == pytest.approx(9.1) and some["p99"] is None
    assert many["p90"] == pytest.approx(90.1) and many["p99"] == pytest.approx(99.01)


def test_bench_takes_the_image_sizes_predict_takes(cli, onnx_path):
    """A 64 x 10000 panorama, which predict takes (at most 8192 x 8192 pixels in all, a side may be longer), was
    refused by --image-size ("at most 8192x8192")."""
    result = cli("bench", onnx_path, "--image-size", "64x10000", "--iterations", "1", "--warmup", "0", "--threads", "1",
                 "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["results"][0]["image_size"] == [64, 10000]


def test_an_image_too_large_for_memory_at_its_own_size_is_skipped(cli, onnx_path, images, tmp_path, monkeypatch):
    """`predict --native-resolution` over a folder with one 12 MP photo too large for the machine stopped the whole
    run at it (out of memory names the model), though the message blamed the image's size."""
    from mde.errors import OutOfMemory
    from mde.runtime import estimator

    real = estimator.DepthEstimator.predict

    def predict(self, rgb):
        if rgb.shape[:2] == (70, 33):  # b.jpg
            raise OutOfMemory("out of memory running the model in ONNX Runtime (Failed to allocate memory)",
                              onnx_path)
        return real(self, rgb)

    monkeypatch.setattr(estimator.DepthEstimator, "predict", predict)
    monkeypatch.setattr(estimator.DepthEstimator, "require_native_resolution", lambda self: None)
    result = cli("predict", onnx_path, images, "--out", tmp_path / "out", "--native-resolution")
    assert result.code == 1, result.err
    assert f"mde: skipped {images / 'b.jpg'}: at its own size, out of memory running the model" in result.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "deep.png", "gray.png"]
    result = cli("predict", onnx_path, images, "--out", tmp_path / "out2")  # at the model's size: not the image's
    assert result.code == 2 and result.err.splitlines()[-1].startswith(f"mde: error: {onnx_path}: out of memory")
