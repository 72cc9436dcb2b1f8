"""The benchmark runner's FLOP counter (benchmarks/flops.py) on one-node models: no C
compiler, no benchmark peers."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.flops import count_flops


def _model(node, inputs: dict[str, list[int]], output: list[int], weights: dict | None = None):
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                      for n, s in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, output)],
        [numpy_helper.from_array(np.zeros(s, np.float32), n)
         for n, s in (weights or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_counts_two_flops_per_multiply_add_of_each_group():
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4,
                            strides=[2, 2], group=2)
    model = _model(node, {"x": [1, 8, 16, 16]}, [1, 4, 8, 8], {"w": [4, 4, 3, 3]})
    assert count_flops(model) == 2 * 1 * 4 * 8 * 8 * (8 // 2) * 3 * 3


def test_conv_transpose_counts_over_the_input_pixels():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 2],
                            strides=[2, 2])
    model = _model(node, {"x": [1, 16, 8, 8]}, [1, 4, 16, 16], {"w": [16, 4, 2, 2]})
    assert count_flops(model) == 2 * 16 * 8 * 8 * 4 * 2 * 2


def test_batched_matmul_counts_every_batch():
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model(node, {"a": [2, 3, 5, 7], "b": [2, 3, 7, 11]}, [2, 3, 5, 11])
    assert count_flops(model) == 2 * 2 * 3 * 5 * 11 * 7


def test_gemm_reads_k_through_trans_a():
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)
    model = _model(node, {"a": [7, 5]}, [5, 11], {"b": [7, 11]})
    assert count_flops(model) == 2 * 5 * 11 * 7


def test_elementwise_ops_are_not_counted():
    node = helper.make_node("Relu", ["x"], ["y"])
    assert count_flops(_model(node, {"x": [4, 4]}, [4, 4])) == 0
