"""C kernels of the nn ops (semantics: kiln/ops/nn.py)."""
