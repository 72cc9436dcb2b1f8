"""Small models, many runs, one process: kiln's graph and AOT executors next to onnxruntime.

    python -m benchmarks.bench_small [--models resnet18_like,mobilenetv2_like] [--threads 2]

For models of 0.01-0.2 ms the runner's one-engine-per-process medians move with the
machine's state between measurements (docs/performance.md); here every engine runs in the
same process, one after the other, 2000 timed runs each after 200 warm-up runs, which
shows their ratio on equal terms at that moment.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import onnx
import onnxruntime as ort

import kiln

from . import zoo
from .profile import median_ms

WARMUP, RUNS = 200, 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18_like,mobilenetv2_like,detector_head")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.models.split(","):
        bench = zoo.prepare(name)
        model = onnx.load(bench.onnx_path)
        inputs = dict(np.load(bench.inputs_path))
        mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
        kiln_ms = {}
        for executor in ("graph", "aot"):
            lib = kiln.build(mod, params=params, executor=executor, progress=False)
            gmod = kiln.GraphModule(lib["default"](kiln.cpu(0, num_threads=args.threads)))
            gmod.set_input(**inputs)
            kiln_ms[executor] = median_ms(gmod.run, RUNS, WARMUP)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        ort_ms = median_ms(functools.partial(session.run, None, inputs), RUNS, WARMUP)
        best = min(kiln_ms.values())
        print(f"{name}, {args.threads} thread(s): kiln graph {kiln_ms['graph']:.4f} ms, aot "
              f"{kiln_ms['aot']:.4f} ms, onnxruntime {ort_ms:.4f} ms, kiln/onnxruntime "
              f"{best / ort_ms:.2f}")


if __name__ == "__main__":
    main()
