"""Static memory planning: every tensor gets an arena offset, reused once its last reader ran.

Model inputs and outputs keep their own buffers for the whole run. Reshape outputs share
their input's buffer. Placement is greedy by size: each buffer takes the lowest offset not
used by a buffer whose lifetime overlaps. The plan records the peak (the arena size) next
to the total without reuse. A plan whose arena is over a limit (by default this machine's
physical memory) is refused before anything is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LimitError
from ..ir import Module, Value
from ..ops import VIEW, get_op
from .fuse import KernelGroup

ALIGN = 64


def _aligned(n: int) -> int:
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Buffer:
    """One arena allocation: the tensor it was made for, its place and lifetime (kernel steps)."""

    value: Value
    offset: int
    size: int
    first: int
    last: int


@dataclass
class MemoryPlan:
    """Where each materialized tensor lives: an arena offset or a param."""

    offsets: dict[Value, int] = field(default_factory=dict)
    alias: dict[Value, Value] = field(default_factory=dict)  # reshape output -> buffer owner
    buffers: list[Buffer] = field(default_factory=list)
    arena_bytes: int = 0
    unplanned_bytes: int = 0

    def owner(self, value: Value) -> Value:
        """The value whose storage value uses (itself, unless it is a reshape view)."""
        return self.alias.get(value, value)


def _view_roots(mod: Module) -> dict[Value, Value]:
    """Map each reshape output to the value whose buffer it shares."""
    root: dict[Value, Value] = {}
    for node in mod.graph.nodes:
        if get_op(node.op).kind == VIEW:
            src = node.inputs[0]
            root[node.outputs[0]] = root.get(src, src)
    return root


def plan_memory(mod: Module, groups: list[KernelGroup]) -> MemoryPlan:
    """Assign arena offsets to inputs, outputs and intermediate tensors of the kernels."""
    g = mod.graph
    root = _view_roots(mod)
    end = len(groups)
    life: dict[Value, list[int]] = {v: [-1, end] for v in g.inputs}
    for step, group in enumerate(groups):
        for v in group.outputs:
            life.setdefault(v, [step, step])
        for v in group.inputs:
            r = root.get(v, v)
            if r in life:
                life[r][1] = max(life[r][1], step)
    for v in g.outputs:
        r = root.get(v, v)
        if r in life:
            life[r][1] = end
    plan = MemoryPlan()
    placed: list[Buffer] = []
    for v in sorted(life, key=lambda v: (-v.type.nbytes, life[v][0])):
        first, last = life[v]
        size = _aligned(v.type.nbytes)
        offset = 0
        for b in sorted((b for b in placed if b.first <= last and first <= b.last),
                        key=lambda b: b.offset):
            if offset + size <= b.offset:
                break
            offset = max(offset, b.offset + b.size)
        placed.append(Buffer(v, offset, size, first, last))
    plan.buffers = sorted(placed, key=lambda b: (b.first, b.offset))
    plan.offsets = {b.value: b.offset for b in placed}
    plan.alias = root
    plan.arena_bytes = max((b.offset + b.size for b in placed), default=0)
    plan.unplanned_bytes = sum(b.size for b in placed)
    return plan


def check_arena(plan: MemoryPlan, limit: int | None, model: str) -> None:
    """Raise LimitError if the plan's arena is over limit bytes (None: no limit)."""
    if limit is None or plan.arena_bytes <= limit:
        return
    big = max(plan.buffers, key=lambda b: b.size)
    raise LimitError(
        f"model '{model}': the memory plan needs an arena of {plan.arena_bytes} bytes "
        f"({plan.arena_bytes / 2**30:.1f} GiB), over the limit of {limit} bytes "
        f"({limit / 2**30:.1f} GiB); its largest tensor is '{big.value.name}' {big.value.type} "
        f"({big.size} bytes). Raise the limit with build(..., max_memory=N)"
    )
