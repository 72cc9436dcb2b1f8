"""C kernels of the movement ops (semantics: kiln/ops/movement.py)."""
