"""movement ops: semantics (shape/dtype rules and NumPy references)."""
