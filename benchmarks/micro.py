"""Microbenchmarks: one-node ONNX models of the layers that dominate real networks.

GEMMs are MatMul nodes with the right-hand matrix a weight (as in a model): 1024^3 and the
four GEMMs of a BERT-base layer at 128 tokens (fused QKV 768->2304, attention output
768->768, FFN 768->3072 and 3072->768). Convolutions are single Conv nodes without bias on a
batch of one: two ResNet 3x3 layers, a 1x1 bottleneck reduction and a MobileNet depthwise
3x3. NumPy (np.matmul, i.e. its BLAS sgemm) runs the GEMMs; a NumPy convolution would
measure nothing useful, so convolutions have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .zoo import BenchModel, cache_dir


@dataclass(frozen=True)
class Gemm:
    m: int
    k: int
    n: int


@dataclass(frozen=True)
class Conv:
    cin: int
    size: int
    cout: int
    kernel: int
    groups: int = 1


MICRO: dict[str, Gemm | Conv] = {
    "gemm_1024": Gemm(1024, 1024, 1024),
    "bert_qkv": Gemm(128, 768, 2304),
    "bert_attn_out": Gemm(128, 768, 768),
    "bert_ffn_up": Gemm(128, 768, 3072),
    "bert_ffn_down": Gemm(128, 3072, 768),
    "conv3x3_64x56": Conv(64, 56, 64, 3),
    "conv3x3_128x28": Conv(128, 28, 128, 3),
    "conv1x1_256x56": Conv(256, 56, 64, 1),
    "dwconv3x3_144x56": Conv(144, 56, 144, 3, groups=144),
}


def describe(case: Gemm | Conv) -> str:
    if isinstance(case, Gemm):
        return f"GEMM {case.m}x{case.k}x{case.n} (MxKxN)"
    kind = "depthwise " if case.groups == case.cin else ""
    return (f"{kind}conv {case.kernel}x{case.kernel}, {case.cin}x{case.size}x{case.size} -> "
            f"{case.cout}")


def _model(case: Gemm | Conv, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict]:
    if isinstance(case, Gemm):
        x = rng.standard_normal((case.m, case.k), dtype=np.float32)
        w = (rng.standard_normal((case.k, case.n)) / np.sqrt(case.k)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        out_shape = [case.m, case.n]
    else:
        s, k = case.size, case.kernel
        x = rng.standard_normal((1, case.cin, s, s), dtype=np.float32)
        fan_in = case.cin // case.groups * k * k
        w = (rng.standard_normal((case.cout, case.cin // case.groups, k, k))
             / np.sqrt(fan_in)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k],
                                pads=[k // 2] * 4, group=case.groups)
        out_shape = [1, case.cout, s, s]
    graph = helper.make_graph(
        [node], "micro", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": x}


def prepare(name: str) -> BenchModel:
    """Write micro model `name` and its input into the cache folder."""
    model, inputs = _model(MICRO[name], np.random.default_rng(0))
    stem = cache_dir() / f"micro-{name}"
    onnx_path, inputs_path = stem.with_suffix(".onnx"), stem.with_suffix(".npz")
    onnx_path.write_bytes(model.SerializeToString())
    np.savez(inputs_path, **inputs)
    return BenchModel(name, onnx_path, inputs_path, "micro")
