"""ONNX -> IR converters of the movement ops."""
