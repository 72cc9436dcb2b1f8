"""The operator contract: an OpDef is the one definition of an IR op.

It holds the op's attributes with their defaults, its shape/dtype rule, its NumPy reference
(the op's meaning: constant folding evaluates it and tests compare the compiled kernels
with it), its kind, and whether its C kernel accepts a fused elementwise epilogue. The C
template is registered under the same name in kiln/codegen/kernels/<family>.py, where
<family> is the name of the module here that defines the op (a later stage: codegen imports
ops, never the reverse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import UnsupportedOpError
from ..ir.types import TensorType

Attrs = dict[str, Any]
InferFn = Callable[[list[TensorType], Attrs], list[TensorType]]
ReferenceFn = Callable[[list[np.ndarray], Attrs], list[np.ndarray]]

# Op kinds: how passes may treat an op.
OPAQUE = "opaque"  # a kernel of its own
ELEMENTWISE = "elementwise"  # one output element from the same-index input elements
VIEW = "view"  # output is the input's bytes reinterpreted (reshape-like): no kernel
EXTERNAL = "external"  # runs on an external engine (docs/byoc.md): no C template, no epilogue


class _Required:
    """The default of an attribute every node must give."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, eq=False)
class OpDef:
    """One IR operator: name, declared attributes (name -> default, or REQUIRED), type rule,
    NumPy reference, kind, and whether its kernel takes a fused elementwise epilogue."""

    name: str
    infer: InferFn
    reference: ReferenceFn
    kind: str = OPAQUE
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # True when the kernel has one output and writes it only through ctx.store, so fusion
    # may append an elementwise chain to it; view ops have no kernel, hence no epilogue.
    epilogue: bool = True

    def resolve_attrs(self, given: Mapping[str, Any], where: str) -> Attrs:
        """given with every declared attribute it lacks set to its default (the only place
        defaults are applied); an unknown or missing required attribute is an error."""
        unknown = sorted(set(given) - set(self.attrs))
        if unknown:
            raise UnsupportedOpError(f"{where}: unknown attribute '{unknown[0]}' of op "
                                     f"{self.name}; it declares {sorted(self.attrs)}")
        attrs = {**self.attrs, **given}
        missing = [k for k, v in attrs.items() if v is REQUIRED]
        if missing:
            raise UnsupportedOpError(f"{where}: attribute '{missing[0]}' of op {self.name} "
                                     "is required")
        return attrs


_OPS: dict[str, OpDef] = {}


def register(name: str, *, infer: InferFn, reference: ReferenceFn, kind: str = OPAQUE,
             attrs: Mapping[str, Any] | None = None, epilogue: bool | None = None) -> OpDef:
    """Register an IR op; each name may be registered once. epilogue defaults to True for
    ops with a kernel (opaque, elementwise) and is always False for views and external ops."""
    if name in _OPS:
        raise ValueError(f"op {name} registered twice")
    if epilogue is None:
        epilogue = kind not in (VIEW, EXTERNAL)
    if kind in (VIEW, EXTERNAL) and epilogue:
        raise ValueError(f"{kind} op {name} has no kernel, so it cannot take an epilogue")
    op = OpDef(name, infer, reference, kind, MappingProxyType(dict(attrs or {})), epilogue)
    _OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    """Look up an IR op by name."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown IR op '{name}'") from None


def all_ops() -> dict[str, OpDef]:
    """Every registered IR op by name (the op-contract test walks them)."""
    return dict(_OPS)
