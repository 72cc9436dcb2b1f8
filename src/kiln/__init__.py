"""kiln: a deep-learning model compiler. ONNX in, one native library out.

The runtime (load_module, GraphModule, devices) is imported eagerly and needs only NumPy and
BLAKE3; the compiler (build, frontend) is imported on first use.
"""

from ._version import __version__
from .errors import (
    BackendError,
    CompatibilityError,
    CompileError,
    ExportError,
    FormatError,
    InputError,
    KilnError,
    LimitError,
    ModelImportError,
    NotConstantError,
    ShapeError,
    UnsupportedOpError,
    VerificationError,
)
from .runtime import Device, GraphModule, Library, cpu, device, load_module, load_params
from .runtime.library import sign, verify
from .runtime.signing import keygen

_LAZY = {"build": ("kiln.compiler", "build"), "link": ("kiln.export.factory", "link"),
         "pack": ("kiln.export.pack", "pack"), "frontend": ("kiln.frontend", None),
         "ir": ("kiln.ir", None), "from_onnx": ("kiln.frontend", "from_onnx")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'kiln' has no attribute '{name}'")


__all__ = [
    "BackendError", "CompatibilityError", "CompileError", "Device", "ExportError",
    "FormatError", "GraphModule", "InputError", "KilnError", "Library", "LimitError",
    "ModelImportError", "NotConstantError", "ShapeError", "UnsupportedOpError",
    "VerificationError", "__version__", "build", "cpu", "device", "from_onnx", "keygen", "link",
    "load_module", "load_params", "pack", "sign", "verify",
]
