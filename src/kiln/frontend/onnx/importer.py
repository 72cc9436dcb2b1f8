"""from_onnx: an ONNX model (default-domain opsets 1 to 28, any IR version onnx reads) to a
kiln Module.

Dynamic dimensions are fixed from `shapes`; every shape computation is folded while
importing, so the IR holds only static shapes. Unsupported ops are all reported at once.
A malformed model (unknown or doubly produced values, cycles, bad dims, an opset out of
range) raises ModelImportError naming the node or value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from blake3 import blake3
from onnx import helper, numpy_helper

from ...errors import ModelImportError, ShapeError, UnsupportedOpError
from ...ir import Module, TensorType, Value
from ...ir.types import MAX_TENSOR_BYTES, check_dtype
from ...ops import GraphBuilder
from ...passes.dce import eliminate_dead_code
from . import ops as _ops  # noqa: F401  (registers the converters)
from .registry import ConvertContext, get_converter
from .topology import ordered_nodes

ModelLike = onnx.ModelProto | str | os.PathLike | bytes

# The default-domain opsets kiln imports: the converters resolve the differences between them,
# and the ONNX node tests of the pinned onnx (constraints.txt; its newest opset is 28) pass.
# Raise MAX_OPSET with the onnx pin, once the ops the new opsets changed are handled.
MIN_OPSET, MAX_OPSET = 1, 28


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
    """Graph input vi's type: dtype from dtypes or the model, shape from shapes or the model."""
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"input '{vi.name}': only tensor inputs are supported")
    tt = vi.type.tensor_type
    if vi.name in dtypes:
        dtype = check_dtype(dtypes[vi.name])
    else:
        dtype = check_dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    if vi.name in shapes:
        shape = _given_shape(vi.name, shapes[vi.name])
        if tt.HasField("shape") and len(tt.shape.dim) != len(shape):
            raise ShapeError(f"input '{vi.name}': shape {shape} given, but the model's input "
                             f"has rank {len(tt.shape.dim)}")
    else:
        shape = _model_shape(vi)
    try:
        return TensorType(shape, dtype)
    except ShapeError as e:
        raise ShapeError(f"input '{vi.name}': {e}") from e


def _given_shape(name: str, given: Sequence[int]) -> tuple[int, ...]:
    """A shape from shapes=, checked: a sequence of ints >= 0."""
    try:
        shape = tuple(int(d) for d in given)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"input '{name}': shapes= gives {given!r}, not a sequence of ints") from e
    if any(d < 0 for d in shape):
        raise ShapeError(f"input '{name}': shapes= gives negative dims {list(shape)}")
    return shape


def _model_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """Input vi's shape as the model states it; every dim must be known (else give shapes=)."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise ShapeError(f"input '{vi.name}' has no shape in the model; give it in shapes=")
    dims, symbolic = [], []
    for k, d in enumerate(tt.shape.dim):
        if not d.HasField("dim_value"):
            symbolic.append(d.dim_param or f"?{k}")
        elif d.dim_value < 0:
            raise ModelImportError(f"input '{vi.name}': dim {k} is {d.dim_value} in the model; "
                                   "dims must be >= 0")
        else:
            dims.append(d.dim_value)
    if symbolic:
        raise ShapeError(f"input '{vi.name}' has dynamic dims {symbolic}; give its shape in "
                         f"shapes={{'{vi.name}': (...)}}")
    return tuple(dims)


def _read_initializer(init: onnx.TensorProto, base_dir: str) -> np.ndarray:
    """Initializer init as an array, its dims checked before its data is read."""
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    except KeyError:
        raise ModelImportError(f"initializer '{init.name}' has unknown data type "
                               f"{init.data_type}") from None
    dims = list(init.dims)
    if any(d < 0 for d in dims):
        raise ModelImportError(f"initializer '{init.name}' has negative dims {dims}")
    nbytes = math.prod(dims) * itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelImportError(f"initializer '{init.name}': dims {dims} make {nbytes} bytes, "
                               f"over the int64 limit of {MAX_TENSOR_BYTES}")
    try:  # to_array checks the data against the dims
        return numpy_helper.to_array(init, base_dir=base_dir)
    except Exception as e:  # onnx raises many kinds for a bad tensor
        raise ModelImportError(f"initializer '{init.name}' cannot be read: {e}") from e


def _default_opset(proto: onnx.ModelProto) -> int:
    """The model's default-domain ('' or 'ai.onnx') opset, which kiln must support."""
    versions = sorted({o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")})
    supported = f"kiln supports default-domain opsets {MIN_OPSET} to {MAX_OPSET}"
    if not versions:
        raise ModelImportError(f"the model imports no default-domain ('' or 'ai.onnx') opset; "
                               f"{supported}")
    if len(versions) > 1:
        raise ModelImportError(f"the model imports the default domain at several opsets "
                               f"{versions}; {supported}, one at a time")
    if not MIN_OPSET <= versions[0] <= MAX_OPSET:
        raise ModelImportError(f"the model's default-domain opset is {versions[0]}; {supported}")
    return versions[0]


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
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> tuple[Module, dict[str, np.ndarray]]:
    """Import an ONNX model; return the module and the params it reads (initializers and
    folded values). shapes fixes input shapes ({name: dims}), dtypes input dtypes."""
    proto = load_model(model)
    shapes, dtypes = dict(shapes or {}), dict(dtypes or {})
    opset = _default_opset(proto)
    graph = proto.graph
    nodes = ordered_nodes(graph)
    _check_supported(graph)

    builder = GraphBuilder()
    env: dict[str, Value] = {}
    for init in graph.initializer:
        array = _read_initializer(init, _base_dir(model))
        try:
            env[init.name] = builder.add_constant(init.name, array)
        except ShapeError as e:
            raise ShapeError(f"initializer '{init.name}': {e}") from e
    runtime_inputs = [vi.name for vi in graph.input if vi.name not in env]
    for vi in graph.input:
        if vi.name not in env:  # IR < 4 lists initializers among the inputs too
            env[vi.name] = builder.add_input(vi.name, _input_type(vi, shapes, dtypes))
    unknown = set(shapes) - set(runtime_inputs)
    if unknown:
        raise ShapeError(f"shapes given for unknown inputs {sorted(unknown)}; the model's "
                         f"inputs are {runtime_inputs}")

    for node in nodes:
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
    # Converters read compile-time inputs (shapes, axes, pads...) into attributes and the
    # builder folds what depends on constants alone, which leaves initializers and folded
    # values unread (a Reshape's shape, the operands of a folded node): drop them here, so
    # from_onnx returns only the weights the module reads, not dead arrays held in memory.
    eliminate_dead_code(mod)
    params = {p.name: builder.constants[p.name] for p in mod.graph.params}
    return mod, params


def _provenance(proto: onnx.ModelProto, opset: int) -> dict[str, str]:
    """What the library records about its source model."""
    return {"format": "onnx", "opset": str(opset), "ir_version": str(proto.ir_version),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "blake3": blake3(proto.SerializeToString(deterministic=True)).hexdigest()}


def _base_dir(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.dirname(os.path.abspath(os.fspath(model)))
    return ""
