"""The `torch` and `golden` runners: a checkpoint and a golden.npz behind the same Runner interface."""

from __future__ import annotations

import numpy as np
import pytest

from mde.errors import BackendError, InputError
from mde.runtime.backends.base import backend_names, open_runner


def test_torch_runner_matches_the_checkpoint(tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from mde.train.checkpoint import load_model

    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    model, _ = load_model(tiny_checkpoint)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    before = torch.get_num_threads()
    with open_runner(tiny_checkpoint, threads=1) as runner:  # ".pt" -> torch
        assert runner.name == "torch" and torch.get_num_threads() == 1
        assert runner.metadata.input_size == (64, 64) and runner.metadata.precision == "fp32"
        out = runner.infer({"image": x})["depth"]
    assert torch.get_num_threads() == before, "threads were not restored"
    np.testing.assert_array_equal(out, expected)


def test_depth_estimator_runs_a_checkpoint(tiny_checkpoint):
    from mde.runtime import DepthEstimator

    with DepthEstimator.open(tiny_checkpoint) as est:
        depth = est.predict(np.full((48, 80, 3), 127, np.uint8))
    assert depth.shape == (48, 80) and np.isfinite(depth).all()


def test_listing_backends_imports_no_torch(block_torch):
    assert {"torch", "golden", "onnxruntime", "tensorrt"} <= set(backend_names())


def test_torch_runner_without_torch_says_how_to_install(block_torch, tiny_checkpoint):
    with pytest.raises(BackendError, match=r"pip install -e '\.\[train\]'"):
        open_runner(tiny_checkpoint, backend="torch")


def test_golden_runner_replays_the_saved_outputs(tiny_export):
    with np.load(tiny_export / "golden.npz") as npz:
        images, depth = npz["image"], npz["depth"]
    with open_runner(tiny_export / "golden.npz") as runner:  # ".npz" -> golden
        assert runner.name == "golden"
        out = runner.infer({"image": images[1:3]})["depth"]
        np.testing.assert_array_equal(out, depth[1:3])
        with pytest.raises(InputError, match="not one of the inputs saved in golden.npz"):
            runner.infer({"image": images[:1] + 0.5})


def test_the_torch_reference_runs_fp32_math_on_cuda():
    """cuDNN's default lets CUDA convolutions run in TF32: the FP32 reference turns it off, then restores it."""
    import torch

    from mde.train.runner import fp32_math

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch 2.9+
        flags, fp32 = [(conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")], "ieee"
    else:
        flags, fp32 = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")], False
    before = [getattr(owner, name) for owner, name in flags]
    with fp32_math(torch, "cuda:0"):  # the flags are settable without a GPU
        assert [getattr(owner, name) for owner, name in flags] == [fp32, fp32]
    assert [getattr(owner, name) for owner, name in flags] == before
    with fp32_math(torch, "cpu"):  # the CPU has no TF32: nothing touched
        assert [getattr(owner, name) for owner, name in flags] == before


def test_every_torch_inference_runs_under_fp32_math(tiny_checkpoint, monkeypatch):
    import contextlib

    import mde.train.runner as runner_module

    devices = []

    @contextlib.contextmanager
    def recording(_torch, device):
        devices.append(device)
        yield

    monkeypatch.setattr(runner_module, "fp32_math", recording)
    with runner_module.TorchRunner(tiny_checkpoint) as runner:
        runner.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert devices == ["cpu"]


def test_a_checkpoint_without_pytorch_is_said_of_its_file(tiny_checkpoint, monkeypatch):
    """`mde predict run/best.pt` on a runtime-only install: the message named no file (the docs say every one does)."""
    import sys

    import mde.train.runner as runner_module

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(BackendError, match=r"needs PyTorch") as caught:
        runner_module.TorchRunner(tiny_checkpoint).activate()
    assert str(caught.value).startswith(f"{tiny_checkpoint}: ")
