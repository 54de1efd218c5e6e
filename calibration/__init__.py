"""Calibration: INT8 by explicit quantization (Q/DQ ONNX), with accuracy-driven float fallback."""
