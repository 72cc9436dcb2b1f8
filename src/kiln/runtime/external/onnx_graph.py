"""A kiln-external JSON graph as an ONNX model, for the engines that read ONNX.

onnxruntime and OpenVINO both build their engines from the model made here, so they share
one mapping (`MAPPINGS`, IR op -> ONNX op) and one `supports`: exactly the ops and attribute
values the mapping writes faithfully. The model is opset 17 (IR version 8), which every
engine release kiln names in its extras reads; IR broadcasting is NumPy's, which is ONNX's
multidirectional broadcasting, so binary ops map one to one.

Names in the model: constants keep their JSON names (they are the library's weight names),
graph inputs the names of the JSON input nodes, other values `<op>_<node id>[_<output>]`,
each made unique. onnx is imported only when a model is built (it is optional at run time).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BackendError
from .base import Backend
from .graph import Ref, TensorSpec, check_for, graph_outputs, input_refs, op_nodes, output_specs_of

if TYPE_CHECKING:  # for the annotations only: onnx is imported when a model is built
    import onnx

OPSET = 17
IR_VERSION = 8
DTYPES = ("float32",)  # what supports() accepts: the dtype every engine runs natively

# attribute converters: JSON values to the ONNX attribute types
_F, _I = float, int


def _ints(v: list) -> list[int]:
    return [int(x) for x in v]


@dataclass(frozen=True)
class Mapping:
    """How one IR op becomes one ONNX node.

    attrs: IR attribute -> (ONNX attribute, converter), written on the node.
    fixed: IR attributes that are not written but must hold a value this mapping handles
    (a predicate each); a node with any attribute outside attrs and fixed is refused.
    """

    onnx_op: str
    attrs: dict[str, tuple[str, Callable]] = field(default_factory=dict)
    fixed: dict[str, Callable[[object], bool]] = field(default_factory=dict)


def _simple(onnx_op: str, **attrs: tuple[str, Callable]) -> Mapping:
    return Mapping(onnx_op, attrs)


def _is_zero(v: object) -> bool:
    return v == 0


def _is_empty(v: object) -> bool:
    return not v


def _all_one(v: object) -> bool:
    return all(x == 1 for x in v)


def _false(v: object) -> bool:
    return not v


def _not_negative(v: object) -> bool:
    return all(x >= 0 for x in v)


_WINDOW = {"strides": ("strides", _ints), "dilations": ("dilations", _ints)}
_CONV = {**_WINDOW, "group": ("group", _I)}
# ceil_mode: ONNX engines differ on windows starting in the end padding; kiln keeps those.
_POOL_FIXED = {"ceil_mode": _false}

MAPPINGS: dict[str, Mapping] = {
    **{op: _simple(onnx) for op, onnx in {
        "relu": "Relu", "sigmoid": "Sigmoid", "hard_swish": "HardSwish", "tanh": "Tanh",
        "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal", "neg": "Neg",
        "abs": "Abs", "erf": "Erf", "softsign": "Softsign", "floor": "Floor", "ceil": "Ceil",
        "sin": "Sin", "cos": "Cos", "sign": "Sign",
        "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max",
        "min": "Min", "global_avg_pool": "GlobalAveragePool", "global_max_pool": "GlobalMaxPool",
    }.items()},
    "leaky_relu": _simple("LeakyRelu", alpha=("alpha", _F)),
    "elu": _simple("Elu", alpha=("alpha", _F)),
    "celu": _simple("Celu", alpha=("alpha", _F)),
    "selu": _simple("Selu", alpha=("alpha", _F), gamma=("gamma", _F)),
    "hard_sigmoid": _simple("HardSigmoid", alpha=("alpha", _F), beta=("beta", _F)),
    "softmax": _simple("Softmax", axis=("axis", _I)),
    "log_softmax": _simple("LogSoftmax", axis=("axis", _I)),
    "concat": _simple("Concat", axis=("axis", _I)),
    "transpose": _simple("Transpose", perm=("perm", _ints)),
    "clip": Mapping("Clip", fixed={"min": lambda v: True, "max": lambda v: True}),  # inputs
    "reshape": Mapping("Reshape", fixed={"shape": lambda v: True}),  # an int64 input
    # packed_n != 0: B is stored in kiln's GEMM panels, which only kiln's kernels read.
    "matmul": Mapping("MatMul", fixed={"packed_n": _is_zero}),
    "gemm": Mapping("Gemm", {"alpha": ("alpha", _F), "beta": ("beta", _F),
                             "trans_a": ("transA", _I), "trans_b": ("transB", _I)},
                    {"packed_n": _is_zero}),
    # kernel_shape comes from the weight; packed or Winograd weights are kiln's own layouts.
    "conv": Mapping("Conv", {**_CONV, "pads": ("pads", _ints)},
                    {"packed_weight": _is_empty, "winograd_weight": _is_empty}),
    # kiln's negative pads (output_padding folded in) have no ONNX form.
    "conv_transpose": Mapping("ConvTranspose", _CONV, {"pads": _not_negative}),
    "max_pool": Mapping("MaxPool", {**_WINDOW, "kernel_shape": ("kernel_shape", _ints),
                                    "pads": ("pads", _ints)}, _POOL_FIXED),
    # AveragePool has dilations only from opset 19.
    "avg_pool": Mapping("AveragePool", {"strides": ("strides", _ints),
                                        "kernel_shape": ("kernel_shape", _ints),
                                        "pads": ("pads", _ints),
                                        "count_include_pad": ("count_include_pad", _I)},
                        {**_POOL_FIXED, "dilations": _all_one}),
}


def supports(node: dict) -> bool:
    """Whether build_model maps node exactly: a known op with one output, float32 tensors,
    and exactly the attributes the mapping knows, each either written (Mapping.attrs) or
    holding a value it handles (Mapping.fixed)."""
    mapping = MAPPINGS.get(node["op"])
    if mapping is None or len(node["outputs"]) != 1:
        return False
    if any(t["dtype"] not in DTYPES for t in node["inputs"] + node["outputs"]):
        return False
    attrs = node["attrs"]
    if set(attrs) != set(mapping.attrs) | set(mapping.fixed):
        return False
    return all(ok(attrs[name]) for name, ok in mapping.fixed.items())


class _Names:
    """Unique ONNX value names: the wanted one, else it with a numeric suffix."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def fresh(self, want: str) -> str:
        name, n = want, 0
        while name in self.taken:
            n += 1
            name = f"{want}_{n}"
        self.taken.add(name)
        return name


def _value_names(graph: dict) -> dict[Ref, str]:
    """The ONNX name of every value of graph (see the module docstring)."""
    nodes = graph["nodes"]
    names = {(i, 0): nodes[i]["name"] for i in graph["constants"]}
    fresh = _Names(set(names.values())).fresh
    for i in graph["inputs"]:
        names[(i, 0)] = fresh(str(nodes[i].get("name") or f"input_{i}"))
    for i, node in op_nodes(graph):
        count = len(node["outputs"])
        for k in range(count):
            names[(i, k)] = fresh(f"{node['op']}_{i}" + (f"_{k}" if count > 1 else ""))
    return names


def _node_proto(graph: dict, i: int, names: dict[Ref, str], extra: list[onnx.TensorProto],
                fresh: Callable[[str], str]) -> onnx.NodeProto:
    """The ONNX node of op node i; extra receives the initializers it adds (a reshape's
    shape, a clip's bounds), named by fresh."""
    from onnx import helper, numpy_helper

    node = graph["nodes"][i]
    op, attrs = node["op"], node["attrs"]
    mapping = MAPPINGS[op]
    inputs = [names[r] for r in input_refs(node)]
    onnx_attrs = {onnx: convert(attrs[ir]) for ir, (onnx, convert) in mapping.attrs.items()}
    if op == "conv":
        w_shape = output_specs_of(graph["nodes"][node["inputs"][1][0]])[0].shape
        onnx_attrs["kernel_shape"] = list(w_shape[2:])
    elif op == "conv_transpose":
        w_shape = output_specs_of(graph["nodes"][node["inputs"][1][0]])[0].shape
        onnx_attrs.update(kernel_shape=list(w_shape[2:]), pads=_ints(attrs["pads"]))
    elif op == "reshape":
        shape = np.asarray(attrs["shape"], np.int64)
        extra.append(numpy_helper.from_array(shape, fresh(f"{names[(i, 0)]}.shape")))
        inputs.append(extra[-1].name)
        if 0 in attrs["shape"]:
            onnx_attrs["allowzero"] = 1  # a 0 is a real size, not "copy the input's"
    elif op == "clip":
        for bound in ("min", "max"):
            if attrs[bound] is None:
                inputs.append("")  # an absent optional input: unbounded on that side
                continue
            value = np.asarray(attrs[bound], np.float32)
            extra.append(numpy_helper.from_array(value, fresh(f"{names[(i, 0)]}.{bound}")))
            inputs.append(extra[-1].name)
        while inputs[-1] == "":
            inputs.pop()
    outputs = [names[(i, k)] for k in range(len(node["outputs"]))]
    return helper.make_node(mapping.onnx_op, inputs, outputs, name=f"{op}_{i}", **onnx_attrs)


def _value_info(name: str, spec: TensorSpec) -> onnx.ValueInfoProto:
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    return helper.make_tensor_value_info(name, elem, list(spec.shape))


def build_model(graph: dict, constants: dict[str, np.ndarray], *,
                checker: type) -> onnx.ModelProto:
    """The onnx.ModelProto computing graph, its constants as initializers.

    checker is the backend building it: the graph, the backend's support of every node and
    the constants are checked first (graph.check_for). Results are graph outputs in order;
    one that is not a fresh op result (an input, a constant, a value listed twice) goes
    through an Identity node, since an ONNX graph output names one value once.
    """
    from onnx import helper, numpy_helper

    check_for(checker, graph, constants)
    nodes = graph["nodes"]
    names = _value_names(graph)
    fresh = _Names(set(names.values())).fresh
    extra: list[onnx.TensorProto] = []
    protos = [_node_proto(graph, i, names, extra, fresh) for i, _ in op_nodes(graph)]
    outputs: list[onnx.ValueInfoProto] = []
    seen: set[str] = set()
    for j, ref in enumerate(graph_outputs(graph)):
        name = names[ref]
        if nodes[ref[0]]["op"] in ("input", "constant") or name in seen:
            name = fresh(f"output_{j}")
            protos.append(helper.make_node("Identity", [names[ref]], [name], name=name))
        seen.add(name)
        outputs.append(_value_info(name, output_specs_of(nodes[ref[0]])[ref[1]]))
    weights = {nodes[i]["name"] for i in graph["constants"]}  # a weight read twice: once
    inits = [numpy_helper.from_array(np.ascontiguousarray(constants[w]), w)
             for w in sorted(weights)]
    inputs = [_value_info(names[(i, 0)], output_specs_of(nodes[i])[0]) for i in graph["inputs"]]
    onnx_graph = helper.make_graph(protos, str(graph["function"]), inputs, outputs,
                                   initializer=inits + extra)
    model = helper.make_model(onnx_graph, producer_name="kiln",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def serialize(model: onnx.ModelProto, function: str) -> bytes:
    """model's bytes; BackendError when protobuf cannot hold it (2 GiB), naming function."""
    try:
        return model.SerializeToString()
    except ValueError as e:
        raise BackendError(f"external function {function!r}: its ONNX model does not fit in "
                           f"one protobuf (2 GiB): {e}") from e


class OnnxBackend(Backend):
    """A backend that runs a region as the ONNX model this module builds (onnxruntime,
    OpenVINO): what it supports is what the mapping handles, and it is available when the
    modules its `package` names (the engine, and onnx) are importable (not imported)."""

    @classmethod
    def available(cls) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in cls.package.split())

    @classmethod
    def supports(cls, node: dict) -> bool:
        """What this module maps to ONNX exactly (float32; see MAPPINGS)."""
        return supports(node)
