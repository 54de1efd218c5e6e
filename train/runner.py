"""The `torch` backend: a PyTorch checkpoint behind the runtime's Runner interface (parity's reference, bench).

Registered by name from here, so `mde.runtime` stays torch-free: the registry imports this module
when it lists backends, and torch is imported only when a runner is activated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mde.errors import TRAIN_EXTRA, BackendError
from mde.runtime.backends.base import Runner, TensorSpec, providers_refused, register_backend
from mde.runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata


def checkpoint_metadata(model: Any, state: dict[str, Any], **fields: Any) -> ModelMetadata:
    """The runtime metadata of a loaded checkpoint; `fields` (precision, source, ...) override or add."""
    args = model.args
    metrics = state.get("metrics") or {}
    return ModelMetadata(**{
        "input_size": args.input_hw,
        "max_depth": float(args.max_depth),
        "backbone": args.backbone,
        "decoder": args.decoder,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "metrics": {k: float(v) for k, v in metrics.items() if k in ("rmse", "ssim") and v is not None},
        **fields,
    })


def check_device(torch: Any, device: str, source: Path | None) -> None:
    """Raise `BackendError` naming `source` when `device` ("cuda", "cuda:N") is not a CUDA GPU here."""
    if not str(device).startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = str(device).partition(":")[2] or "0"
    if not index.isdigit() or int(index) >= count:
        raise BackendError(f"PyTorch was asked to run on {device}; it sees {count} CUDA GPU(s) here", source)


@contextlib.contextmanager
def fp32_math(torch: Any, device: str) -> Iterator[None]:
    """On CUDA, FP32 convolutions and matmuls in FP32 for the block: cuDNN's default lets convolutions
    run in TF32 (10-bit mantissas), and the reference every artifact is compared with is FP32."""
    if not str(device).startswith("cuda"):
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch 2.9+: mixing in the old flags is an error
        flags, fp32 = [(conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")], "ieee"
    else:
        flags, fp32 = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")], False
    saved = [getattr(owner, name) for owner, name in flags]
    for owner, name in flags:
        setattr(owner, name, fp32)
    try:
        yield
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)


@register_backend("torch")
class TorchRunner(Runner):
    """Runs a `.pt` checkpoint in PyTorch eager mode (`torch.inference_mode`), FP32 (no TF32 on CUDA).

    Args:
        path: the checkpoint (`mde train`'s best.pt / last.pt).
        device: "cpu" or "cuda[:N]"; chosen by the caller, never here.
        threads: torch intra-op threads while active (0 = leave torch's setting); restored on deactivate.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0,
                 providers: Sequence[str] | None = None):
        if providers is not None:  # ONNX Runtime's: ignored, they would be a silent run somewhere else
            raise providers_refused(path, "torch")
        super().__init__(path)
        self.device = device
        self.threads = threads
        self._torch: Any = None
        self._model: Any = None
        self._saved_threads = 0
        self.trained_depth_scale: object = None

    def _activate_impl(self) -> None:
        try:
            import torch
        except ImportError as err:
            raise BackendError(f"the torch backend needs PyTorch ({err}); {TRAIN_EXTRA}", self.path) from None
        from mde.data.readers import trained_png_scale
        from mde.train.checkpoint import load_model

        check_device(torch, self.device, self.path)
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        model, state = load_model(self.path, self.device)
        self._torch, self._model = torch, model
        self.metadata = checkpoint_metadata(model, state)
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        self.trained_depth_scale = trained_png_scale(config)  # what its training PNG depth was read at, if known
        h, w = self.metadata.input_size
        self.input_specs = {INPUT_NAME: TensorSpec(INPUT_NAME, np.dtype(np.float32), (None, 3, h, w))}
        self.output_specs = {OUTPUT_NAME: TensorSpec(OUTPUT_NAME, np.dtype(np.float32), (None, 1, h, w))}

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode(), fp32_math(torch, self.device):
            x = torch.from_numpy(np.ascontiguousarray(feed[INPUT_NAME])).to(self.device)
            return {OUTPUT_NAME: self._model(x).float().cpu().numpy()}

    def weights_sha256(self) -> str:
        """`checkpoint.weights_sha256` of the loaded model: what an artifact exported from it records."""
        from mde.train.checkpoint import weights_sha256

        if self._model is None:
            raise self.not_active()
        return weights_sha256(self._model)

    def _deactivate_impl(self) -> None:
        if self._torch is not None and self.threads:
            self._torch.set_num_threads(self._saved_threads)  # leave the process as we found it
        self._model = None

    @property
    def providers(self) -> list[str]:
        version = self._torch.__version__ if self._torch is not None else "?"
        return [f"torch {version} {self.device}"]
