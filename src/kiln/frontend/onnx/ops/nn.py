"""ONNX -> IR converters of the nn ops."""
