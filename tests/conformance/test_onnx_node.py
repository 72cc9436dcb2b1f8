"""ONNX's own node tests (shipped in the onnx wheel) run against kiln.onnx_backend.

Only tests of the ops kiln supports are collected (SUPPORTED below); known failures are
listed with reasons in node_test_exclusions.txt. The pass count is printed at the end of
the run (see conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx.backend.test
import pytest

import kiln.onnx_backend

# Node-test name stems (test_<stem>_... or test_<stem>) of the supported ONNX ops.
SUPPORTED = """
abs add and argmax argmin averagepool basic_conv batchnorm cast ceil celu clip concat constant
constant_pad constantofshape conv convtranspose cos cumsum depthtospace div dropout edge_pad
einsum elu equal erf exp expand flatten floor gather gather_elements gathernd gelu gemm
globalaveragepool globalmaxpool greater greater_equal group_normalization hardmax hardsigmoid
hardswish identity instancenorm layer_normalization leakyrelu less less_equal log logsoftmax
lpnormalization lrn matmul max maxpool mean min mish mod mul mvn neg not onehot or pow prelu
range reciprocal reduce_l1 reduce_l2 reduce_log_sum reduce_log_sum_exp reduce_max reduce_mean
reduce_min reduce_prod reduce_sum reduce_sum_square reflect_pad relu reshape resize
rms_normalization round selu shape sigmoid sign sin size slice softmax softplus softsign
spacetodepth split sqrt squeeze sub sum tanh thresholded_relu tile top_k transpose tril triu
unsqueeze upsample where wrap_pad xor
""".split()

EXCLUSIONS = Path(__file__).with_name("node_test_exclusions.txt")


def _exclusions() -> list[tuple[str, str]]:
    rules = []
    for line in EXCLUSIONS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition(" # ")
        if not sep or not reason.strip():
            raise ValueError(f"exclusion without a reason: {line!r}")
        rules.append((pattern.strip(), reason.strip()))
    return rules


backend_test = onnx.backend.test.BackendTest(kiln.onnx_backend, __name__)
backend_test.include(r"^test_(" + "|".join(map(re.escape, SUPPORTED)) + r")(_.*)?_cpu$")
for _pattern, _reason in _exclusions():
    backend_test.exclude(_pattern)

OnnxBackendNodeModelTest = pytest.mark.conformance(
    backend_test.test_cases["OnnxBackendNodeModelTest"]
)
