"""INT8 Q/DQ building blocks on ONNX Runtime's quantization tools: pre-process, calibrate once, quantize.

Why ONNX Runtime's quantizer and not NVIDIA ModelOpt (`modelopt.onnx.quantization`, TensorRT's
documented path): ModelOpt is not installed here and is heavy (it pulls in torch extras and
CUDA-oriented dependencies), while `onnxruntime.quantization` ships with the runtime we already
depend on. With `QuantFormat.QDQ`, per-channel symmetric INT8 weights and symmetric INT8
activations (zero-point 0) its output is the explicit-quantization ONNX TensorRT 11 builds
as a strongly typed network, and the same file runs on ONNX Runtime's CPU provider, so INT8
accuracy is measured here without a GPU. The lower layer (`create_calibrator` -> ranges,
`QDQQuantizer(tensors_range=...)`) is called directly, as `quantize_static` does internally,
so the ranges are computed once, saved, and reused by every quantization the fallback needs.

Two targets (`calibration.config.TARGETS`). `tensorrt` is the form above, with float biases
(TensorRT's IDequantizeLayer takes INT8 inputs only; `check_tensorrt_qdq` refuses anything
else). `cpu` is the form ONNX Runtime's CPU provider runs fastest, chosen by measuring
(`benchmarks/bench_int8.py`: resnet50 at 224 px, batch 1, 2 threads, AVX-512 VNNI, ORT 1.31,
latency / FP32 latency over two runs, report decoder | skip decoder):
- UINT8 activations, INT8 per-channel weights, INT32 biases, Relu folded: ORT fuses every
  DQ-Conv-Q group into QLinearConv (NHWC, VNNI kernels): 0.41-0.43 | 0.43-0.51 (head quantized then;
  0.50 | 0.51 with it float). The TensorRT form
  (S8 activations, float biases, explicit Relu): 0.97-1.07 | 0.86-0.92, with 33 of 58 | 43 of 63
  convolutions as integer kernels; S8 activations alone: 1.05-1.08 | 0.78-0.84, 33 of 73 | 43 of 63.
- ConvTranspose rewritten as phase Convs (`calibration/subpixel.py`, exact): ORT has no
  integer ConvTranspose kernel on the CPU provider (the QDQ rules fuse Conv only; the
  QOperator quantizer leaves it float), and the report decoder's five transposed convolutions
  are 38 % of FP32 time; left float they cap the ratio at 0.63-0.67.
- QDQ, not QOperator: the same kernels after ORT's fusion (0.38-0.43 | 0.41-0.53, within the noise of
  the shared machine), while QDQ keeps the sensitivity fallback (`float_layers`) and the
  DepthToSpace fold working. Per-tensor weights: no faster (0.42-0.47 | 0.49-0.58), so
  per-channel stays (the usual safeguard for BatchNorm-folded weights, whose channel
  ranges differ widely; on the benchmark's random weights both were as accurate).
`calibration/inspect.py` reads ORT's optimized graph to check that every quantized
convolution became an integer kernel.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mde.calibration.config import Target
from mde.errors import ModelError
from mde.printed import printed_by_this_thread
from mde.runtime.artifact import QDQ_OPS

BYTE_MOVES = ("DepthToSpace",)  # ops that only move elements: their output keeps the input's quantization


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[name]


def external_data_files(path: Path) -> list[Path]:
    """The files beside an ONNX model that hold its weights (`FILE.onnx.data`), in name order; none for most."""
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(path), load_external_data=False)
    return [path.parent / name for name in sorted({entry.value for t in graph.graph.initializer if uses_external_data(t)
                                                    for entry in t.external_data if entry.key == "location"})]


def model_sha256(path: Path) -> str:
    """The SHA-256 of an ONNX model's bytes: its file's, or with weights kept beside it, of the file and theirs."""
    from mde.io import sha256_file

    weights = external_data_files(path)
    if not weights:
        return sha256_file(path)
    digest = hashlib.sha256()
    for part in (path, *weights):
        digest.update(sha256_file(part).encode())
    return digest.hexdigest()


def pre_process(src: Path, dst: Path, shown: Path | None = None) -> None:
    """ONNX Runtime's quantization pre-processing: shape inference and graph optimization (BN folding). `shown`:
    the model to name in a message (the user's, where `src` is a copy of it)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = src
    try:
        if external_data_files(src):  # weights in a file beside it (FILE.onnx.data)
            # the optimizer runs the graph from a scratch folder, where that file is not: one file, beside `dst`
            source = dst.with_name(f"{dst.stem}.whole.onnx")
            onnx.save(onnx.load(str(src)), str(source))
        quant_pre_process(str(source), str(dst), skip_symbolic_shape=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the graph is unusable
        raise ModelError(f"quantization pre-processing failed ({type(err).__name__}: {err})", shown or src) from None
    finally:
        if source != src:
            source.unlink(missing_ok=True)


# The histogram of each method. entropy: TensorRT's entropy calibrator's 2048 bins, searched for the clipping
# threshold (KL divergence) in 128 quantized bins. ONNX Runtime's own 128 and 128 leave its search one candidate,
# the whole histogram: min-max, under entropy's name.
HISTOGRAMS: dict[str, dict[str, int]] = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}}


def collect_ranges(
    model_path: Path,
    batches: Sequence[np.ndarray],
    method: str,
    op_types: Sequence[str],
    percentile: float = 99.999,
    input_name: str = "image",
    chunk: int = 16,
    on_batch: Callable[[], None] | None = None,
    symmetric: bool = True,
    on_search: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, tuple[float, float]]:
    """Run the calibrator over `batches` (one 1x3xHxW array each); return {tensor: (low, high)}.

    Args:
        model_path: the pre-processed FP32 model.
        batches: preprocessed calibration inputs.
        method: "entropy", "percentile" or "minmax".
        op_types: ops whose tensors are calibrated.
        percentile: the percentile method's percentile.
        chunk: images per `collect_data` call (bounds the memory of histogram calibrators).
        on_batch: called after each image (progress bar).
        symmetric: ranges symmetric around 0 (int8 activations with zero point 0); False for uint8.
        on_search: entropy only: called with the number of tensors before the threshold search (minutes on a
            large model), returns what is called after each tensor's (progress bar).
    """
    from onnxruntime.quantization import CalibrationDataReader, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self, items: Sequence[np.ndarray]):
            self.items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            if item is None:
                return None
            if on_batch is not None:
                on_batch()
            return {input_name: item}

    options: dict[str, Any] = {"symmetric": symmetric, **HISTOGRAMS.get(method, {})}
    if method == "percentile":
        options["percentile"] = percentile
    # The histogram calibrators print progress to stdout, which belongs to results (--json); NaN activations
    # make numpy warn ("All-NaN slice") before they fail: said once, below, in words of the model.
    with tempfile.TemporaryDirectory(prefix="mde-calib-") as tmp, printed_by_this_thread(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        calibrator = create_calibrator(
            model_path, list(op_types), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_method(method), providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        try:
            for start in range(0, len(batches), chunk):
                calibrator.collect_data(Reader(batches[start:start + chunk]))
            if on_search is not None and method == "entropy":
                _report_thresholds(calibrator.collector, on_search)
            data = calibrator.compute_data()
        except ValueError:  # np.histogram: "supplied range of [nan, nan] is not finite"
            # the augmented model outputs every calibrated tensor: an inner inf may leave the depth finite
            bad = _non_finite_output(Path(tmp) / "augmented.onnx", batches, input_name)
            if bad is None:
                raise
            raise NonFiniteActivations(bad) from None
    ranges = {}
    for name, td in data.items():
        low, high = td.range_value
        ranges[name] = (float(np.asarray(low).min()), float(np.asarray(high).max()))
        if not (np.isfinite(ranges[name][0]) and np.isfinite(ranges[name][1])):
            raise NonFiniteActivations(name)
    return ranges


def _report_thresholds(collector: Any, on_search: Callable[[int], Callable[[], None]]) -> None:
    """Have `collector` (ONNX Runtime's HistogramCollector) report each tensor's entropy threshold search, which
    it runs one tensor at a time in `compute_collection_result`; a collector without that method is left as it is."""
    search = getattr(collector, "get_entropy_threshold", None)
    if search is None:
        return
    done = on_search(len(collector.histogram_dict))

    def reported(*args: Any, **kwargs: Any) -> Any:
        result = search(*args, **kwargs)
        done()
        return result

    collector.get_entropy_threshold = reported  # the instance's: called as self.get_entropy_threshold(...)


class NonFiniteActivations(ValueError):
    """The model computes NaN or infinity on the calibration images (a diverged or damaged model): no range to
    quantize with. Its argument: the first such tensor found."""


def _non_finite_output(model_path: Path, batches: Sequence[np.ndarray], input_name: str) -> str | None:
    """The name of the model's first output that is NaN or infinite on one of `batches`, else None (run on the
    calibrator's augmented model, whose outputs are the calibrated tensors)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for batch in batches:
        for name, value in zip(names, session.run(names, {input_name: batch})):
            if not np.isfinite(value).all():
                return name
    return None


def calibrated_tensors(model_path: Path, op_types: Sequence[str]) -> set[str]:
    """The tensors `collect_ranges` gives a range for: ONNX Runtime's calibrator's own selection."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    with tempfile.TemporaryDirectory(prefix="mde-calib-") as tmp:
        calibrator = MinMaxCalibrater(model_path, list(op_types), str(Path(tmp) / "augmented.onnx"))
        return calibrator.select_tensors_to_calibrate(calibrator.model)[0]


def _extra_options(target: Target) -> dict[str, Any]:
    """onnxruntime.quantization's extra options for `target` (see `Target`)."""
    return {
        # int8: zero point 0 (TensorRT accepts only symmetric Q/DQ); uint8: after Relu the whole
        # [0, max] range is used
        "ActivationSymmetric": target.activation_type == "int8",
        "WeightSymmetric": True,  # int8 weights, zero point 0 (TensorRT, and MLAS's U8S8 kernels)
        # float biases for TensorRT (its IDequantizeLayer rejects INT32 input; it folds the bias into
        # the INT8 convolution); INT32 for ONNX Runtime, which fuses DQ-Conv-Q into QLinearConv only so
        "QuantizeBias": target.quantize_bias,
        "QDQKeepRemovableActivations": target.keep_relu,  # explicit Relu (TensorRT fuses it) or folded
    }


def quantize(
    model: onnx.ModelProto,
    ranges: dict[str, tuple[float, float]],
    method: str,
    target: Target,
    per_channel: bool = True,
) -> onnx.ModelProto:
    """Q/DQ-quantize `model` (pre-processed FP32) with saved `ranges` (layers go back to float with
    `float_layers.with_float_nodes`, not by excluding them here).

    Weights are INT8, symmetric, per output channel (per tensor with `per_channel=False`, for
    comparison). tensorrt: symmetric INT8 activations (every zero-point is 0), float biases.
    cpu: asymmetric UINT8 activations, INT32 biases, Relu folded; a DepthToSpace gets its
    input's range, so that `fold_byte_moves` can run it on the bytes.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    ranges = dict(ranges)
    for node in model.graph.node:  # a permutation's output has its input's range: one scale, no requantize
        if node.op_type in BYTE_MOVES and node.input[0] in ranges:
            ranges[node.output[0]] = ranges[node.input[0]]
    tensors = TensorsData(_method(method), {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()
    })
    activation = QuantType.QUInt8 if target.activation_type == "uint8" else QuantType.QInt8
    quantizer = QDQQuantizer(
        copy.deepcopy(model), per_channel, False, QuantType.QInt8, activation, tensors,
        [], [], list(target.op_types), _extra_options(target),
    )
    # The quantizer appends some DequantizeLinear nodes after their consumers; ONNX Runtime
    # does not mind, but onnx.checker and TensorRT's parser want a topologically sorted graph.
    quantized = ONNXModel(quantizer.quantize_model())
    quantized.topological_sort()
    return quantized.model


def fold_byte_moves(model: onnx.ModelProto) -> int:
    """Run DequantizeLinear -> DepthToSpace -> QuantizeLinear (same scale and zero point) on the bytes.

    DepthToSpace only moves elements, so with equal quantization parameters on both sides it
    can read and write the quantized tensor directly; ONNX Runtime has a uint8 DepthToSpace
    kernel but no QDQ rule for it. Exact (the same bytes come out), so it runs once on the
    written model, after the fallback (whose float nodes may read the dequantized tensor).
    Returns the number of nodes removed; edits `model` in place.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    drop: set[int] = set()
    for node in graph.node:
        if node.op_type not in BYTE_MOVES:
            continue
        dq, users = producers.get(node.input[0]), readers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        params = list(zip(dq.input[1:], q.input[1:]))
        if len(dq.input) != len(q.input) or not all(
                a in inits and b in inits and np.array_equal(inits[a], inits[b])
                and inits[a].dtype == inits[b].dtype for a, b in params):
            continue
        node.input[0], node.output[0] = dq.input[0], q.output[0]
        drop.add(id(q))
        if len(readers[dq.output[0]]) == 1:
            drop.add(id(dq))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    return len(drop)


def quantizable_nodes(qdq: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes of `op_types` that read at least one DequantizeLinear output, in graph order."""
    dq_outputs = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qdq.graph.node
            if n.op_type in op_types and any(i in dq_outputs for i in n.input)]


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def check_tensorrt_qdq(model: onnx.ModelProto, path: str | Path) -> None:
    """Refuse a Q/DQ model TensorRT cannot build: every DequantizeLinear reads INT8, every zero point is 0.

    Pure ONNX (no runtime): the input type of a DequantizeLinear is its initializer's type, or the
    zero point's type of the QuantizeLinear that feeds it.

    Raises:
        ModelError: naming `path` and the first offending node.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def quantized_type(node: onnx.NodeProto) -> int:
        if node.op_type == "QuantizeLinear":
            attr = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), 0)
            if attr:
                return attr
            if len(node.input) > 2 and node.input[2] in inits:
                return inits[node.input[2]].data_type
            return onnx.TensorProto.UINT8  # ONNX's default without a zero point
        source = node.input[0]
        if source in inits:
            return inits[source].data_type
        if source in producers and producers[source].op_type == "QuantizeLinear":
            return quantized_type(producers[source])
        return onnx.TensorProto.UNDEFINED

    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        name = node.name or node.output[0]
        if node.op_type == "DequantizeLinear" and quantized_type(node) != onnx.TensorProto.INT8:
            raise ModelError(f"{name} reads {_dtype_name(quantized_type(node))}; TensorRT's DequantizeLinear "
                             "takes INT8 only (biases must stay float)", path)
        if len(node.input) > 2 and node.input[2]:
            zero_point = inits.get(node.input[2])
            if zero_point is None or numpy_helper.to_array(zero_point).any():
                raise ModelError(f"{name} has a zero point that is not a constant 0; TensorRT takes symmetric "
                                 "quantization only", path)


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of Q, DQ nodes and of non-zero zero-points (must be 0 for TensorRT)."""
    inits = {i.name: i for i in model.graph.initializer}
    q = dq = nonzero = 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        q += node.op_type == "QuantizeLinear"
        dq += node.op_type == "DequantizeLinear"
        if len(node.input) > 2 and node.input[2] in inits:
            nonzero += int(np.any(onnx.numpy_helper.to_array(inits[node.input[2]]) != 0))
    return {"quantize_linear": q, "dequantize_linear": dq, "nonzero_zero_points": nonzero}
