"""Winograd F(4x4, 3x3) convs (kiln/ops/winograd.py, kiln/codegen/kernels/winograd.py).

The transforms' algebra in float64 (no compiler); then compiled convs that take it (checked
in the IR) against a float64 NumPy convolution: sizes that are not whole tiles, pads, batches,
channel counts around the transforms' 16 lanes, bias, a fused ReLU and residual add, one and
two threads (bit-identical), several blocks of tile rows.

Tolerance: Winograd's transforms (coefficients up to 8 and 1/24) cost a few float32 roundings
more than a direct sum; with N(0, 1) inputs and weights scaled by 1/sqrt(fan-in), the error
measured is below 2e-5 of the outputs' largest magnitude. Tests allow 1e-4 of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.ops import winograd
from tests.util import build_with_sources, run_outputs

RNG = np.random.default_rng(23)
TOL = 1e-4  # of the largest |output|


def test_transforms_compute_a_3x3_correlation() -> None:
    """A^T [(G g G^T) * (B^T d B)] A is the 4x4 correlation of a 6x6 window d with g."""
    d, g = RNG.standard_normal((6, 6)), RNG.standard_normal((3, 3))
    u = winograd.G @ g @ winograd.G.T
    v = winograd.BT @ d @ winograd.BT.T
    y = winograd.AT @ (u * v) @ winograd.AT.T
    expected = [[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


def test_weight_transform_round_trips() -> None:
    """The stored weight (36 panel matrices) gives back the weight it was made from."""
    w = RNG.standard_normal((40, 24, 3, 3)).astype(np.float32)
    u = winograd.transform_weight(w)
    assert u.shape == winograd.weight_shape(w.shape) == (36, 2, 24, 32)
    np.testing.assert_allclose(winograd.untransform_weight(u, w.shape), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("attrs", "shape", "worth"), [
    ({}, (1, 16, 16, 16), True),
    ({"strides": [2, 2]}, (1, 16, 16, 16), False),
    ({"dilations": [2, 2]}, (1, 16, 16, 16), False),
    ({"group": 2}, (1, 16, 16, 16), False),
    ({}, (1, 4, 16, 16), False),  # too few channels
    ({}, (1, 16, 8, 8), True),  # 4 tiles, but a transformed weight that stays in cache
    ({}, (1, 16, 2, 2), False),  # ... and not when one tile covers 4 times the plane
    ({"m": 512}, (1, 512, 8, 8), False),  # 4 tiles and a 38 MB transformed weight
    ({"m": 512}, (3, 512, 8, 8), True),  # ... but 3 images have 12 tiles
])
def test_which_convs_take_winograd(attrs: dict, shape: tuple, worth: bool) -> None:
    attrs = dict(attrs)
    m = attrs.pop("m", 16)
    full = {"strides": [1, 1], "dilations": [1, 1], "group": 1, **attrs}
    w = (m, shape[1] // full["group"], 3, 3)
    out = (shape[0], m, shape[2], shape[3])
    assert winograd.winograd_worth("float32", shape, w, out, full) is worth
    assert not winograd.winograd_worth("float64", shape, w, out, {**full, "group": 1})


def _direct(x: np.ndarray, w: np.ndarray, pads: list[int]) -> np.ndarray:
    """float64 3x3 correlation of x (N, C, H, W) with w (M, C, 3, 3), pads [t, l, b, r]."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    h, wd = xp.shape[2] - 2, xp.shape[3] - 2
    y = np.zeros((x.shape[0], w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return y


def _model(n: int, c: int, m: int, size: tuple[int, int], pads: list[int], *, bias: bool,
           residual: bool):
    """Conv 3x3 (+ bias) -> Relu (-> Add of a second input), weights N(0, 1/(9c))."""
    w = (RNG.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32)
    out = (n, m, size[0] + pads[0] + pads[2] - 2, size[1] + pads[1] + pads[3] - 2)
    nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["z"],
                              kernel_shape=[3, 3], pads=pads),
             helper.make_node("Relu", ["z"], ["r" if residual else "y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (n, c, *size))]
    if residual:
        nodes.append(helper.make_node("Add", ["r", "s"], ["y"]))
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, out))
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if bias else [])
    graph = helper.make_graph(nodes, "wino", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, w, (b if bias else np.zeros(m, np.float32)), out


@pytest.mark.parametrize(("n", "c", "m", "size", "pads", "bias", "residual"), [
    (1, 16, 32, (16, 16), [1, 1, 1, 1], True, False),  # whole tiles
    (1, 24, 40, (13, 17), [1, 1, 1, 1], True, True),  # edge tiles, channels past 16 lanes
    (2, 8, 8, (9, 22), [0, 0, 0, 0], False, False),  # no padding, batch, few channels
    (1, 20, 36, (15, 15), [2, 0, 1, 2], True, True),  # uneven pads
    (1, 16, 16, (120, 64), [1, 1, 1, 1], False, False),  # several blocks of tile rows
])
def test_winograd_conv_matches_direct(monkeypatch, n, c, m, size, pads, bias, residual) -> None:
    model, w, b, out = _model(n, c, m, size, pads, bias=bias, residual=residual)
    x = RNG.standard_normal((n, c, *size)).astype(np.float32)
    inputs = {"x": x}
    expected = np.maximum(_direct(x, w, pads) + b.reshape(1, -1, 1, 1), 0)
    if residual:
        inputs["s"] = RNG.standard_normal(out).astype(np.float32)
        expected = expected + inputs["s"]
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert f"winograd_weight=[{m},{c},3,3]" in lib.ir()
    assert any("kiln_winograd_input" in s for s in sources)
    one = run_outputs(lib, inputs, threads=1)[0]
    two = run_outputs(lib, inputs, threads=2)[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(one, expected, rtol=0, atol=TOL * scale)
    np.testing.assert_array_equal(one, two)  # the thread count changes no sum
