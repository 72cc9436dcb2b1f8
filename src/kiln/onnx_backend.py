"""kiln as an onnx.backend.base.Backend, so ONNX's own node test suite can run against it.

A model is compiled when first run, for the shapes of the inputs it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .compiler import build
from .frontend.onnx import from_onnx
from .runtime import GraphModule, cpu


class KilnRep(BackendRep):
    """A prepared model; compiles (once per input shapes) and runs on kiln's CPU executor."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inputs = [i.name for i in model.graph.input
                       if i.name not in {init.name for init in model.graph.initializer}]
        self._modules: dict[tuple, GraphModule] = {}

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = {n: np.asarray(a) for n, a in zip(self.inputs, arrays, strict=False)}
        key = tuple((n, a.shape, a.dtype.name) for n, a in sorted(feeds.items()))
        if key not in self._modules:
            mod, params = from_onnx(self.model, shapes={n: a.shape for n, a in feeds.items()})
            lib = build(mod, params=params, progress=False)
            self._modules[key] = GraphModule(lib["default"](cpu(0)))
        gmod = self._modules[key]
        gmod.set_input(**feeds)
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
