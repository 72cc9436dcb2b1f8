"""External engines ("bring your own codegen", docs/byoc.md): the Backend contract, the
registry of backends by name, and the backends kiln ships (reference: NumPy; onnxruntime;
openvino). Runtime side: nothing here imports the compiler, and third-party engines are
imported only when a backend builds or loads an engine.
"""

from .base import Backend
from .registry import ENTRY_POINT_GROUP, backend_names, get_backend

__all__ = ["ENTRY_POINT_GROUP", "Backend", "backend_names", "get_backend"]
