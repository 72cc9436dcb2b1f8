"""Resize and Upsample (IR op `resize`): compiled kernels and folding against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from kiln.passes.fuse import fuse
from kiln.pipeline import optimize
from tests.util import (
    check_against_ort,
    folded_outputs,
    kiln_run,
    ort_run,
    reference_run,
    single_node_model,
)


def _resize(x, *, scales=None, sizes=None, roi=None, opset=19, **attrs) -> onnx.ModelProto:
    consts = {"roi": None if roi is None else np.array(roi, np.float32),
              "scales": None if scales is None else np.array(scales, np.float32),
              "sizes": None if sizes is None else np.array(sizes, np.int64)}
    return single_node_model("Resize", {"x": x}, consts=consts, opset=opset, **attrs)


def _scales_input(op: str, x, scales, *, opset: int, **attrs) -> onnx.ModelProto:
    """Resize-10 and Upsample-9: op(x, scales), the scales an initializer."""
    return single_node_model(op, {"x": x}, consts={"s": np.array(scales, np.float32)},
                             opset=opset, **attrs)


def _data(shape, dtype="float32", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 200), shape).astype(dtype)


X = _data((1, 2, 5, 7))
# (name, model): float32 cases onnxruntime supports, compared at 1e-5.
ORT_CASES = [
    ("nearest_x2_yolo", _resize(X, scales=[1, 1, 2, 2], opset=13, mode="nearest",
                                coordinate_transformation_mode="asymmetric",
                                nearest_mode="floor")),
    ("nearest_default", _resize(X, scales=[1, 1, 1.7, 0.6], mode="nearest")),
    *[(f"nearest_{nm}_{cm}", _resize(X, sizes=[1, 2, 8, 4], mode="nearest", nearest_mode=nm,
                                     coordinate_transformation_mode=cm))
      for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
      for cm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")],
    *[(f"linear_{cm}_{kind}", _resize(X, mode="linear", coordinate_transformation_mode=cm,
                                      **{kind: [1, 1, 1.7, 0.6] if kind == "scales"
                                         else [1, 2, 3, 11]}))
      for cm in ("half_pixel", "asymmetric", "pytorch_half_pixel", "half_pixel_symmetric")
      for kind in ("scales", "sizes")],
    # align_corners with a fractional scale * size: see REFERENCE_CASES.
    ("linear_align_corners_scales", _resize(X, scales=[1, 1, 1.6, 2], mode="linear",
                                            coordinate_transformation_mode="align_corners")),
    ("linear_align_corners_sizes", _resize(X, sizes=[1, 2, 3, 11], mode="linear",
                                           coordinate_transformation_mode="align_corners")),
    ("linear_pytorch_to_1", _resize(X, sizes=[1, 2, 1, 3], mode="linear",
                                    coordinate_transformation_mode="pytorch_half_pixel")),
    ("linear_align_to_1", _resize(X, sizes=[1, 2, 1, 3], mode="linear",
                                  coordinate_transformation_mode="align_corners")),
    ("bilinear_2d", _resize(X[0, 0], scales=[2, 0.5], mode="linear", opset=13)),
    ("trilinear", _resize(_data((1, 2, 3, 4, 5)), scales=[1, 1, 2, 1.5, 0.6],
                          mode="linear")),
    ("linear_antialias", _resize(X, scales=[1, 1, 0.5, 0.4], mode="linear", antialias=1)),
    ("cubic", _resize(X, scales=[1, 1, 1.7, 2.5], mode="cubic")),
    ("cubic_align_corners", _resize(X, sizes=[1, 2, 9, 4], mode="cubic",
                                    coordinate_transformation_mode="align_corners")),
    ("cubic_exclude_outside", _resize(X, scales=[1, 1, 0.5, 2.4], mode="cubic",
                                      exclude_outside=1, cubic_coeff_a=-0.5)),
    ("cubic_antialias", _resize(X, scales=[1, 1, 0.5, 0.4], mode="cubic", antialias=1)),
    ("tf_crop_and_resize", _resize(X, sizes=[1, 2, 4, 6], mode="linear",
                                   roi=[0, 0, 0.2, -0.1, 1, 1, 1.1, 0.9],
                                   coordinate_transformation_mode="tf_crop_and_resize",
                                   extrapolation_value=7.0)),
    ("tf_crop_and_resize_nearest", _resize(X, sizes=[4, 6], mode="nearest",
                                           roi=[0.2, -0.1, 1.1, 0.9], axes=[2, 3],
                                           coordinate_transformation_mode="tf_crop_and_resize")),
    ("tf_half_pixel_for_nn", _resize(X, roi=[], scales=[1, 1, 1.7, 0.6], opset=11,
                                     mode="nearest",
                                     coordinate_transformation_mode="tf_half_pixel_for_nn")),
    ("opset11_sizes", _resize(X, roi=[], scales=[], sizes=[1, 2, 9, 4], opset=11,
                              mode="linear")),
    ("axes_scales", _resize(X, scales=[2.5, 0.5], axes=[3, 2], mode="nearest")),
    ("not_larger", _resize(X, sizes=[9, 9], axes=[2, 3], mode="linear",
                           keep_aspect_ratio_policy="not_larger")),
    ("not_smaller", _resize(X, sizes=[9, 9], axes=[2, 3], mode="nearest",
                            keep_aspect_ratio_policy="not_smaller")),
    ("resize10_nearest_down", _scales_input("Resize", _data((1, 10)), [1, 0.7], opset=10)),
    ("resize10_nearest_up", _scales_input("Resize", X, [1, 1, 3, 2.5], opset=10,
                                          mode="nearest")),
    ("resize10_linear", _scales_input("Resize", X, [1, 1, 1.7, 0.6], opset=10, mode="linear")),
    ("upsample7_nearest", single_node_model("Upsample", {"x": X}, opset=7,
                                            scales=[1.0, 1.0, 3.0, 2.5])),
    ("upsample9_nearest", _scales_input("Upsample", X, [1, 1, 2, 2], opset=9, mode="nearest")),
    ("upsample9_linear", _scales_input("Upsample", X, [1, 1, 1.7, 2.5], opset=9, mode="linear")),
]


@pytest.mark.parametrize("model", [m for _, m in ORT_CASES], ids=[n for n, _ in ORT_CASES])
def test_resize_matches_onnxruntime(model):
    x = _data(tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim))
    check_against_ort(model, {"x": x})


def test_resize_epilogue_fuses():
    """A Relu after Resize runs as the kernel's epilogue; the result is unchanged."""
    model = _resize(X, scales=[1, 1, 2, 1.5], mode="linear")
    relu = helper.make_node("Relu", ["y"], ["z"])
    model.graph.node.append(relu)
    model.graph.output[0].name = "z"
    mod, params = kiln.from_onnx(model)
    groups = fuse(optimize(mod.bind(params)))
    assert [(g.anchor.op, [n.op for n in g.chain]) for g in groups] == [("resize", ["relu"])]
    check_against_ort(model, {"x": X})


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_integers(dtype, mode):
    # Integers truncate toward zero as in onnxruntime, whose float32 arithmetic can land on
    # the other side of an integer than kiln's float64 does: allow one unit.
    x = _data((1, 2, 5, 7), dtype)
    model = _resize(x, scales=[1, 1, 1.7, 0.6], mode=mode)
    check_against_ort(model, {"x": x}, rtol=0, atol=0 if mode == "nearest" else 1)


# (name, input, model): forms onnxruntime has no kernel for, or where it departs from ONNX's
# reference evaluator (the oracle here, as in ONNX's node tests): align_corners with a scale
# whose output size is fractional divides by scale * size - 1, not by the output size - 1.
REFERENCE_CASES = [
    ("align_corners_fractional", X, _resize(X, scales=[1, 1, 1.7, 0.6], mode="linear",
                                            coordinate_transformation_mode="align_corners")),
    ("float64_linear", _data((1, 2, 5, 7), "float64"),
     _resize(_data((1, 2, 5, 7), "float64"), scales=[1, 1, 1.7, 0.6], mode="linear")),
    ("int64_nearest", _data((2, 5, 7), "int64"),
     _resize(_data((2, 5, 7), "int64"), scales=[1.5, 1.7, 0.6], mode="nearest")),
    ("linear_1d", _data((7,)), _resize(_data((7,)), scales=[1.7], mode="linear")),
    ("cubic_3d", _data((2, 5, 7)), _resize(_data((2, 5, 7)), scales=[2, 1.7, 0.6],
                                           mode="cubic")),
]


@pytest.mark.parametrize("x,model", [c[1:] for c in REFERENCE_CASES],
                         ids=[c[0] for c in REFERENCE_CASES])
def test_resize_matches_reference_evaluator(x, model):
    np.testing.assert_allclose(kiln_run(model, {"x": x})[0], reference_run(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_resize_negative_axes():
    """axes may count from the back (onnxruntime mishandles that, so compare positive ones)."""
    negative = _resize(X, sizes=[9, 9], axes=[-1, 2], mode="nearest",
                       keep_aspect_ratio_policy="not_smaller")
    positive = _resize(X, sizes=[9, 9], axes=[3, 2], mode="nearest",
                       keep_aspect_ratio_policy="not_smaller")
    np.testing.assert_array_equal(kiln_run(negative, {"x": X})[0],
                                  ort_run(positive, {"x": X})[0])


def test_resize_folds_constant_input():
    """A Resize of an initializer folds at import through the NumPy reference."""
    model = _resize(X, scales=[1, 1, 2, 1.5], mode="cubic")
    (got,) = folded_outputs(model, {"x": X})
    np.testing.assert_allclose(got, ort_run(model, {"x": X})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,error,match", [
    (_resize(X, scales=[1, 1, 2, 2], mode="bilinear"), UnsupportedOpError, "mode 'bilinear'"),
    (_resize(X, scales=[1, 1, 2, 2], coordinate_transformation_mode="corner"),
     UnsupportedOpError, "coordinate_mode 'corner'"),
    (_resize(X, scales=[1, 1, 2, 2], nearest_mode="up"), UnsupportedOpError, "nearest_mode"),
    (_resize(X, scales=[1, 2, 2]), ShapeError, "one value per resized axis"),
    (_resize(X, scales=[1, 1, -2, 2]), ShapeError, "scales must be positive"),
    (_resize(X, scales=[1, 1, np.nan, 2]), ShapeError, "scales must be positive"),
    (_resize(X, sizes=[9, 9], axes=[2, 4]), ShapeError, "axis 4 out of range"),
    (_resize(X, scales=[1, 1, 2, 2], sizes=[1, 2, 10, 14]), ShapeError, "only one of"),
    (_resize(X), ShapeError, "neither scales nor sizes"),
    (_resize(X, sizes=[9, 9], axes=[2, 2]), ShapeError, "repeat an axis"),
    (_resize(X, sizes=[9, 9], axes=[2, 3], keep_aspect_ratio_policy="fit"),
     UnsupportedOpError, "keep_aspect_ratio_policy 'fit'"),
    (_resize(X, sizes=[1, 2, 4, 4], roi=[0, 1],
             coordinate_transformation_mode="tf_crop_and_resize"), ShapeError, "roi"),
    (_scales_input("Upsample", X, [1, 1, 0.5, 2], opset=9), ShapeError, ">= 1"),
])
def test_resize_errors(model, error, match):
    with pytest.raises(error, match=match):
        kiln.from_onnx(model)


def test_resize_needs_compile_time_scales():
    model = single_node_model("Resize", {"x": X, "s": np.ones(4, np.float32)}, opset=13,
                              node_inputs=["x", "", "s"])
    with pytest.raises(UnsupportedOpError, match="known at compile time"):
        kiln.from_onnx(model)


def test_resize_linear_needs_numbers():
    x = np.zeros((2, 3), bool)
    model = single_node_model("Resize", {"x": x},
                              consts={"roi": None, "s": np.array([2, 2], np.float32)},
                              opset=13, mode="linear")
    with pytest.raises(ShapeError, match="numeric"):
        kiln.from_onnx(model)
