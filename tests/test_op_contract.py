"""The op contract: every IR op is one OpDef (kiln/ops) paired with one C template
(kiln/codegen/kernels, same name), with declared attributes and an epilogue flag its
template honours.

The rules checked here:
- every op but the views (kind VIEW: no kernel runs) and the external op (kind EXTERNAL: an
  external engine runs it, docs/byoc.md) has exactly one template, and every template
  belongs to an op;
- an op declaring epilogue=True has one output and its template writes it only through
  ctx.store (so fusion can append an elementwise chain); an op declaring False has several
  outputs or writes them directly;
- every attribute a node carries is declared: the builder fills in the declared defaults and
  refuses unknown names and missing required ones, naming the node, op and attribute;
- no stage after the op definitions restates a default (`attrs.get("alpha", 0.01)`).
A new op needs a SAMPLES entry (one node of it) below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.codegen.kernels import KernelContext, all_kernels, get_kernel
from kiln.codegen.kernels.registry import kernel
from kiln.errors import UnsupportedOpError, VerificationError
from kiln.ir import Node, TensorType
from kiln.ops import (
    ELEMENTWISE,
    EXTERNAL,
    REQUIRED,
    VIEW,
    GraphBuilder,
    all_ops,
    get_op,
    verify,
)
from kiln.ops.elementwise import BINARY, COMPARE, LOGICAL, UNARY
from kiln.ops.external import GRAPH_FORMAT, GRAPH_VERSION, write_graph

SRC = Path(__file__).resolve().parents[1] / "src" / "kiln"

Sample = tuple[list[tuple[tuple[int, ...], str]], dict[str, Any]]  # input (shape, dtype)s, attrs

F = "float32"
WINDOW = {"strides": (1, 1), "dilations": (1, 1), "pads": (1, 1, 1, 1)}
POOL = {"kernel_shape": (2, 2), "strides": (2, 2), "dilations": (1, 1), "pads": (0, 0, 0, 0)}
IMAGE = ((1, 3, 4, 4), F)
VECTOR3 = ((3,), F)
RESIZE = {"sizes": (1, 1, 4, 4), "scales": (1.0, 1.0, 2.0, 2.0), "roi": (0,) * 4 + (1,) * 4,
          "mode": "linear", "coordinate_mode": "half_pixel", "nearest_mode": "floor",
          "cubic_coeff_a": -0.75, "exclude_outside": False, "antialias": False,
          "extrapolation_value": 0.0}
# A region of one relu handed to the reference backend, in the docs/byoc.md JSON format.
EXTERNAL_GRAPH = write_graph({
    "format": GRAPH_FORMAT, "version": GRAPH_VERSION, "function": "ext0", "backend": "reference",
    "nodes": [{"op": "input", "name": "x0", "shape": [2, 3], "dtype": F},
              {"op": "relu", "attrs": {}, "inputs": [[0, 0]],
               "outputs": [{"shape": [2, 3], "dtype": F}]}],
    "inputs": [0], "constants": [], "outputs": [[1, 0]]})

# One node of every op that is not a plain unary/binary elementwise op.
SAMPLES: dict[str, Sample] = {
    "not": ([((2, 3), "bool")], {}),
    "cast": ([((2, 3), F)], {"to": "int32"}),
    "where": ([((2, 3), "bool"), ((2, 3), F), ((1, 3), F)], {}),
    "conv": ([((1, 2, 5, 5), F), ((3, 2, 3, 3), F), VECTOR3], WINDOW),
    "conv_transpose": ([((1, 2, 4, 4), F), ((2, 3, 3, 3), F)], WINDOW),
    "max_pool": ([((1, 2, 6, 6), F)], POOL),
    "avg_pool": ([((1, 2, 6, 6), F)], POOL),
    "max_pool_argmax": ([((1, 2, 6, 6), F)], POOL),
    "global_avg_pool": ([IMAGE], {}),
    "global_max_pool": ([IMAGE], {}),
    "lrn": ([((1, 4, 3, 3), F)], {"size": 3}),
    "batch_norm": ([IMAGE, VECTOR3, VECTOR3, VECTOR3, VECTOR3], {}),
    "instance_norm": ([IMAGE, VECTOR3, VECTOR3], {}),
    "layer_norm": ([((2, 3, 4), F), ((4,), F), ((4,), F)], {"axis": 2}),
    "rms_norm": ([((2, 3, 4), F), ((4,), F)], {"axis": 2}),
    "layer_norm_stats": ([((2, 3, 4), F)], {"axis": 2}),
    "mean_variance_norm": ([IMAGE], {"axes": (0, 2, 3)}),
    "lp_norm": ([((2, 3), F)], {"axis": 1}),
    "matmul": ([((2, 3), F), ((3, 4), F)], {}),
    "gemm": ([((2, 3), F), ((4, 3), F), ((4,), F)], {"trans_b": True}),
    "cumsum": ([((2, 3), F)], {"axis": 1}),
    "trilu": ([((3, 3), F)], {}),
    "transpose": ([((2, 3), F)], {"perm": (1, 0)}),
    "concat": ([((2, 3), F), ((2, 1), F)], {"axis": 1}),
    "split": ([((2, 4), F)], {"axis": 1, "sizes": (1, 3)}),
    "slice": ([((4, 5), F)], {"starts": (0, 1), "ends": (4, 5), "steps": (2, 2)}),
    "gather": ([((4, 3), F), ((2,), "int64")], {"axis": 0}),
    "gather_elements": ([((3, 3), F), ((3, 2), "int64")], {"axis": 1}),
    "gather_nd": ([((3, 3), F), ((2, 2), "int64")], {}),
    "expand": ([((3, 1), F)], {"shape": (2, 3, 4)}),
    "tile": ([((2, 3), F)], {"repeats": (2, 1)}),
    "pad": ([((2, 3), F)], {"pads": (1, 0, 1, 2), "mode": "constant", "value": 0.0}),
    "one_hot": ([((3,), "int64"), ((2,), F)], {"depth": 4, "axis": 1}),
    "argmax": ([((2, 3), F)], {"axis": 1}),
    "argmin": ([((2, 3), F)], {"axis": 1}),
    "softmax": ([((2, 3), F)], {"axis": 1}),
    "log_softmax": ([((2, 3), F)], {"axis": 1}),
    "hardmax": ([((2, 3), F)], {"axis": 1}),
    "topk": ([((2, 5), F)], {"k": 2, "axis": 1}),
    "resize": ([((1, 1, 2, 2), F)], RESIZE),
    "reshape": ([((2, 3), F)], {"shape": (3, 2)}),
    "external": ([((2, 3), F)],
                 {"backend": "reference", "function": "ext0", "graph": EXTERNAL_GRAPH}),
}


def _sample(op: str) -> Sample:
    """One node's inputs and attrs for op (the unary, binary and reduce families built here)."""
    if op in SAMPLES:
        return SAMPLES[op]
    if op in UNARY:
        return [((2, 3), F)], {}
    if op in BINARY:
        dtype = "bool" if op in LOGICAL else F
        return [((2, 3), dtype), ((1, 3), dtype)], {}
    if op.startswith("reduce_"):
        return [((2, 3, 4), F)], {"axes": (1,)}
    raise KeyError(f"no sample node for op '{op}': add one to SAMPLES")


def _emit(op: str, attrs: dict[str, Any] | None = None) -> Node:
    """A node of op made by the builder from its sample (attrs replace the sample's)."""
    inputs, sample_attrs = _sample(op)
    b = GraphBuilder()
    values = [b.add_input(f"x{k}", TensorType(shape, dtype))
              for k, (shape, dtype) in enumerate(inputs)]
    b.emit(op, values, sample_attrs if attrs is None else attrs, name=f"{op}_node")
    return b.graph.nodes[-1]


def _render(node: Node) -> str:
    """The node's kernel body, with a marker epilogue on output 0."""
    ctx = KernelContext(
        in_types=[v.type for v in node.inputs], out_types=[v.type for v in node.outputs],
        attrs=dict(node.attrs), ins=[f"in{k}" for k in range(len(node.inputs))],
        outs=[f"out{k}" for k in range(len(node.outputs))],
        epilogue=lambda i, v: f"KILN_EPILOGUE({v})")
    return get_kernel(node.op).template(ctx)


OPS = sorted(all_ops())
NO_KERNEL = (VIEW, EXTERNAL)  # the kinds no C template runs
KERNEL_OPS = [op for op in OPS if get_op(op).kind not in NO_KERNEL]


def test_every_op_but_views_and_external_has_one_template_and_every_template_an_op():
    templates = set(all_kernels())
    kernelless = {op for op in OPS if get_op(op).kind in NO_KERNEL}
    assert {get_op(op).kind for op in kernelless} == set(NO_KERNEL)  # both kinds exist
    assert sorted(set(KERNEL_OPS) - templates) == []  # an op without a template
    assert sorted(templates - set(OPS)) == []  # a template without an op
    assert sorted(kernelless & templates) == []  # a view or external op with a template
    assert not any(get_op(op).epilogue for op in kernelless)  # no kernel, so no epilogue
    with pytest.raises(ValueError, match="registered twice"):
        kernel("relu")(lambda ctx: "")


def test_every_op_has_a_sample_node():
    for op in OPS:
        _sample(op)


@pytest.mark.parametrize("op", KERNEL_OPS)
def test_epilogue_flag_agrees_with_the_template(op):
    node = _emit(op)
    source = _render(node)
    writes = re.findall(r"\bout0\[[^\]]*\]\s*=\s*\S{0,14}", source)
    if get_op(op).epilogue:
        assert len(node.outputs) == 1, f"{op} declares epilogue=True with several outputs"
        assert writes, f"{op}: the template never writes out0 through ctx.store"
        direct = [w for w in writes if "KILN_EPILOGUE(" not in w]
        assert direct == [], f"{op}: out0 written without the epilogue: {direct}"
    else:
        assert len(node.outputs) > 1 or "KILN_EPILOGUE(" not in source, \
            f"{op} declares epilogue=False but its template writes through ctx.store"


@pytest.mark.parametrize("op", OPS)
def test_builder_fills_every_declared_attribute(op):
    node = _emit(op)
    opdef = get_op(op)
    assert set(node.attrs) == set(opdef.attrs)
    given = _sample(op)[1]
    for name, default in opdef.attrs.items():
        if name not in given:
            assert node.attrs[name] == default, (op, name)


@pytest.mark.parametrize("op", OPS)
def test_unknown_attribute_is_refused_naming_node_op_and_attribute(op):
    attrs = {**_sample(op)[1], "no_such_attr": 1}
    with pytest.raises(UnsupportedOpError,
                       match=rf"node '{op}_node' \({op}\): unknown attribute 'no_such_attr'"):
        _emit(op, attrs)


@pytest.mark.parametrize("op", [op for op in OPS if REQUIRED in get_op(op).attrs.values()])
def test_missing_required_attribute_is_refused(op):
    required = [k for k, v in get_op(op).attrs.items() if v is REQUIRED]
    attrs = {k: v for k, v in _sample(op)[1].items() if k != required[0]}
    with pytest.raises(UnsupportedOpError, match=rf"attribute '{required[0]}' of op {op} is "
                                                 "required"):
        _emit(op, attrs)


def test_verifier_refuses_a_node_whose_attributes_are_not_the_declared_ones():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3), F))
    (y,) = b.emit("leaky_relu", [x], name="lrelu")
    mod = b.finish([y])
    verify(mod)
    del mod.graph.nodes[0].attrs["alpha"]
    with pytest.raises(VerificationError, match=r"lrelu.*declares \['alpha'\]"):
        verify(mod)


def test_elementwise_ops_are_the_unary_and_binary_tables_plus_not_cast_where():
    elementwise = {op for op in OPS if get_op(op).kind == ELEMENTWISE}
    assert elementwise == set(UNARY) | set(BINARY) | {"not", "cast", "where"}
    assert COMPARE | LOGICAL <= set(BINARY)


def _restated_defaults(path: Path, names: set[str]) -> list[str]:
    """Calls like attrs.get("alpha", 0.01) / a.get("alpha") on a declared attribute name."""
    found = []
    for call in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "get" and call.args
                and isinstance(call.args[0], ast.Constant) and call.args[0].value in names):
            continue
        receiver = ast.unparse(call.func.value)
        if receiver.endswith("attrs") or receiver in ("a", "at"):
            found.append(f"{path.relative_to(SRC)}:{call.lineno}: {ast.unparse(call)}")
    return found


def test_no_stage_after_the_op_definitions_restates_a_default():
    names = {name for op in OPS for name in get_op(op).attrs}
    files = [p for folder in ("ops", "codegen", "passes") for p in (SRC / folder).rglob("*.py")]
    assert [hit for p in files for hit in _restated_defaults(p, names)] == []


def test_reference_of_a_sample_matches_the_inferred_types():
    """Each sample also folds: the reference agrees with the type rule (one definition)."""
    for op in OPS:
        node = _emit(op)
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 2, v.type.shape).astype(v.type.dtype) for v in node.inputs]
        with np.errstate(all="ignore"):  # log(0), 1/0...: only the types matter here
            results = get_op(op).reference(arrays, node.attrs)
        assert [TensorType.of(np.asarray(r)) for r in results] == \
            [v.type for v in node.outputs], op
