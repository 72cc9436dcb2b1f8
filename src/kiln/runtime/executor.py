"""Executors: run one model of a library on one device, with buffers of their own.

All memory is allocated once at creation: one arena laid out by the compiler's memory plan
(inputs, outputs and intermediates at fixed offsets) plus the weights, used in place from
the mapped library (or loaded later for a library exported without them). Two kinds share
everything but run(): the graph executor calls each kernel from Python (and can profile
them); the AOT executor makes one native call into the entry point the compiler generated.
Native calls release the GIL, so executors may run in different threads at once.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, InputError, KilnError, LimitError
from .compat import physical_memory
from .device import Device
from .offload import external_step

if TYPE_CHECKING:
    from .library import Library

_ALIGN = 64


def _tensor_spec(entry: dict[str, Any]) -> tuple[str, tuple[int, ...], np.dtype]:
    return str(entry["name"]), tuple(int(d) for d in entry["shape"]), np.dtype(entry["dtype"])


def _allocate_arena(nbytes: int, what: str) -> np.ndarray:
    """The raw arena (with room to align it), refused with the sizes named when this machine
    cannot hold it, rather than a bare MemoryError or the OOM killer."""
    physical = physical_memory()
    if physical is not None and nbytes > physical:
        raise LimitError(f"{what} needs a {nbytes}-byte memory arena; this machine has "
                         f"{physical} bytes of memory")
    try:
        return np.empty(nbytes + _ALIGN, dtype=np.uint8)
    except MemoryError:
        raise LimitError(f"{what}: cannot allocate its {nbytes}-byte memory arena") from None


def _native(lib: Library, name: str, argtypes: list) -> Any:
    fn = getattr(lib.native, name, None)
    if fn is None:
        raise FormatError(f"{lib.path}: function {name} is missing from the library")
    fn.argtypes, fn.restype = argtypes, None
    return fn


class Executor:
    """What both executor kinds share: buffers, weights, inputs and outputs."""

    def __init__(self, lib: Library, name: str, dev: Device) -> None:
        if dev.kind != "cpu":
            raise KilnError(f"model '{name}' was built for cpu; it cannot run on {dev}")
        if dev.index != 0:
            raise KilnError(f"device {dev} is not present: this machine has cpu:0 only")
        self.lib, self.name, self.device = lib, name, dev
        self.num_threads = dev.threads()  # fixed at creation, applied before each run
        self.native_calls = 0  # native calls made by run(), for tests and profiling
        self._set_threads = _native(lib, "kiln_set_num_threads", [ctypes.c_int])
        self._set_threads(self.num_threads)  # threads start now, not in the first run
        try:
            self._setup(lib.manifest["models"][name])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise FormatError(f"{lib.path}: model '{name}' has a malformed manifest entry: "
                              f"{e!r}") from None
        if not self.missing_params():  # bind now: the first run costs what the others do
            self._ensure_bound()

    def _setup(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        arena_bytes = int(spec["arena_bytes"])
        raw = _allocate_arena(arena_bytes, f"{self.lib.path}: model '{self.name}'")
        start = (-raw.ctypes.data) % _ALIGN
        self.arena = raw[start:start + arena_bytes]
        self.param_specs = {str(p["name"]): p for p in spec["params"]}
        self.params: dict[str, np.ndarray] = {}
        for pname, p in self.param_specs.items():
            if p.get("weight") is not None:
                self.params[pname] = self._weight(p)
        self.inputs = {}
        for entry in spec["inputs"]:
            iname, shape, dtype = _tensor_spec(entry)
            self.inputs[iname] = self._arena_view(entry["loc"], shape, dtype)
        self._outputs = [(_tensor_spec(e), e["loc"]) for e in spec["outputs"]]
        self._bound = False

    def _weight(self, p: dict[str, Any]) -> np.ndarray:
        pname, shape, dtype = _tensor_spec(p)
        data = self.lib.blob.weight(int(p["weight"]))
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != len(data):
            raise FormatError(f"param '{pname}': {shape} {dtype} does not match its "
                              f"{len(data)}-byte weight region")
        return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)

    def _arena_view(self, loc: dict[str, Any], shape: tuple[int, ...],
                    dtype: np.dtype) -> np.ndarray:
        offset = int(loc["arena"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset < 0 or offset + nbytes > len(self.arena):
            raise FormatError(f"tensor at arena offset {offset} (+{nbytes}) lies outside the "
                              f"{len(self.arena)}-byte arena")
        return self.arena[offset:offset + nbytes].view(dtype).reshape(shape)

    def _view(self, loc: dict[str, Any], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if "param" not in loc:
            return self._arena_view(loc, shape, dtype)
        array = self.params[str(loc["param"])]
        if array.shape != shape or array.dtype != dtype:
            raise FormatError(f"param {loc['param']} is {array.shape} {array.dtype}, "
                              f"used as {shape} {dtype}")
        return array

    def _pointer(self, loc: dict[str, Any]) -> int:
        if "param" in loc:
            return self.params[str(loc["param"])].ctypes.data
        offset, nbytes = int(loc["arena"]), int(loc["nbytes"])
        if offset < 0 or nbytes < 0 or offset + nbytes > len(self.arena):
            raise FormatError(f"kernel argument at arena offset {offset} (+{nbytes}) lies "
                              f"outside the {len(self.arena)}-byte arena")
        return self.arena.ctypes.data + offset

    @property
    def outputs(self) -> list[tuple[str, tuple[tuple[int, ...], np.dtype]]]:
        """(name, (shape, dtype)) of each output."""
        return [(n, (shape, dtype)) for (n, shape, dtype), _ in self._outputs]

    def missing_params(self) -> list[str]:
        return [n for n in self.param_specs if n not in self.params]

    def load_params(self, params: dict[str, Any]) -> None:
        """Set weights by name (for a library exported without them); all are checked."""
        unknown = sorted(set(params) - set(self.param_specs))
        if unknown:
            raise InputError(f"model '{self.name}' has no params {unknown}; its params are "
                             f"{sorted(self.param_specs)}")
        for pname, value in params.items():
            _, shape, dtype = _tensor_spec(self.param_specs[pname])
            array = np.asarray(value)
            if array.shape != shape or array.dtype != dtype:
                raise InputError(f"param '{pname}': got {array.dtype}{list(array.shape)}, "
                                 f"expected {dtype}{list(shape)}")
            self.params[pname] = np.array(array, order="C", copy=True)
        self._bound = False

    def set_input(self, name: str, value: Any) -> None:
        """Copy value into input `name` (or a param, by name), checking shape and dtype."""
        if name in self.param_specs and name not in self.inputs:
            self.load_params({name: value})
            return
        if name not in self.inputs:
            raise InputError(f"model '{self.name}' has no input '{name}'; "
                             f"its inputs are {list(self.inputs)}")
        dest = self.inputs[name]
        array = np.asarray(value)
        if array.dtype != dest.dtype or array.shape != dest.shape:
            raise InputError(f"input '{name}': got {array.dtype}{list(array.shape)}, expected "
                             f"{dest.dtype}{list(dest.shape)}")
        np.copyto(dest, array)

    def _ensure_bound(self) -> None:
        if self._bound:
            return
        missing = self.missing_params()
        if missing:
            raise InputError(f"model '{self.name}' was exported without its weights: call "
                             f"load_params(...) first; missing {len(missing)} params, e.g. "
                             f"{missing[:5]}")
        self._bind()
        self._output_views = [self._view(loc, shape, dtype)
                              for (_, shape, dtype), loc in self._outputs]
        self._bound = True

    def run(self) -> None:
        """Run the model once on the current inputs."""
        self._ensure_bound()
        self._set_threads(self.num_threads)
        self._run()
        self.lib.check_weights()

    def get_output(self, index: int) -> np.ndarray:
        """A copy of output `index` (the arena is reused by the next run)."""
        if not 0 <= index < len(self._outputs):
            raise InputError(f"output index {index} out of range: model '{self.name}' has "
                             f"{len(self._outputs)} outputs")
        self._ensure_bound()
        return self._output_views[index].copy()

    def _bind(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError


class GraphExecutor(Executor):
    """Steps through the model's kernels from Python, one native call each (an external
    function's step runs its engine: kiln/runtime/offload.py)."""

    def _bind(self) -> None:
        self.calls: list[Callable[[], Any]] = []
        for k in self.spec["kernels"]:
            if "external" in k:
                self.calls.append(external_step(self, k))
                continue
            fn = _native(self.lib, str(k["func"]), [ctypes.c_void_p])
            ptrs = [self._pointer(loc) for loc in k["args"]]
            self.calls.append(functools.partial(fn, (ctypes.c_void_p * len(ptrs))(*ptrs)))
        self._native_steps = sum("external" not in k for k in self.spec["kernels"])

    def _run(self) -> None:
        for call in self.calls:
            call()
        self.native_calls += self._native_steps

    def profile(self, repeat: int = 10) -> list[dict[str, Any]]:
        """Time each kernel (best of repeat runs): op names, output shapes, milliseconds."""
        self._ensure_bound()
        self._set_threads(self.num_threads)
        best = [float("inf")] * len(self.calls)
        for _ in range(max(1, repeat)):
            for k, call in enumerate(self.calls):
                start = time.perf_counter()
                call()
                best[k] = min(best[k], time.perf_counter() - start)
        self.lib.check_weights()
        return [{"kernel": k["label"], "node": k["node"], "shapes": k["shapes"], "ms": t * 1e3}
                for k, t in zip(self.spec["kernels"], best, strict=True)]


class AotExecutor(Executor):
    """Runs the whole model in one native call to the compiler-generated entry point; with
    external functions, the entry is split at them: "aot" lists the native segments and the
    external steps in order (kiln/runtime/offload.py runs those)."""

    def _bind(self) -> None:
        ptrs = [self.params[str(p["name"])].ctypes.data for p in self.spec["params"]]
        self.param_table = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        steps = self.spec.get("aot") or [{"entry": self.spec["entry"]}]
        externals = {str(k["external"]): k for k in self.spec["kernels"] if "external" in k}
        self.steps: list[Callable[[], Any]] = []
        for step in steps:
            if "external" in step:
                self.steps.append(external_step(self, externals[str(step["external"])]))
                continue
            entry = _native(self.lib, str(step["entry"]), [ctypes.c_void_p, ctypes.c_void_p])
            self.steps.append(functools.partial(entry, self.arena.ctypes.data,
                                                self.param_table))

    def _run(self) -> None:
        for step in self.steps:
            step()
        self.native_calls += 1


EXECUTORS = {"graph": GraphExecutor, "aot": AotExecutor}
