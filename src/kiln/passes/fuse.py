"""Operator fusion: elementwise nodes are folded into the kernel of their producer.

A kernel group is an anchor node plus a chain of elementwise nodes of the anchor's output
shape, in graph order, computed from the anchor's value (and other operands loaded per
element). The chain may branch and join (x * sigmoid(x), erf-GELU) as long as only its last
value is read outside the group; it becomes the anchor's epilogue, so the intermediate
tensors are never written to memory. Only anchors whose op declares `epilogue` (in
kiln/ops) take a chain. View ops (reshape) get no kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        """The chain's operands computed outside the group, once each in first-use order
        (the epilogue loads them per element)."""
        inside = {id(v) for n in self.nodes for v in n.outputs} if self.chain else set()
        out: dict[int, Value] = {}
        for node in self.chain:
            for v in node.inputs:
                if id(v) not in inside:
                    out.setdefault(id(v), v)
        return list(out.values())

    @property
    def inputs(self) -> list[Value]:
        return [*self.anchor.inputs, *self.extras]

    @property
    def outputs(self) -> list[Value]:
        return self.chain[-1].outputs if self.chain else self.anchor.outputs

    @property
    def label(self) -> str:
        return "+".join(n.op for n in self.nodes)


def _chain(anchor: Node, users: dict, graph_outputs: set[int], absorbed: set[int],
           position: dict[int, int]) -> list[Node]:
    """The largest chain to fuse after anchor: grown reader by reader in graph order, kept
    whenever every value it makes but the last is read only inside the group."""
    shape = anchor.outputs[0].type.shape
    members: list[Node] = []
    inside = {id(anchor.outputs[0])}
    best: list[Node] = []
    while True:
        readers = [r for v in [anchor.outputs[0], *(m.outputs[0] for m in members)]
                   for r in users.get(v, []) if id(r) not in absorbed and r not in members]
        fusable = [r for r in readers if get_op(r.op).kind == ELEMENTWISE
                   and len(r.outputs) == 1 and r.outputs[0].type.shape == shape]
        if len(fusable) != len(readers) or not fusable:
            return best  # a reader that cannot join keeps its value materialized
        nxt = min(fusable, key=lambda r: position[id(r)])
        members.append(nxt)
        inside.add(id(nxt.outputs[0]))
        if _closed(anchor, members, users, graph_outputs):
            best = list(members)


def _closed(anchor: Node, members: list[Node], users: dict, graph_outputs: set[int]) -> bool:
    """Whether only the last member's value is needed outside the group."""
    group = {id(n) for n in members}
    for value in [anchor.outputs[0], *(m.outputs[0] for m in members[:-1])]:
        if id(value) in graph_outputs or any(id(r) not in group for r in users.get(value, [])):
            return False
    return True


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
        if len(node.outputs) == 1 and get_op(node.op).epilogue:
            group.chain = _chain(node, users, graph_outputs, absorbed, position)
            absorbed.update(id(n) for n in group.chain)
        # Run the group where its last node stood: the chain's other operands exist by then.
        placed.append((position[id(group.nodes[-1])], group))
    return [group for _, group in sorted(placed, key=lambda p: p[0])]
