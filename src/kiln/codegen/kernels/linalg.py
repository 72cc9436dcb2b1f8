"""C kernels of the linalg ops (semantics: kiln/ops/linalg.py)."""
