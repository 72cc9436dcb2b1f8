"""Where kiln's time goes on one benchmark model: the graph executor's per-kernel profile,
summed by kernel label (e.g. "conv+relu", "matmul+add+gelu"), next to onnxruntime's latency.

    python -m benchmarks.profile resnet50 [--threads 1] [--top 12]

The per-kernel times are each kernel's best of the profile's repeats, so their sum is a
little below the executor's median latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

import kiln

from . import zoo


def median_ms(run: Callable[[], object], repeat: int, warmup: int = 2,
              idle: float = 0.0) -> float:
    """Median latency of run in ms over repeat runs, after warmup untimed ones; with idle,
    each timed run follows that many seconds of sleep."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        time.sleep(idle)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=f"one of {zoo.all_models()}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="kernel labels to show")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    bench = zoo.prepare(args.model)
    model = onnx.load(bench.onnx_path)
    inputs = dict(np.load(bench.inputs_path))
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    gmod = kiln.GraphModule(kiln.build(mod, params=params, progress=False)["default"](
        kiln.cpu(0, num_threads=args.threads)))
    gmod.set_input(**inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    kiln_ms = median_ms(gmod.run, args.repeat)
    ort_ms = median_ms(lambda: session.run(None, inputs), args.repeat)
    print(f"{args.model}, {args.threads} thread(s): kiln {kiln_ms:.2f} ms, onnxruntime "
          f"{ort_ms:.2f} ms, kiln/onnxruntime {kiln_ms / ort_ms:.2f}")

    by_label: dict[str, list[float]] = defaultdict(list)
    for row in gmod.profile(args.repeat):
        by_label[row["kernel"]].append(row["ms"])
    total = sum(sum(times) for times in by_label.values())
    ranked = sorted(by_label.items(), key=lambda item: -sum(item[1]))
    for label, times in ranked[:args.top]:
        print(f"  {sum(times):9.3f} ms {100 * sum(times) / total:5.1f}%  x{len(times):<4} {label}")


if __name__ == "__main__":
    main()
