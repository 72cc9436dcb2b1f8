"""kiln as an onnx.backend.base.Backend, so ONNX's own node test suite can run against it.

kiln compiles for static shapes, so a model is compiled when first run, for the shapes of
the inputs it is given. A model input that an op needs at compile time (Reshape's shape,
Resize's scales, Slice's starts...) is baked in as a constant from the value given, and the
compiled module is reused only for that same value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from .compiler import build
from .errors import NotConstantError
from .frontend.onnx import from_onnx
from .runtime import GraphModule, cpu


def _freeze(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of model whose inputs named in values are initializers with those values."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    kept = [i for i in frozen.graph.input if i.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    frozen.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    return frozen


class KilnRep(BackendRep):
    """A prepared model; compiles (once per input shapes) and runs on kiln's CPU executor."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        initializers = {init.name for init in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in initializers]
        self.baked: set[str] = set()
        self._modules: dict[tuple, GraphModule] = {}

    def _compile(self, feeds: dict[str, np.ndarray]) -> GraphModule:
        while True:
            frozen = _freeze(self.model, {k: feeds[k] for k in self.baked})
            shapes = {n: a.shape for n, a in feeds.items() if n not in self.baked}
            try:
                mod, params = from_onnx(frozen, shapes=shapes)
                break
            except NotConstantError as e:
                if e.value_name not in feeds or e.value_name in self.baked:
                    raise
                self.baked.add(e.value_name)
        return GraphModule(build(mod, params=params, progress=False)["default"](cpu(0)))

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = {n: np.asarray(a) for n, a in zip(self.inputs, arrays, strict=False)}
        key = tuple((n, a.shape, a.dtype.name, a.tobytes() if n in self.baked else b"")
                    for n, a in sorted(feeds.items()))
        if key not in self._modules:
            self._modules[key] = self._compile(feeds)
        gmod = self._modules[key]
        gmod.set_input(**{k: v for k, v in feeds.items() if k not in self.baked})
        gmod.run()
        return tuple(gmod.get_output(i) for i in range(gmod.get_num_outputs()))


class KilnBackend(Backend):
    """The onnx backend interface over kiln (CPU only)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnRep:
        super().prepare(model, device, **kwargs)
        return KilnRep(model)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device
