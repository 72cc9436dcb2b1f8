"""IR unit tests: types, builder folding, printer, verifier, module copy and binding."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import ShapeError, UnsupportedOpError, VerificationError
from kiln.ir import TensorType
from kiln.ops import GraphBuilder, verify


def _small_module():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3), "float32"))
    w = b.add_constant("w", np.ones((2, 3), np.float32))
    (y,) = b.emit("add", [x, w], name="add0")
    (z,) = b.emit("relu", [y], name="relu0")
    return b, b.finish([z], ["out"])


def test_tensor_type_properties_and_text():
    t = TensorType((1, 3, 4), "float32")
    assert (t.rank, t.numel, t.nbytes) == (3, 12, 48)
    assert str(t) == "f32[1,3,4]"
    with pytest.raises(ShapeError, match="complex64"):
        TensorType((1,), "complex64")


def test_builder_folds_constant_nodes_and_infers_types():
    b = GraphBuilder()
    c = b.add_constant("c", np.array([1.0, -2.0], np.float32))
    (d,) = b.emit("mul", [c, c])
    assert b.graph.nodes == []
    np.testing.assert_array_equal(b.constant_of(d), [1.0, 4.0])
    x = b.add_input("x", TensorType((3, 2), "float32"))
    (e,) = b.emit("add", [x, d])
    assert e.type == TensorType((3, 2), "float32")
    assert len(b.graph.nodes) == 1


def test_builder_names_node_in_shape_errors():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((3, 2), "float32"))
    y = b.add_input("y", TensorType((4,), "float32"))
    with pytest.raises(ShapeError, match=r"node 'bad_add' \(add\).*do not broadcast"):
        b.emit("add", [x, y], name="bad_add")
    with pytest.raises(UnsupportedOpError, match="no_such_op"):
        b.emit("no_such_op", [x])


def test_printer_shows_inputs_params_nodes_and_output_names():
    _, mod = _small_module()
    text = str(mod)
    assert "input %x: f32[2,3]" in text
    assert "param %w: f32[2,3]" in text
    assert "= add(%x, %w) : f32[2,3]  # add0" in text
    assert "return %relu0_out0 as out" in text


def test_verifier_accepts_good_and_rejects_broken_graphs():
    _, mod = _small_module()
    verify(mod)
    mod.graph.nodes.reverse()  # use before definition
    with pytest.raises(VerificationError, match="used before definition"):
        verify(mod)
    _, mod = _small_module()
    mod.graph.nodes[0].outputs[0].type = TensorType((9,), "float32")
    with pytest.raises(VerificationError, match="inferred"):
        verify(mod)


def test_copy_is_independent_and_bind_checks_params():
    b, mod = _small_module()
    copy = mod.copy()
    copy.graph.nodes.pop()
    assert len(mod.graph.nodes) == 2
    with pytest.raises(ShapeError, match="without a value"):
        mod.bind({})
    with pytest.raises(ShapeError, match="param 'w'"):
        mod.bind({"w": np.ones((3, 2), np.float32)})
    bound = mod.bind(b.constants)
    assert set(bound.params) == {"w"}
