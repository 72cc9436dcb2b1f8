"""kiln's runtime: loads exported libraries and runs them. Needs only NumPy.

Nothing here imports the compiler (frontend, ir, passes, codegen).
"""

from .device import Device, cpu, device
from .executor import AotExecutor, GraphExecutor
from .graph_module import GraphModule
from .library import Library, load_module
from .params import load_params

__all__ = ["AotExecutor", "Device", "GraphExecutor", "GraphModule", "Library", "cpu", "device",
           "load_module", "load_params"]
