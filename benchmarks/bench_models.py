"""kiln vs onnxruntime on the end-to-end test models: the runner with the peers narrowed.

    python benchmarks/bench_models.py [--repeat 50] [--models resnet18_like,bert_like]

Kept for its short command; `python -m benchmarks.run` is the one benchmark runner (all
models, OpenVINO and TVM too, microbenchmarks, the Markdown report). Extra options are
passed through to it. Ratios are kiln / onnxruntime latency: above 1 means kiln is slower.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    main(["--models", "e2e", "--peers", "ort", "--micro", "skip", *sys.argv[1:]])
