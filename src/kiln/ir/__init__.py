"""kiln's IR: typed dataflow graphs, their builder, printer and verifier."""

from .builder import GraphBuilder
from .graph import Graph, Module, Node, Value
from .printer import print_module
from .types import TensorType
from .verify import verify

__all__ = [
    "Graph", "GraphBuilder", "Module", "Node", "TensorType", "Value", "print_module", "verify",
]
