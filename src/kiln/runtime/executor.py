"""GraphExecutor: runs one model of a library, stepping through its kernels from Python.

All memory is allocated once at creation: one arena laid out by the compiler's memory plan
(inputs, outputs and intermediates at fixed offsets) plus the weights, used in place from
the mapped library. run() is a loop of native calls, which release the GIL.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, InputError, KilnError
from .device import Device

if TYPE_CHECKING:
    from .library import Library

_ALIGN = 64


def _tensor_spec(entry: dict[str, Any]) -> tuple[str, tuple[int, ...], np.dtype]:
    return str(entry["name"]), tuple(int(d) for d in entry["shape"]), np.dtype(entry["dtype"])


class GraphExecutor:
    """An executor of one model on one device, with its own buffers."""

    def __init__(self, lib: Library, name: str, dev: Device) -> None:
        if dev.kind != "cpu":
            raise KilnError(f"model '{name}' was built for cpu; device {dev} is not available "
                            "to it")
        self.lib, self.name, self.device = lib, name, dev
        try:
            self._setup(lib.manifest["models"][name])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise FormatError(f"{lib.path}: model '{name}' has a malformed manifest entry: "
                              f"{e!r}") from None

    def _setup(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        arena_bytes = int(spec["arena_bytes"])
        raw = np.empty(arena_bytes + _ALIGN, dtype=np.uint8)
        start = (-raw.ctypes.data) % _ALIGN
        self.arena = raw[start:start + arena_bytes]
        self.params = {}
        for p in spec["params"]:
            pname, shape, dtype = _tensor_spec(p)
            data = self.lib.blob.weight(int(p["weight"]))
            count = int(np.prod(shape, dtype=np.int64))
            if count * dtype.itemsize != len(data):
                raise FormatError(f"param '{pname}': {shape} {dtype} does not match its "
                                  f"{len(data)}-byte weight region")
            self.params[pname] = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
        self.inputs = {}
        for entry in spec["inputs"]:
            iname, shape, dtype = _tensor_spec(entry)
            self.inputs[iname] = self._view(entry["loc"], shape, dtype)
        self.outputs = []
        for entry in spec["outputs"]:
            oname, shape, dtype = _tensor_spec(entry)
            self.outputs.append((oname, self._view(entry["loc"], shape, dtype)))
        self.calls = []
        for k in spec["kernels"]:
            fn = getattr(self.lib.native, str(k["func"]), None)
            if fn is None:
                raise FormatError(f"kernel function {k['func']} is missing from the library")
            fn.argtypes, fn.restype = [ctypes.c_void_p], None
            ptrs = [self._pointer(loc) for loc in k["args"]]
            self.calls.append((fn, (ctypes.c_void_p * len(ptrs))(*ptrs)))

    def _view(self, loc: dict[str, Any], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The array at a manifest location (arena offset or param), bounds-checked."""
        if "param" in loc:
            array = self.params[str(loc["param"])]
            if array.shape != shape or array.dtype != dtype:
                raise FormatError(f"param {loc['param']} is {array.shape} {array.dtype}, "
                                  f"used as {shape} {dtype}")
            return array
        offset = int(loc["arena"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset < 0 or offset + nbytes > len(self.arena):
            raise FormatError(f"tensor at arena offset {offset} (+{nbytes}) lies outside the "
                              f"{len(self.arena)}-byte arena")
        return self.arena[offset:offset + nbytes].view(dtype).reshape(shape)

    def _pointer(self, loc: dict[str, Any]) -> int:
        if "param" in loc:
            return self.params[str(loc["param"])].ctypes.data
        offset, nbytes = int(loc["arena"]), int(loc["nbytes"])
        if offset < 0 or nbytes < 0 or offset + nbytes > len(self.arena):
            raise FormatError(f"kernel argument at arena offset {offset} (+{nbytes}) lies "
                              f"outside the {len(self.arena)}-byte arena")
        return self.arena.ctypes.data + offset

    def set_input(self, name: str, value: Any) -> None:
        """Copy value into input `name`, checking its shape and dtype."""
        if name not in self.inputs:
            raise InputError(f"model '{self.name}' has no input '{name}'; "
                             f"its inputs are {list(self.inputs)}")
        dest = self.inputs[name]
        array = np.asarray(value)
        if array.dtype != dest.dtype or array.shape != dest.shape:
            raise InputError(f"input '{name}': got {array.dtype}{list(array.shape)}, expected "
                             f"{dest.dtype}{list(dest.shape)}")
        np.copyto(dest, array)

    def run(self) -> None:
        """Run every kernel once, in order."""
        for fn, args in self.calls:
            fn(args)

    def get_output(self, index: int) -> np.ndarray:
        """A copy of output `index` (the arena is reused by the next run)."""
        if not 0 <= index < len(self.outputs):
            raise InputError(f"output index {index} out of range: model '{self.name}' has "
                             f"{len(self.outputs)} outputs")
        return self.outputs[index][1].copy()
