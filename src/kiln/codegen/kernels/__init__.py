"""C kernel templates: one module per op family, paired with kiln/ops/<family>.py."""

from . import conv, elementwise, linalg, movement, norm, pool, reduce, resize  # noqa: F401  (register kernels)
from .registry import KernelContext, get_expression, get_kernel

__all__ = ["KernelContext", "get_expression", "get_kernel"]
