"""kiln's IR: typed dataflow graphs (types, values, nodes, graphs, modules) and their text form.

Data structures only: the op definitions, the graph builder and the verifier, which need to
know the ops, live a stage later in kiln.ops.
"""

from .graph import Graph, Module, Node, Value, unique_name
from .printer import print_module
from .types import TensorType

__all__ = ["Graph", "Module", "Node", "TensorType", "Value", "print_module", "unique_name"]
