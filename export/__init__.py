"""Export: checkpoint -> ONNX FP32/FP16 with `mde.*` metadata, and TensorRT 11 engines with a sidecar."""
