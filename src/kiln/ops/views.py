"""View ops: the output is the input's bytes under another shape, so no kernel runs.

The frontend lowers Reshape, Flatten, Squeeze and Unsqueeze to `reshape` with a static
target shape; the memory planner makes its output share the input's buffer.
"""

from __future__ import annotations

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import expect_arity
from .registry import REQUIRED, VIEW, Attrs, register


def _reshape_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    out = TensorType(tuple(attrs["shape"]), types[0].dtype)
    if out.numel != types[0].numel:
        raise ShapeError(f"cannot reshape {types[0]} to {list(attrs['shape'])}")
    return [out]


register("reshape", infer=_reshape_infer,
         reference=lambda arrs, a: [arrs[0].reshape(a["shape"])], kind=VIEW,
         attrs={"shape": REQUIRED})
