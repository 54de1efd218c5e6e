"""The thin runtime a robot embeds: numpy + onnxruntime (tensorrt only when that backend is opened)."""
