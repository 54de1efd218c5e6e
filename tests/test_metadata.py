"""The artifact metadata contract: round trip, old artifacts, and preprocessing the runtime does not implement."""

from __future__ import annotations

import json

import pytest

from mde.errors import ModelError
from mde.runtime.metadata import OUTPUT, PREPROCESS, ModelMetadata


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


@pytest.mark.parametrize("prop, field", [("mde.preprocess", k) for k in PREPROCESS] + [("mde.output", k) for k in OUTPUT])
def test_a_field_left_out_is_refused_not_taken_as_the_default(prop, field):
    """An artifact that no longer said its output is in metres, or how its input is normalised, was run as if it
    said what this runtime implements."""
    props = _props()
    spec = json.loads(props[prop])
    del spec[field]
    with pytest.raises(ModelError, match=f"model.onnx: .* does not say its {field} \\({prop} has no such field\\)"):
        ModelMetadata.from_props({**props, prop: json.dumps(spec)}, "model.onnx")


@pytest.mark.parametrize("prop, extra", [("mde.preprocess", {"mean": [0.5] * 3, "std": [0.2] * 3}),
                                         ("mde.output", {"scale": 0.001})])
def test_a_field_this_runtime_does_not_know_is_refused(prop, extra):
    """A mean and std to apply outside the graph, or a scale for the output, would be ignored: the runtime would feed
    raw [0, 1] pixels and read the output as metres."""
    props = _props()
    props[prop] = json.dumps({**json.loads(props[prop]), **extra})
    with pytest.raises(ModelError, match=f"field\\(s\\) {', '.join(sorted(extra))} \\({prop}\\) are not known"):
        ModelMetadata.from_props(props, "model.onnx")


@pytest.mark.parametrize("key", ["mde.source", "mde.metrics"])
def test_source_and_metrics_must_be_objects(key):
    """Parity reads `mde.source` for the checkpoint an artifact came from: a list there was an AttributeError."""
    props = {**_props(), key: json.dumps(["not", "an", "object"])}
    with pytest.raises(ModelError, match=f"model.onnx: malformed mde metadata .*{key} must be a JSON object"):
        ModelMetadata.from_props(props, "model.onnx")


def test_a_missing_field_is_named_with_its_prop_and_an_unknown_prop_is_left_alone():
    """A missing max_depth was said as "malformed mde metadata ('max_depth')"; a later exporter's extra `mde.*` prop,
    not JSON, made the artifact unreadable to this runtime."""
    props = _props()
    output = json.loads(props["mde.output"])
    del output["max_depth"]
    with pytest.raises(ModelError) as err:
        ModelMetadata.from_props({**props, "mde.output": json.dumps(output)}, "model.onnx")
    assert str(err.value) == "model.onnx: malformed mde metadata (mde.output has no max_depth)"
    meta = ModelMetadata.from_props({**props, "mde.notes": "hello world"}, "model.onnx")
    assert meta == ModelMetadata.from_props(props, "model.onnx")


@pytest.mark.parametrize("key, value, said", [
    # a hand-edited "false" read as true: the runtime then fed ?x?-sized input to a fixed-size graph
    ("mde.preprocess", {"dynamic_size": "false"}, 'mde.preprocess.dynamic_size must be true or false, got "false"'),
    ("mde.preprocess", None, "mde.preprocess must be a JSON object, got null"),
    ("mde.preprocess", "hello", 'mde.preprocess must be a JSON object, got "hello"'),
    ("mde.output", [1, 2], "mde.output must be a JSON object, got [1, 2]"),
    ("mde.model", [1, 2], "mde.model must be a JSON object, got [1, 2]"),
    ("mde.model", {"parameters": "many"}, 'mde.model.parameters must be a whole number >= 0, got "many"'),
    ("mde.model", {"parameters": True}, "mde.model.parameters must be a whole number >= 0, got true"),
    ("mde.model", {"backbone": 18}, "mde.model.backbone must be a string, got 18"),
    ("mde.version", 1.5, "mde.version must be a string, got 1.5"),
])
def test_hand_edited_metadata_of_the_wrong_type_is_named(key, value, said):
    """Each was an internal message ('list' object has no attribute 'get') or, for dynamic_size, a wrong value."""
    props = _props()
    if key == "mde.preprocess" and isinstance(value, dict):
        props = _props(**value)
    elif key == "mde.model" and isinstance(value, dict):
        props["mde.model"] = json.dumps({"backbone": "resnet18", "decoder": "unet", "parameters": 1, **value})
    else:
        props[key] = json.dumps(value)
    with pytest.raises(ModelError) as err:
        ModelMetadata.from_props(props, "model.onnx")
    assert str(err.value) == f"model.onnx: malformed mde metadata ({said})"
