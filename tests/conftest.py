"""Shared test configuration: the IR verifier after every pass, and the conformance pass count."""

from __future__ import annotations

import os


def pytest_configure(config):
    os.environ.setdefault("KILN_VERIFY", "1")  # run the IR verifier after every pass


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = terminalreporter.stats
    def count(kind):
        return sum(1 for r in stats.get(kind, []) if "OnnxBackendNodeModelTest" in r.nodeid)
    passed, failed = count("passed"), count("failed")
    excluded = sum(1 for r in stats.get("skipped", []) if r.nodeid.endswith("_cpu")
                   and "matched exclude pattern" in str(r.longrepr))
    if passed or failed:
        terminalreporter.write_line(
            f"ONNX node conformance: {passed} passed, {failed} failed, {excluded} excluded with "
            "reasons (tests/conformance/node_test_exclusions.txt); tests of unsupported ops "
            "are not collected"
        )
