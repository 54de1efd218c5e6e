"""mde.runtime: torch-free import, DepthEstimator API, bad inputs, thread safety, colormap."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from mde.errors import BackendError, DataError, InputError, ModelError
from mde.runtime import DepthEstimator, colorize, read_metadata, read_rgb
from mde.runtime.colormap import turbo_lut
from mde.runtime.estimator import round_size
from mde.runtime.metadata import ModelMetadata


@pytest.fixture(scope="module")
def onnx_path(tiny_export) -> Path:
    return tiny_export / "model.onnx"


@pytest.fixture(scope="module")
def est(onnx_path):
    with DepthEstimator.open(onnx_path, threads=2) as estimator:
        yield estimator


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=120)


# -- thinness ---------------------------------------------------------------------
def test_import_and_cpu_predict_without_torch(onnx_path, tmp_path):
    """`import mde.runtime`, reading an image file and a CPU prediction work with torch, torchvision and
    onnx blocked."""
    from PIL import Image

    frame = tmp_path / "frame.png"
    Image.fromarray(np.full((37, 53, 3), 128, np.uint8)).save(frame)
    proc = _run_python(f"""
        import sys, json
        for name in ("torch", "torchvision", "onnx"):
            sys.modules[name] = None
        import mde.runtime
        light = "onnxruntime" not in sys.modules
        import numpy as np
        from mde.runtime import DepthEstimator, read_rgb
        est = DepthEstimator.open({str(onnx_path)!r}, threads=1)
        depth = est.predict(read_rgb({str(frame)!r}, upright=True))
        print(json.dumps({{"light": light, "shape": list(depth.shape), "dtype": str(depth.dtype),
                          "finite": bool(np.isfinite(depth).all()), "providers": est.providers}}))
    """)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"light": True, "shape": [37, 53], "dtype": "float32", "finite": True,
                      "providers": ["CPUExecutionProvider"]}


def test_every_public_name_is_documented_in_the_reference():
    """Eight of mde.runtime's eleven names (open_runner, Runner, TensorSpec, ...) appeared in no document."""
    import mde.runtime

    reference = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text(encoding="utf-8")
    section = reference.split("## `mde.runtime`: the public names", 1)[-1]
    missing = [name for name in mde.runtime.__all__ if f"`{name}" not in section]
    assert not missing, f"not in docs/reference.md's mde.runtime table: {missing}"


def test_cli_help_does_not_import_torch():
    proc = _run_python("""
        import sys
        from mde.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print("HEAVY", sorted(m for m in ("torch", "torchvision", "onnx") if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# -- API ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (37, 53), (101, 19), (200, 320)])
def test_predict_keeps_input_resolution(est, size):
    depth = est.predict(_rgb(*size))
    assert depth.shape == size and depth.dtype == np.float32
    assert np.isfinite(depth).all()
    assert 0.0 <= depth.min() and depth.max() <= est.metadata.max_depth


def test_predict_matches_raw_infer(est):
    from mde.runtime.preprocess import postprocess, preprocess

    rgb = _rgb(64, 64, seed=3)
    raw = est.infer(preprocess([rgb], est.metadata.input_size))
    assert raw.shape == (1, 1, *est.metadata.input_size)
    np.testing.assert_array_equal(est.predict(rgb), postprocess(raw[0], (64, 64), est.metadata.max_depth))


def test_predict_batch_matches_predict(est):
    images = [_rgb(64, 64, 1), _rgb(40, 90, 2), _rgb(64, 64, 3), _rgb(33, 33, 4)]
    batch = est.predict_batch(images)
    assert [d.shape for d in batch] == [im.shape[:2] for im in images]
    for image, depth in zip(images, batch):
        np.testing.assert_allclose(depth, est.predict(image), rtol=0, atol=1e-5)


def test_metadata_and_properties(est, onnx_path):
    assert isinstance(est.metadata, ModelMetadata)
    assert est.metadata.input_size == (64, 64)
    assert est.metadata.backbone == "resnet18"
    assert est.backend == "onnxruntime"
    assert est.providers == ["CPUExecutionProvider"]
    assert read_metadata(onnx_path) == est.metadata


def test_to_points_hand_computed():
    depth = np.array([[2.0, 0.0, 4.0], [np.nan, 1.0, -1.0]], dtype=np.float32)
    points = DepthEstimator.to_points(depth, fx=2.0, fy=4.0, cx=1.0, cy=0.5)
    # valid pixels (v, u, z): (0, 0, 2), (0, 2, 4), (1, 1, 1)
    expected = np.array([
        [(0 - 1) * 2 / 2, (0 - 0.5) * 2 / 4, 2.0],
        [(2 - 1) * 4 / 2, (0 - 0.5) * 4 / 4, 4.0],
        [(1 - 1) * 1 / 2, (1 - 0.5) * 1 / 4, 1.0],
    ], dtype=np.float32)
    assert points.dtype == np.float32
    np.testing.assert_allclose(points, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "depth, kwargs, match",
    [
        (np.ones((4, 4, 3), np.float32), {}, "H x W"),
        (np.ones((0, 4), np.float32), {}, "H x W"),
        (np.ones((4, 4), np.float32), {"fx": 0.0}, "focal"),
        (np.ones((4, 4), np.float32), {"fy": float("nan")}, "focal"),
        (np.ones((4, 4), np.float32), {"cx": "50"}, "must be numbers"),
        (np.ones((4, 4), np.float32), {"fx": True, "fy": True}, "must be numbers"),  # was fx = fy = 1
    ],
)
def test_to_points_rejects(depth, kwargs, match):
    args = {"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0, **kwargs}
    with pytest.raises(InputError, match=match):
        DepthEstimator.to_points(depth, **args)


def test_round_size():
    assert round_size(37, 53) == (32, 64)
    assert round_size(5, 500) == (32, 512)


# -- bad inputs ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "image",
    [
        np.full((30, 40), 100, np.uint8),                  # grayscale
        np.full((30, 40, 4), 100, np.uint8),               # RGBA
        np.full((30, 40, 3), 100 * 256, np.uint16),        # 16-bit
        np.full((30, 40, 1), 100, np.uint8),               # single channel
        np.full((30, 40, 3), 100 * 256, ">u2"),            # 16-bit, big-endian
        np.full((30, 40, 3), 100, np.int64),               # 8-bit values in an int64 array (np.array(image, int))
        np.full((30, 40, 3), 100 / 255, np.float32),       # float in [0, 1]
        np.where(np.arange(40) < 20, 100 / 255, 100 / 255 + 1e-4).astype(np.float32)[None, :, None].repeat(30, 0),
    ],
    ids=["gray", "rgba", "16bit", "1ch", "16bit-big-endian", "int64", "float01", "float-overshoot"],
)
def test_predict_converts_image_kinds(est, image):
    depth = est.predict(image)
    assert depth.shape == (30, 40)
    rgb = np.full((30, 40, 3), 100, np.uint8)
    np.testing.assert_allclose(depth, est.predict(rgb), atol=1e-6)


def test_a_dark_16_bit_image_is_converted_with_a_warning(caplog):
    """uint16 is 16-bit (the dtype is trusted), but a 12-bit frame in it would come out near black: said once."""
    from mde.runtime.images import to_rgb8

    twelve_bit = np.full((30, 40, 3), 4000, np.uint16)
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        assert to_rgb8(twelve_bit, "frame 12bit").max() == 4000 >> 8  # converted as documented
        to_rgb8(twelve_bit, "frame 12bit")
        to_rgb8(np.full((30, 40, 3), 40000, np.uint16), "frame 16bit")  # uses the range: no warning
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["frame 12bit: a 16-bit image whose values stay below 4096 (10- or 12-bit?) is read as "
                      "16-bit and comes out dark; scale it to 16 bits (or to uint8) first"]


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.complex64), "dtype"),
        (np.full((10, 10, 3), 200.0, np.float32), r"values 200 to 200; expected \[0, 1\]; 0 to 255 values belong"),
        (np.full((10, 10, 3), 1.01, np.float32), r"values 1.01 to 1.01; expected \[0, 1\]$"),
        (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
        (np.full((10, 10, 3), -1, np.int32), "expected 8- or 16-bit"),
        (np.zeros((10, 10, 5), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((1, 1, 3), np.uint8), "image is 1x1, smaller than 8 pixels on a side"),  # as for files
        (np.zeros((40, 7), np.uint8), "image is 7x40, smaller than 8 pixels on a side"),
    ],
    ids=["zero-size", "complex", "float-0-255", "float-over-1", "nan", "negative", "5-channels", "4d", "list",
         "1x1", "7-wide"],
)
def test_predict_rejects_bad_images(est, image, match):
    with pytest.raises(InputError, match=match):
        est.predict(image)


def test_predict_batch_refuses_one_image_and_non_sequences(est):
    image = np.full((48, 64, 3), 100, np.uint8)
    with pytest.raises(InputError, match=r"shape \(48, 64, 3\): one image; call predict"):
        est.predict_batch(image)  # would be 48 one-row grey images
    greys = est.predict_batch(np.full((2, 48, 64), 100, np.uint8))  # N x H x W: a stack of grey images
    assert len(greys) == 2 and greys[0].shape == (48, 64)
    with pytest.raises(InputError, match=r"shape \(3, 48, 64\): 3 grey images, or one channels-first image"):
        est.predict_batch(np.full((3, 48, 64), 100, np.uint8))  # PyTorch's C x H x W is not read as 3 greys
    assert len(est.predict_batch(list(np.full((3, 48, 64), 100, np.uint8)))) == 3  # as a list: three greys
    with pytest.raises(InputError, match="sequence of images, got NoneType"):
        est.predict_batch(None)
    stacked = est.predict_batch(np.stack([image, image]))
    assert len(stacked) == 2 and stacked[0].shape == (48, 64)


def test_open_accepts_one_provider_name_and_refuses_a_non_path(onnx_path):
    with DepthEstimator.open(onnx_path, providers="CPUExecutionProvider") as est:
        assert est.providers == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="expected a model path, got int"):
        DepthEstimator.open(123)
    with pytest.raises(InputError, match="got an empty string"):  # named the current folder, "."
        DepthEstimator.open("")
    with pytest.raises(InputError, match="path to the image, got an empty string"):
        read_rgb("")


def test_infer_refuses_what_is_not_0_1_pixels(est):
    """`infer` takes [0, 1] pixels; NaN, raw 0-255 values and input normalized already (the model
    normalizes inside) would give a confident wrong depth map, so they are refused."""
    good = np.full((1, 3, 64, 64), 0.5, np.float32)
    assert est.infer(good).shape == (1, 1, 64, 64)
    for batch, match in [(np.full((1, 3, 64, 64), np.nan, np.float32), "NaN or infinite"),
                         (np.full((1, 3, 64, 64), 200.0, np.float32), "values run from 200 to 200"),
                         (good - 0.485 * 4, r"ImageNet normalization is inside the model"),
                         (np.ones((1, 3, 64, 64), np.uint8), "expected a float32 batch")]:
        with pytest.raises(InputError, match=match):
            est.infer(batch)


def test_to_points_masked_integer_and_overflowing_inputs():
    depth = np.ma.masked_array(np.full((2, 2), 2.0, np.float32), mask=[[True, False], [False, False]])
    assert DepthEstimator.to_points(depth, 1.0, 1.0, 0.0, 0.0).shape == (3, 3)  # the masked pixel is dropped
    with pytest.raises(InputError, match=r"got uint16 \(a depth camera's millimetres: divide by 1000\)"):
        DepthEstimator.to_points(np.full((2, 2), 2000, np.uint16), 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(InputError, match="focal lengths must be finite and > 0 \\(and centres finite\\)"):
        DepthEstimator.to_points(np.full((2, 2), 2.0, np.float32), 1.0, 1.0, 1e39, 0.0)  # float32(1e39) is inf
    with pytest.raises(InputError, match="beyond float32 range"):
        DepthEstimator.to_points(np.full((2, 2), 2.0, np.float32), 1e-45, 500.0, 3.0, 0.0)
    with pytest.raises(InputError, match="focal lengths must be finite"):
        DepthEstimator.to_points(np.full((2, 2), 2.0, np.float32), 10**400, 1.0, 0.0, 0.0)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_array_subclasses_and_oversized_arrays(est):
    grey = np.full((48, 64), 100, np.uint8)
    np.testing.assert_array_equal(est.predict(np.asmatrix(grey)), est.predict(grey))  # numpy crashed on a matrix
    with pytest.raises(InputError, match="masked array; fill the masked pixels first"):
        est.predict(np.ma.masked_array(np.dstack([grey] * 3)))
    huge = np.broadcast_to(np.uint8(0), (8193, 8193, 3))  # no memory: a view with zero strides
    with pytest.raises(InputError, match="image is 8193x8193, larger than the 67108864 pixel limit"):
        est.predict(huge)


def test_open_refuses_options_of_the_wrong_type(onnx_path):
    for options, match in [({"batch_size": 2.5}, "batch_size must be an integer"),
                           ({"batch_size": "4"}, "batch_size must be an integer"),
                           ({"batch_size": True}, "batch_size must be an integer"),
                           ({"native_resolution": "no"}, "native_resolution must be True or False"),
                           ({"threads": 1.5}, "threads must be an integer 0..[0-9]+ .*got 1.5$"),
                           ({"threads": "2"}, "threads must be an integer 0..[0-9]+ .*got '2'$"),
                           ({"threads": 0.0}, "threads must be an integer 0..[0-9]+ .*got 0.0$"),
                           ({"threads": False}, "threads must be an integer 0..[0-9]+ .*got False$")]:
        with pytest.raises(InputError, match=match):
            DepthEstimator.open(onnx_path, **options)
    for providers, match in [([], "providers is an empty list"),
                             ([("CPUExecutionProvider", {})], "expected provider names \\(strings\\)"),
                             (["CPUExecutionProvider"] * 2, "provider CPUExecutionProvider given twice"),
                             (["NoSuchExecutionProvider"], "provider\\(s\\) \\['NoSuchExecutionProvider'\\] not available")]:
        with pytest.raises(BackendError, match=match):
            DepthEstimator.open(onnx_path, providers=providers)
    with pytest.raises(InputError, match="DepthEstimator takes a Runner"):
        DepthEstimator(object())
    closed = DepthEstimator.open(onnx_path)
    closed.close()
    with pytest.raises(InputError, match="DepthEstimator needs an activated runner"):
        DepthEstimator(closed.runner)
    with pytest.raises(InputError, match="upright must be True or False, got 'no'"):
        read_rgb(onnx_path, upright="no")


def test_an_estimator_refuses_pickling_in_one_line(est):
    import pickle

    with pytest.raises(InputError, match="cannot be pickled; pass the model's path"):
        pickle.dumps(est)


def test_a_close_that_overtakes_a_call_and_a_failed_run_are_mde_errors(onnx_path):
    """Another thread's close() between the active check and the run, and a run ONNX Runtime fails
    (a GPU out of memory), both surface as one-line mde errors, not AttributeError or a pybind11 error."""
    from mde.errors import BackendError, OutOfMemory

    image = np.full((32, 32, 3), 100, np.uint8)
    with DepthEstimator.open(onnx_path) as est:
        session = est.runner._session
        est.runner._session = None  # what a concurrent deactivate leaves while this call is past its check
        with pytest.raises(InputError, match=r"not active \(closed"):
            est.predict(image)

        class Failing:
            def run(self, *args):
                raise RuntimeError("CUDA failure 2: out of memory\nstack trace ...")

        est.runner._session = Failing()
        with pytest.raises(OutOfMemory, match=r"out of memory running the model in ONNX Runtime \(CUDA failure 2: "
                                              r"out of memory\)$"):
            est.predict(image)  # an OutOfMemory is a BackendError, and so an MdeError
        Failing.run = lambda *args: (_ for _ in ()).throw(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
                                                                       "Non-zero status code returned while running "
                                                                       "Conv node. Name:'conv1'"))
        with pytest.raises(BackendError, match=r"ONNX Runtime could not run the model \(\[ONNXRuntimeError\]"):
            est.predict(image)  # another failure is the model's
        est.runner._session = session


def test_closed_estimator_says_so(onnx_path):
    est = DepthEstimator.open(onnx_path)
    est.close()
    with pytest.raises(InputError, match=r"not active \(closed"):
        est.predict(np.full((32, 32, 3), 100, np.uint8))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: d / "missing.onnx", ModelError, "not found"),
        (lambda d: (d / "empty.onnx").write_bytes(b"") or d / "empty.onnx", ModelError, "empty"),
        (lambda d: d, ModelError, "expected a model file"),
    ],
    ids=["missing", "empty", "directory"],
)
def test_open_rejects_bad_paths(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        DepthEstimator.open(make(tmp_path))


def test_open_rejects_truncated_model(tmp_path, onnx_path):
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot load ONNX model") as info:
        DepthEstimator.open(truncated)
    assert str(truncated) in str(info.value)


def test_a_model_of_a_newer_ir_version_says_so_without_the_cpp_frame(tmp_path):
    """ONNX Runtime's reason came after a C++ signature, cut in the middle to fit one line."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    model.ir_version = 99
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError) as info:
        DepthEstimator.open(path)
    message = str(info.value)
    assert "Unsupported model IR version: 99" in message and "onnxruntime::Model::Model(" not in message, message


# -- threads ------------------------------------------------------------------------
def test_thread_safety_matches_serial(est):
    images = [_rgb(48 + 8 * i, 64 + 4 * i, seed=10 + i) for i in range(8)]
    serial = [est.predict(im) for im in images]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            for rep in range(2):
                for i in range(len(images)):
                    k = (i + tid) % len(images)  # threads hit different images at the same time
                    results[(tid, rep * 100 + k)] = est.predict(images[k])
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4 * 2 * len(images)
    for (_, key), depth in results.items():
        np.testing.assert_array_equal(depth, serial[key % 100])


# -- colormap -----------------------------------------------------------------------
def test_turbo_lut_is_matplotlib_turbo():
    lut = turbo_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        from make_colormap import make_lut
    finally:
        sys.path.pop(0)
    np.testing.assert_array_equal(lut, make_lut())


def test_colorize_near_red_far_blue_invalid_black():
    lut = turbo_lut()
    depth = np.array([[0.01, 10.0, 30.0], [0.0, np.nan, 20.0]], dtype=np.float32)
    rgb = colorize(depth, max_depth=20.0)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], lut[255])  # near: red end
    np.testing.assert_array_equal(rgb[0, 2], lut[0])    # beyond max: blue end
    np.testing.assert_array_equal(rgb[1, 2], lut[0])
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[0, 2, 2] > rgb[0, 2, 0]


def test_colorize_draws_a_float64_depth_beyond_float32_as_far():
    """1e300 m was cast to inf (numpy warned of the overflow) and drawn as invalid, black; 1e-300 m was cast to 0,
    and drawn as invalid too (to_points keeps it)."""
    depth = np.array([[1e300, np.inf, -1e300, 5.0, 1e-300]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = colorize(depth, max_depth=20.0)
    np.testing.assert_array_equal(rgb[0], [turbo_lut()[0], [0, 0, 0], [0, 0, 0], colorize(depth[:, 3:4], 20.0)[0, 0],
                                           turbo_lut()[255]])


def test_to_points_refuses_float64_depth_beyond_float32():
    """1e300 m was cast to inf with numpy's overflow warning, and the pixel dropped as invalid without a word."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="depth values up to 1e\\+300 m lie beyond float32's range"):
            DepthEstimator.to_points(np.array([[1e300, 2.0]]), 1.0, 1.0, 0.0, 0.0)
        points = DepthEstimator.to_points(np.array([[1e-300, 2.0]]), 1.0, 1.0, 0.0, 0.0)  # 0 in float32: dropped
        np.testing.assert_array_equal(points, [[2.0, 0.0, 2.0]])


def test_colorize_draws_masked_pixels_as_invalid_as_to_points_drops_them():
    depth = np.ma.masked_array(np.ones((1, 2, 2), np.float32), mask=[[[True, False], [False, False]]])
    rgb = colorize(depth, 20.0, invalid_color=(255, 0, 255))
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 255])
    np.testing.assert_array_equal(rgb[1, 1], turbo_lut()[round((1 - 1 / 20) * 255)])


@pytest.mark.parametrize("depth, max_depth, match", [
    (np.ones((2, 2, 2)), 1.0, "expected an H x W depth map"),
    (np.ones((2, 2)), 0.0, "max_depth must be a number of metres from 0.001 to 1e\\+06, got 0.0"),
    (np.ones((2, 2)), "10", "max_depth must be a number of metres from 0.001 to 1e\\+06, got '10'"),
    (np.ones((2, 2)), float("inf"), "max_depth must be a number of metres from 0.001 to 1e\\+06, got inf"),
    # beyond float32 (10**400: an OverflowError) or below it: numpy's warnings, and a map all one colour
    (np.ones((2, 2)), 10**400, "max_depth must be a number of metres from 0.001 to 1e\\+06, got 1000000000"),
    (np.ones((2, 2)), 1e300, "max_depth must be a number of metres from 0.001 to 1e\\+06, got 1e\\+300"),
    (np.ones((2, 2)), 1e-45, "max_depth must be a number of metres from 0.001 to 1e\\+06, got 1e-45"),
    (np.full((2, 2), 1000, np.uint16), 10.0, "got uint16 \\(a depth camera's millimetres: divide by 1000\\)"),
])
def test_colorize_rejects(depth, max_depth, match):
    with pytest.raises(InputError, match=match):
        colorize(depth, max_depth)


@pytest.mark.parametrize("color", [(300, 0, 0), (1, 2), "red", (1.5, 0, 0), (True, 0, 0), None])
def test_colorize_refuses_an_invalid_color_that_is_no_rgb_triple(color):
    """(300, 0, 0) was an OverflowError, (1, 2) and "red" numpy ValueErrors."""
    with pytest.raises(InputError, match="invalid_color must be three integers 0-255"):
        colorize(np.full((2, 2), np.nan, np.float32), 20.0, invalid_color=color)


def _png_16bit_colour(path, values: np.ndarray, orientation: int = 1) -> None:
    """A PNG of 16 bits a channel (grey and alpha, RGB or RGBA), which Pillow cannot write, with an EXIF
    orientation."""
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, c = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, 0))
                     + chunk(b"eXIf", exif.tobytes()[6:]) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_read_rgb_reads_a_16bit_colour_png_by_its_values(tmp_path, caplog):
    """Pillow reads such a file as 8-bit, keeping each value's high byte: 8-bit values came out black and 12-bit
    ones dark, without a word (a 16-bit grey file is read by its values, and warns)."""
    from mde.runtime.images import read_rgb

    rng = np.random.default_rng(0)
    values8 = rng.integers(0, 256, (9, 12, 3)).astype(np.uint16)
    values16 = rng.integers(0, 65536, (9, 12, 4)).astype(np.uint16)
    _png_16bit_colour(tmp_path / "v8.png", values8, orientation=6)
    _png_16bit_colour(tmp_path / "v16.png", values16)
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        as_stored = read_rgb(tmp_path / "v8.png")
    np.testing.assert_array_equal(as_stored, values8)
    assert "v8.png: 8-bit values in a 16-bit image, read as 8-bit" in caplog.text
    np.testing.assert_array_equal(read_rgb(tmp_path / "v8.png", upright=True), np.rot90(values8, k=-1))  # 6: turned
    np.testing.assert_array_equal(read_rgb(tmp_path / "v16.png"), (values16[:, :, :3] >> 8).astype(np.uint8))


def test_the_8bit_guess_is_said_once_for_a_folder(tmp_path, caplog):
    """A training run reads every image each epoch: the guess was said for each file, every time it was read."""
    from PIL import Image

    from mde.runtime.images import read_rgb

    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((9, 12), 100, np.uint16)).save(tmp_path / name)  # 8-bit values in 16-bit grey
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        for _ in range(2):
            for name in ("a.png", "b.png"):
                assert read_rgb(tmp_path / name).max() == 100
    assert caplog.text.count("8-bit values in a 16-bit image") == 1, caplog.text
    assert f"(said once for the images of {tmp_path})" in caplog.text


def test_a_palette_image_with_transparency_is_read_without_pillow_s_warning(tmp_path):
    """Pillow's two-line UserWarning ("Palette images with Transparency ...") reached the terminal."""
    from PIL import Image

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(12, dtype=np.uint8) * 20
    Image.fromarray(rgba).quantize(colors=8).save(tmp_path / "p.png")  # its alpha: a tRNS chunk of bytes
    assert Image.open(tmp_path / "p.png").mode == "P"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = read_rgb(tmp_path / "p.png")
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8


def test_an_image_read_as_stored_says_its_exif_turn(tmp_path, caplog):
    """A dataset's sideways photo (EXIF orientation 6, square: its depth map fits either way) was read as stored
    without a word, while `mde predict` turns the same file upright."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    with caplog.at_level("INFO", logger="mde.runtime.images"):
        read_rgb(tmp_path / "turned.jpg")
        read_rgb(tmp_path / "turned.jpg", upright=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'turned.jpg'}: stored turned (EXIF orientation 6); read as stored, not as viewers show it"]


def test_read_rgb_decodes_an_image_in_memory_as_its_file(tmp_path):
    """The JPEG or PNG a camera driver or a message hands over, as bytes, bytearray, memoryview or array.array
    (bytes were refused: "expected a path to the image, got bytes"); messages name it "<image bytes>"."""
    import array

    from PIL import Image

    rng = np.random.default_rng(1)
    _png_16bit_colour(tmp_path / "v16.png", rng.integers(0, 65536, (9, 12, 3)).astype(np.uint16), orientation=6)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    for path in (tmp_path / "v16.png", tmp_path / "turned.jpg"):
        data = path.read_bytes()
        for upright in (False, True):
            expected = read_rgb(path, upright=upright)
            for encoded in (data, bytearray(data), memoryview(data), array.array("B", data),
                            np.frombuffer(data, np.uint8), np.frombuffer(data, np.uint8)[:, None]):  # cv2.imencode's
                np.testing.assert_array_equal(read_rgb(encoded, upright=upright), expected)
    assert read_rgb(data, upright=True).shape == (14, 10, 3)  # turned a quarter, from its EXIF
    with pytest.raises(InputError, match=r"^<image bytes>: expected an encoded image \(JPEG, PNG ...\), got 0 bytes$"):
        read_rgb(b"")
    with pytest.raises(DataError, match=r"^<image bytes>: (truncated or corrupt|cannot read) image"):
        read_rgb(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"^<image bytes>: not a readable image"):
        read_rgb(b"not an image" * 4)
    with pytest.raises(InputError, match=r"^read_rgb takes bytes as the encoded image itself, and these name a file"):
        read_rgb(bytes(tmp_path / "turned.jpg"))  # a file name as bytes: os.fsencode's


def test_a_16bit_png_s_storage_is_read_from_old_and_new_pillow_tiles_and_grey_alpha_is_said(tmp_path, caplog):
    """Pillow 10's tiles are plain tuples (the `.args` of Pillow 11's named tuples failed on every PNG); its
    16-bit grey and alpha has no raw mode for the low bytes: said, not silent; a truncated file is one error."""
    from PIL import Image

    from mde.errors import DataError
    from mde.runtime.images import _png_rawmode, read_rgb

    _png_16bit_colour(tmp_path / "v.png", np.full((8, 9, 3), 300, np.uint16))
    with Image.open(tmp_path / "v.png") as img:
        img.tile = [tuple(img.tile[0])]  # as Pillow 10 has it
        assert _png_rawmode(img) == "RGB;16B"
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "plain.png")
    with Image.open(tmp_path / "plain.png") as img:
        img.tile = [tuple(img.tile[0])]
        assert _png_rawmode(img) == "L"
    grey_alpha = tmp_path / "ga.png"
    _png_16bit_colour(grey_alpha, np.full((8, 9, 2), 200, np.uint16))
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        read_rgb(grey_alpha)
    assert "ga.png: a grey and alpha PNG of 16 bits a channel is read from its high bytes only" in caplog.text
    whole = (tmp_path / "v.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
    caplog.clear()
    with caplog.at_level("WARNING", logger="mde.runtime.images"), pytest.raises(DataError, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
    assert "high bytes" not in caplog.text


@pytest.mark.parametrize("options", [{}, {"byteorder": ">"}, {"compression": "zlib"}, {"rowsperstrip": 3}])
@pytest.mark.parametrize("channels", [3, 4])
def test_a_16bit_colour_tiff_is_read_by_its_values_as_a_png_is(tmp_path, options, channels):
    """Pillow decodes a TIFF of 16 bits a channel to its high bytes, as a PNG: 8-bit values in it came out black,
    12-bit ones dark, without a word (eval scored a dataset of them as a darker one)."""
    tifffile = pytest.importorskip("tifffile")  # scikit-image's dependency (the dev extra)
    from mde.runtime.images import read_rgb

    rgb8 = np.random.default_rng(0).integers(0, 256, (12, 10, channels)).astype(np.uint16)
    for values, expected in ((rgb8, rgb8), (rgb8 * 257, rgb8)):  # 8-bit values, full 16-bit ones
        tifffile.imwrite(tmp_path / "x.tif", values, photometric="rgb", **options)
        np.testing.assert_array_equal(read_rgb(tmp_path / "x.tif"), expected[..., :3].astype(np.uint8))
        np.testing.assert_array_equal(read_rgb((tmp_path / "x.tif").read_bytes()), expected[..., :3])


def test_read_rgb_gives_an_array_the_caller_may_draw_on(tmp_path):
    """An RGB PNG or JPEG came back read-only (Pillow's buffer), a grey or RGBA one writable."""
    from PIL import Image

    from mde.runtime.images import read_rgb

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    image = read_rgb(tmp_path / "rgb.png")
    image[0, 0] = 255
    assert image[0, 0, 0] == 255


def test_read_rgb_wide_gray_images_by_their_values(tmp_path):
    """16- and 32-bit integer and float gray images: 8-bit values stay, 16-bit ones are shifted, floats in
    [0, 1] are scaled; what cannot be read right is refused, never turned black."""
    from PIL import Image

    from mde.errors import DataError
    from mde.runtime.images import read_rgb

    rng = np.random.default_rng(0)
    gray8 = rng.integers(1, 256, (20, 24), dtype=np.uint8)
    expect8 = np.repeat(gray8[:, :, None], 3, axis=2)
    cases = {"png16_8bit.png": Image.fromarray(gray8.astype(np.uint16)),
             "int32_8bit.tif": Image.fromarray(gray8.astype(np.int32)),
             "float01.tif": Image.fromarray(gray8.astype(np.float32) / 255)}
    for name, image in cases.items():
        image.save(tmp_path / name)
        np.testing.assert_array_equal(read_rgb(tmp_path / name), expect8, err_msg=name)
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "png16.png")  # full 16-bit range
    np.testing.assert_array_equal(read_rgb(tmp_path / "png16.png"), expect8)
    for name, array, match in [("int32_wide.tif", gray8.astype(np.int32) * 100000, "expected 8- or 16-bit"),
                               ("float255.tif", gray8.astype(np.float32), r"expected \[0, 1\]"),
                               ("float_nan.tif", np.where(gray8 > 128, np.nan, 0.5).astype(np.float32),
                                "NaN or infinite")]:
        Image.fromarray(array).save(tmp_path / name)
        with pytest.raises(DataError, match=f"{name}: .*{match}") as info:
            read_rgb(tmp_path / name)
        assert info.value.path == tmp_path / name


@pytest.mark.parametrize("value", [None, b"frame.png", np.zeros((4, 4, 3), np.uint8)], ids=["None", "bytes", "array"])
def test_file_readers_refuse_what_is_no_path(value):
    """A failed camera read (None) or a frame given to a file reader: one InputError, not pathlib's TypeError."""
    from mde.runtime import inspect_artifact
    from mde.runtime.images import read_depth, read_rgb

    for reader, what in ((read_rgb, "image"), (read_depth, "depth map"), (read_metadata, "model"),
                         (inspect_artifact, "model")):
        if reader is read_rgb and isinstance(value, bytes):  # read_rgb decodes bytes: an image in memory
            with pytest.raises(DataError, match="^<image bytes>: not a readable image"):
                reader(value)
            continue
        with pytest.raises(InputError, match=f"expected a path to the {what}, got {type(value).__name__}"):
            reader(value)


def test_a_cut_multi_page_tiff_is_its_first_page_without_pillows_warning(tmp_path):
    """Counting the pages read the cut one: Pillow's two-line "Corrupt EXIF data" warning reached the terminal."""
    import warnings

    from PIL import Image

    pages = [Image.fromarray(_rgb(64, 64, seed)) for seed in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    whole = (tmp_path / "pages.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[:len(whole) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_rgb(tmp_path / "cut.tif", upright=True)
    assert not [str(w.message) for w in caught]
    np.testing.assert_array_equal(first, _rgb(64, 64, 0))


def test_implausible_depth_names_what_to_change(tmp_path):
    """A PNG read with too small a --depth-scale was told to 'store metres' (advice for .npy files)."""
    from PIL import Image

    from mde.errors import DataError
    from mde.runtime.images import read_depth

    png = tmp_path / "d.png"
    Image.fromarray(np.full((8, 8), 5000, dtype=np.uint16)).save(png)
    read_depth(png, 256.0)  # KITTI's scale: 19.5 m
    with pytest.raises(DataError, match=r"d.png: depth reaches 5e\+06 m.*divided by --depth-scale.*too small"):
        read_depth(png, 0.001)
    npy = tmp_path / "d.npy"
    np.save(npy, np.full((8, 8), 1e9, dtype=np.float64))
    with pytest.raises(DataError, match=r"d.npy: depth reaches 1e\+09 m.*store metres"):
        read_depth(npy)


def test_reading_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """`read_rgb` from two threads (a robot's decode callbacks) left "ignore every warning" in the process's filters
    for good: each read's `catch_warnings` restored the filter list another thread had saved mid-read."""
    import io
    import threading
    import warnings

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    before = list(warnings.filters)

    def read() -> None:
        for _ in range(300):
            read_rgb(data)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    from mde.runtime.images import _IGNORE_WHILE_READING, _pillow_quiet

    assert [f for f in warnings.filters if f is not _IGNORE_WHILE_READING] == before  # and that one is inert:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("heard after the reads", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["heard after the reads"]
    # a user's catch_warnings that copies the list mid-read, and restores it once the read is over (the copy holds
    # the read's filter): the warnings of the user's block are heard
    with warnings.catch_warnings(record=True) as caught:
        quiet = _pillow_quiet()
        quiet.__enter__()
        with warnings.catch_warnings():
            warnings.warn("ignored mid-read", UserWarning, stacklevel=1)
            quiet.__exit__(None, None, None)
            warnings.warn("heard once the read is over", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["heard once the read is over"]


def test_a_thread_reading_an_image_does_not_silence_another_threads_warnings():
    """The filter that quiets Pillow while it reads matched every thread's warnings: a camera thread decoding
    frames hid a planner thread's, and beat its `simplefilter("error")`."""
    import threading
    import warnings

    from mde.runtime.images import _pillow_quiet

    inside, done = threading.Event(), threading.Event()

    def camera() -> None:
        with _pillow_quiet():
            inside.set()
            done.wait(30)

    thread = threading.Thread(target=camera)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the planner's filter, set before the camera's first read
        thread.start()
        try:
            assert inside.wait(30)
            warnings.warn("the planner's own", UserWarning, stacklevel=1)
            with _pillow_quiet():  # this thread reading: Pillow's go unheard
                warnings.warn("Corrupt EXIF data", UserWarning, stacklevel=1)
        finally:
            done.set()
            thread.join()
    assert [str(w.message) for w in caught] == ["the planner's own"]


def test_a_model_predicting_depth_outside_its_range_is_refused(onnx_path, tmp_path):
    """A negated head predicts -20..0 m; clipped to 0 it reached the robot as "no obstacle anywhere", where NaN is
    refused as a broken model."""
    import onnx
    from onnx import numpy_helper

    from mde.errors import ModelError

    model = onnx.load(onnx_path)
    head = model.graph.node[-1]
    assert head.op_type == "Mul"
    scale = next(t for t in model.graph.initializer if t.name in head.input)
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
    broken = tmp_path / "negated.onnx"
    onnx.save(model, broken)
    frame = np.full((64, 64, 3), 128, np.uint8)
    with DepthEstimator.open(broken) as estimator, pytest.raises(ModelError, match=r"negated\.onnx: the model "
                                                                 r"predicts depth from -.* m, outside the 0 to 20 m"):
        estimator.predict(frame)
    with DepthEstimator.open(onnx_path) as estimator:
        assert estimator.predict(frame).min() >= 0


def test_dark_16_bit_files_are_said_once_per_folder(tmp_path, caplog):
    """Each dark 16-bit file was warned of, and remembered for the life of the process: a robot's thousands of
    uniquely named 12-bit frames, a warning and a kept path each."""
    from PIL import Image

    from mde.runtime import images

    frames = tmp_path / "cam"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 4000, np.uint16)).save(frames / f"{i}.png")
    before = len(images._dark)
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        for i in range(3):
            read_rgb(frames / f"{i}.png")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(f"{frames / '0.png'}: a 16-bit image whose values stay below")
    assert warned[0].endswith(f"(said once for the images of {frames})") and len(images._dark) == before + 1
    # encoded bytes are no file of the current folder: said once for themselves, naming no folder
    caplog.clear()
    images._dark.discard("<<image bytes>>")
    with caplog.at_level("WARNING", logger="mde.runtime.images"):
        for _ in range(2):
            read_rgb((frames / "0.png").read_bytes())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("<image bytes>: a 16-bit image") and "said once" not in warned[0]


def test_a_process_with_no_home_runs_the_onnx_and_the_cli(tiny_export, tmp_path):
    """HOME unset and a user id with no passwd entry (`env -i`, some containers): `Path.home()` at import raised
    "Could not determine home directory", a traceback before `DepthEstimator.open` or even `mde --help`."""
    import os

    script = textwrap.dedent(f"""
        import pwd, sys
        def no_entry(uid):
            raise KeyError(uid)
        pwd.getpwuid = no_entry
        import os
        from mde.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert not os.listdir({str(tmp_path)!r}), "--help made a cache folder"  # found only where one is used
        import numpy as np
        from mde.runtime import DepthEstimator
        from mde.io import user_cache_dir
        with DepthEstimator.open({str(tiny_export / "model.onnx")!r}) as est:
            assert est.predict(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)
        print(user_cache_dir())
    """)
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    done = subprocess.run([sys.executable, "-c", script], env={**env, "TMPDIR": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == str(tmp_path / f"mde-cache-{os.getuid()}") and "Usage: mde" in done.stdout


def test_with_no_home_the_cache_folder_is_a_private_one(tmp_path, monkeypatch):
    import os
    import tempfile

    from mde.errors import InputError
    from mde.io import user_cache_dir

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("HOME", "")  # set but empty: Path.home() read it as "/", and the cache went to /.cache/mde
    own = tmp_path / f"mde-cache-{os.getuid()}"
    assert user_cache_dir() == own and own.is_dir()
    assert user_cache_dir() == own  # one per user: the engines it holds are found again
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert user_cache_dir() == own
    own.rmdir()
    (tmp_path / "elsewhere").mkdir()
    own.symlink_to(tmp_path / "elsewhere")  # planted: engines loaded from there would be another's
    with pytest.raises(InputError, match="mde's caches is not a private folder of yours"):
        user_cache_dir()


def test_a_pil_image_is_read_as_its_file_is(onnx_path, tmp_path):
    """`predict` refused a PIL image, and the obvious `np.asarray(img)` read a palette image's indices as grey and
    CMYK's K as alpha: a depth map metres off, without a word. Now the image's pixels are converted as a file's."""
    from PIL import Image

    from mde.errors import InputError

    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), np.uint8), 8, 0), 8, 1)
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with DepthEstimator.open(onnx_path, threads=1) as est:
        for name in ("p.png", "c.jpg"):
            with Image.open(tmp_path / name) as img:
                assert img.mode in ("P", "CMYK")
                expected = read_rgb(tmp_path / name)
                np.testing.assert_array_equal(read_rgb(img), expected)
                np.testing.assert_array_equal(est.predict(img), est.predict(expected))
                np.testing.assert_array_equal(est.predict_batch([img])[0], est.predict(expected))
        # made in memory (a ROS bridge's, `fromarray`, `convert`): Pillow 13 gives such an image no `tile`, which
        # was read as if every image had one (AttributeError)
        for made in (Image.fromarray(rgb), palette, Image.fromarray(rgb).convert("CMYK"), Image.new("RGB", (64, 48))):
            assert not hasattr(made, "fp")
            pixels = read_rgb(made)
            assert pixels.shape == (made.height, made.width, 3) and pixels.dtype == np.uint8
            np.testing.assert_array_equal(est.predict(made), est.predict(pixels))
            assert est.predict_batch([made])[0].shape == (made.height, made.width)
        np.testing.assert_array_equal(read_rgb(Image.fromarray(rgb)), rgb)
        (tmp_path / "cut.png").write_bytes((tmp_path / "p.png").read_bytes()[:200])
        with Image.open(tmp_path / "cut.png") as cut, \
                pytest.raises(InputError, match=r"^<PIL image>: truncated, corrupt or unsupported image"):
            read_rgb(cut)
        with Image.open(tmp_path / "p.png") as closed:  # never decoded: its file is gone with the block
            pass
        decoded = Image.open(tmp_path / "p.png")
        decoded.load()
        decoded.close()  # its pixels too (a `with` block's end keeps a decoded image's)
        for image in (closed, decoded):
            with pytest.raises(InputError, match=r"^image: the PIL image is closed \(its `with Image.open"):
                est.predict(image)
    # 16 bits a channel holding 8-bit values: Pillow decodes the high bytes (black); its file is read as a file is
    deep = tmp_path / "deep.png"
    with open(deep, "wb") as out:  # Pillow writes no 16-bit colour PNG: a minimal one, by hand
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        rows = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(64))
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 16, 2, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with Image.open(deep) as img:
        np.testing.assert_array_equal(read_rgb(img), rgb)
    # one opened lazily is refused from its size, as a file is, before it decodes
    big = tmp_path / "big.png"
    Image.new("L", (9000, 8000)).save(big)
    with Image.open(big) as img, pytest.raises(InputError, match=r"image is 9000x8000, larger than the 67108864"):
        read_rgb(img)


def test_conversion_notes_of_images_in_memory_are_said_once(onnx_path, caplog, monkeypatch):
    """A grey camera's frames, given as arrays, logged "grayscale image converted to RGB" at every predict: 30 lines a
    second at INFO. Files keep theirs (a folder's reads say them once per folder)."""
    from mde.runtime import images

    monkeypatch.setattr(images, "_noted", set())
    grey = np.full((16, 16), 100, np.uint8)
    with caplog.at_level("INFO", logger="mde.runtime.images"):
        for _ in range(3):
            images.to_rgb8(grey, "image")
            images.to_rgb8(grey.astype(np.float32) / 255, "image 2")
    assert [r.getMessage() for r in caplog.records] == [
        "image: grayscale image converted to RGB (said once for images in memory)",
        "image 2: float image in [0, 1] scaled to 8-bit (said once for images in memory)"]
