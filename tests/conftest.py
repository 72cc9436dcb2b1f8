"""Shared test configuration: the IR verifier after every pass, and the conformance pass count."""

from __future__ import annotations

import os


def pytest_configure(config):
    os.environ.setdefault("KILN_VERIFY", "1")  # run the IR verifier after every pass


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = terminalreporter.stats

    def count(kind, reason=""):
        return sum(1 for r in stats.get(kind, []) if "OnnxBackendNodeModelTest" in r.nodeid
                   and reason in str(r.longrepr))

    passed, failed = count("passed"), count("failed")
    excluded = count("skipped", "matched exclude pattern")
    if passed or failed:
        from tests.conformance.selection import node_tests

        total = len(node_tests())
        terminalreporter.write_line(
            f"ONNX node conformance: {passed} passed, {failed} failed, {excluded} excluded with "
            f"reasons (tests/conformance/node_test_exclusions.txt), of the "
            f"{passed + failed + excluded} node tests of ops kiln supports; kiln passes "
            f"{passed} of all {total} node tests in onnx {_onnx_version()} "
            f"({100 * passed / total:.1f}%)"
        )


def _onnx_version() -> str:
    import onnx

    return onnx.__version__
