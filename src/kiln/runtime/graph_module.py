"""GraphModule: the user-facing wrapper of an executor (set_input / run / get_output)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, KilnError
from .params import load_params


class GraphModule:
    """Wraps the executor created by `lib[name](device)`."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def set_input(self, key: str | None = None, value: Any = None, **inputs: Any) -> None:
        """Set one input by name (`set_input("x", a)`) or several (`set_input(x=a, y=b)`)."""
        if key is not None:
            inputs = {key: value, **inputs}
        for name, array in inputs.items():
            self.executor.set_input(name, array)

    def run(self, **inputs: Any) -> None:
        """Run the model, after setting any inputs given."""
        if inputs:
            self.set_input(**inputs)
        self.executor.run()

    def get_output(self, index: int) -> np.ndarray:
        return self.executor.get_output(index)

    def get_num_outputs(self) -> int:
        return len(self.executor.outputs)

    def get_num_inputs(self) -> int:
        return len(self.executor.inputs)

    @property
    def input_names(self) -> list[str]:
        return list(self.executor.inputs)

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.executor.outputs]

    @property
    def input_info(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Input name -> (shape, dtype name)."""
        return {n: (a.shape, a.dtype.name) for n, a in self.executor.inputs.items()}

    @property
    def output_info(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Output name -> (shape, dtype name)."""
        return {n: (shape, dtype.name) for n, (shape, dtype) in self.executor.outputs}

    def load_params(self, params: dict[str, Any] | str) -> None:
        """Set the weights of a model exported without them (a dict or a .safetensors path)."""
        if not isinstance(params, dict):
            params = load_params(params, model=self.executor.name)
        self.executor.load_params(params)

    def profile(self, repeat: int = 10) -> list[dict[str, Any]]:
        """Per-kernel times (graph executor only): kernel ops, node, output shapes, ms."""
        if not hasattr(self.executor, "profile"):
            raise KilnError(f"profiling needs the graph executor; model '{self.executor.name}' "
                            f"uses {self.executor.spec['executor']}")
        return self.executor.profile(repeat)

    def get_output_by_name(self, name: str) -> np.ndarray:
        names = self.output_names
        if name not in names:
            raise InputError(f"no output '{name}'; outputs are {names}")
        return self.get_output(names.index(name))
