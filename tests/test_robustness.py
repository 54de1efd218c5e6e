"""Every command against bad input: exit 2, one line naming the file, no traceback, nothing half-written."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# ---------------------------------------------------------------- bad files
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height: a decompression bomb is refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    return path


def damaged_pngs(root: Path) -> dict[str, Path]:
    """PNGs with sound chunks (checksums right) that still cannot be read: a byte of the compressed pixels
    changed (read half-black without an error once), and a text chunk that inflates past Pillow's limit."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.png")
    data = (root / "noise.png").read_bytes()
    start = data.index(b"IDAT") + 4
    size = struct.unpack(">I", data[start - 8 : start - 4])[0]
    pixels = bytearray(data[start : start + size])
    pixels[size // 2] ^= 0xFF
    files = {"corrupt_png": root / "corrupt-pixels.png", "text_chunk_png": root / "huge-text.png"}
    files["corrupt_png"].write_bytes(data[: start - 8] + png_chunk(b"IDAT", bytes(pixels)) + data[start + size + 4 :])
    text = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * 2_000_000))
    files["text_chunk_png"].write_bytes(data[: start - 8] + text + data[start - 8 :])
    return files


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


class Evil:
    """Unpickling this would run a shell command: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MDE_PWNED', '/tmp/mde-pwned')}",))


def _bad_artifacts(root: Path, good_onnx: Path) -> dict[str, Path]:
    """ONNX files with the good export's mde metadata that the runtime must refuse when it opens them."""
    import json

    import onnx
    from onnx import TensorProto, helper

    files = {}
    model = onnx.load(good_onnx)
    props = {p.key: p.value for p in model.metadata_props}

    def restamp(model, name: str, **changes) -> None:
        values = dict(props)
        for key, (field, value) in changes.items():
            values[key] = json.dumps({**json.loads(values[key]), field: value})
        del model.metadata_props[:]
        for key, value in values.items():
            model.metadata_props.add(key=key, value=value)
        files[name] = root / f"{name}.onnx"
        onnx.save(model, files[name])

    restamp(onnx.load(good_onnx), "huge_size", **{"mde.preprocess": ("input_size", [100000, 100000])})
    restamp(onnx.load(good_onnx), "zero_size", **{"mde.preprocess": ("input_size", [0, 0])})
    restamp(onnx.load(good_onnx), "negative_max_depth", **{"mde.output": ("max_depth", -1.0)})
    restamp(onnx.load(good_onnx), "huge_max_depth", **{"mde.output": ("max_depth", 1e300)})  # float32: inf
    # a graph that takes uint8 pixels (Cast, then the mean over channels as "depth")
    h, w = json.loads(props["mde.preprocess"])["input_size"]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["depth"], axes=[1], keepdims=1)], "uint8_input",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, h, w])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, h, w])])
    restamp(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), "uint8_input")
    restamp(onnx.load(good_onnx), "millimetres", **{"mde.output": ("units", "mm")})

    def float_graph(name: str, batch: int | str, output: str, channels: int) -> None:
        """A one-node graph, image -> mean (or copy) over channels, with the good export's metadata."""
        node = (helper.make_node("ReduceMean", ["image"], [output], axes=[1], keepdims=1) if channels == 1
                else helper.make_node("Identity", ["image"], [output]))
        graph = helper.make_graph(
            [node], name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, w])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, channels, h, w])])
        restamp(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), name)

    float_graph("other_output_name", "n", "pred", 1)  # its metadata names `depth`
    float_graph("three_channel_output", "n", "depth", 3)
    float_graph("fixed_batch_2", 2, "depth", 1)  # the runtime feeds one image at a time
    narrow = helper.make_graph(  # a depth map one pixel wide: the runtime resized it to the image without a word
        [helper.make_node("ReduceMean", ["image"], ["depth"], axes=[1, 3], keepdims=1)], "narrow_output",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, h, w])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["n", 1, h, 1])])
    restamp(helper.make_model(narrow, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), "narrow_output")
    # weights in an external file that is not there
    external = root / "external"
    external.mkdir()
    onnx.save(onnx.load(good_onnx), external / "ext.onnx", save_as_external_data=True, location="ext.onnx.data")
    (external / "ext.onnx.data").unlink()
    files["missing_external"] = external / "ext.onnx"
    return files


@pytest.fixture(scope="module")
def bad(tmp_path_factory, synth_data, tiny_checkpoint, tiny_export) -> dict[str, Path]:
    """A zoo of bad inputs, built once."""
    import onnx
    import torch

    root = tmp_path_factory.mktemp("bad")
    rgb = sorted((synth_data / "val" / "rgb").iterdir())[0]
    files: dict[str, Path] = {"missing": root / "does-not-exist.png", "dir": root / "a-folder"}
    files["dir"].mkdir()
    files["empty"] = root / "empty.png"
    files["empty"].write_bytes(b"")
    files["text_png"] = root / "notes.png"
    files["text_png"].write_text("this is not an image\n")
    files["truncated_png"] = truncated_copy(rgb, root / "truncated.png")
    Image.open(rgb).convert("RGB").save(root / "full.jpg", quality=90)
    files["truncated_jpg"] = truncated_copy(root / "full.jpg", root / "truncated.jpg", 0.4)
    files["tiny_png"] = root / "one-pixel.png"
    Image.new("RGB", (1, 1)).save(files["tiny_png"])
    files["bomb_png"] = png_header_only(root / "bomb.png", 20000, 20000)
    files["big_png"] = png_header_only(root / "big.png", 10000, 10000)  # Pillow warns; mde's limit refuses
    files.update(damaged_pngs(root))

    # checkpoints
    files["ckpt_truncated"] = truncated_copy(tiny_checkpoint, root / "truncated.pt")
    files["ckpt_text"] = root / "text.pt"
    files["ckpt_text"].write_text("not a checkpoint")
    files["ckpt_url"] = root / "url.pt"  # a download saved its link: the unpickler raised KeyError (exit 1)
    files["ckpt_url"].write_text("https://example.com/best.pt\n")
    state = torch.load(tiny_checkpoint, weights_only=True)
    other = dict(state, model_args=dict(state["model_args"], backbone="resnet50"))
    torch.save(other, root / "other-arch.pt")
    files["ckpt_other_arch"] = root / "other-arch.pt"
    for key, change in {"ckpt_size_0": {"image_size": 0}, "ckpt_size_33": {"image_size": 33},
                        "ckpt_size_text": {"image_size": "64"}, "ckpt_depth_negative": {"max_depth": -1.0},
                        "ckpt_depth_nan": {"max_depth": float("nan")}}.items():  # damaged or hand-edited model_args
        files[key] = root / f"{key.removeprefix('ckpt_').replace('_', '-')}.pt"
        torch.save(dict(state, model_args=dict(state["model_args"], **change)), files[key])
    files["ckpt_as_golden"] = root / "export-here" / "golden.npz"  # a checkpoint in --out, named as export's file
    files["ckpt_as_golden"].parent.mkdir()
    files["ckpt_as_golden"].write_bytes(tiny_checkpoint.read_bytes())
    files["ckpt_as_golden_folder"] = files["ckpt_as_golden"].parent
    files["ckpt_named_onnx"] = root / "model.onnx"  # a checkpoint saved under an artifact's name
    files["ckpt_named_onnx"].write_bytes(tiny_checkpoint.read_bytes())
    files["ckpt_no_weights"] = root / "no-weights.pt"
    torch.save(dict(state, model=None), files["ckpt_no_weights"])
    files["ckpt_nan_weights"] = root / "nan-weights.pt"  # diverged: PyTorch itself predicts NaN
    torch.save(dict(state, model={k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                                  for k, v in state["model"].items()}), files["ckpt_nan_weights"])
    files["ckpt_pickle_code"] = root / "evil.pt"
    with open(files["ckpt_pickle_code"], "wb") as fh:
        pickle.dump({"format": "mde.checkpoint/1", "model": Evil()}, fh)
    torch.save({"model": Evil()}, root / "evil-zip.pt")
    files["ckpt_pickle_code_zip"] = root / "evil-zip.pt"
    files["ckpt_pickle_proto0"] = root / "evil0.pt"  # pickle protocol 0: text, no PROTO byte, still code
    files["ckpt_pickle_proto0"].write_bytes(b'cos\nsystem\n(S"echo hi"\ntR.')
    files["ckpt_module"] = root / "module.pt"  # a whole nn.Module saved, as many tutorials do
    torch.save({"model": torch.nn.Linear(2, 2)}, files["ckpt_module"])

    # ONNX
    files["onnx_truncated"] = truncated_copy(tiny_export / "model.onnx", root / "truncated.onnx")
    model = onnx.load(tiny_export / "model.onnx")
    del model.metadata_props[:]
    files["onnx_no_meta"] = root / "no-meta.onnx"
    onnx.save(model, files["onnx_no_meta"])
    files.update(_bad_artifacts(root, tiny_export / "model.onnx"))
    files["golden_truncated"] = root / "golden.npz"
    files["golden_truncated"].write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a zip's first bytes, cut short
    with np.load(tiny_export / "golden.npz") as npz:
        golden = {name: npz[name] for name in npz.files}
    np.savez(root / "golden-bad-json.npz", **{**golden, "tolerances": np.array("{bad")})
    files["toml_huge_int"] = root / "huge-int.toml"  # past Python's 4300-digit int conversion
    files["toml_huge_int"].write_text("[fp32]\nssim_abs = " + "9" * 5000 + "\n")
    files["golden_bad_json"] = root / "golden-bad-json.npz"
    np.savez(root / "golden-empty.npz", **{**golden, "image": golden["image"][:0], "depth": golden["depth"][:0]})
    files["golden_empty"] = root / "golden-empty.npz"
    golden["depth"] = np.full_like(golden["depth"], np.nan)
    np.savez(root / "golden-nan.npz", **golden)
    files["golden_nan"] = root / "golden-nan.npz"
    files["golden_text"] = root / "text.npz"
    files["golden_text"].write_text("not an archive")
    files["onnx_text"] = root / "text.onnx"
    files["onnx_text"].write_text("hello")

    # an engine whose sidecar names another TensorRT and GPU
    files["engine_foreign"] = root / "model.engine"
    files["engine_foreign"].write_bytes(b"\0" * 1024)
    (root / "model.engine.json").write_text(
        '{"tensorrt_version": "0.0.1", "gpu_name": "Imaginary GPU", "compute_capability": "1.0",'
        ' "precision": "fp32", "profile": {}, "onnx_sha256": "0", "build_date": "2020-01-01",'
        ' "metadata": {}}'
    )

    # an engine whose sidecar holds a string where its metadata object belongs
    (root / "str-meta").mkdir()
    files["engine_str_meta"] = root / "str-meta" / "model.engine"
    files["engine_str_meta"].write_bytes(b"\0" * 1024)
    (root / "str-meta" / "model.engine.json").write_text(
        '{"tensorrt_version": "11.4.0", "compute_capability": "9.0", "profile": {"input": {}}, "metadata": "str"}')

    # datasets
    for name in ("ds_wrong_size", "ds_all_nan", "ds_unpaired", "ds_truncated"):
        shutil.copytree(synth_data, root / name)
    victim = sorted((root / "ds_wrong_size" / "train" / "depth").iterdir())[0]
    Image.fromarray(np.full((10, 12), 1000, np.uint16)).save(victim)
    files["ds_wrong_size"] = root / "ds_wrong_size"
    nan_dir = root / "ds_all_nan" / "val" / "depth"  # scored: a train map with no valid pixel is trained past
    first = sorted(nan_dir.iterdir())[0]
    h, w = np.asarray(Image.open(first)).shape
    first.unlink()
    np.save(nan_dir / (first.stem + ".npy"), np.full((h, w), np.nan, np.float32))
    files["ds_all_nan"] = root / "ds_all_nan"
    sorted((root / "ds_unpaired" / "train" / "depth").iterdir())[0].unlink()
    files["ds_unpaired"] = root / "ds_unpaired"
    victim = sorted((root / "ds_truncated" / "train" / "rgb").iterdir())[0]
    truncated_copy(victim, victim.with_suffix(".tmp"))
    victim.with_suffix(".tmp").replace(victim)
    files["ds_truncated"] = root / "ds_truncated"
    # one bad validation image each: refused by `eval` (exit 2), skipped by `predict` (exit 1)
    for key in ("bomb_png", "big_png", "tiny_png", "text_png", "truncated_png", "truncated_jpg", "corrupt_png",
                "text_chunk_png"):
        ds = root / f"ds_{key}"
        shutil.copytree(synth_data, ds)
        victim = sorted((ds / "val" / "rgb").iterdir())[0]
        victim.unlink()
        shutil.copy(files[key], victim.with_suffix(files[key].suffix))
        files[f"ds_{key}"] = ds
    files["ds_empty"] = root / "ds_empty"
    (files["ds_empty"] / "train" / "rgb").mkdir(parents=True)
    (files["ds_empty"] / "train" / "depth").mkdir(parents=True)
    return files


# (case id, argv template, the file name the message must name)
# Templates: {bad:KEY} a bad file, {ckpt} {onnx} {data} good inputs, {out} a fresh output path.
CASES = [
    # data synth
    ("synth-out-is-file", "data synth {bad:text_png} --train 2 --val 1 --size 64", "notes.png"),
    # train
    ("train-missing-data", "train --data {bad:missing} --out {out} --epochs 1", "does-not-exist.png"),
    ("train-wrong-size-depth", "train --data {bad:ds_wrong_size} --out {out} --epochs 1 --backbone resnet18 --image-size 64 --batch-size 4 --no-pretrained", "ds_wrong_size"),
    ("train-all-nan-depth", "train --data {bad:ds_all_nan} --out {out} --epochs 1 --backbone resnet18 --image-size 64 --batch-size 4 --no-pretrained", ".npy"),
    ("train-unpaired", "train --data {bad:ds_unpaired} --out {out} --epochs 1 --backbone resnet18 --image-size 64 --no-pretrained", "ds_unpaired"),
    ("train-truncated-rgb", "train --data {bad:ds_truncated} --out {out} --epochs 1 --backbone resnet18 --image-size 64 --batch-size 4 --no-pretrained", ".png"),
    ("train-empty-split", "train --data {bad:ds_empty} --out {out} --epochs 1", "ds_empty"),
    ("train-epochs-0", "train --data {data} --out {out} --epochs 0", "epochs"),
    ("train-resume-missing", "train --data {data} --out {out} --resume {bad:missing}", "does-not-exist.png"),
    # eval
    ("eval-missing-model", "eval {bad:missing} --data {data}", "does-not-exist.png"),
    ("eval-dir-model", "eval {bad:dir} --data {data}", "a-folder"),
    ("eval-empty-ckpt", "eval {bad:empty} --data {data}", "empty.png"),
    ("eval-truncated-ckpt", "eval {bad:ckpt_truncated} --data {data}", "truncated.pt"),
    ("eval-text-ckpt", "eval {bad:ckpt_text} --data {data}", "text.pt"),
    ("eval-url-ckpt", "eval {bad:ckpt_url} --data {data}", "url.pt: not a PyTorch checkpoint"),
    ("export-url-ckpt", "export {bad:ckpt_url} --out {out}", "url.pt: not a PyTorch checkpoint"),
    ("eval-other-arch", "eval {bad:ckpt_other_arch} --data {data}", "other-arch.pt"),
    ("eval-pickle-code", "eval {bad:ckpt_pickle_code} --data {data}", "evil.pt"),
    ("eval-pickle-code-zip", "eval {bad:ckpt_pickle_code_zip} --data {data}", "evil-zip.pt"),
    ("eval-pickle-code-protocol-0", "eval {bad:ckpt_pickle_proto0} --data {data}",
     "evil0.pt: refused: not a plain weights checkpoint (it refers to os.system, which is no tensor)"),
    ("eval-pickled-module", "eval {bad:ckpt_module} --data {data}",
     "module.pt: refused: not a plain weights checkpoint (it refers to torch.nn.modules.linear.Linear, "
     "which is no tensor); mde does not unpickle Python objects"),
    ("eval-truncated-onnx", "eval {bad:onnx_truncated} --data {data}", "truncated.onnx"),
    ("eval-missing-data", "eval {ckpt} --data {bad:missing}", "does-not-exist.png"),
    ("eval-onnx-on-tpu", "eval {onnx} --data {data} --device tpu", "unknown --device 'tpu'"),
    ("eval-unknown-device", "eval {ckpt} --data {data} --device tpu", "unknown --device 'tpu'"),
    ("eval-nan-depth-scale", "eval {onnx} --data {data} --depth-scale nan", "--depth-scale must be a positive"),
    ("eval-decompression-bomb", "eval {ckpt} --data {bad:ds_bomb_png}", "000000.png"),
    ("eval-1x1-image", "eval {ckpt} --data {bad:ds_tiny_png}", "000000.png"),
    ("eval-text-as-png", "eval {ckpt} --data {bad:ds_text_png}", "000000.png"),
    ("eval-truncated-png", "eval {onnx} --data {bad:ds_truncated_png}", "000000.png"),
    ("eval-truncated-jpg", "eval {onnx} --data {bad:ds_truncated_jpg}", "000000.jpg"),
    ("synth-name-too-long", "data synth {out}/" + "a" * 260 + " --train 2 --val 1 --size 32", "File name too long"),
    ("parity-json-name-too-long", "parity --golden {onnx_golden} {onnx} --json {out}/" + "b" * 260 + ".json",
     "File name too long"),
    ("parity-json-in-sys", "parity --golden {onnx_golden} {onnx} --json /sys/mde-p.json", "/sys: cannot write here"),
    ("eval-big-png", "eval {onnx} --data {bad:ds_big_png}", "000000.png: image is 10000x10000"),
    ("eval-corrupt-pixels", "eval {onnx} --data {bad:ds_corrupt_png}", "000000.png: truncated or corrupt image"),
    ("eval-huge-text-chunk", "eval {onnx} --data {bad:ds_text_chunk_png}", "000000.png: cannot read image"),
    ("predict-corrupt-pixels", "predict {onnx} {bad:corrupt_png} --out {out}",
     "corrupt-pixels.png: truncated or corrupt image"),  # read upright: its EXIF was looked for first
    ("predict-huge-text-chunk", "predict {onnx} {bad:text_chunk_png} --out {out}", "huge-text.png"),
    # export
    ("export-missing-ckpt", "export {bad:missing} --out {out}", "does-not-exist.png"),
    ("export-ckpt-size-0", "export {bad:ckpt_size_0} --out {out}",
     "size-0.pt: checkpoint's model_args.image_size must be a multiple of 32 in 32..8192, or [height, width] of them, got 0"),
    ("export-ckpt-size-33", "export {bad:ckpt_size_33} --out {out}", "size-33.pt: checkpoint's model_args.image_size"),
    ("predict-ckpt-size-text", "predict {bad:ckpt_size_text} {data}/val/rgb/000000.png --out {out}",
     "size-text.pt: checkpoint's model_args.image_size must be a multiple of 32 in 32..8192, or [height, width] of them, got '64'"),
    ("predict-ckpt-depth-negative", "predict {bad:ckpt_depth_negative} {data}/val/rgb/000000.png --out {out}",
     "depth-negative.pt: checkpoint's model_args.max_depth must be a number of metres in [0.001, 10000], got -1.0"),
    ("export-ckpt-depth-nan", "export {bad:ckpt_depth_nan} --out {out}", "depth-nan.pt: checkpoint's model_args.max_depth"),
    ("export-ckpt-no-weights", "export {bad:ckpt_no_weights} --out {out}",
     "no-weights.pt: checkpoint holds no weights (its 'model' is NoneType, not a state dict)"),
    ("export-ckpt-nan-weights", "export {bad:ckpt_nan_weights} --out {out}",
     "nan-weights.pt: PyTorch predicts NaN or infinite depth from this checkpoint"),
    ("export-truncated-ckpt", "export {bad:ckpt_truncated} --out {out}", "truncated.pt"),
    ("export-pickle-code", "export {bad:ckpt_pickle_code} --out {out}", "evil.pt"),
    ("export-unknown-precision", "export {ckpt} --out {out} --precision fp8", "fp8"),
    ("export-int8-no-calib", "export {ckpt} --out {out} --precision int8", "calib"),
    ("export-out-is-file", "export {ckpt} --out {bad:text_png}", "notes.png"),
    ("export-onnx-as-ckpt", "export {onnx} --out {out}", "expected a PyTorch checkpoint (.pt)"),
    ("export-golden-as-ckpt", "export {onnx_golden} --out {out}",  # was "corrupt or truncated checkpoint"
     "golden.npz: this is a numpy archive (.npz: export's golden.npz holds PyTorch's outputs"),
    ("export-ckpt-named-onnx", "export {bad:ckpt_named_onnx} --out {out}",  # said it was an exported model
     "model.onnx: this is a PyTorch checkpoint named .onnx; rename it to .pt"),
    ("export-ckpt-in-out-as-golden", "export {bad:ckpt_as_golden} --out {bad:ckpt_as_golden_folder} --force",
     "golden.npz: the checkpoint is in --out under the name of a file export writes or removes"),  # was replaced
    # calibrate
    ("calibrate-not-onnx", "calibrate {bad:onnx_text} --data {data} --out {out}.onnx", "text.onnx"),
    ("calibrate-no-meta", "calibrate {bad:onnx_no_meta} --data {data} --out {out}.onnx", "no-meta.onnx"),
    ("calibrate-too-few", "calibrate {onnx} --data {data} --out {out}.onnx --num-images 8", "8"),
    ("calibrate-missing-data", "calibrate {onnx} --data {bad:missing} --out {out}.onnx", "does-not-exist.png"),
    # parity
    ("parity-truncated-onnx", "parity {ckpt} {bad:onnx_truncated} --data {data}", "truncated.onnx"),
    ("parity-no-meta", "parity {ckpt} {bad:onnx_no_meta} --data {data}", "no-meta.onnx"),
    ("parity-pickle-code", "parity {bad:ckpt_pickle_code} {onnx} --data {data}", "evil.pt"),
    ("parity-tolerances-huge-int", "parity --golden {onnx_golden} {onnx} --tolerances {bad:toml_huge_int}",
     "huge-int.toml: not a valid TOML file"),  # an internal error, exit 1: a parity failure to CI
    ("parity-report-named-npz", "parity --golden {onnx_golden} {onnx} --report {out}/r.npz",  # refused by its rerun
     "r.npz: --report is named as a model or data file"),
    ("parity-backend-golden", "parity --golden {onnx_golden} {onnx} --backend golden",  # offered, refused for all
     "--backend golden is the reference's, not an artifact's: give the golden.npz as --golden"),
    ("eval-backend-golden", "eval {onnx} --data {data} --backend golden",
     "--backend golden replays a golden.npz's saved outputs"),
    ("parity-missing-artifact", "parity {ckpt} {bad:missing} --data {data}", "does-not-exist.png"),
    ("parity-truncated-golden", "parity --golden {bad:golden_truncated} {onnx}", "golden.npz"),
    ("parity-golden-bad-json", "parity --golden {bad:golden_bad_json} {onnx}",
     "golden-bad-json.npz: golden.npz field 'tolerances' is not JSON"),
    ("parity-golden-nan", "parity --golden {bad:golden_nan} {onnx}", "golden-nan.npz: golden arrays hold NaN"),
    ("parity-golden-text", "parity --golden {bad:golden_text} {onnx}",
     "text.npz: not a golden.npz (not a NumPy .npz archive)"),
    ("train-checkpoint-as-backbone", "train --data {data} --out {out} --no-pretrained --backbone-weights {ckpt}",
     "no torchvision ResNet weights (conv1.*, layer1.* ...) in this file (an mde checkpoint)"),
    ("eval-split-as-path", "eval {ckpt} --data {data} --split ../data/val", "unknown --split '../data/val'"),
    ("parity-split-as-path", "parity {ckpt} {onnx} --data {data} --split ../data/val",  # it read that folder
     "unknown --split '../data/val'"),
    ("parity-json-new-file-in-dev", "parity --golden {onnx_golden} {onnx} --json /dev/mde-new.json",  # after the run
     "/dev/mde-new.json: mde makes no files in /dev or /proc"),
    ("eval-backend-for-checkpoint", "eval {ckpt} --data {data} --backend tensorrt",
     "--backend tensorrt: a .pt checkpoint runs in PyTorch"),
    ("eval-depth-scale-overflows", "eval {ckpt} --data {data} --depth-scale 1e300",
     "--depth-scale must be a positive number of PNG units per metre, 0.001 to 1e+06"),
    ("export-golden-images-huge", "export {ckpt} --out {out} --golden-images 1000000000", "--golden-images must be 1..64"),
    ("export-workspace-negative", "export {ckpt} --out {out} --engine --workspace-mib -1", "--workspace-mib must be 1..1048576"),
    ("export-workspace-huge", "export {ckpt} --out {out} --engine --workspace-mib 999999999999999",
     "--workspace-mib must be 1..1048576, got 999999999999999"),
    # profile sizes are checked before any export (without --engine they are refused: they would shape nothing)
    ("export-min-size-not-32", "export {ckpt} --out {out} --engine --dynamic-size --min-size 48",
     "--min-size/--max-size: profile sizes must be multiples of 32, got 48"),
    ("export-max-size-huge", "export {ckpt} --out {out} --engine --dynamic-size --max-size 1000000",
     "--min-size/--max-size must satisfy 32 <= min <= max <= 8192, got 32/1000000"),
    ("export-depth-scale-nan", "export {ckpt} --out {out} --depth-scale nan", "--depth-scale must be 0.001 to 1e+06"),
    ("export-out-inside-split", "export {ckpt} --out {data}/val/rgb --golden-data {data}",
     "--out lies inside the dataset's train/ or val/"),
    ("export-calib-data-without-int8", "export {ckpt} --out {out} --calib-data {data}",
     "--calib-data calibrates INT8; add --precision int8"),
    ("export-calib-images-without-int8", "export {ckpt} --out {out} --calib-images 8",  # was ignored, exit 0
     "--calib-images calibrates INT8; add --precision int8"),
    ("export-calib-allow-few-without-int8", "export {ckpt} --out {out} --calib-allow-few",
     "--calib-allow-few calibrates INT8; add --precision int8"),
    ("export-depth-scale-without-data", "export {ckpt} --out {out} --depth-scale 256",  # was ignored, exit 0
     "--depth-scale reads the depth maps of --golden-data and --calib-data; add one"),
    ("train-folder-as-backbone", "train --data {data} --out {out} --no-pretrained --backbone-weights {bad:dir}",
     "a-folder: --backbone-weights is a folder; expected a torchvision ResNet .pth file"),
    ("train-text-as-backbone", "train --data {data} --out {out} --no-pretrained --backbone-weights {bad:onnx_text}",
     "text.onnx: cannot read backbone weights: not a PyTorch weights file"),
    ("parity-json-over-artifact", "parity {ckpt} {onnx} --data {data} --json {onnx}", "--json would write over"),
    ("parity-json-into-data", "parity {ckpt} {onnx} --data {data} --json {data}/meta.json", "inside the input folder"),
    ("parity-json-is-report", "parity {ckpt} {onnx} --data {data} --json {out}.txt --report {out}.txt",
     "out.txt: --json names a file the report writes"),
    ("parity-golden-empty", "parity --golden {bad:golden_empty} {onnx}",
     "golden-empty.npz: golden arrays must be N x 3 x H x W and N x 1 x H x W, N, H, W >= 1"),
    ("parity-artifact-as-checkpoint", "parity {onnx} {onnx_fp16} --data {data}",
     "model.onnx: the first path is the PyTorch checkpoint (.pt) the artifacts were exported from"),
    ("parity-checkpoint-as-artifact", "parity {ckpt} {ckpt} --data {data}",
     "tiny-report.pt: the checkpoint is the reference, not an artifact to check against it"),
    ("parity-json-is-worst-png", "parity {ckpt} {onnx} --data {data} --json {out}.model.worst.png --report {out}.md",
     "out.model.worst.png: --json names a file the report writes (the report, or an artifact's worst-image"),
    ("parity-report-is-folder", "parity {ckpt} {onnx} --data {data} --report {bad:dir}", "a-folder"),
    # predict
    ("predict-missing-model", "predict {bad:missing} {bad:tiny_png} --out {out}", "does-not-exist.png"),
    ("predict-truncated-onnx", "predict {bad:onnx_truncated} {bad:tiny_png} --out {out}", "truncated.onnx"),
    ("predict-no-meta", "predict {bad:onnx_no_meta} {bad:tiny_png} --out {out}", "no-meta.onnx"),
    ("predict-onnx-as-golden", "predict {onnx} {data}/val/rgb/000000.png --out {out} --backend golden",
     "a .onnx file is read by the onnxruntime backend; the golden backend reads .npz"),
    ("predict-onnx-as-engine", "predict {onnx} {data}/val/rgb/000000.png --out {out} --backend tensorrt",
     "the tensorrt backend reads .engine, .plan"),
    ("predict-unknown-backend", "predict {onnx} {bad:tiny_png} --out {out} --backend tflite", "tflite"),
    ("predict-foreign-engine", "predict {bad:engine_foreign} {bad:tiny_png} --out {out}",
     "model.engine.json: no mde metadata"),
    # unknown values and conflicting flags
    ("predict-unknown-format", "predict {onnx} {bad:tiny_png} --out {out} --format jpeg", "jpeg"),
    ("calibrate-unknown-method", "calibrate {onnx} --data {data} --out {out}.onnx --method foo", "foo"),
    ("parity-golden-and-data", "parity --golden {bad:missing} {onnx} --data {data}", "--golden"),
    ("parity-golden-and-limit", "parity --golden {bad:missing} {onnx} --limit 2",
     "--golden and --limit are exclusive"),
    ("train-pretrained-and-weights", "train --data {data} --out {out} --pretrained --backbone-weights {ckpt}", "--backbone-weights"),
    ("train-freeze-from-scratch", "train --data {data} --out {out} --no-pretrained --freeze-stages 3", "freeze"),
    # artifacts whose graph or metadata the runtime cannot feed: refused when opened
    ("predict-uint8-input", "predict {bad:uint8_input} {data}/val/rgb/000000.png --out {out}", "graph input is uint8"),
    ("calibrate-uint8-input", "calibrate {bad:uint8_input} --data {data} --out {out}.onnx", "uint8_input.onnx"),
    ("parity-uint8-input", "parity {ckpt} {bad:uint8_input} --data {data}", "graph input is uint8"),
    ("predict-huge-size", "predict {bad:huge_size} {data}/val/rgb/000000.png --out {out}", "input_size must be"),
    ("calibrate-huge-size", "calibrate {bad:huge_size} --data {data} --out {out}.onnx", "huge_size.onnx"),
    ("predict-millimetre-output", "predict {bad:millimetres} {data}/val/rgb/000000.png --out {out}",
     'millimetres.onnx: output {"units": "mm"} is not what this runtime implements ({"units": "m"})'),
    ("predict-other-output-name", "predict {bad:other_output_name} {data}/val/rgb/000000.png --out {out}",
     "other_output_name.onnx: graph has no output 'depth' (its outputs: pred)"),
    ("eval-three-channel-output", "eval {bad:three_channel_output} --data {data}",
     "three_channel_output.onnx: graph output 'depth' is float32 ?x3x64x64; expected a float N x 1 x H x W"),
    ("eval-narrow-output", "eval {bad:narrow_output} --data {data}",
     "narrow_output.onnx: graph output 'depth' is float32 ?x1x64x1; expected ?x1x64x64, the input's size"),
    ("predict-narrow-output", "predict {bad:narrow_output} {data}/val/rgb/000000.png --out {out}",
     "narrow_output.onnx: graph output 'depth' is float32 ?x1x64x1"),
    ("predict-fixed-batch-2", "predict {bad:fixed_batch_2} {data}/val/rgb/000000.png --out {out}",
     "fixed_batch_2.onnx: graph input is float32 2x3x64x64; the runtime feeds float32 ?x3x64x64"),
    ("bench-zero-size", "bench {bad:zero_size} --iterations 2", "zero_size.onnx"),
    ("predict-negative-max-depth", "predict {bad:negative_max_depth} {data}/val/rgb/000000.png --out {out}",
     "max_depth must be a number of metres from 0.001 to 1e+06, got -1.0"),
    ("predict-huge-max-depth", "predict {bad:huge_max_depth} {data}/val/rgb/000000.png --out {out}",
     "max_depth must be a number of metres from 0.001 to 1e+06, got 1e+300"),
    ("calibrate-missing-external", "calibrate {bad:missing_external} --data {data} --out {out}.onnx", "ext.onnx"),
    # bench / info
    ("bench-missing", "bench {bad:missing} --iterations 2", "does-not-exist.png"),
    ("bench-unknown-backend", "bench {onnx} --backend tflite --iterations 2", "tflite"),
    ("bench-absurd-size", "bench {onnx} --image-size 100000x100000 --iterations 2", "at most 67108864 pixels"),
    ("bench-size-one-over", "bench {onnx} --image-size 8193x8192 --iterations 2", "at most 67108864 pixels"),
    ("bench-threads-100000", "bench {onnx} --threads 100000 --iterations 2", "--threads must be in 0.."),
    ("bench-threads-negative", "bench {onnx} --threads -1 --iterations 2", "here), got -1"),
    ("predict-threads-100000", "predict {onnx} {data}/val/rgb/000000.png --out {out} --threads 100000",
     "--threads must be in 0.."),
    ("predict-threads-negative", "predict {onnx} {data}/val/rgb/000000.png --out {out} --threads -1",
     "here), got -1"),
    ("bench-huge-batch", "bench {onnx} --batch 10000000 --iterations 2", "--batch 10000000 of 64x64 images"),
    ("info-missing", "info {bad:missing}", "does-not-exist.png"),
    ("info-truncated-onnx", "info {bad:onnx_truncated}", "truncated.onnx"),
    ("info-text-onnx", "info {bad:onnx_text}", "text.onnx"),
    ("info-foreign-engine", "info {bad:engine_foreign}", "model.engine.json: no mde metadata"),
    # graphs every runtime command refuses: `info`, the command that checks an artifact, said nothing (exit 0)
    ("info-fixed-batch-2", "info {bad:fixed_batch_2}",
     "fixed_batch_2.onnx: graph input is float32 2x3x64x64; the runtime feeds float32 ?x3x64x64"),
    ("info-three-channel-output", "info {bad:three_channel_output}", "graph output 'depth' is float32 ?x3x64x64"),
    ("info-other-output-name", "info {bad:other_output_name}", "graph has no output 'depth' (its outputs: pred)"),
    ("info-engine-str-metadata", "info {bad:engine_str_meta}", "model.engine.json: engine sidecar has a malformed metadata (str, expected dict)"),
    ("predict-engine-str-metadata", "predict {bad:engine_str_meta} {bad:tiny_png} --out {out}",
     "model.engine.json: engine sidecar has a malformed metadata (str, expected dict)"),
]


def _argv(template: str, bad: dict[str, Path], out: Path, good: dict[str, Path]) -> list[str]:
    argv = []
    for word in template.split():
        if word.startswith("{bad:"):
            word = str(bad[word[5:-1]])
        else:
            word = word.format(out=out, **good)
        argv.append(word)
    return argv


@pytest.mark.parametrize("case,template,names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, template, names, bad, cli, tmp_path, synth_data,
                                      tiny_checkpoint, tiny_export, monkeypatch):
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("MDE_PWNED", str(pwned))
    out = tmp_path / "out"
    good = {"ckpt": tiny_checkpoint, "onnx": tiny_export / "model.onnx", "data": synth_data,
            "onnx_golden": tiny_export / "golden.npz", "onnx_fp16": tiny_export / "model.fp16.onnx"}
    result = cli(*_argv(template, bad, out, good))

    assert result.code == 2, f"{case}: exit {result.code}\nstderr: {result.err}\nstdout: {result.out}"
    assert "Traceback" not in result.err + result.out
    errors = [line for line in result.err.splitlines() if line.startswith("mde: error:")]
    assert len(errors) == 1, result.err
    assert names in errors[0], f"{case}: message does not name {names!r}: {errors[0]}"
    assert not pwned.exists(), "a pickled payload ran"
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p != pwned]
    assert not [p for p in leftovers if p.suffix in (".pt", ".onnx", ".npz", ".tmp")], leftovers


def test_pillow_warnings_do_not_reach_the_terminal(bad, tiny_export):
    """A header past Pillow's warning size, and a JPEG with corrupt EXIF: mde's own line only."""
    import subprocess
    import sys

    jpeg = bad["big_png"].parent / "bad-exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: read twice, once to find the orientation and once to turn it
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(jpeg, exif=exif.tobytes()[:-4])  # cut short
    mde = [sys.executable, "-m", "mde"]
    done = subprocess.run([*mde, "eval", str(tiny_export / "model.onnx"), "--data", str(bad["ds_big_png"])],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"mde: error: {bad['ds_big_png'] / 'val' / 'rgb' / '000000.png'}: image is 10000x10000, larger than the "
        "67108864 pixel limit"], done.stderr
    out = jpeg.parent / "bad-exif-out"
    done = subprocess.run([*mde, "predict", str(tiny_export / "model.onnx"), str(jpeg), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert Image.open(out / "bad-exif.png").size == (32, 48)  # turned upright


def test_onnx_runtime_errors_are_one_line_without_its_log(tiny_export, tmp_path):
    """ONNX Runtime logs an error it also raises (in colour, with C++ source lines) above mde's line: a model that
    fails at load (its external data cut short) and one that fails at run time (a Reshape to batch 1, run at 2)."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(tiny_export / "model.onnx")
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [4], [1, 1, 64, 64]))
    model.graph.node.append(helper.make_node("Reshape", [f"{out}_pre", "shape"], [out]))
    onnx.save(model, tmp_path / "batch1.onnx")
    onnx.save(onnx.load(tiny_export / "model.onnx"), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.onnx.data")
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    mde = [sys.executable, "-m", "mde"]
    for args, says in ((["bench", str(tmp_path / "batch1.onnx"), "--batch", "2", "--iterations", "1"],
                        "batch1.onnx: ONNX Runtime could not run the model ("),
                       (["info", str(tmp_path / "ext.onnx"), "--json"], "ext.onnx: cannot load ONNX model (")):
        done = subprocess.run([*mde, *args], capture_output=True, text=True, timeout=120, check=False)
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
        assert "onnxruntime_src" not in lines[0] and ".cc:" not in lines[0] and ".h:" not in lines[0], lines[0]


@pytest.mark.parametrize("key", ["bomb_png", "big_png", "tiny_png", "text_png", "truncated_png", "truncated_jpg",
                                 "corrupt_png", "text_chunk_png", "empty"])
def test_predict_skips_a_bad_image_and_exits_1(key, bad, cli, tmp_path, synth_data, tiny_export):
    good = sorted((synth_data / "val" / "rgb").iterdir())[0]
    out = tmp_path / "pred"
    result = cli("predict", tiny_export / "model.onnx", good, bad[key], "--out", out, "--format", "npy")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    named = [line for line in result.err.splitlines() if bad[key].name in line]
    assert len(named) == 1, result.err
    assert sorted(p.name for p in out.iterdir()) == [good.stem + ".npy"]


@pytest.mark.parametrize("argv, says", [
    (["frobnicate"], "No such command 'frobnicate'. (see 'mde --help')"),
    (["data", "synth", "/tmp/x", "--train", "many"], "Invalid value for '--train'"),
    (["data", "synth", "/tmp/x", "--size", "0"], "Invalid value for '--size'"),
    (["eval", "m.onnx", "--frobnicate"], "No such option: --frobnicate (see 'mde eval --help')"),
    (["eval"], "Missing argument 'model'"),
    (["eval", "m.onnx", "-v"], "-v is mde's own option, given before the command: mde -v eval ..."),
    (["data", "synth", "D", "--verbose"], "--verbose is mde's own option, given before the command: "
                                          "mde --verbose data synth ..."),
])
def test_usage_errors_are_one_line_exit_2(argv, says, cli):
    result = cli(*argv)
    assert result.code == 2
    assert result.err.startswith("mde: error: ") and says in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not result.out


@pytest.mark.parametrize("rich", ["1", "0"])
def test_bare_mde_prints_its_help(rich, cli, monkeypatch):
    monkeypatch.setenv("TYPER_USE_RICH", rich)
    result = cli()
    assert result.code == 2 and "Usage" in result.out and "train" in result.out and not result.err


def test_help_shows_no_value_for_a_flag(cli, monkeypatch):
    """typer showed `<bool>` beside every on/off flag, as if it took one (`--json true` is refused)."""
    monkeypatch.setenv("COLUMNS", "200")
    for argv in (["--help"], ["info", "--help"], ["train", "--help"], ["data", "synth", "--help"]):
        result = cli(*argv)
        assert result.code == 0 and "--help" in result.out and "<bool>" not in result.out, result.out
    help_lines = cli("train", "--help").out.splitlines()
    assert [line for line in help_lines if "--data " in line and "<path>" in line]  # a path, not a <str>


def test_no_command_help_breaks_a_paragraph_mid_sentence():
    """typer's help keeps a docstring's line breaks: a paragraph wrapped in the source printed as 'Scoring a' on a
    line of its own. Every paragraph of every command's help is one line in the source."""
    import inspect

    import typer

    from mde.cli import app

    def commands(command, path: str):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, f"{path} {name}")

    broken = [(path, paragraph.split("\n")[0]) for path, command in commands(typer.main.get_command(app), "mde")
              for paragraph in inspect.cleandoc(command.help or "").split("\n\n") if "\n" in paragraph.strip()]
    assert not broken, broken


def test_help_and_version_exit_0_and_ctrl_c_exits_130(cli, monkeypatch):
    assert cli("--version").code == 0 and cli("train", "--help").code == 0

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mde.runtime.predict.run_predict", interrupted)
    monkeypatch.setattr("mde.commands.predict.run_predict", interrupted)
    result = cli("predict", "m.onnx", "x.png")
    assert result.code == 130 and result.err.strip() == "mde: interrupted"


def test_verbose_shows_traceback(cli, tmp_path):
    result = cli("--verbose", "info", tmp_path / "missing.onnx")
    assert result.code == 2
    assert "Traceback" in result.err


# -- a full disk: one line naming where, exit 2, nothing half-written ---------------------------------
def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_export_is_one_line_and_leaves_no_folder(cli, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("mde.export.onnx_export.export_fp32", _no_space)
    out = tmp_path / "export"
    result = cli("export", tiny_checkpoint, "--out", out)
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1] == f"mde: error: {out}: cannot write the export (No space left on device)"
    assert not out.exists()


def test_full_disk_during_a_checkpoint_names_it_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from mde.errors import InputError
    from mde.train.checkpoint import save_checkpoint

    def zip_writer_fails(_state, _path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 15913920 vs 15913816")

    monkeypatch.setattr("torch.save", zip_writer_fails)
    with pytest.raises(InputError, match=r"best.pt: cannot write the checkpoint \(\d+ MiB free there; torch: "):
        save_checkpoint(tmp_path / "best.pt", {"model": {}, "model_args": {}})
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_anywhere_is_one_line_exit_2(cli, monkeypatch, tmp_path):
    """The last line of defence: an OSError a full disk or a read-only folder raises outside mde's own writers."""
    def read_only(_path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.json"))

    monkeypatch.setattr("mde.runtime.artifact.inspect_artifact", read_only)
    (tmp_path / "model.onnx").write_bytes(b"x")
    result = cli("info", tmp_path / "model.onnx")
    assert result.code == 2 and result.err.strip() == f"mde: error: {tmp_path / 'x.json'}: Read-only file system"


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 275012567040 bytes. Error code 12 (Cannot allocate memory)"),  # torch, on the CPU
    MemoryError(),
])
def test_running_out_of_memory_is_one_line_naming_what_asks_less(cli, monkeypatch, tmp_path, error):
    """`mde train --image-size 4096` on a small machine: "internal error: RuntimeError: [enforce fail ...", exit 1.
    The allocator's line stays (how much was asked); the advice is the command's."""
    def allocate(_path):
        raise error

    monkeypatch.setattr("mde.runtime.artifact.inspect_artifact", allocate)
    (tmp_path / "model.onnx").write_bytes(b"x")
    result = cli("info", tmp_path / "model.onnx")
    assert result.code == 2 and result.err.startswith("mde: error: out of memory (") and result.err.endswith(
        "); smaller images or a smaller model need less\n"), result.err  # info has no --batch-size to name
    assert ("you tried to allocate 275012567040 bytes" in result.err) == bool(str(error))  # how much: kept


def test_onnx_runtime_out_of_memory_is_said_as_such_with_what_asks_less(cli, monkeypatch, tiny_export, tmp_path):
    """`mde predict --native-resolution` on a 12 MP photo with too little memory: ONNX Runtime's failed allocation
    was "could not run the model", sending the user to the model file; it is the image's size."""
    import onnxruntime

    def allocate(*_args, **_kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Concat node. "
            "Name:'/decoder/Concat' Status Message: Failed to allocate memory for requested buffer of size 1540096000")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", allocate)
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "photo.png")
    result = cli("predict", tiny_export / "model.onnx", tmp_path / "photo.png", "--out", tmp_path / "out")
    assert result.code == 2 and result.err.startswith(
        f"mde: error: {tiny_export / 'model.onnx'}: out of memory running the model in ONNX Runtime ("), result.err
    assert "Failed to allocate memory for requested buffer of size 1540096000" in result.err
    assert result.err.endswith("); smaller images, or predict without --native-resolution, need less\n"), result.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- two commands writing one output at once: the second is refused --------------------------------
@pytest.mark.parametrize("command", ["export", "calibrate", "train"])
def test_an_output_another_command_is_writing_is_refused(cli, command, tiny_checkpoint, tiny_export, synth_data,
                                                         tmp_path):
    from mde.io import claim_output

    out = tmp_path / ("model.int8.onnx" if command == "calibrate" else "out")
    argv = {"export": ["export", tiny_checkpoint, "--out", out],
            "calibrate": ["calibrate", tiny_export / "model.onnx", "--data", synth_data, "--out", out],
            "train": ["train", "--data", synth_data, "--out", out, "--no-pretrained", "--epochs", "1"]}[command]
    with claim_output(out):  # as a concurrent run of the same command would
        result = cli(*argv)
    assert result.code == 2 and result.err.strip().splitlines()[-1] == (
        f"mde: error: {out}: another mde command is writing this output now; let it finish, or choose another")
    assert not out.exists()


def test_an_export_and_a_calibrate_into_its_folder_hold_each_other_off(cli, tiny_checkpoint, tiny_export, synth_data,
                                                                          tmp_path):
    """`export --out DIR` and `calibrate --out DIR/model.int8.onnx` at once both ran: the folder and the file had
    locks of their own, and DIR ended with another checkpoint's model.int8.onnx beside the export's golden.npz."""
    from mde.io import claim_output

    out = tmp_path / "export"
    with claim_output(out / "model.int8.onnx"):  # a calibrate writing into the folder
        result = cli("export", tiny_checkpoint, "--out", out)
    assert result.code == 2 and "another mde command is writing this output now" in result.err, result.err
    assert not out.exists()


def test_engine_profile_that_misses_the_model_size_is_refused_before_the_export(cli, tiny_checkpoint, tmp_path,
                                                                               monkeypatch):
    """`--engine --dynamic-size --min-size 128` for a 64 px model failed only once the ONNX was exported (20 s)."""
    import mde.export.onnx_export as onnx_export
    import mde.export.tensorrt_build as tensorrt_build

    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: None)  # this machine has no TensorRT
    monkeypatch.setattr(onnx_export, "export_fp32", lambda *a, **k: pytest.fail("exported before the check"))
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "out", "--engine", "--dynamic-size",
                 "--min-size", "128", "--max-size", "256")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "--min-size/--max-size: profile sizes 128..256 must contain the model size 64x64" in result.err
    assert not (tmp_path / "out").exists()


def test_bench_past_the_machines_memory_ends_in_one_line_not_the_oom_killer(tiny_export):
    """`mde bench artd/model.onnx --native-resolution --image-size 8192x8192` needed 23 GB on a 23 GB machine: the
    kernel's out-of-memory killer ended it (exit 137, no word). Under the memory ceiling (here made small: the
    address space held at the start and 300 MiB; a fresh process, as a test worker's freed memory would serve the
    run) ONNX Runtime's allocation fails, said in one line, exit 2."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import resource, sys
        from mde import memory
        from mde.cli import main
        memory.ceiling = lambda: memory._kib_field("/proc/self/status", "VmSize") + (300 << 20)
        before = resource.getrlimit(resource.RLIMIT_AS)
        try:
            main(sys.argv[1:])
        finally:
            assert resource.getrlimit(resource.RLIMIT_AS) == before  # the ceiling is the command's alone
    """)
    done = subprocess.run([sys.executable, "-c", script, "bench", str(tiny_export / "model.onnx"), "--batch", "512",
                           "--iterations", "1", "--warmup", "0", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.startswith(
        f"mde: error: {tiny_export / 'model.onnx'}: out of memory "), done.stderr
    assert done.stderr.endswith("; a smaller --batch or --image-size needs less\n") and done.stderr.count("\n") == 1


def test_the_memory_ceiling_is_what_the_machine_can_give_and_not_for_gpu_runs(monkeypatch, tmp_path):
    from mde import memory

    held, available = memory._kib_field("/proc/self/status", "VmSize"), memory.available_memory()
    assert held and available and memory.ceiling() >= held + available
    monkeypatch.setattr(memory, "_kib_field", lambda path, key: 2048 << 20 if key == "MemAvailable" else held)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 512 << 20)  # a container's --memory: the smaller room
    assert memory.available_memory() == 512 << 20
    assert not memory.runs_on_cpu_only([tmp_path / "m.engine"], None)
    assert not memory.runs_on_cpu_only([tmp_path / "m.pt"], None)  # PyTorch takes a GPU where there is one
    assert not memory.runs_on_cpu_only([tmp_path / "m.onnx"], ["CUDAExecutionProvider"])
    assert memory.runs_on_cpu_only([tmp_path / "m.onnx"], ["CPUExecutionProvider"])
