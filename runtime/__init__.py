"""The thin runtime a robot embeds: numpy + onnxruntime (tensorrt only when that backend is opened).

    from mde.runtime import DepthEstimator
    est = DepthEstimator.open("model.onnx")      # or model.engine
    depth = est.predict(rgb)                      # H x W float32 metres

Names are imported lazily, so `import mde.runtime` loads neither onnxruntime nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DepthEstimator": "mde.runtime.estimator",
    "open_runner": "mde.runtime.backends.base",
    "backend_names": "mde.runtime.backends.base",
    "register_backend": "mde.runtime.backends.base",
    "Runner": "mde.runtime.backends.base",
    "TensorSpec": "mde.runtime.backends.base",  # what a Runner of one's own declares its inputs and outputs with
    "ModelMetadata": "mde.runtime.metadata",
    "read_metadata": "mde.runtime.artifact",
    "inspect_artifact": "mde.runtime.artifact",
    "colorize": "mde.runtime.colormap",
    "read_rgb": "mde.runtime.images",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mde.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
