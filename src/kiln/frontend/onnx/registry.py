"""The converter contract: one function per ONNX op type, turning a node into IR nodes.

A converter gets a ConvertContext for one node and returns its output values (None for an
optional output it does not produce). Inputs an IR op needs at compile time (shapes, axes,
pads, scales...) are read with `cx.const_input`, which names the node and input if the
value is not known when compiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ...errors import LimitError, NotConstantError, ShapeError, UnsupportedOpError
from ...ir import Value
from ...ops import GraphBuilder


def node_name(node: onnx.NodeProto) -> str:
    """The name messages give a node: its own, else its op type and first output."""
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def describe(node: onnx.NodeProto) -> str:
    """A node as messages name it: `node 'name' (OpType)`."""
    return f"node '{node_name(node)}' ({node.op_type})"


class ConvertContext:
    """One ONNX node being converted: its inputs, attributes, opset and the graph builder."""

    def __init__(self, builder: GraphBuilder, node: onnx.NodeProto, env: dict[str, Value],
                 opset: int) -> None:
        self.builder = builder
        self.node = node
        self.env = env
        self.opset = opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for key, value in self.attrs.items():
            if isinstance(value, bytes):
                self.attrs[key] = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                self.attrs[key] = [v.decode() for v in value]

    @property
    def name(self) -> str:
        return node_name(self.node)

    def where(self) -> str:
        return describe(self.node)

    @property
    def num_inputs(self) -> int:
        """Number of inputs given (trailing empty optional inputs not counted)."""
        names = list(self.node.input)
        while names and not names[-1]:
            names.pop()
        return len(names)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def input(self, i: int) -> Value:
        """Input i, which must be present."""
        if not self.has_input(i):
            raise ShapeError(f"{self.where()}: input {i} is required")
        name = self.node.input[i]
        if name not in self.env:  # its producer exists (topology.py) but did not compute it
            raise UnsupportedOpError(f"{self.where()}: input {i} ('{name}') is an output "
                                     "kiln does not compute (optional, or one more than the "
                                     "op has)")
        return self.env[name]

    def optional_input(self, i: int) -> Value | None:
        return self.input(i) if self.has_input(i) else None

    def const_input(self, i: int, default: Any = None) -> np.ndarray | None:
        """The value of input i, which must be known at compile time (default if absent)."""
        if not self.has_input(i):
            return default
        value = self.input(i)
        array = self.builder.constant_of(value)
        if array is None and value.name in self.builder.unfolded:
            raise LimitError(f"{self.where()}: input {i} ('{self.node.input[i]}') must be known "
                             f"at compile time, but is not folded: "
                             f"{self.builder.unfolded[value.name]}")
        if array is None:
            raise NotConstantError(
                f"{self.where()}: input {i} ('{self.node.input[i]}') must be known at compile "
                "time (a constant or computed from shapes), but depends on model inputs",
                self.node.input[i],
            )
        return array

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def given(self, **convert: Callable[[Any], Any]) -> dict[str, Any]:
        """The attributes named in convert that the node sets, each converted (float, bool...).

        For IR attributes whose default is ONNX's: the op definition (kiln/ops) fills in those
        the node leaves out, so no converter restates a default.
        """
        return {name: fn(self.attrs[name]) for name, fn in convert.items() if name in self.attrs}

    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, *,
             num_outputs: int = 1) -> list[Value]:
        """Add an IR node for this ONNX node, named after it; folds if inputs are constant."""
        names = [o or f"{self.name}_unused{k}" for k, o in enumerate(self.node.output)]
        names = (names + [f"{self.name}_out{k}" for k in range(len(names), num_outputs)])
        return self.builder.emit(op, inputs, attrs, name=self.name, out_names=names[:num_outputs])

    def emit1(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None) -> Value:
        """Like emit, for a single-output op; returns the value."""
        return self.emit(op, inputs, attrs)[0]

    def constant(self, array: np.ndarray, hint: str = "const") -> Value:
        return self.builder.add_constant(f"{self.name}_{hint}", np.asarray(array))


ConverterFn = Callable[[ConvertContext], list[Value | None]]
_CONVERTERS: dict[str, ConverterFn] = {}


def converter(*op_types: str) -> Callable[[ConverterFn], ConverterFn]:
    """Decorator registering the converter of one or more ONNX op types (default domain)."""

    def wrap(fn: ConverterFn) -> ConverterFn:
        for op_type in op_types:
            if op_type in _CONVERTERS:
                raise ValueError(f"converter for {op_type} registered twice")
            _CONVERTERS[op_type] = fn
        return fn

    return wrap


def get_converter(op_type: str) -> ConverterFn | None:
    return _CONVERTERS.get(op_type)


def supported_op_types() -> list[str]:
    return sorted(_CONVERTERS)
