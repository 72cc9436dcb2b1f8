"""ONNX -> IR converters of the reduce ops."""
