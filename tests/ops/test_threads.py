"""Multi-threaded kernels: any thread count gives the same bits, and matches onnxruntime.

Each model is large enough that its kernel forks threads (checked in the C source); it runs
with 1, 2 and 3 threads (3 splits evenly into neither the work nor the 2 cores here).
Convs take the direct kernels (tests/ops/test_winograd.py covers Winograd's threads).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
import kiln.pipeline
from tests.util import (
    build_with_sources,
    direct_convs,
    forks_threads,
    ort_run,
    run_outputs,
    single_node_model,
)

RNG = np.random.default_rng(7)
THREADS = (1, 2, 3)


@pytest.fixture(autouse=True)
def _no_winograd(monkeypatch) -> None:
    direct_convs(monkeypatch)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _chain() -> onnx.ModelProto:
    """Tanh -> Add -> Mul: one fused elementwise kernel."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Add", ["t", "y"], ["s"]),
             helper.make_node("Mul", ["s", "y"], ["z"])]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 512]) for n in ("x", "y")],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _conv(x: np.ndarray, w: np.ndarray, **attrs) -> onnx.ModelProto:
    return single_node_model("Conv", {"x": x}, consts={"w": w, "b": _f32(w.shape[0])},
                             opset=17, **attrs)


# name -> (model, tolerance against onnxruntime: 1e-4 where float32 sums of 100-600 terms
# run in another order than onnxruntime's)
CASES = {
    # one position tile: its output channels are cut in parts, one per thread
    "conv_channel_parts": (_conv(_f32(1, 128, 4, 4), _f32(128, 128, 3, 3) / 4,
                                 pads=[1, 1, 1, 1]), 1e-4),
    # the position tiles are split among the threads
    "conv_tiles": (_conv(_f32(1, 32, 32, 64), _f32(32, 32, 1, 1)), 1e-5),
    "conv_batch_strided": (_conv(_f32(2, 32, 20, 20), _f32(32, 32, 3, 3) / 2,
                                 pads=[1, 1, 1, 1], strides=[1, 2]), 1e-4),
    "conv_rows": (_conv(_f32(1, 16, 24, 24), _f32(4, 16, 3, 3), pads=[1, 1, 1, 1]), 1e-4),
    "conv_depthwise": (_conv(_f32(1, 32, 40, 40), _f32(32, 1, 3, 3), pads=[1, 1, 1, 1],
                             group=32), 1e-5),
    "conv_transpose": (single_node_model("ConvTranspose", {"x": _f32(1, 16, 12, 12)},
                                         consts={"w": _f32(16, 8, 3, 3)}, opset=17,
                                         strides=[2, 2]), 1e-4),
    "max_pool": (single_node_model("MaxPool", {"x": _f32(1, 32, 40, 40)}, opset=17,
                                   kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 0),
    "matmul": (single_node_model("MatMul", {"a": _f32(64, 96)}, consts={"b": _f32(96, 300)},
                                 opset=17), 1e-4),
    "matmul_batched": (single_node_model("MatMul", {"a": _f32(4, 64, 96), "b": _f32(4, 96, 80)},
                                         opset=17), 1e-4),
    "gemm": (single_node_model("Gemm", {"a": _f32(32, 200)},
                               consts={"b": _f32(300, 200), "c": _f32(300)}, opset=17,
                               transB=1, alpha=0.5, beta=2.0), 1e-4),
    "softmax": (single_node_model("Softmax", {"x": _f32(64, 200)}, opset=17, axis=-1), 1e-5),
    "softmax_inner_axis": (single_node_model("Softmax", {"x": _f32(8, 50, 100)}, opset=17,
                                             axis=1), 1e-5),
    "reduce_mean": (single_node_model("ReduceMean", {"x": _f32(64, 40, 30)},
                                      consts={"axes": np.array([2], np.int64)}, opset=18,
                                      keepdims=0), 1e-5),
    "resize": (single_node_model("Resize", {"x": _f32(1, 8, 30, 30)},
                                 consts={"roi": None,
                                         "scales": np.array([1, 1, 2, 2], np.float32)},
                                 opset=18, mode="linear"), 1e-5),
    "elementwise_chain": (_chain(), 1e-5),
    "transpose": (single_node_model("Transpose", {"x": _f32(8, 64, 96)}, opset=17,
                                    perm=[2, 0, 1]), 0),
    "concat": (single_node_model("Concat", {"a": _f32(1, 16, 48, 48), "b": _f32(1, 24, 48, 48)},
                                 opset=17, axis=1), 0),
}


def _inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: _f32(*[d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input}


@pytest.mark.parametrize("name", sorted(CASES))
def test_thread_count_does_not_change_results(name, monkeypatch):
    model, tol = CASES[name]
    inputs = _inputs(model)
    lib, sources = build_with_sources(model, inputs, monkeypatch)
    assert forks_threads(sources), "the kernel does not fork threads"
    first = run_outputs(lib, inputs, THREADS[0])
    for threads in THREADS[1:]:
        for k, (a, b) in enumerate(zip(first, run_outputs(lib, inputs, threads), strict=True)):
            assert np.array_equal(a, b), f"output {k}: {threads} threads differ from 1"
    for got, expected in zip(first, ort_run(model, inputs), strict=True):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_small_kernel_stays_serial(monkeypatch):
    x = _f32(4, 64)
    model = single_node_model("Relu", {"x": x}, opset=17)
    _, sources = build_with_sources(model, {"x": x}, monkeypatch)
    assert not forks_threads(sources)


def test_aot_executor_with_threads(monkeypatch):
    model, tol = CASES["conv_channel_parts"]
    inputs = _inputs(model)
    lib, _ = build_with_sources(model, inputs, monkeypatch, executor="aot")
    one, two = run_outputs(lib, inputs, 1), run_outputs(lib, inputs, 2)
    assert np.array_equal(one[0], two[0])
    np.testing.assert_allclose(one[0], ort_run(model, inputs)[0], rtol=tol, atol=tol)


def test_two_executors_run_concurrently_with_their_own_thread_counts(monkeypatch):
    """Each Python thread sets its own thread count (the pool's team) before its native calls."""
    model, _ = CASES["conv_channel_parts"]
    inputs = _inputs(model)
    lib, _ = build_with_sources(model, inputs, monkeypatch)
    expected = run_outputs(lib, inputs, 1)[0]
    results: dict[int, list[np.ndarray]] = {1: [], 2: []}
    seen: dict[int, set[int]] = {1: set(), 2: set()}  # the team size after each run
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(threads: int) -> None:
        try:
            gmod = kiln.GraphModule(lib["default"](kiln.cpu(0, num_threads=threads)))
            gmod.set_input(**inputs)
            max_threads = gmod.executor.lib.native.kiln_threads
            start.wait()
            for _ in range(30):
                gmod.run()
                seen[threads].add(max_threads())
                results[threads].append(gmod.get_output(0))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in results]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    assert seen == {1: {1}, 2: {2}}
    for threads, outputs in results.items():
        assert len(outputs) == 30
        assert all(np.array_equal(o, expected) for o in outputs), f"{threads} threads"
