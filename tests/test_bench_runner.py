"""The benchmark runner end to end on the smallest e2e model: kiln's two executors and
onnxruntime loaded side by side and timed in interleaved rounds, outputs compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engines_are_timed_in_interleaved_rounds(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "KILN_BENCH_CACHE": str(tmp_path / "cache"),
           "KILN_CACHE_DIR": str(tmp_path / "kiln-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--models", "mlp", "--threads", "1",
         "--repeat", "4", "--rounds", "2", "--budget", "1", "--min-time", "0.02",
         "--settle", "0", "--micro", "skip", "--peers", "ort", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads(out.read_text())["models"]["mlp"]["runs"]["1"]
    assert sorted(cells) == ["kiln-aot", "kiln-graph", "ort"]
    for engine, cell in cells.items():
        assert cell["ok"], (engine, cell)
        assert cell["rounds"] == 2 and cell["runs"] >= 4, (engine, cell)
        assert 0 < cell["min_ms"] <= cell["median_ms"] < cell["first_ms"] + 100
        assert cell["model_rss_mib"] >= 0
    for engine in ("kiln-graph", "kiln-aot"):  # float32 MLP: a few ulps from onnxruntime
        assert cells[engine]["max_abs_diff"] <= 1e-5 * max(1.0, cells[engine]["ref_scale"])
    assert "geomean latency kiln / onnxruntime" in done.stdout  # the report
