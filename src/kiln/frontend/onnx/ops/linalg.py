"""ONNX -> IR converters of the linalg ops."""
