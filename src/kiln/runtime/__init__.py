"""kiln's runtime: loads exported libraries and runs them. Needs only NumPy.

Nothing here imports the compiler (frontend, ir, passes, codegen).
"""

from .device import Device, cpu, device
from .executor import GraphExecutor
from .graph_module import GraphModule
from .library import Library, load_module

__all__ = ["Device", "GraphExecutor", "GraphModule", "Library", "cpu", "device", "load_module"]
