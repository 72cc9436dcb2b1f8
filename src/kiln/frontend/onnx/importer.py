"""from_onnx: an ONNX model (any opset from 7, any IR version onnx reads) to a kiln Module.

Dynamic dimensions are fixed from `shapes`; every shape computation is folded while
importing, so the IR holds only static shapes. Unsupported ops are all reported at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import ModelImportError, ShapeError, UnsupportedOpError
from ...ir import GraphBuilder, Module, TensorType, Value
from ...ir.types import check_dtype
from ...passes.dce import eliminate_dead_code
from . import ops as _ops  # noqa: F401  (registers the converters)
from .registry import ConvertContext, get_converter

ModelLike = onnx.ModelProto | str | os.PathLike | bytes


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Read a model from a path, bytes or a ModelProto, with a kiln error when it cannot."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(os.fspath(model))
    except FileNotFoundError as e:
        raise ModelImportError(f"model file not found: {model}") from e
    except Exception as e:  # protobuf and onnx raise many kinds
        raise ModelImportError(f"cannot read ONNX model {model!r}: {e}") from e


def _input_type(vi: onnx.ValueInfoProto, shapes: Mapping, dtypes: Mapping) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"input '{vi.name}': only tensor inputs are supported")
    tt = vi.type.tensor_type
    if vi.name in dtypes:
        dtype = check_dtype(dtypes[vi.name])
    else:
        dtype = check_dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    if vi.name in shapes:
        shape = tuple(int(d) for d in shapes[vi.name])
        if tt.HasField("shape") and len(tt.shape.dim) != len(shape):
            raise ShapeError(f"input '{vi.name}': shape {shape} given, but the model's input "
                             f"has rank {len(tt.shape.dim)}")
        return TensorType(shape, dtype)
    if not tt.HasField("shape"):
        raise ShapeError(f"input '{vi.name}' has no shape in the model; give it in shapes=")
    dims, symbolic = [], []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(d.dim_value)
        else:
            symbolic.append(d.dim_param or f"?{k}")
    if symbolic:
        raise ShapeError(f"input '{vi.name}' has dynamic dims {symbolic}; give its shape in "
                         f"shapes={{'{vi.name}': (...)}}")
    return TensorType(tuple(dims), dtype)


def _check_supported(graph: onnx.GraphProto) -> None:
    missing = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or get_converter(node.op_type) is None:
            domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            missing.append(f"{node.name or node.output[0]} ({domain}{node.op_type})")
    if missing:
        kinds = sorted({m.split("(")[-1].rstrip(")") for m in missing})
        raise UnsupportedOpError(
            f"{len(missing)} node(s) use ops kiln does not support ({', '.join(kinds)}): "
            + "; ".join(missing)
        )


def from_onnx(
    model: ModelLike,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> tuple[Module, dict[str, np.ndarray]]:
    """Import an ONNX model; return the module and its params (initializers and folded values)."""
    proto = load_model(model)
    shapes, dtypes = dict(shapes or {}), dict(dtypes or {})
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph = proto.graph
    _check_supported(graph)

    builder = GraphBuilder()
    env: dict[str, Value] = {}
    for init in graph.initializer:
        try:
            array = numpy_helper.to_array(init, base_dir=_base_dir(model))
        except Exception as e:
            raise ModelImportError(f"initializer '{init.name}' cannot be read: {e}") from e
        env[init.name] = builder.add_constant(init.name, array)
    for vi in graph.input:
        if vi.name not in env:  # IR < 4 lists initializers among the inputs too
            env[vi.name] = builder.add_input(vi.name, _input_type(vi, shapes, dtypes))
    unknown = set(shapes) - {vi.name for vi in graph.input}
    if unknown:
        raise ShapeError(f"shapes given for unknown inputs {sorted(unknown)}; the model's "
                         f"inputs are {[vi.name for vi in graph.input if vi.name not in env]}")

    for node in graph.node:
        cx = ConvertContext(builder, node, env, opset)
        outputs = get_converter(node.op_type)(cx)
        for name, value in zip(node.output, outputs, strict=False):
            if name and value is not None:
                env[name] = value
    missing = [o.name for o in graph.output if o.name not in env]
    if missing:
        raise ModelImportError(f"graph outputs {missing} are not produced by any node")
    mod = builder.finish([env[o.name] for o in graph.output], [o.name for o in graph.output])
    mod.source = _provenance(proto, opset)
    eliminate_dead_code(mod)
    params = {p.name: builder.constants[p.name] for p in mod.graph.params}
    return mod, params


def _provenance(proto: onnx.ModelProto, opset: int) -> dict[str, str]:
    """What the library records about its source model."""
    from blake3 import blake3

    return {"format": "onnx", "opset": str(opset), "ir_version": str(proto.ir_version),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "blake3": blake3(proto.SerializeToString(deterministic=True)).hexdigest()}


def _base_dir(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.dirname(os.path.abspath(os.fspath(model)))
    return ""
