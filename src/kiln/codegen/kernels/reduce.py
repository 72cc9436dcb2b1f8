"""C kernels of the reduce ops (semantics: kiln/ops/reduce.py)."""
