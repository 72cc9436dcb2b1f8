"""conv_transpose on the GEMM driver (kiln/codegen/kernels/conv_transpose_gemm.py).

Each case is checked to run on the driver (its C calls kiln_sgemm and the col2im tile
epilogue kiln_scatter), then compared with onnxruntime and with the op's NumPy reference
(kiln/ops/conv.py) at rtol 1e-4, atol 1e-5: float32 sums of up to ~1000 products of values
near 1, in another order. One tap per output (kernel == stride, the U-Net upsampling) and
overlapping taps (pads, output_padding, cropping pads, dilations, groups) in 1-D, 2-D and
3-D; odd sizes, batches, several position tiles (over NC), row chunks and k slices (over
KC); bias or none; a fused ReLU and residual add; 1 and 2 threads, which give the same bits.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
import kiln.pipeline  # noqa: F401  (build_with_sources patches it)
from kiln.runtime.compat import host_arch, host_features
from tests.util import (
    build_with_sources,
    forks_threads,
    graph_model,
    ir_reference,
    ort_run,
    random_data,
    run_outputs,
)

# name -> (target, the CPU features the host needs to run it)
TARGETS = {
    "native": (None, set()),
    "avx2": ({"kind": "c", "mcpu": "x86-64-v3"}, {"avx2", "fma"}),
    "plain": ({"kind": "c", "mcpu": "x86-64"}, set()),
}
RTOL, ATOL = 1e-4, 1e-5

# name -> (x shape, w shape, ConvTranspose attributes)
CASES = {
    # one tap per output: kernel == stride, no padding
    "2x2_stride2": ((1, 32, 12, 10), (32, 16, 2, 2), {"strides": [2, 2]}),
    "2x2_stride2_batch_odd": ((2, 24, 7, 9), (24, 20, 2, 2), {"strides": [2, 2]}),
    "2x2_stride2_tiles": ((1, 16, 30, 41), (16, 8, 2, 2), {"strides": [2, 2]}),  # > NC
    "2x2_stride2_deep": ((1, 300, 6, 5), (300, 40, 2, 2), {"strides": [2, 2]}),  # > KC, chunks
    "3x1_stride3x1": ((1, 16, 9, 14), (16, 12, 3, 1), {"strides": [3, 1]}),
    "grouped_2x2": ((2, 24, 7, 9), (24, 6, 2, 2), {"strides": [2, 2], "group": 3}),
    "3x3_stride3": ((1, 16, 7, 8), (16, 8, 3, 3), {"strides": [3, 3]}),
    "1d_stride4": ((2, 12, 101), (12, 20, 4), {"strides": [4]}),
    "1d_stride5_chunks": ((1, 8, 60), (8, 24, 5), {"strides": [5]}),  # chunks split tap groups
    "3d_2x2x2": ((1, 8, 5, 6, 7), (8, 16, 2, 2, 2), {"strides": [2, 2, 2]}),
    # overlapping taps, or outputs no tap reaches
    "3x3_stride2_pad1_outpad": ((2, 24, 9, 11), (24, 16, 3, 3),
                                {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                 "output_padding": [1, 1]}),
    "4x4_stride2_pad1": ((1, 32, 10, 13), (32, 8, 4, 4), {"strides": [2, 2],
                                                          "pads": [1, 1, 1, 1]}),
    "3x3_stride1_tiles": ((1, 16, 25, 23), (16, 12, 3, 3), {}),
    "3x3_deep": ((1, 300, 5, 6), (300, 12, 3, 3), {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    "dilated": ((1, 16, 9, 8), (16, 8, 3, 3), {"dilations": [2, 3], "pads": [1, 2, 0, 1]}),
    "grouped_3x3": ((1, 32, 10, 10), (32, 8, 3, 3), {"group": 2, "strides": [2, 1]}),
    "crop": ((1, 16, 6, 7), (16, 8, 4, 4), {"strides": [2, 2], "pads": [3, 2, 4, 1]}),
    "outpad_2x2": ((1, 16, 8, 9), (16, 8, 2, 2), {"strides": [2, 2], "output_padding": [1, 1]}),
    "output_shape": ((1, 16, 6, 6), (16, 8, 3, 3), {"strides": [3, 3], "output_shape": [17, 19]}),
    "1d_stride3": ((2, 16, 50), (16, 24, 5), {"strides": [3], "pads": [2, 1]}),
    "3d_3x3x3": ((1, 8, 5, 6, 7), (8, 16, 3, 3, 3), {"strides": [2, 1, 2],
                                                     "pads": [1, 0, 1, 1, 2, 1]}),
}


def _f32(*shape: int) -> np.ndarray:
    """Standard normal float32 test data, seeded by the running test."""
    return random_data(shape)


def _model(xs, ws, attrs, *, bias: bool, chain: bool = False) -> tuple[onnx.ModelProto, dict]:
    """ConvTranspose (+ ReLU + a residual add with chain) and its inputs."""
    x = _f32(*xs)
    w = (_f32(*ws) / np.sqrt(ws[0] * np.prod(ws[2:]) / np.prod(attrs.get("strides", 1))))
    channels = ws[1] * attrs.get("group", 1)
    consts = {"w": w.astype(np.float32)} | ({"b": _f32(channels)} if bias else {})
    nodes = [helper.make_node("ConvTranspose", ["x", *consts], ["y"], **attrs)]
    inputs = {"x": x}
    if chain:
        y_shape = ort_run(graph_model(nodes, inputs, consts), inputs)[0].shape
        inputs["r"] = _f32(*y_shape)
        nodes += [helper.make_node("Relu", ["y"], ["h"]),
                  helper.make_node("Add", ["h", "r"], ["out"])]
    return graph_model(nodes, inputs, consts), inputs


def _on_driver(sources: list[str]) -> bool:
    """Whether the conv_transpose kernel calls the GEMM driver with the col2im epilogue."""
    return any("kiln_sgemm(" in s and "kiln_scatter" in s for s in sources)


def _check(model: onnx.ModelProto, inputs: dict, monkeypatch) -> list[str]:
    """model compiled on the driver: 1 and 2 threads give the same bits, which match
    onnxruntime and the NumPy references; returns the kernels' sources."""
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert _on_driver(sources), "conv_transpose did not take the GEMM driver"
    one, two = run_outputs(lib, inputs, threads=1)[0], run_outputs(lib, inputs, threads=2)[0]
    np.testing.assert_array_equal(one, two, err_msg="2 threads differ from 1")
    np.testing.assert_allclose(one, ort_run(model, inputs)[0], rtol=RTOL, atol=ATOL)
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    np.testing.assert_allclose(one, ir_reference(mod, {**inputs, **params})[0],
                               rtol=RTOL, atol=ATOL)
    return sources


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_transpose_on_the_driver(case, bias, monkeypatch):
    """Each case on the driver, against onnxruntime and the reference, 1 and 2 threads."""
    xs, ws, attrs = CASES[case]
    _check(*_model(xs, ws, attrs, bias=bias), monkeypatch)


@pytest.mark.parametrize("case", ["2x2_stride2", "3x3_stride2_pad1_outpad", "3d_3x3x3"])
def test_bias_relu_residual_fused(case, monkeypatch):
    """ConvTranspose + ReLU + Add: one kernel, each output stored once through the chain."""
    xs, ws, attrs = CASES[case]
    sources = _check(*_model(xs, ws, attrs, bias=True, chain=True), monkeypatch)
    assert len(sources) == 1


@pytest.mark.parametrize("case", ["3x3_stride3", "3x3_stride2_pad1_outpad"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_micro_kernel(target, case, monkeypatch):
    """The AVX2 (6-row) and plain-C (4-row) micro-kernels hand back tiles that split the 3
    taps along the last dim differently: each tile is scattered whole."""
    tgt, needs = TARGETS[target]
    if tgt is not None and host_arch() != "x86_64":
        pytest.skip(f"target {target} is an x86-64 CPU level; this host is {host_arch()}")
    if not needs <= host_features():
        pytest.skip(f"this host lacks {sorted(needs - host_features())} to run {target}")
    xs, ws, attrs = CASES[case]
    model, inputs = _model(xs, ws, attrs, bias=True, chain=True)
    lib, sources = build_with_sources(model, inputs, monkeypatch, target=tgt)
    assert _on_driver(sources)
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], ort_run(model, inputs)[0],
                               rtol=RTOL, atol=ATOL)


def test_unet_upsampling_forks_threads(monkeypatch):
    """A U-Net-sized 2x2 stride 2 layer (one position tile) splits its channels among
    threads."""
    model, inputs = _model((1, 128, 16, 16), (128, 64, 2, 2), {"strides": [2, 2]}, bias=True)
    sources = _check(model, inputs, monkeypatch)
    assert forks_threads(sources)


@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 16, 24, 24), (16, 1, 3, 3), {"group": 16, "strides": [2, 2]}),  # 1 channel a group
    ((1, 4, 20, 20), (4, 16, 3, 3), {"strides": [1, 1]}),  # few channels for overlapping taps
    ((1, 2, 3, 3), (2, 3, 2, 2), {"strides": [2, 2]}),  # too small a product
])
def test_small_reductions_keep_the_row_kernel(xs, ws, attrs, monkeypatch):
    """Products too small or too shallow for the driver stay on the row kernel."""
    model, inputs = _model(xs, ws, attrs, bias=True)
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert not _on_driver(sources)
    np.testing.assert_allclose(run_outputs(lib, inputs)[0], ort_run(model, inputs)[0],
                               rtol=RTOL, atol=ATOL)
