"""Hostile models: every malformed graph, bad dim, bad opset or oversized constant or plan is
a named kiln error naming the node or value, raised fast and without allocating the tensor.

The models are built as protos directly: onnx.checker would reject most of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import LimitError, ModelImportError, ShapeError, UnsupportedOpError
from kiln.ir import Module, Node, TensorType, Value
from kiln.ops import GraphBuilder
from kiln.ops.evaluate import DEFAULT_FOLD_LIMIT_BYTES, FOLD_LIMIT_ENV
from kiln.passes.fold import fold_constants
from tests.util import kiln_run

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def _model(nodes, inputs=(X,), outputs=(Y,), initializers=(), *, opsets=(("", 17),)):
    graph = helper.make_graph(list(nodes), "hostile", list(inputs), list(outputs),
                              list(initializers))
    return helper.make_model(graph, ir_version=8,
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _i64(name, *values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _constant_of_shape(shape, consumers=(), inputs=()):
    """y = ConstantOfShape(shape) (float 1.5), followed by consumers (which then make y)."""
    out = "y" if not consumers else "filled"
    value = numpy_helper.from_array(np.array([1.5], np.float32), "value")
    node = helper.make_node("ConstantOfShape", ["shape"], [out], name="cos", value=value)
    return _model([node, *consumers], inputs, initializers=[_i64("shape", *shape)])


# graph structure ----------------------------------------------------------------------------

def test_unknown_input_names_node_index_and_value():
    model = _model([helper.make_node("Relu", ["x"], ["relu_out"]),
                    helper.make_node("Add", ["x", "relu_0ut"], ["y"], name="add0")])
    with pytest.raises(ModelImportError, match=r"node 'add0' \(Add\): input 1 names value "
                                               r"'relu_0ut'.*similar names: \['relu_out'\]"):
        kiln.from_onnx(model)


def test_cycle_is_named_with_its_nodes_and_values():
    model = _model([helper.make_node("Add", ["x", "v2"], ["v1"], name="a"),
                    helper.make_node("Relu", ["v1"], ["v2"], name="b"),
                    helper.make_node("Neg", ["v2"], ["y"], name="c")])
    with pytest.raises(ModelImportError, match=r"cycle: node 'a' \(Add\) uses 'v2' from node "
                                               r"'b' \(Relu\), which uses 'v1' from node 'a'"):
        kiln.from_onnx(model)


def test_node_reading_its_own_output_is_a_cycle():
    model = _model([helper.make_node("Add", ["x", "y"], ["y"], name="self_add")])
    with pytest.raises(ModelImportError, match=r"cycle: node 'self_add' \(Add\) uses 'y'"):
        kiln.from_onnx(model)


def test_nodes_out_of_order_are_sorted_and_run():
    model = _model([helper.make_node("Neg", ["r"], ["y"], name="second"),
                    helper.make_node("Relu", ["x"], ["r"], name="first")])
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    (y,) = kiln_run(model, {"x": x})
    np.testing.assert_array_equal(y, -np.maximum(x, 0))


@pytest.mark.parametrize("nodes, initializers, first, second", [
    ([helper.make_node("Relu", ["x"], ["y"], name="a"),
      helper.make_node("Neg", ["x"], ["y"], name="b")], [],
     r"node 'a' \(Relu\)", r"node 'b' \(Neg\)"),
    ([helper.make_node("Relu", ["x"], ["w"], name="a"), helper.make_node("Neg", ["w"], ["y"])],
     [numpy_helper.from_array(np.ones(3, np.float32), "w")],
     "initializer 'w'", r"node 'a' \(Relu\)"),
    ([helper.make_node("Relu", ["x"], ["x"], name="a"), helper.make_node("Neg", ["x"], ["y"])],
     [], "graph input 'x'", r"node 'a' \(Relu\)"),
])
def test_duplicate_producers_are_both_named(nodes, initializers, first, second):
    with pytest.raises(ModelImportError, match=f"two producers: {first} and {second}"):
        kiln.from_onnx(_model(nodes, initializers=initializers))


def test_reading_an_output_kiln_does_not_compute_names_it():
    model = _model([helper.make_node("Identity", ["x"], ["a", "extra"], name="id"),
                    helper.make_node("Relu", ["extra"], ["y"], name="relu")])
    with pytest.raises(UnsupportedOpError, match=r"node 'relu' \(Relu\): input 0 \('extra'\) is "
                                                 "an output kiln does not compute"):
        kiln.from_onnx(model)


def test_node_without_outputs_is_refused():
    model = _model([helper.make_node("Relu", ["x"], [], name="mute"),
                    helper.make_node("Neg", ["x"], ["y"])])
    with pytest.raises(ModelImportError, match=r"node 'mute' \(Relu\).* has no outputs"):
        kiln.from_onnx(model)


# dims and opsets ----------------------------------------------------------------------------

def _initializer(dims, values=(1.0, 2.0, 3.0)):
    """A float initializer 'w' with any dims (helper.make_tensor would check them)."""
    return TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, float_data=values)


@pytest.mark.parametrize("dims, message", [
    ([-1], r"initializer 'w' has negative dims \[-1\]"),
    ([-1, -3], "initializer 'w' has negative dims"),
    ([2**40, 2**40], "initializer 'w': dims .* over the int64 limit"),
    ([2, 2], "initializer 'w' cannot be read"),
])
def test_bad_initializer_dims_name_the_initializer(dims, message):
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[_initializer(dims)])
    with pytest.raises(ModelImportError, match=message):
        kiln.from_onnx(model)


@pytest.mark.parametrize("shape, message", [
    ((2, -3), r"input 'x': shapes= gives negative dims \[2, -3\]"),
    ((2**40, 2**40), "input 'x': shape .* over the int64 limit"),
    (("two", 3), "input 'x': shapes= gives .* not a sequence of ints"),
])
def test_bad_shapes_given_name_the_input(shape, message):
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    with pytest.raises(ShapeError, match=message):
        kiln.from_onnx(model, shapes={"x": shape})


def test_negative_and_absurd_dims_in_the_model_name_the_input():
    negative = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, -3])
    with pytest.raises(ModelImportError, match="input 'x': dim 1 is -3 in the model"):
        kiln.from_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=[negative]))
    absurd = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**40, 2**40])
    with pytest.raises(ShapeError, match="input 'x': shape .* over the int64 limit"):
        kiln.from_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=[absurd]))


@pytest.mark.parametrize("opsets, message", [
    ([("", 0)], "default-domain opset is 0; kiln supports default-domain opsets 1 to 28"),
    ([("ai.onnx", 29)], "default-domain opset is 29; kiln supports default-domain opsets 1 to 28"),
    ([("com.microsoft", 1)], r"imports no default-domain \('' or 'ai.onnx'\) opset"),
    ([], "imports no default-domain"),
    ([("", 13), ("ai.onnx", 17)], r"several opsets \[13, 17\]"),
])
def test_opset_outside_the_supported_range_is_refused(opsets, message):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], opsets=opsets)
    with pytest.raises(ModelImportError, match=message):
        kiln.from_onnx(model)


# constant folding limit ---------------------------------------------------------------------

def test_small_constant_of_shape_is_folded():
    add = helper.make_node("Add", ["x", "filled"], ["y"])
    mod, params = kiln.from_onnx(_constant_of_shape((2, 3), [add], [X]))
    assert [n.op for n in mod.graph.nodes] == ["add"]
    np.testing.assert_array_equal(params[mod.graph.nodes[0].inputs[1].name], np.full((2, 3), 1.5))


def test_constant_of_shape_over_the_default_limit_stays_a_node_without_allocating():
    elements = DEFAULT_FOLD_LIMIT_BYTES // 4 + 1
    mod, params = kiln.from_onnx(_constant_of_shape((elements,)))
    assert [n.op for n in mod.graph.nodes] == ["expand"]
    assert sum(a.nbytes for a in params.values()) < 64


def test_constant_of_shape_over_the_limit_runs_at_run_time(monkeypatch):
    monkeypatch.setenv(FOLD_LIMIT_ENV, "1000")
    x = np.arange(24 * 300, dtype=np.float32).reshape(24, 300)
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)
    model = _constant_of_shape(x.shape, [helper.make_node("Add", ["x", "filled"], ["y"])], [xi])
    mod, _ = kiln.from_onnx(model)
    assert [n.op for n in mod.graph.nodes] == ["expand", "add"]
    (y,) = kiln_run(model, {"x": x})
    np.testing.assert_array_equal(y, x + np.float32(1.5))


def test_unfolded_value_needed_at_compile_time_names_the_node_and_size():
    nodes = [helper.make_node("Cast", ["filled"], ["as_int"], to=TensorProto.INT64),
             helper.make_node("Slice", ["as_int", "start", "end"], ["dims"]),
             helper.make_node("Reshape", ["x", "dims"], ["y"], name="reshape")]
    model = _constant_of_shape((2**30,), nodes, [X])
    model.graph.initializer.extend([_i64("start", 0), _i64("end", 2)])
    with pytest.raises(LimitError, match=r"node 'reshape' \(Reshape\): input 1 \('dims'\) must "
                                         r"be known at compile time.*node 'cos' \(expand\) makes "
                                         r"f32\[1073741824\] of 4294967296 bytes, over the "
                                         r"constant-folding limit"):
        kiln.from_onnx(model)


def test_range_over_the_limit_is_refused_with_its_size():
    node = helper.make_node("Range", ["start", "limit", "delta"], ["y"], name="r")
    model = _model([node], inputs=[],
                   initializers=[_i64("start", 0), _i64("limit", 2**40), _i64("delta", 1)])
    with pytest.raises(LimitError, match=r"node 'r' \(Range\) makes 1099511627776 int64 values "
                                         "of 8796093022208 bytes"):
        kiln.from_onnx(model)


def test_bad_fold_limit_setting_is_a_named_error(monkeypatch):
    monkeypatch.setenv(FOLD_LIMIT_ENV, "lots")
    with pytest.raises(LimitError, match=f"{FOLD_LIMIT_ENV}='lots' is not a byte count"):
        kiln.from_onnx(_constant_of_shape((2, 3)))


def test_fold_pass_keeps_results_over_the_limit_and_checks_result_types(monkeypatch):
    b = GraphBuilder()
    c = b.add_constant("c", np.ones(3, np.float32))
    (big,) = b.emit("expand", [c], {"shape": (100, 3)}, name="big", fold=False)
    mod = b.finish([big]).bind(b.constants)
    monkeypatch.setenv(FOLD_LIMIT_ENV, "1000")
    assert [n.op for n in fold_constants(mod.copy()).graph.nodes] == ["expand"]
    monkeypatch.delenv(FOLD_LIMIT_ENV)
    assert fold_constants(mod.copy()).graph.nodes == []

    wrong = Value("wrong", TensorType((4,), "float32"))
    node = Node("add", [c, c], [wrong], name="bad_add")
    wrong.producer = node
    g = b.graph
    bad = Module(type(g)(g.inputs, g.params, [node], [wrong], ["wrong"]), dict(b.constants))
    with pytest.raises(ShapeError, match=r"node 'bad_add' \(add\): folded to f32\[3\], "
                                         r"inferred f32\[4\]"):
        fold_constants(bad)


# the 2^40-element constant, in a fresh process: fast, named, small --------------------------

CHILD = r"""
import json, re, sys, time
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import kiln


def peak_rss_kib():  # VmHWM: this process image's own peak (ru_maxrss includes the parent's)
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


feed = sys.argv[1] == "add"
value = numpy_helper.from_array(np.array([1.5], np.float32), "value")
shape = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")
nodes = [helper.make_node("ConstantOfShape", ["shape"], ["filled" if feed else "y"], name="cos",
                          value=value)]
inputs = []
if feed:
    nodes.append(helper.make_node("Add", ["x", "filled"], ["y"], name="add"))
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**20]))
graph = helper.make_graph(nodes, "huge", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
start = time.monotonic()
try:
    mod, params = kiln.from_onnx(model)
    kiln.build(mod, params=params, progress=False)
    error = None
except kiln.KilnError as e:
    error = [type(e).__name__, str(e)]
print(json.dumps({"error": error, "seconds": time.monotonic() - start,
                  "max_rss_kib": peak_rss_kib()}))
"""


@pytest.mark.parametrize("use", ["output", "add"])
def test_huge_constant_of_shape_fails_fast_with_bounded_memory(use):
    done = subprocess.run([sys.executable, "-c", CHILD, use], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    kind, message = report["error"]
    assert kind == "LimitError"
    assert "the memory plan needs an arena of" in message and "4398046511" in message
    assert report["seconds"] < 5
    assert report["max_rss_kib"] < 300 * 1024


# memory plan limit --------------------------------------------------------------------------

def test_plan_over_max_memory_is_refused_with_the_bytes():
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                   inputs=[xi])
    mod, params = kiln.from_onnx(model)
    with pytest.raises(LimitError, match=r"memory plan needs an arena of \d+ bytes .*over the "
                                         r"limit of 4096 bytes.*largest tensor is '\w+' "
                                         r"f32\[64,64\] \(16384 bytes\)"):
        kiln.build(mod, params=params, max_memory=4096, progress=False)
    with pytest.raises(LimitError, match="max_memory must be a byte count"):
        kiln.build(mod, params=params, max_memory=-1, progress=False)
