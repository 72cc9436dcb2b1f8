"""Which of ONNX's node tests kiln is held to: those whose every node is an op kiln converts.

The set comes from the converter registry itself, so a new converter brings its ONNX tests
in with it; the node tests of ops kiln does not support are not collected at all.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import onnx
from onnx.backend.test.case.test_case import TestCase
from onnx.backend.test.loader import load_model_tests

from kiln.frontend.onnx import supported_op_types


@cache
def node_tests() -> tuple[TestCase, ...]:
    """Every node test the installed onnx wheel ships."""
    return tuple(load_model_tests(kind="node"))


def _model(test: TestCase) -> onnx.ModelProto:
    if test.model is not None:
        return test.model
    return onnx.load(Path(test.model_dir) / "model.onnx", load_external_data=False)


@cache
def supported_tests() -> frozenset[str]:
    """Names of the node tests whose nodes are all ONNX-domain ops kiln converts."""
    ops = set(supported_op_types())
    names = set()
    for test in node_tests():
        nodes = _model(test).graph.node
        if nodes and all(n.domain in ("", "ai.onnx") and n.op_type in ops for n in nodes):
            names.add(test.name)
    return frozenset(names)
