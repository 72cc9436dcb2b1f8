"""Depthwise convs across channels (kiln/codegen/kernels/depthwise.py: LANES channels
interleaved, one vector per tap) and in place (kernels/depthwise_direct.py: wide rows read
straight from the input), against onnxruntime: 3x3 and 5x5, stride 1 and 2, dilation,
uneven and zero pads, odd sizes, channel counts that are not whole blocks of LANES, with
and without bias, fused chains (clip, hard swish, SiLU, a residual add), batches, 1 and 2
threads (bit-identical); and which convs take which kernel (read in the generated C).

Tolerance: 1e-5 relative and absolute, as the other conv tests: the sums of at most 25
products of N(0, 1) floats are the same float32 products as onnxruntime's, added in
another order (a few ulps of the largest partial sum).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.util import build_with_sources, ort_run, run_outputs

RNG = np.random.default_rng(29)
TOL = 1e-5
ACROSS = "kiln_dw_taps"  # the helper only the kernel across channels defines
DIRECT = "kiln_dw_direct"  # the helper only the kernel in place defines

# name: (input shape, kernel, Conv attributes)
CASES = {
    "7x7_5x5": ((1, 48, 7, 7), 5, {"pads": [2, 2, 2, 2]}),
    "7x7_3x3_c40": ((1, 40, 7, 7), 3, {"pads": [1, 1, 1, 1]}),
    "14x14_5x5_stride2_c100": ((1, 100, 14, 14), 5, {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    "14x14_3x3_stride2": ((2, 32, 14, 14), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "14x14_5x5_c20": ((1, 20, 14, 14), 5, {"pads": [2, 2, 2, 2]}),
    "9x7_3x3_dilated": ((1, 17, 9, 7), 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "11x9_5x5_dilated_stride2": ((1, 24, 11, 9), 5, {"pads": [3, 4, 4, 3], "strides": [2, 2],
                                                     "dilations": [2, 2]}),
    "8x10_3x3_uneven": ((1, 33, 8, 10), 3, {"pads": [0, 1, 2, 0], "strides": [1, 2]}),
    "5x6_3x3_unpadded": ((1, 16, 5, 6), 3, {}),
}
# name: (input shape, kernel, Conv attributes), convs whose output rows are wide enough to
# run in place (depthwise_direct.DIRECT_MIN_WIDTH columns or more)
DIRECT_CASES = {
    "56x56_3x3": ((1, 20, 56, 56), 3, {"pads": [1, 1, 1, 1]}),
    "112x112_3x3_stride2": ((1, 3, 112, 112), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "57x61_3x3_stride2_odd": ((2, 5, 57, 61), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "32x40_5x5": ((1, 6, 32, 40), 5, {"pads": [2, 2, 2, 2]}),
    "63x63_5x5_stride2": ((1, 7, 63, 63), 5, {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    "34x36_3x3_dilated": ((1, 9, 34, 36), 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "31x70_5x5_dilated_stride2": ((1, 4, 31, 70), 5, {"pads": [3, 4, 4, 3], "strides": [2, 2],
                                                      "dilations": [2, 2]}),
    "30x60_3x3_uneven": ((1, 10, 30, 60), 3, {"pads": [0, 1, 2, 0], "strides": [1, 2]}),
    "32x34_3x3_unpadded": ((1, 8, 32, 34), 3, {}),
    "30x30_5x5_all_border": ((1, 4, 30, 30), 5, {"pads": [16, 16, 16, 16],
                                                 "dilations": [8, 8]}),
    "29x45_1x5": ((1, 6, 29, 45), (1, 5), {"pads": [0, 2, 0, 2]}),
    "40x40_3x3_dilated8_checked": ((1, 3, 40, 40), 3, {"pads": [8, 8, 8, 8],
                                                       "dilations": [8, 8]}),
}
ALL_CASES = {**CASES, **DIRECT_CASES}


def _model(xs: tuple, k: int | tuple[int, int], attrs: dict, *, bias: bool, chain: str):
    """Conv (depthwise, k x k or a k tuple, + bias) then the chain: "" (none), "clip",
    "hardswish", "silu" (Sigmoid, Mul) or "residual" (Add of a second input r)."""
    c, kernel = xs[1], list(k) if isinstance(k, tuple) else [k, k]
    w = RNG.standard_normal((c, 1, *kernel)).astype(np.float32)
    consts = {"w": w, **({"b": RNG.standard_normal(c).astype(np.float32)} if bias else {})}
    conv_out = "y" if chain else "out"
    nodes = [helper.make_node("Conv", ["x", *consts], [conv_out], group=c, kernel_shape=kernel,
                              **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)]
    if chain == "clip":
        consts |= {"lo": np.float32(0.0), "hi": np.float32(6.0)}
        nodes.append(helper.make_node("Clip", ["y", "lo", "hi"], ["out"]))
    elif chain == "hardswish":
        nodes.append(helper.make_node("HardSwish", ["y"], ["out"]))
    elif chain == "silu":
        nodes += [helper.make_node("Sigmoid", ["y"], ["s"]),
                  helper.make_node("Mul", ["y", "s"], ["out"])]
    elif chain == "residual":
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
        nodes.append(helper.make_node("Add", ["y", "r"], ["out"]))
    graph = helper.make_graph(nodes, "dw", inputs, [helper.make_empty_tensor_value_info("out")],
                              [numpy_helper.from_array(np.asarray(v), n)
                               for n, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(xs: tuple, model) -> dict[str, np.ndarray]:
    feeds = {"x": RNG.standard_normal(xs).astype(np.float32)}
    if len(model.graph.input) == 2:  # the residual: the conv's output shape
        feeds["r"] = np.zeros_like(ort_run(model, {**feeds, "r": np.zeros(1, np.float32)})[0])
        feeds["r"] += RNG.standard_normal(feeds["r"].shape).astype(np.float32)
    return feeds


def _check(case: str, monkeypatch, *, bias: bool, chain: str) -> list[str]:
    """The case built, run on 1 and 2 threads against onnxruntime; the kernels' C."""
    xs, k, attrs = ALL_CASES[case]
    model = _model(xs, k, attrs, bias=bias, chain=chain)
    feeds = _feeds(xs, model)
    lib, sources = build_with_sources(model, feeds, monkeypatch)
    one = run_outputs(lib, feeds)[0]
    np.testing.assert_allclose(one, ort_run(model, feeds)[0], rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(run_outputs(lib, feeds, threads=2)[0], one)
    return sources


@pytest.mark.parametrize("case", sorted(CASES))
def test_depthwise_across_channels(case, monkeypatch):
    sources = _check(case, monkeypatch, bias=True, chain="")
    assert any(ACROSS in s for s in sources), "the conv did not run across channels"


@pytest.mark.parametrize(("case", "bias", "chain"), [
    ("7x7_5x5", False, "clip"),
    ("7x7_3x3_c40", True, "hardswish"),
    ("14x14_5x5_stride2_c100", True, "silu"),
    ("14x14_3x3_stride2", False, "residual"),
    ("8x10_3x3_uneven", True, "silu"),
])
def test_depthwise_across_channels_fused(case, bias, chain, monkeypatch):
    """The chain runs over each channel's contiguous band of outputs, each stored once."""
    sources = _check(case, monkeypatch, bias=bias, chain=chain)
    assert any(ACROSS in s for s in sources)


def test_non_finite_inputs_stay_in_their_channel(monkeypatch):
    """NaN and inf in one channel reach only that channel's outputs (the lanes past the
    last channel repeat it; the interleaving mixes nothing)."""
    xs, k, attrs = CASES["7x7_3x3_c40"]
    model = _model(xs, k, attrs, bias=True, chain="silu")
    x = RNG.standard_normal(xs).astype(np.float32)
    x[0, 39, 3, 3], x[0, 5, 0, 0], x[0, 20, 6, 6] = np.nan, np.inf, -np.inf
    lib, sources = build_with_sources(model, {"x": x}, monkeypatch)
    got = run_outputs(lib, {"x": x})[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=TOL, atol=TOL)
    assert any(ACROSS in s for s in sources)


@pytest.mark.parametrize(("xs", "k", "attrs"), [
    ((1, 576, 14, 14), 3, {"pads": [1, 1, 1, 1]}),  # 3x3 14-column rows: by channel is faster
    ((1, 96, 20, 20), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),  # 10-column rows
    ((1, 8, 7, 7), 3, {"pads": [1, 1, 1, 1]}),  # fewer channels than a vector
])
def test_other_depthwise_convs_run_by_channel(xs, k, attrs, monkeypatch):
    model = _model(xs, k, attrs, bias=True, chain="")
    feeds = {"x": RNG.standard_normal(xs).astype(np.float32)}
    lib, sources = build_with_sources(model, feeds, monkeypatch)
    assert not any(ACROSS in s or DIRECT in s for s in sources)
    np.testing.assert_allclose(run_outputs(lib, feeds)[0], ort_run(model, feeds)[0],
                               rtol=TOL, atol=TOL)

@pytest.mark.parametrize("case", sorted(DIRECT_CASES))
def test_depthwise_in_place(case, monkeypatch):
    sources = _check(case, monkeypatch, bias=True, chain="")
    assert any(DIRECT in s for s in sources), "the conv did not run in place"


@pytest.mark.parametrize(("case", "bias", "chain"), [
    ("56x56_3x3", False, "clip"),
    ("112x112_3x3_stride2", True, "silu"),
    ("57x61_3x3_stride2_odd", True, "residual"),
    ("63x63_5x5_stride2", False, "silu"),
    ("30x60_3x3_uneven", True, "hardswish"),
    ("34x36_3x3_dilated", False, "residual"),
])
def test_depthwise_in_place_fused(case, bias, chain, monkeypatch):
    """The chain runs over each band of output rows, each element stored once."""
    sources = _check(case, monkeypatch, bias=bias, chain=chain)
    assert any(DIRECT in s for s in sources)


@pytest.mark.parametrize("case", ["56x56_3x3", "63x63_5x5_stride2"])
def test_non_finite_inputs_stay_in_their_channel_in_place(case, monkeypatch):
    """NaN and inf in one channel (corners and the middle: border and interior columns)
    reach only that channel's outputs: the other channels match onnxruntime and stay
    finite."""
    xs, k, attrs = DIRECT_CASES[case]
    model = _model(xs, k, attrs, bias=True, chain="silu")
    x = RNG.standard_normal(xs).astype(np.float32)
    x[0, 2, 0, 0], x[0, 2, 30, 30], x[0, 4, -1, -1] = np.nan, np.inf, -np.inf
    lib, sources = build_with_sources(model, {"x": x}, monkeypatch)
    got = run_outputs(lib, {"x": x})[0]
    clean = [c for c in range(xs[1]) if c not in (2, 4)]
    np.testing.assert_allclose(got[:, clean], ort_run(model, {"x": x})[0][:, clean],
                               rtol=TOL, atol=TOL)
    assert np.isfinite(got[:, clean]).all()
    assert not np.isfinite(got[:, 2]).all() and not np.isfinite(got[:, 4]).all()
    assert any(DIRECT in s for s in sources)
