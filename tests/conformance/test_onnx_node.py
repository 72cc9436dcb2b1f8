"""ONNX's own node tests (shipped in the onnx wheel) run against kiln.onnx_backend.

Only the tests of ops kiln supports are collected (selection.py), on the CPU device; known
failures are listed with reasons in node_test_exclusions.txt. The counts, and kiln's share
of all the node tests, are printed at the end of the run (see conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx.backend.test
import pytest

import kiln.onnx_backend
from tests.conformance.selection import supported_tests

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


def _node_test_case() -> type:
    """The node tests' unittest class, holding only the CPU tests of supported ops."""
    backend_test = onnx.backend.test.BackendTest(kiln.onnx_backend, __name__)
    for pattern, _reason in _exclusions():
        backend_test.exclude(pattern)
    cases = backend_test.test_cases["OnnxBackendNodeModelTest"]
    held = {f"{name}_cpu" for name in supported_tests()}
    for name in [n for n in vars(cases) if n.startswith("test_") and n not in held]:
        delattr(cases, name)  # not collected: an unsupported op, or a device kiln lacks
    return cases


OnnxBackendNodeModelTest = pytest.mark.conformance(_node_test_case())


def test_every_exclusion_names_a_collected_test():
    """An exclusion that matches nothing kiln is held to is stale: remove it."""
    held = [f"{name}_cpu" for name in supported_tests()]
    stale = [p for p, _ in _exclusions() if not any(re.search(p, name) for name in held)]
    assert not stale, f"exclusions matching no collected test: {stale}"
