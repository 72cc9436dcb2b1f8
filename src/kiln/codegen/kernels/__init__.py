"""C kernel templates: one module per op family, paired with kiln/ops/<family>.py; each op's
template is registered under the op's name."""

from . import conv, elementwise, linalg, movement, norm, pool, reduce, resize  # noqa: F401  (register kernels)
from .registry import KernelContext, all_kernels, get_expression, get_kernel

__all__ = ["KernelContext", "all_kernels", "get_expression", "get_kernel"]
