"""Model FLOPs counted from an ONNX graph with static shapes.

Only the dense-algebra ops are counted (a multiply-add is 2 FLOPs): Conv as
2 * N * Cout * prod(output spatial) * Cin/groups * prod(kernel), ConvTranspose as the same
product over the *input* spatial size, MatMul as 2 * batch * M * N * K (batch from the
broadcast output), Gemm as 2 * M * N * K. Elementwise ops, normalizations, pooling, softmax
and data movement are not counted, so achieved GFLOP/s slightly understates the work done.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import shape_inference

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every value's static shape after ONNX shape inference (unknown dims are left out)."""
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """FLOPs of one node (0 for ops that are not counted); KeyError if a shape is unknown."""
    if node.op_type == "Conv":
        out, weight = shapes[node.output[0]], shapes[node.input[1]]
        # weight: [Cout, Cin/groups, k...]; out: [N, Cout, spatial...]
        return 2 * math.prod(out) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        x, weight = shapes[node.input[0]], shapes[node.input[1]]
        # weight: [Cin, Cout/groups, k...]: every input pixel scatters a Cout/groups x k patch
        return 2 * math.prod(x) * math.prod(weight[1:])
    if node.op_type == "MatMul":
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        return 2 * math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return 2 * math.prod(out) * k
    return 0


def _shapes_by_running(model: onnx.ModelProto, names: list[str],
                       inputs: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """The shapes of values ONNX shape inference left unknown, from one onnxruntime run with
    those values added as graph outputs."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, inputs)
    return {n: list(v.shape) for n, v in zip(names, values, strict=True)}


def count_flops(model: onnx.ModelProto, inputs: dict[str, np.ndarray] | None = None) -> int:
    """Total FLOPs of Conv, ConvTranspose, MatMul and Gemm nodes in the main graph. Shapes
    come from ONNX shape inference, else (given the inputs) from running onnxruntime once."""
    shapes = _shapes(model)
    needed = {name for node in model.graph.node if node.op_type in COUNTED
              for name in [*node.input[:2], node.output[0]]}
    missing = sorted(needed - shapes.keys())
    if missing and inputs is not None:
        shapes.update(_shapes_by_running(model, missing, inputs))
    return sum(node_flops(node, shapes) for node in model.graph.node)
