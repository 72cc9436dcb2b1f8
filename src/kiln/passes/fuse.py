"""Operator fusion: elementwise chains are folded into the kernel of their producer.

A kernel group is an anchor node plus a chain of elementwise nodes, each consuming the
previous result with the same shape; the chain becomes the anchor's epilogue, so the
intermediate tensors are never written to memory. View ops (reshape) get no kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codegen.kernels import get_kernel
from ..ir import Module, Node, Value
from ..ops import ELEMENTWISE, VIEW, get_op


@dataclass(eq=False)
class KernelGroup:
    """One kernel to generate: an anchor node and the elementwise chain fused after it."""

    anchor: Node
    chain: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.anchor, *self.chain]

    @property
    def extras(self) -> list[Value]:
        """The chain's operands other than the running value, in order (loaded per element)."""
        out, running = [], self.anchor.outputs[0] if self.chain else None
        for node in self.chain:
            out.extend(v for v in node.inputs if v is not running)
            running = node.outputs[0]
        return out

    @property
    def inputs(self) -> list[Value]:
        return [*self.anchor.inputs, *self.extras]

    @property
    def outputs(self) -> list[Value]:
        return self.chain[-1].outputs if self.chain else self.anchor.outputs

    @property
    def label(self) -> str:
        return "+".join(n.op for n in self.nodes)


def _next_link(value: Value, users: dict, graph_outputs: set[int],
               absorbed: set[int]) -> Node | None:
    """The elementwise node that can extend a chain ending in value, if there is one."""
    readers = users.get(value, [])
    if id(value) in graph_outputs or len(readers) != 1:
        return None
    nxt = readers[0]
    if id(nxt) in absorbed or get_op(nxt.op).kind != ELEMENTWISE or len(nxt.outputs) != 1:
        return None
    if nxt.outputs[0].type.shape != value.type.shape or nxt.inputs.count(value) != 1:
        return None
    return nxt


def fuse(mod: Module) -> list[KernelGroup]:
    """Partition the graph's nodes into kernel groups, in a valid execution order."""
    g = mod.graph
    users = g.consumers()
    graph_outputs = {id(v) for v in g.outputs}
    absorbed: set[int] = set()
    placed: list[tuple[int, KernelGroup]] = []
    position = {id(n): k for k, n in enumerate(g.nodes)}
    for node in g.nodes:
        if id(node) in absorbed or get_op(node.op).kind == VIEW:
            continue
        group = KernelGroup(node)
        if len(node.outputs) == 1 and get_kernel(node.op).epilogue:
            value = node.outputs[0]
            while (nxt := _next_link(value, users, graph_outputs, absorbed)) is not None:
                group.chain.append(nxt)
                absorbed.add(id(nxt))
                value = nxt.outputs[0]
        # Run the group where its last node stood: the chain's other operands exist by then.
        placed.append((position[id(group.nodes[-1])], group))
    return [group for _, group in sorted(placed, key=lambda p: p[0])]
