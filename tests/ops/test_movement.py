"""Movement ops (reshapes, shape queries, constants, copies, gathers, pads): kiln vs onnxruntime.

Each case runs the compiled C kernels (inputs fed at run time) and, for most, the constant
folding path too (the same inputs as initializers, evaluated by the NumPy reference).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import (
    check_against_ort,
    check_op,
    folded_outputs,
    kiln_run,
    ort_run,
    single_node_model,
)

RNG = np.random.default_rng(0)
DTYPES = ["float32", "float64", "int8", "int32", "int64", "uint8", "bool"]


def _data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if dtype == "bool":
        return RNG.integers(0, 2, shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(0 if dtype.startswith("u") else -9, 10, shape).astype(dtype)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# Transpose, Concat, Split ------------------------------------------------------------------

@pytest.mark.parametrize("perm", [None, (0, 2, 1), (2, 0, 1), (1, 2, 0)])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check_op("Transpose", {"x": _data((2, 3, 4))}, opset=13, **attrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_dtypes(dtype):
    check_op("Transpose", {"x": _data((2, 1, 3, 5), dtype)}, opset=13, fold=False,
             perm=(3, 1, 0, 2))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [7, 13])
def test_concat(axis, opset):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    shapes = [s[:axis % 3] + (k + 1,) + s[axis % 3 + 1:] for k, s in enumerate(shapes)]
    feeds = {"a": _data(shapes[0]), "b": _data(shapes[1])}
    check_op("Concat", feeds, consts={"c": _data(shapes[2])}, opset=opset, axis=axis)


@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_dtypes_with_empty_input(dtype):
    feeds = {"a": _data((2, 0), dtype), "b": _data((2, 3), dtype), "c": _data((2, 1), dtype)}
    check_op("Concat", feeds, opset=13, fold=False, axis=1)


def test_split_attr_opset11():
    check_op("Split", {"x": _data((2, 6, 2))}, opset=11, outputs=["y0", "y1", "y2"], axis=1,
             split=[1, 2, 3])


def test_split_equal_default():
    check_op("Split", {"x": _data((6, 2), "int64")}, opset=13, outputs=["y0", "y1", "y2"])


def test_split_input_opset13_with_zero_size_part():
    check_op("Split", {"x": _data((2, 5))}, consts={"s": _i64(2, 0, 3)}, opset=13,
             outputs=["y0", "y1", "y2"], axis=-1)


def test_split_num_outputs_uneven_opset18():
    check_op("Split", {"x": _data((7, 3))}, opset=18, outputs=["y0", "y1", "y2"], num_outputs=3)


def test_split_sizes_must_add_up():
    model = single_node_model("Split", {"x": _data((5,))}, consts={"s": _i64(2, 2)}, opset=13,
                              outputs=["y0", "y1"])
    with pytest.raises(ShapeError, match="do not add up"):
        kiln.from_onnx(model)


def test_concat_mismatched_dims():
    model = single_node_model("Concat", {"a": _data((2, 3)), "b": _data((3, 3))}, opset=13, axis=1)
    with pytest.raises(ShapeError, match="cannot concat"):
        kiln.from_onnx(model)


def test_transpose_bad_perm():
    with pytest.raises(ShapeError, match="not a permutation"):
        kiln.from_onnx(single_node_model("Transpose", {"x": _data((2, 3))}, opset=13, perm=[0, 0]))


# Slice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("starts,ends,axes,steps", [
    ((1, 0), (3, 10), (0, 1), (1, 1)),
    ((-1,), (-1000,), (1,), (-1,)),  # reversed
    ((10, -2), (0, -100), (1, 2), (-2, -1)),
    ((0, 1), (2**63 - 1, 2**63 - 1), (-3, -1), (2, 3)),  # int64 max ends
    ((-2**63,), (2**63 - 1,), (0,), (1,)),
    ((3,), (1,), (2,), (1,)),  # empty
])
def test_slice(starts, ends, axes, steps):
    consts = {"s": _i64(*starts), "e": _i64(*ends), "a": _i64(*axes), "t": _i64(*steps)}
    check_op("Slice", {"x": _data((4, 5, 6))}, consts=consts, opset=13)


def test_slice_default_axes_and_steps():
    check_op("Slice", {"x": _data((4, 5), "int32")}, consts={"s": _i64(1, -3), "e": _i64(3, -1)},
             opset=10)


def test_slice_attrs_opset9():
    check_op("Slice", {"x": _data((4, 5, 3), "uint8")}, opset=9, starts=[-3, 1], ends=[10, 2],
             axes=[1, 2])


def test_slice_zero_step():
    consts = {"s": _i64(0), "e": _i64(2), "a": _i64(0), "t": _i64(0)}
    with pytest.raises(ShapeError, match="step of axis 0 is 0"):
        kiln.from_onnx(single_node_model("Slice", {"x": _data((4,))}, consts=consts, opset=13))


# Gather, GatherElements, GatherND ------------------------------------------------------------

@pytest.mark.parametrize("axis,indices", [
    (0, np.array([0, 2, -1], np.int64)),
    (1, np.array([[1, -4], [3, 0]], np.int32)),
    (-1, np.array(2, np.int64)),  # scalar index drops the axis
])
def test_gather(axis, indices):
    check_op("Gather", {"x": _data((3, 4, 5)), "i": indices}, opset=13, axis=axis)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_dtypes_constant_table(dtype):
    # the embedding pattern: constant table, run-time indices
    feeds = {"i": np.array([[4, 0], [-1, 2]], np.int64)}
    check_op("Gather", feeds, consts={"t": _data((5, 3), dtype)}, opset=13,
             node_inputs=["t", "i"], fold=False)


def test_gather_out_of_range_indices_are_clamped():
    x, i = _data((4, 3)), np.array([7, -9, 1], np.int64)
    (got,) = kiln_run(single_node_model("Gather", {"x": x, "i": i}, opset=13), {"x": x, "i": i})
    np.testing.assert_array_equal(got, x[[3, 0, 1]])


def test_gather_float_indices_rejected():
    model = single_node_model("Gather", {"x": _data((3,)), "i": _data((2,))}, opset=13)
    with pytest.raises(ShapeError, match="int32 or int64"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    indices = RNG.integers(-3, 3, (3, 2, 4)).astype(np.int64)
    check_op("GatherElements", {"x": _data((3, 3, 4)), "i": indices}, opset=13, axis=axis)


@pytest.mark.parametrize("batch_dims,data_shape,idx", [
    (0, (2, 3, 4), np.array([[0, 1], [-1, 2]], np.int64)),
    (0, (2, 3), np.array([[[1, 2]], [[0, 0]]], np.int64)),
    (1, (2, 3, 4), np.array([[1], [2]], np.int64)),
    (1, (2, 3, 4), np.array([[[0, 3], [2, -1]], [[1, 1], [0, 0]]], np.int64)),
])
def test_gather_nd(batch_dims, data_shape, idx):
    check_op("GatherND", {"x": _data(data_shape), "i": idx}, opset=13, batch_dims=batch_dims)


# Expand, Tile, Pad ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,target", [
    ((3, 1), (2, 3, 4)), ((1, 4), (3, 1)), ((2, 3), (1,)), ((), (2, 2)), ((4, 1, 2), (4, 3, 1)),
])
def test_expand(shape, target):
    check_op("Expand", {"x": _data(shape, "int32")}, consts={"s": _i64(*target)}, opset=13)


def test_expand_incompatible():
    model = single_node_model("Expand", {"x": _data((3,))}, consts={"s": _i64(2, 4)}, opset=13)
    with pytest.raises(ShapeError, match="do not broadcast"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_tile(dtype):
    check_op("Tile", {"x": _data((2, 1, 3), dtype)}, consts={"r": _i64(2, 3, 1)}, opset=13)


_PADS = [(1, 0, 2, 0, 1, 2), (0, 2, 0, 1, 0, 0), (3, 3, 2, 3, 1, 3)]


# onnxruntime rejects reflect pads wider than dim - 1: test_pad_wider_than_input covers them.
@pytest.mark.parametrize("mode,pads", [(m, p) for m in ("constant", "edge", "wrap")
                                       for p in _PADS] + [("reflect", p) for p in _PADS[:2]])
def test_pad_modes(mode, pads):
    consts = {"p": _i64(*pads), "v": np.array(1.5, np.float32)}
    check_op("Pad", {"x": _data((2, 3, 4))}, consts=consts, opset=19, mode=mode)


@pytest.mark.parametrize("mode", ["reflect", "wrap"])
def test_pad_wider_than_input(mode):
    x = _data((3, 2))
    model = single_node_model("Pad", {"x": x}, consts={"p": _i64(5, 4, 6, 3)}, opset=19, mode=mode)
    (got,) = kiln_run(model, {"x": x})
    np.testing.assert_array_equal(got, np.pad(x, ((5, 6), (4, 3)), mode=mode))


def test_pad_attrs_opset2_and_negative_pads():
    check_op("Pad", {"x": _data((3, 4))}, opset=2, pads=[1, -1, 0, 2], value=-2.0)


def test_pad_int_dtype_default_value_opset11():
    check_op("Pad", {"x": _data((2, 3), "int32")}, consts={"p": _i64(1, 1, 0, 2)}, opset=11)


def test_pad_axes_opset18():
    consts = {"p": _i64(1, 2, 0, 1), "a": _i64(-1, 0)}
    check_op("Pad", {"x": _data((2, 3, 2))}, consts=consts, opset=18,
             node_inputs=["x", "p", "", "a"])


def test_pad_unknown_mode():
    model = single_node_model("Pad", {"x": _data((2, 3))}, consts={"p": _i64(1, 1, 1, 1)},
                              opset=13, mode="mirror")
    with pytest.raises(UnsupportedOpError, match="mode 'mirror'"):
        kiln.from_onnx(model)


# DepthToSpace, SpaceToDepth, OneHot ----------------------------------------------------------

@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check_op("DepthToSpace", {"x": _data((2, 8, 2, 3))}, opset=13, blocksize=2, mode=mode)


def test_space_to_depth():
    check_op("SpaceToDepth", {"x": _data((1, 3, 4, 6))}, opset=13, blocksize=2)


def test_depth_to_space_channels_not_divisible():
    model = single_node_model("DepthToSpace", {"x": _data((1, 6, 2, 2))}, opset=13, blocksize=2)
    with pytest.raises(ShapeError, match="not divisible"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_one_hot(axis):
    indices = np.array([[0, 3, -1], [9, -5, 2]], np.int64)
    consts = {"d": np.array(4.0, np.float32), "v": np.array([-1, 5], np.int32)}
    check_op("OneHot", {"i": indices}, consts=consts, opset=11, axis=axis)


def test_one_hot_float_indices_runtime_values():
    # ONNX says non-integer indices "will be casted to int64 before use": truncated toward zero,
    # so 2.7 is class 2 and -1.2 is -1, i.e. class 2. onnxruntime (the pinned 1.32) does that;
    # older releases, and onnx.reference, compare the float itself (2.7 matches no class), so
    # the expected values are written out from the spec, and onnxruntime must agree with them.
    feeds = {"i": np.array([1.0, 0.0, 2.7, -0.5, -1.2, 3.5], np.float32),
             "v": np.array([0.5, 2.0], np.float32)}
    model = single_node_model("OneHot", feeds, consts={"d": np.array([3.0], np.float32)},
                              opset=11, node_inputs=["i", "d", "v"])
    classes = [1, 0, 2, 0, 2, None]  # 3.5 casts to 3, outside [-3, 2]: all off
    expected = np.array([[2.0 if c == k else 0.5 for k in range(3)] for c in classes], np.float32)
    for source, run in [("kiln", kiln_run), ("kiln folding", folded_outputs),
                        ("onnxruntime", ort_run)]:
        np.testing.assert_array_equal(run(model, feeds)[0], expected, err_msg=source)


# Reshape, Flatten, Squeeze, Unsqueeze (all become the reshape view) --------------------------

@pytest.mark.parametrize("target,allowzero", [
    ((4, -1), 0), ((0, 0, 2, 2), 0), ((-1,), 0), ((0, -1), 0), ((3, 0), 1),
])
def test_reshape(target, allowzero):
    shape = (0, 4) if allowzero else (2, 3, 4)
    check_op("Reshape", {"x": _data(shape)}, consts={"s": _i64(*target)}, opset=14,
             allowzero=allowzero)


def test_reshape_bad_target():
    model = single_node_model("Reshape", {"x": _data((2, 3))}, consts={"s": _i64(4, -1)}, opset=13)
    with pytest.raises(ShapeError, match="cannot reshape"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("axis,opset", [(0, 9), (2, 9), (3, 13), (-1, 13)])
def test_flatten(axis, opset):
    check_op("Flatten", {"x": _data((2, 3, 2))}, opset=opset, axis=axis)


def test_squeeze_and_unsqueeze_attrs_opset11():
    check_op("Squeeze", {"x": _data((1, 3, 1, 2))}, opset=11, axes=[0, -2])
    check_op("Squeeze", {"x": _data((1, 3, 1))}, opset=11)
    check_op("Unsqueeze", {"x": _data((3, 2))}, opset=11, axes=[-1, 0])


def test_squeeze_and_unsqueeze_inputs_opset13():
    check_op("Squeeze", {"x": _data((1, 3, 1, 2), "int64")}, consts={"a": _i64(2)}, opset=13)
    check_op("Unsqueeze", {"x": _data((3, 2), "bool")}, consts={"a": _i64(3, 1, 0)}, opset=13)


def test_squeeze_non_unit_axis():
    model = single_node_model("Squeeze", {"x": _data((1, 3))}, consts={"a": _i64(1)}, opset=13)
    with pytest.raises(ShapeError, match="not all 1"):
        kiln.from_onnx(model)


def test_views_emit_only_reshape():
    model = single_node_model("Flatten", {"x": _data((2, 3, 4))}, opset=13, axis=2)
    mod, _ = kiln.from_onnx(model)
    assert [n.op for n in mod.graph.nodes] == ["reshape"]


# Identity, Dropout ---------------------------------------------------------------------------

def test_identity():
    check_op("Identity", {"x": _data((2, 3), "int32")}, opset=13)


@pytest.mark.parametrize("opset", [7, 10, 13])
def test_dropout_inference_with_mask(opset):
    # The mask is all ones (every element kept), as in the ONNX reference; onnxruntime gives
    # zeros before opset 12, so the mask is checked against the spec, not against it.
    x = _data((2, 3))
    model = single_node_model("Dropout", {"x": x}, opset=opset, outputs=["y", "mask"])
    y, mask = kiln_run(model, {"x": x})
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == (np.float32 if opset < 10 else bool) and mask.all()


def test_dropout_ratio_and_training_false():
    consts = {"r": np.array(0.3, np.float32), "t": np.array(False)}
    check_op("Dropout", {"x": _data((4,))}, consts=consts, opset=13)


def test_dropout_training_mode_rejected():
    consts = {"r": np.array(0.3, np.float32), "t": np.array(True)}
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        kiln.from_onnx(single_node_model("Dropout", {"x": _data((4,))}, consts=consts, opset=13))


def test_dropout_training_mode_with_zero_ratio_is_identity():
    consts = {"r": np.array(0.0, np.float32), "t": np.array(True)}
    check_op("Dropout", {"x": _data((4,))}, consts=consts, opset=13)


# Constants and shape queries -----------------------------------------------------------------

@pytest.mark.parametrize("attrs", [
    {"value": numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))},
    {"value_float": 2.5}, {"value_floats": [1.0, -2.0]}, {"value_int": 7},
    {"value_ints": [3, 4, 5]},
])
def test_constant(attrs):
    model = single_node_model("Constant", {}, opset=13, **attrs)
    for got, want in zip(kiln_run(model, {}), ort_run(model, {}), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_constant_sparse_rejected():
    sparse = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
                                       helper.make_tensor("i", TensorProto.INT64, [1], [0]), [3])
    model = single_node_model("Constant", {}, opset=13, sparse_value=sparse)
    with pytest.raises(UnsupportedOpError, match="sparse_value"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"end": -1}, {"start": -2, "end": 10}])
def test_shape(attrs):
    model = single_node_model("Shape", {"x": _data((2, 3, 4))}, opset=15, **attrs)
    mod, _ = kiln.from_onnx(model)
    assert not mod.graph.nodes
    check_against_ort(model, {"x": _data((2, 3, 4))})


def test_size():
    model = single_node_model("Size", {"x": _data((2, 3, 4))}, opset=13)
    mod, params = kiln.from_onnx(model)
    (want,) = ort_run(model, {"x": _data((2, 3, 4))})
    got = params[mod.graph.outputs[0].name]
    assert got.shape == want.shape and got.dtype == want.dtype and got == want


@pytest.mark.parametrize("value", [None, np.array([7], np.int32), np.array([0.5], np.float64)])
def test_constant_of_shape(value):
    attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
    model = single_node_model("ConstantOfShape", {}, consts={"s": _i64(2, 3)}, opset=13, **attrs)
    for got, want in zip(kiln_run(model, {}), ort_run(model, {}), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("start,limit,delta", [
    (np.int32(10), np.int32(4), np.int32(-3)), (np.float32(1.0), np.float32(5.0), np.float32(0.7)),
    (np.int64(0), np.int64(-3), np.int64(1)),
])
def test_range(start, limit, delta):
    consts = {"a": np.array(start), "b": np.array(limit), "c": np.array(delta)}
    model = single_node_model("Range", {}, consts=consts, opset=11)
    for got, want in zip(kiln_run(model, {}), ort_run(model, {}), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_range_needs_constant_inputs():
    model = single_node_model("Range", {"a": np.array(0, np.int64)},
                              consts={"b": _i64(5), "c": _i64(1)}, opset=11)
    with pytest.raises(UnsupportedOpError, match="must be known at compile time"):
        kiln.from_onnx(model)


# Shape-computation chains fold completely ----------------------------------------------------

def _graph_model(nodes: list, x_shape: tuple[int, ...], inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_empty_tensor_value_info("y")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_shape_gather_unsqueeze_concat_reshape_folds():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(_i64(0), "zero_axes"),
             numpy_helper.from_array(_i64(-1), "minus_one")]
    model = _graph_model(nodes, (2, 3, 4), inits)
    mod, _ = kiln.from_onnx(model)
    assert [n.op for n in mod.graph.nodes] == ["reshape", "relu"]
    check_against_ort(model, {"x": _data((2, 3, 4))})


def test_yolo_shape_slice_concat_reshape_folds():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "start", "end"], ["hw"]),
        helper.make_node("Concat", ["lead", "hw"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 1, 3, 4, 2]),
    ]
    inits = [numpy_helper.from_array(_i64(2), "start"), numpy_helper.from_array(_i64(4), "end"),
             numpy_helper.from_array(_i64(1, 3, 5), "lead")]
    model = _graph_model(nodes, (1, 15, 4, 6), inits)
    mod, _ = kiln.from_onnx(model)
    assert [n.op for n in mod.graph.nodes] == ["reshape", "transpose"]
    check_against_ort(model, {"x": _data((1, 15, 4, 6))})


def test_epilogue_fuses_into_movement_kernels():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Concat", ["r", "r"], ["c"], axis=0),
        helper.make_node("Add", ["c", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(_data((3,)), "b")]
    graph = helper.make_graph(
        nodes, "fuse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 2))],
        [helper.make_empty_tensor_value_info("y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    check_against_ort(model, {"x": _data((3, 2))})
