"""Resize and Upsample (IR op `resize`): compiled kernels and folding against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import check_against_ort, ort_run

_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
          "uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int32": TensorProto.INT32,
          "int64": TensorProto.INT64}


def _model(op: str, x: np.ndarray, consts: dict[str, np.ndarray | None], opset: int,
           *, x_const: bool = False, **attrs) -> onnx.ModelProto:
    """A one-node model op(x, *consts): consts become initializers, None an empty input."""
    names = ["x"] + [name if value is not None else "" for name, value in consts.items()]
    while names[-1] == "":
        names.pop()
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items() if v is not None]
    inputs = [helper.make_tensor_value_info("x", _TYPES[x.dtype.name], x.shape)]
    if x_const:
        inits.append(numpy_helper.from_array(x, "x"))
        inputs = []
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)], "g", inputs,
        [helper.make_tensor_value_info("y", _TYPES[x.dtype.name], None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _resize(x, *, scales=None, sizes=None, roi=None, opset=19, **attrs) -> onnx.ModelProto:
    consts = {"roi": None if roi is None else np.array(roi, np.float32),
              "scales": None if scales is None else np.array(scales, np.float32),
              "sizes": None if sizes is None else np.array(sizes, np.int64)}
    return _model("Resize", x, consts, opset, **attrs)


def _data(shape, dtype="float32", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 200), shape).astype(dtype)
