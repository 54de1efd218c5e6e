"""The artifact metadata contract: `mde.*` ONNX metadata_props (JSON values) and the engine sidecar."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mde import __version__
from mde.errors import ModelError
from mde.io import json_text, parse_json

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "image"
OUTPUT_NAME = "depth"

# -- the export folder's file names: this is the one place they are spelled ----------------
ARTIFACT_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# INT8 for ONNX Runtime's CPU provider (`mde calibrate --target cpu`); model.int8.onnx is the TensorRT form
INT8_CPU_NAME = "model.int8.cpu.onnx"
ENGINE_NAME = "model.engine"
GOLDEN_NAME = "golden.npz"


def sidecar_path(engine: str | Path) -> Path:
    """`model.engine` -> `model.engine.json`: the engine's sidecar."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def ranges_path(int8_onnx: str | Path) -> Path:
    """`model.int8.onnx` -> `model.int8.ranges.json`: the calibration ranges saved beside an INT8 model."""
    return Path(int8_onnx).with_suffix(".ranges.json")


# files written beside an artifact that move with it: the engine's sidecar, INT8 calibration ranges
EXTRAS = {name: (extra(name).name,) for name, extra in (
    (ENGINE_NAME, sidecar_path), (ARTIFACT_NAMES["int8"], ranges_path), (INT8_CPU_NAME, ranges_path))}
REQUIRED_KEYS = ("mde.version", "mde.preprocess", "mde.output", "mde.precision")
# What this runtime reads; another `mde.*` prop (a later exporter's) is left alone, as ONNX's other props are.
KNOWN_KEYS = (*REQUIRED_KEYS, "mde.model", "mde.source", "mde.metrics", "mde.calibration")
# The preprocessing `mde.runtime.preprocess` implements: an artifact asking for anything else is refused.
PREPROCESS: dict[str, Any] = {
    "size_multiple": 32,
    "resize": "bilinear",
    "channel_order": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "value_range": [0.0, 1.0],
    "normalization": "imagenet mean/std, inside the graph",
}

# What the runtime's postprocessing and every caller take the output to be: an artifact saying otherwise is refused.
OUTPUT: dict[str, Any] = {
    "output_name": OUTPUT_NAME,
    "units": "m",
    "kind": "z-depth along the optical axis",
    "min_depth": 0.0,
}

# Besides those, each artifact's own fields of `mde.preprocess` and `mde.output` (`preprocess_spec`, `output_spec`).
PREPROCESS_OWN = ("input_name", "input_size", "dynamic_size")
OUTPUT_OWN = ("max_depth", "postprocess")


@dataclass
class ModelMetadata:
    """What a runtime needs to use an artifact; nothing is guessed from file names."""

    input_size: tuple[int, int]            # (height, width) the model was exported for
    max_depth: float                       # metres; outputs are clipped to [0, max_depth]
    precision: str = "fp32"
    dynamic_size: bool = False             # H and W dynamic (multiples of 32)
    backbone: str = "resnet50"
    decoder: str = "report"                # mde.train.model's decoder registry name
    parameters: int = 0
    source: dict[str, Any] = field(default_factory=dict)    # checkpoint sha256, training config
    metrics: dict[str, Any] = field(default_factory=dict)   # validation rmse/ssim of the checkpoint
    calibration: dict[str, Any] | None = None               # INT8 only
    version: str = __version__

    def preprocess_spec(self) -> dict[str, Any]:
        return {
            "input_name": INPUT_NAME,
            "input_size": list(self.input_size),
            "dynamic_size": self.dynamic_size,
            **PREPROCESS,
        }

    def output_spec(self) -> dict[str, Any]:
        return {
            **OUTPUT,
            "max_depth": self.max_depth,
            "postprocess": "bilinear resize to the input image size, clip to [min_depth, max_depth]",
        }

    def to_props(self) -> dict[str, str]:
        """The ONNX metadata_props, each value a JSON document."""
        props = {
            "mde.version": self.version,
            "mde.preprocess": self.preprocess_spec(),
            "mde.output": self.output_spec(),
            "mde.model": {"backbone": self.backbone, "decoder": self.decoder, "parameters": self.parameters},
            "mde.source": self.source,
            "mde.metrics": self.metrics,
            "mde.precision": self.precision,
        }
        if self.calibration is not None:
            props["mde.calibration"] = self.calibration
        return {key: json_text(value, sort_keys=True) for key, value in props.items()}  # strict: NaN as null

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path = "artifact") -> ModelMetadata:
        """Parse `mde.*` props; raise `ModelError` naming `source` when they are missing or bad."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise ModelError(f"no mde metadata ({', '.join(missing)} missing); export it with `mde export`", source)
        try:
            values = {key: _json_value(key, props[key]) for key in KNOWN_KEYS if key in props}
            pre, out = _json_object(values, "mde.preprocess"), _json_object(values, "mde.output")
            for what, prop, given, implemented, own in (
                    ("preprocessing", "mde.preprocess", pre, PREPROCESS, PREPROCESS_OWN),
                    ("output", "mde.output", out, OUTPUT, OUTPUT_OWN)):
                _check_implemented(what, prop, given, implemented, own, source)
            model = _json_object(values, "mde.model") if "mde.model" in values else {}
            precision = values["mde.precision"]
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}")
            for key in ("mde.source", "mde.metrics", "mde.calibration"):
                allowed = (dict, type(None)) if key == "mde.calibration" else dict  # calibration: INT8 only
                if not isinstance(values.get(key, {}), allowed):
                    raise ValueError(f"{key} must be a JSON object, got {type(values[key]).__name__}")
            return cls(
                input_size=_input_size(_required(pre, "mde.preprocess", "input_size")),
                max_depth=_max_depth(_required(out, "mde.output", "max_depth")),
                precision=precision,
                dynamic_size=_field(pre, "mde.preprocess", "dynamic_size", bool, False),
                backbone=_field(model, "mde.model", "backbone", str, "unknown"),
                decoder=_field(model, "mde.model", "decoder", str, "report"),  # exported before decoders had names
                parameters=_field(model, "mde.model", "parameters", int, 0),
                source=values.get("mde.source", {}),
                metrics=values.get("mde.metrics", {}),
                calibration=values.get("mde.calibration"),
                version=_of_kind("mde.version", values["mde.version"], str),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise ModelError(f"malformed mde metadata ({err})", source) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The largest image side the runtime handles (a model's input, an image it reads, a bench camera): beyond
# any camera a robot carries, and 8192 x 8192 x 3 bytes is already 192 MiB an image.
MM_PER_M = 1000.0  # the dataset format's 16-bit depth PNGs hold millimetres (`--depth-scale` changes it)
DEPTH_SCALE_RANGE = (1e-3, 1e6)  # --depth-scale, PNG units per metre: beyond, float32 over/underflows
PNG16_MAX = 65535  # the largest value (millimetres, in mde's depth PNGs) a 16-bit PNG holds
# A depth beyond this many metres is an encoding mistake (a "no return" or sky code such as
# 1e30 or float32's maximum), not a distance; its square would overflow float32 loss and metric sums.
MAX_PLAUSIBLE_DEPTH = 1e6
# The smallest depth range (a model's max_depth, a dataset's meta.json max_depth): SSIM's constants are
# (0.01 x range)^2 and (0.03 x range)^2, which below this underflow toward 0 and turn flat patches into 0/0.
MIN_DEPTH_RANGE = 1e-3
MAX_INPUT_SIDE = 8192


def _check_implemented(what: str, prop: str, given: dict[str, Any], implemented: dict[str, Any],
                       own: tuple[str, ...], source: str | Path) -> None:
    """Refuse `prop` (`mde.preprocess` / `mde.output`, read as `given`) unless it states each of `implemented`'s
    fields at the value this runtime implements, and nothing else but the artifact's `own` fields: a field left out
    (its units) or one this runtime does not know (a mean and std to apply outside the graph) would be taken as the
    default."""
    absent = [k for k in implemented if k not in given]
    if absent:
        raise ModelError(f"{what} does not say its {', '.join(absent)} ({prop} has no such field); this runtime "
                         f"implements {json.dumps({k: implemented[k] for k in absent})}", source)
    unsupported = {k: given[k] for k, v in implemented.items() if given[k] != v}
    if unsupported:
        raise ModelError(f"{what} {json.dumps(unsupported)} is not what this runtime implements "
                         f"({json.dumps({k: implemented[k] for k in unsupported})})", source)
    unknown = sorted(set(given) - set(implemented) - set(own))
    if unknown:
        raise ModelError(f"{what} field(s) {', '.join(unknown)} ({prop}) are not known to this runtime, which "
                         "would ignore them; export the model with this version of mde", source)


def _json_value(key: str, text: str) -> Any:
    """One `mde.*` prop's JSON document; a ValueError naming the key where it is none."""
    try:
        return parse_json(text)
    except ValueError as err:
        raise ValueError(f"{key} is not JSON: {err}") from None


def _json_object(values: dict[str, Any], key: str) -> dict[str, Any]:
    """The `key` prop, which must be a JSON object."""
    value = values[key]
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object, got {json.dumps(value)[:60]}")
    return value


def _required(obj: dict[str, Any], prop: str, field: str) -> Any:
    """`obj[field]` of the `prop` prop; a ValueError naming both where it is absent."""
    if field not in obj:
        raise ValueError(f"{prop} has no {field}")
    return obj[field]


def _field(obj: dict[str, Any], prop: str, field: str, kind: type, default: Any) -> Any:
    """`obj[field]` of the `prop` prop (`default` where absent), which must be a JSON value of `kind`."""
    return _of_kind(f"{prop}.{field}", obj.get(field, default), kind)


def _of_kind(name: str, value: Any, kind: type) -> Any:
    """`value` where it is a JSON value of `kind` (for int: a whole number >= 0); else a ValueError naming `name`."""
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) and not (kind is int and value < 0)
    if not ok:
        words = {bool: "true or false", str: "a string", int: "a whole number >= 0"}[kind]
        raise ValueError(f"{name} must be {words}, got {json.dumps(value)[:60]}")
    return value


def _input_size(value: Any) -> tuple[int, int]:
    """`mde.preprocess` input_size: [height, width], positive multiples of 32 up to MAX_INPUT_SIDE."""
    multiple = PREPROCESS["size_multiple"]
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE and v % multiple == 0
                  for v in value))
    if not ok:
        raise ValueError(f"input_size must be [height, width], multiples of {multiple} up to {MAX_INPUT_SIDE}, "
                         f"got {json.dumps(value)}")
    return int(value[0]), int(value[1])


def _max_depth(value: Any) -> float:
    """`mde.output` max_depth: metres in `MIN_DEPTH_RANGE`..`MAX_PLAUSIBLE_DEPTH` (beyond, float32 depth overflows)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not MIN_DEPTH_RANGE <= value <= MAX_PLAUSIBLE_DEPTH):
        raise ValueError(f"max_depth must be a number of metres from {MIN_DEPTH_RANGE:g} to {MAX_PLAUSIBLE_DEPTH:g}, "
                         f"got {json.dumps(value)}")
    return float(value)


def shape_text(shape: tuple[int | None, ...]) -> str:
    """A tensor shape as messages write it: `?x3x128x128` (? for a dynamic axis)."""
    return "x".join("?" if d is None else str(d) for d in shape)


def check_graph_input(dtype: Any, shape: tuple[int | None, ...], meta: ModelMetadata,
                      source: str | Path = "artifact") -> None:
    """Refuse a graph whose image input is not what the runtime feeds: float32 N x 3 x H x W, with H x W the
    metadata's input size (dynamic when the metadata says so).

    Raises:
        ModelError: naming the input the graph has and the one it would be given.
    """
    import numpy as np

    size = (None, None) if meta.dynamic_size else tuple(meta.input_size)
    fits = (len(shape) == 4 and shape[0] in (None, 1) and shape[1] == 3  # a fixed batch of 2 cannot take 1 image
            and all(got is None or got == want for got, want in zip(shape[2:], size, strict=True)))
    if np.dtype(dtype) != np.float32 or not fits:
        dims, want = shape_text(shape), shape_text((None, 3, *size))
        raise ModelError(f"graph input is {np.dtype(dtype).name} {dims}; the runtime feeds float32 {want} "
                         f"(from its mde metadata)", source)


def check_graph_output(outputs: dict[str, tuple[Any, tuple[int | None, ...]]], source: str | Path = "artifact",
                       size: tuple[int, int] | None = None) -> None:
    """Refuse a graph without the depth output its metadata names: float N x 1 x H x W, called `depth`, with H x W
    the input's `size` where the graph fixes both (a smaller map would be resized without a word).

    `outputs`: each output's (dtype, shape) by name.

    Raises:
        ModelError: naming the outputs the graph has.
    """
    import numpy as np

    if OUTPUT_NAME not in outputs:
        raise ModelError(f"graph has no output {OUTPUT_NAME!r} (its outputs: {', '.join(outputs) or 'none'}); "
                         f"the depth map is the output its mde metadata names", source)
    dtype, shape = outputs[OUTPUT_NAME]
    if not np.issubdtype(np.dtype(dtype), np.floating) or len(shape) != 4 or shape[1] not in (None, 1):
        dims = shape_text(shape)
        raise ModelError(f"graph output {OUTPUT_NAME!r} is {np.dtype(dtype).name} {dims}; expected a float "
                         f"N x 1 x H x W depth map", source)
    if size is not None and any(got is not None and got != want for got, want in zip(shape[2:], size)):
        raise ModelError(f"graph output {OUTPUT_NAME!r} is {np.dtype(dtype).name} {shape_text(shape)}; expected "
                         f"{shape_text((shape[0], 1, *size))}, the input's size", source)


def read_props(model: Any) -> dict[str, str]:
    """The `mde.*` metadata_props of an ONNX ModelProto (no onnx import needed)."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("mde.")}


def stamp(model: Any, meta: ModelMetadata) -> None:
    """Write `meta` into an ONNX ModelProto's metadata_props: the one writer of the contract.

    The `mde.*` keys are replaced, any other key is kept; the engine sidecar stores the same
    `to_props()` strings under "metadata".
    """
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("mde.")]
    del model.metadata_props[:]
    for key, value in [*kept, *sorted(meta.to_props().items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
