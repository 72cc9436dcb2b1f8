"""The GEMM driver (kiln/codegen/gemm.py) and the kernels on it (matmul, gemm, conv).

Every edge of its blocking: M, N and K around the micro-kernel's rows (12, 6 or 4) and
columns (32 or 16), the k slice (KC) and the column block (NC); B packed at compile time or
read at run time, transposed operands, batches, fused epilogues (bias, ReLU, residual add),
thread counts (bit-identical), and the AVX2 and plain-C micro-kernels built explicitly
(mcpu x86-64-v3 and x86-64). Products compare with NumPy's float64 sums, convs with
onnxruntime. 3x3 convs that would take Winograd (tests/ops/test_winograd.py) are kept on
the direct GEMM conv here, except where a test says otherwise.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.codegen.gemm import KC, NC
from kiln.codegen.kernels.registry import broadcast_rows, row_index
from kiln.ops.layout import PANEL, SGEMM_MIN_WORK, pack_panels, sgemm_worth, unpack_panels
from kiln.runtime.compat import host_arch, host_features
from tests.util import (
    build_with_sources,
    direct_convs,
    forks_threads,
    graph_model,
    ort_run,
    run_outputs,
    single_node_model,
)

RNG = np.random.default_rng(11)
# name -> (target, the CPU features the host needs to run it, features the build must lack)
TARGETS = {
    "native": (None, set(), set()),
    "avx2": ({"kind": "c", "mcpu": "x86-64-v3"}, {"avx2", "fma"}, {"avx512f"}),
    "plain": ({"kind": "c", "mcpu": "x86-64"}, set(), {"avx2", "avx512f"}),
}
# float32 sums of up to ~1000 products of N(0, 1) values, in another order than NumPy's
TOL = 2e-4


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _target(name: str):
    target, needs, _ = TARGETS[name]
    if target is not None and host_arch() != "x86_64":
        pytest.skip(f"target {name} is an x86-64 CPU level; this host is {host_arch()}")
    if not needs <= host_features():
        pytest.skip(f"this host lacks {sorted(needs - host_features())} to run target {name}")
    return target


def _on_driver(sources: list[str]) -> bool:
    """Whether a kernel calls the GEMM driver (kernels/sgemm.py's Call)."""
    return any("kiln_sgemm(" in s and "&call);" in s for s in sources)


def _matmul_model(m: int, k: int, n: int, *, const_b: bool) -> tuple[onnx.ModelProto, dict]:
    a, b = _f32(m, k), _f32(k, n)
    if const_b:
        return single_node_model("MatMul", {"a": a}, consts={"b": b}, opset=17), {"a": a}, b
    return single_node_model("MatMul", {"a": a, "b": b}, opset=17), {"a": a, "b": b}, b


# (m, k, n): rows around 12/6/4, columns around 32/16 and NC, k around KC; tiny and large
SHAPES = [(13, 37, 100), (1, 1000, 65), (100, 1, 500), (25, 300, 33), (50, 2 * KC + 7, 47),
          (12, 64, NC + 88), (7, 129, 2 * NC + 1), (96, 96, 96), (37, 256, 32)]


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("const_b", [True, False], ids=["packed_b", "runtime_b"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_edges(m, k, n, const_b, target, monkeypatch):
    tgt = _target(target)
    model, inputs, b = _matmul_model(m, k, n, const_b=const_b)
    lib, sources = build_with_sources(model, inputs, monkeypatch, target=tgt)
    assert _on_driver(sources)
    assert not set(lib.target.features) & TARGETS[target][2]
    expected = inputs["a"].astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], expected, rtol=TOL, atol=TOL)


def test_small_products_stay_plain_loops(monkeypatch):
    model, inputs, b = _matmul_model(4, 5, 6, const_b=True)
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert not _on_driver(sources)
    assert not sgemm_worth("float32", 4, 5, 6) and sgemm_worth("float32", 16, 16, 16)
    assert 4 * 5 * 6 < SGEMM_MIN_WORK
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], inputs["a"] @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("const_b", [True, False], ids=["const_b", "runtime_b"])
@pytest.mark.parametrize("c_shape", [None, (70,), (45, 1), (45, 70), ()])
def test_gemm_on_the_driver(trans_a, trans_b, const_b, c_shape, monkeypatch):
    m, k, n = 45, 300, 70
    a = _f32(k, m) if trans_a else _f32(m, k)
    b = _f32(n, k) if trans_b else _f32(k, n)
    inputs = {"a": a} if const_b else {"a": a, "b": b}
    consts = {"b": b} if const_b else {}
    if c_shape is not None:
        consts["c"] = _f32(*c_shape)
    model = single_node_model("Gemm", inputs, consts=consts, opset=17, alpha=0.5, beta=1.5,
                              transA=trans_a, transB=trans_b)
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert _on_driver(sources)
    a64 = (a.T if trans_a else a).astype(np.float64)
    b64 = (b.T if trans_b else b).astype(np.float64)
    expected = 0.5 * a64 @ b64 + (1.5 * consts["c"] if c_shape is not None else 0)
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], expected, rtol=TOL, atol=TOL)


def test_matmul_bias_relu_residual_epilogue(monkeypatch):
    """x @ W + bias, ReLU, + residual: one kernel, the chain applied per finished tile."""
    x, r = _f32(2, 30, 200), _f32(2, 30, 75)
    w, bias = _f32(200, 75), _f32(75)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["y", "bias"], ["z"]),
             helper.make_node("Relu", ["z"], ["h"]),
             helper.make_node("Add", ["h", "r"], ["out"])]
    inputs = {"x": x, "r": r}
    model = graph_model(nodes, inputs, {"w": w, "bias": bias})
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert len(sources) == 1 and _on_driver(sources) and "kiln_tile" in sources[0]
    expected = np.maximum(x.astype(np.float64) @ w + bias, 0) + r
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], expected, rtol=TOL, atol=TOL)


def test_chain_ending_in_another_dtype_keeps_the_loops(monkeypatch):
    """A chain that casts stores no float32: the driver cannot write its raw products there,
    so the C loops run (reading the packed B)."""
    x, w = _f32(40, 100), _f32(100, 64)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Cast", ["y"], ["out"], to=TensorProto.DOUBLE)]
    lib, sources = build_with_sources(graph_model(nodes, {"x": x}, {"w": w}), {"x": x}, monkeypatch)
    assert not _on_driver(sources)
    got = run_outputs(lib, {"x": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, x.astype(np.float64) @ w, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("sa,sb", [((12, 128, 64), (12, 64, 128)), ((2, 3, 40, 50), (3, 50, 33)),
                                   ((1, 4, 100, 64), (1, 1, 64, 70))])
def test_batched_matmul(sa, sb, monkeypatch):
    """Attention-style products (batch = heads): B is a run-time tensor, one call per batch."""
    a, b = _f32(*sa), _f32(*sb)
    model = single_node_model("MatMul", {"a": a, "b": b}, opset=17)
    lib, sources = build_with_sources(model, {"a": a, "b": b}, monkeypatch)
    assert _on_driver(sources)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(run_outputs(lib, {"a": a, "b": b})[0], expected, rtol=TOL, atol=TOL)


def _conv_model(x, w, bias=None, **attrs):
    consts = {"w": w} | ({} if bias is None else {"b": bias})
    return single_node_model("Conv", {"x": x}, consts=consts, opset=17, **attrs)


# (x shape, w shape, attrs): pointwise, 3x3 padded, strided, dilated, grouped, 1-D, 3-D,
# K over KC, positions over NC, 7x7 planes, batches, non-square planes
CONVS = {
    "pointwise": ((2, 64, 20, 30), (40, 64, 1, 1), {}),
    "3x3_pad": ((1, 32, 28, 28), (48, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3_big_k": ((1, 96, 14, 14), (30, 96, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3_stride2": ((2, 16, 33, 31), (24, 16, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 2]}),
    "1x1_stride2": ((1, 64, 28, 28), (128, 64, 1, 1), {"strides": [2, 2]}),
    "dilated": ((1, 16, 24, 24), (16, 16, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "grouped": ((1, 64, 16, 16), (64, 16, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}),
    "7x7_plane": ((1, 256, 7, 7), (100, 256, 3, 3), {"pads": [1, 1, 1, 1]}),
    "7x7_kernel": ((1, 3, 40, 40), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    "conv1d": ((2, 24, 300), (36, 24, 5), {"pads": [2, 1]}),
    "conv3d": ((1, 8, 6, 10, 12), (16, 8, 3, 3, 3), {"pads": [1, 0, 1, 1, 2, 1]}),
    "wide": ((1, 8, 10, 700), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_on_the_driver(case, bias, monkeypatch):
    xs, ws, attrs = CONVS[case]
    x, w = _f32(*xs), (_f32(*ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    model = _conv_model(x, w, _f32(ws[0]) if bias else None, **attrs)
    direct_convs(monkeypatch)
    lib, sources = build_with_sources(model, {"x": x}, monkeypatch)
    assert _on_driver(sources) and "winograd_weight=[]" in lib.ir()
    np.testing.assert_allclose(run_outputs(lib, {"x": x})[0], ort_run(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "winograd"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_conv_bias_relu_residual_on_each_target(target, direct, monkeypatch):
    tgt = _target(target)
    if direct:
        direct_convs(monkeypatch)
    x, r = _f32(1, 24, 18, 18), _f32(1, 40, 18, 18)
    w, bias = _f32(40, 24, 3, 3) / 15, _f32(40)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["h"]),
             helper.make_node("Add", ["h", "r"], ["out"])]
    inputs = {"x": x, "r": r}
    model = graph_model(nodes, inputs, {"w": w, "b": bias})
    lib, sources = build_with_sources(model, inputs, monkeypatch, target=tgt)
    assert len(sources) == 1 and _on_driver(sources)
    assert ("winograd_weight=[]" in lib.ir()) is direct
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], ort_run(model, inputs)[0],
                               rtol=1e-4, atol=1e-4)


THREAD_CASES = {
    "matmul_packed": lambda: _matmul_model(100, 300, 700, const_b=True)[:2],
    "matmul_runtime": lambda: _matmul_model(200, 150, 300, const_b=False)[:2],
    "conv_parts": lambda: (lambda x: (_conv_model(x, _f32(100, 256, 3, 3), _f32(100),
                                                  pads=[1, 1, 1, 1]), {"x": x}))(
        _f32(1, 256, 7, 7)),
    "conv_tiles": lambda: (lambda x: (_conv_model(x, _f32(64, 32, 3, 3), pads=[1, 1, 1, 1]),
                                      {"x": x}))(_f32(1, 32, 40, 40)),
    "winograd": lambda: (lambda x: (_conv_model(x, _f32(64, 32, 3, 3), pads=[1, 1, 1, 1]),
                                    {"x": x}))(_f32(1, 32, 40, 40)),
    "pointwise": lambda: (lambda x: (_conv_model(x, _f32(96, 64, 1, 1), _f32(96)), {"x": x}))(
        _f32(1, 64, 30, 30)),
}


@pytest.mark.parametrize("case", sorted(THREAD_CASES))
def test_thread_count_gives_identical_bits(case, monkeypatch):
    model, inputs = THREAD_CASES[case]()
    if case != "winograd":
        direct_convs(monkeypatch)
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert _on_driver(sources) and forks_threads(sources)
    assert ("winograd_weight=[64" in lib.ir()) is (case == "winograd")
    first = run_outputs(lib, inputs, threads=1)
    for threads in (2, 3):
        for got, want in zip(run_outputs(lib, inputs, threads=threads), first, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"{threads} threads")


def test_panels_round_trip_and_padding():
    b = _f32(7, 70)
    panels = pack_panels(b)
    assert panels.shape == (3, 7, PANEL)
    assert not panels[2, :, 70 - 2 * PANEL:].any()
    np.testing.assert_array_equal(unpack_panels(panels, 70), b)


@pytest.mark.parametrize("in_shape,out_shape,ld", [
    ((75,), (2, 30, 75), 75), ((2, 30, 75), (2, 30, 75), 75), ((1, 40, 1, 1), (2, 40, 6, 7), 42),
    ((40, 1, 1), (2, 40, 6, 7), 42), ((6, 7), (2, 40, 6, 7), 42), ((2, 1, 6, 1), (2, 40, 6, 7), 42),
    ((), (3, 5), 5), ((3, 1), (3, 5), 5), ((1, 7), (2, 40, 6, 7), 42), ((5,), (4, 5), 3),
])
def test_row_index_is_the_broadcast_index(in_shape, out_shape, ld):
    """The tile epilogue's operand index from (row, column) equals the flat broadcast index
    (C integer division of non-negative numbers is Python's //)."""
    expr = row_index(in_shape, out_shape, ld, "outer", "inner", "i").replace("/", "//")
    want = np.broadcast_to(np.arange(int(np.prod(in_shape))).reshape(in_shape), out_shape)
    for i, expected in enumerate(want.reshape(-1)):
        assert eval(expr, {"outer": i // ld, "inner": i % ld, "i": i}) == expected, (expr, i)


@pytest.mark.parametrize("shapes", [((2, 40, 9, 11), (1, 40, 1, 1)), ((6, 50), (6, 1)),
                                    ((7, 1), (1, 30)), ((3, 4, 5), (4, 1)), ((2, 3), (2, 3))])
def test_broadcast_rows_matches_numpy(shapes, monkeypatch):
    """Elementwise kernels whose inputs broadcast along leading dims only loop by rows (the
    row loop vectorizes); the values are NumPy's."""
    a, b = _f32(*shapes[0]), _f32(*shapes[1])
    model = single_node_model("Mul", {"a": a, "b": b}, opset=17)
    lib, _ = build_with_sources(model, {"a": a, "b": b}, monkeypatch)
    np.testing.assert_array_equal(run_outputs(lib, {"a": a, "b": b})[0], a * b)
    out = np.broadcast_shapes(*shapes)
    ld = broadcast_rows(shapes, out)
    assert ld == {(2, 40, 9, 11): 99, (6, 50): 50, (7, 30): 30, (3, 4, 5): 5, (2, 3): 3}[out]


# depthwise convs: 3x3 and 5x5 taps summed in one loop, over rows or (2-D, stride 1 or short
# rows) the whole padded plane; dilation; stride 2; 1-D; a fused epilogue
DEPTHWISE = {
    "3x3_rows": ((1, 8, 40, 40), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "3x3_flat": ((2, 8, 20, 21), 3, {"pads": [1, 1, 1, 1]}),
    "5x5_flat_stride2": ((1, 8, 13, 14), 5, {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    "5x5_dilated": ((1, 8, 12, 12), 5, {"pads": [4, 4, 4, 4], "dilations": [2, 2]}),
    "3x3_uneven_pads": ((1, 8, 9, 10), 3, {"pads": [0, 1, 2, 1], "strides": [1, 2]}),
    "3x3_uneven_stride2": ((1, 8, 9, 10), 3, {"pads": [0, 1, 2, 1], "strides": [2, 2]}),
    "4x4_stride3": ((1, 8, 17, 11), 4, {"pads": [1, 2, 0, 1], "strides": [3, 3]}),
    "1d": ((1, 8, 50), 3, {"pads": [1, 1]}),
    # stride 2 over a split plane (rows rounded up to whole vectors), odd sizes, 5x5
    "5x5_rows_stride2": ((1, 8, 45, 43), 5, {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    "5x5_dilated_stride2": ((1, 8, 23, 21), 5, {"pads": [3, 4, 4, 3], "strides": [2, 2],
                                                "dilations": [2, 2]}),
    "3x3_stride2_short": ((2, 8, 14, 14), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "3d_stride2": ((1, 4, 6, 9, 11), 3, {"pads": [1, 1, 1, 1, 1, 1], "strides": [1, 2, 2]}),
}


@pytest.mark.parametrize("case", sorted(DEPTHWISE))
def test_depthwise_with_hard_swish(case, monkeypatch):
    xs, k, attrs = DEPTHWISE[case]
    c, nd = xs[1], len(xs) - 2
    x, w, bias = _f32(*xs), _f32(c, 1, *(k,) * nd), _f32(c)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, **attrs),
             helper.make_node("HardSwish", ["y"], ["out"])]
    model = graph_model(nodes, {"x": x}, {"w": w, "b": bias})
    lib, _ = build_with_sources(model, {"x": x}, monkeypatch)
    np.testing.assert_allclose(run_outputs(lib, {"x": x})[0], ort_run(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["5x5_rows_stride2", "3x3_flat", "3x3_stride2_short"])
def test_depthwise_with_silu_and_non_finite_inputs(case, monkeypatch):
    """The band of a depthwise plane is stored in one loop through the fused SiLU: NaN and
    +-inf inputs reach the outputs as onnxruntime's do; 1 and 2 threads agree exactly."""
    xs, k, attrs = DEPTHWISE[case]
    c, nd = xs[1], len(xs) - 2
    x, w, bias = _f32(*xs), _f32(c, 1, *(k,) * nd), _f32(c)
    x.flat[[3, 500, 901]] = [np.nan, np.inf, -np.inf]
    x.flat[-1] = 100.0  # a sigmoid past exp's range
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, **attrs),
             helper.make_node("Sigmoid", ["y"], ["s"]),
             helper.make_node("Mul", ["y", "s"], ["out"])]
    model = graph_model(nodes, {"x": x}, {"w": w, "b": bias})
    lib, _ = build_with_sources(model, {"x": x}, monkeypatch)
    first = run_outputs(lib, {"x": x})[0]
    np.testing.assert_allclose(first, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(run_outputs(lib, {"x": x}, threads=2)[0], first)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("kernel,stride", [(3, 1), (1, 1), (1, 2)])
def test_small_plane_conv_runs_transposed_on_each_target(target, kernel, stride, monkeypatch):
    """A 7x7 output plane: the weight is packed as panels of W^T (pack_conv_weights) and the
    product runs with output channels along the vectors, then is written back transposed."""
    tgt = _target(target)
    direct_convs(monkeypatch)  # a 3x3 one would take Winograd
    size = 7 * stride
    x, r = _f32(1, 64, size, size), _f32(1, 96, 7, 7)
    w, bias = _f32(96, 64, kernel, kernel) / 20, _f32(96)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[kernel // 2] * 4,
                              strides=[stride, stride]),
             helper.make_node("Add", ["y", "r"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("Mul", ["z", "s"], ["out"])]
    inputs = {"x": x, "r": r}
    model = graph_model(nodes, inputs, {"w": w, "b": bias})
    lib, sources = build_with_sources(model, inputs, monkeypatch, target=tgt)
    assert len(sources) == 1 and "kiln_tile_t" in sources[0]
    assert "packed_weight=[96,64," in lib.ir()
    first = run_outputs(lib, inputs)
    np.testing.assert_allclose(first[0], ort_run(model, inputs)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(run_outputs(lib, inputs, threads=2)[0], first[0])
