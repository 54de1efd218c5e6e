"""The artifact metadata contract: round trip, old artifacts, and preprocessing the runtime does not implement."""

from __future__ import annotations

import json

import pytest

from mde.errors import ModelError
from mde.runtime.metadata import PREPROCESS, ModelMetadata


def _props(**preprocess: object) -> dict[str, str]:
    props = ModelMetadata(input_size=(64, 96), max_depth=20.0, precision="fp16", decoder="unet").to_props()
    pre = json.loads(props["mde.preprocess"])
    pre.update(preprocess)
    props["mde.preprocess"] = json.dumps(pre)
    return props


def test_round_trip():
    meta = ModelMetadata.from_props(_props())
    assert (meta.input_size, meta.max_depth, meta.precision, meta.decoder) == ((64, 96), 20.0, "fp16", "unet")


def test_artifact_from_before_decoders_had_names_is_report():
    props = _props()
    props["mde.model"] = json.dumps({"backbone": "resnet50", "parameters": 1})
    assert ModelMetadata.from_props(props).decoder == "report"


@pytest.mark.parametrize("key, value", [
    ("resize", "nearest"),
    ("channel_order", "BGR"),
    ("layout", "NHWC"),
    ("value_range", [0, 255]),
    ("normalization", "none"),
])
def test_preprocessing_the_runtime_does_not_implement_is_refused(key, value):
    assert key in PREPROCESS
    with pytest.raises(ModelError, match=f"model.onnx: preprocessing .*{key}.* is not what this runtime implements"):
        ModelMetadata.from_props(_props(**{key: value}), "model.onnx")


@pytest.mark.parametrize("key", ["mde.source", "mde.metrics"])
def test_source_and_metrics_must_be_objects(key):
    """Parity reads `mde.source` for the checkpoint an artifact came from: a list there was an AttributeError."""
    props = {**_props(), key: json.dumps(["not", "an", "object"])}
    with pytest.raises(ModelError, match=f"model.onnx: malformed mde metadata .*{key} must be a JSON object"):
        ModelMetadata.from_props(props, "model.onnx")
