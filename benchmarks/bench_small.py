"""Small models, many runs, one process: kiln's graph and AOT executors next to onnxruntime.

    python -m benchmarks.bench_small [--models resnet18_like,mobilenetv2_like] [--threads 2]
                                     [--idle 0.2]

For models of 0.01-0.2 ms the runner's one-engine-per-process medians move with the
machine's state between measurements (docs/performance.md); here every engine runs in the
same process, one after the other, 2000 timed runs each after 200 warm-up runs, which
shows their ratio on equal terms at that moment. With --idle S, each timed run follows S
seconds of sleep (IDLE_RUNS of them): the latency of a request that finds the machine idle,
threads asleep and (on a VM) virtual CPUs parked.
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
IDLE_RUNS, IDLE_WARMUP = 15, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18_like,mobilenetv2_like,detector_head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle", type=float, default=0.0,
                        help="seconds of sleep before each timed run (0: back to back)")
    args = parser.parse_args()
    timed = (functools.partial(median_ms, repeat=IDLE_RUNS, warmup=IDLE_WARMUP, idle=args.idle)
             if args.idle > 0 else functools.partial(median_ms, repeat=RUNS, warmup=WARMUP))
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
            kiln_ms[executor] = timed(gmod.run)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        ort_ms = timed(functools.partial(session.run, None, inputs))
        best = min(kiln_ms.values())
        when = f", after {args.idle:g} s idle" if args.idle > 0 else ""
        print(f"{name}, {args.threads} thread(s){when}: kiln graph {kiln_ms['graph']:.4f} ms, aot "
              f"{kiln_ms['aot']:.4f} ms, onnxruntime {ort_ms:.4f} ms, kiln/onnxruntime "
              f"{best / ort_ms:.2f}")


if __name__ == "__main__":
    main()
