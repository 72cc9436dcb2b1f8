"""kiln vs onnxruntime on the end-to-end models: compile, load and run time, side by side.

    python benchmarks/bench_models.py [--repeat 50] [--models resnet18_like,bert_like]

kiln runs single-threaded for now, so onnxruntime is shown both with 1 intra-op thread
(the like-for-like figure) and with its default thread pool. Ratios > 1 mean kiln is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from tests.e2e import models as zoo  # noqa: E402

MODELS = ["resnet18_like", "mobilenetv2_like", "bert_like", "detector_head", "mlp"]


def _time(fn, repeat: int) -> float:
    """Median seconds of fn over repeat runs, after two warm-up runs."""
    fn()
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _ort_session(model, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def bench(name: str, repeat: int, workdir: Path) -> dict[str, float]:
    model, inputs = getattr(zoo, name)()
    start = time.perf_counter()
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    lib = kiln.build(mod, params=params, progress=False)
    path = lib.export_library(workdir / f"{name}.so")
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    gmod = kiln.GraphModule(kiln.load_module(path)["default"](kiln.cpu(0)))
    load_s = time.perf_counter() - start
    gmod.set_input(**inputs)
    kiln_s = _time(gmod.run, repeat)
    start = time.perf_counter()
    sess1 = _ort_session(model, 1)
    session_s = time.perf_counter() - start
    ort1_s = _time(lambda: sess1.run(None, inputs), repeat)
    sess = _ort_session(model, None)
    ort_s = _time(lambda: sess.run(None, inputs), repeat)
    ref = sess1.run(None, inputs)
    err = max(float(np.max(np.abs(gmod.get_output(i) - r))) for i, r in enumerate(ref))
    return {"compile_s": compile_s, "load_ms": load_s * 1e3, "ort_session_ms": session_s * 1e3,
            "kiln_ms": kiln_s * 1e3, "ort1_ms": ort1_s * 1e3, "ort_ms": ort_s * 1e3,
            "max_abs_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    import onnxruntime

    print(f"kiln {kiln.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"median of {args.repeat} runs\n")
    head = (f"{'model':18} {'kiln ms':>9} {'ort-1t ms':>10} {'ratio':>6} {'ort ms':>8} "
            f"{'ratio':>6} {'load ms':>8} {'ort sess ms':>11} {'compile s':>9} {'max err':>8}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = bench(name, args.repeat, Path(tmp))
            print(f"{name:18} {r['kiln_ms']:9.3f} {r['ort1_ms']:10.3f} "
                  f"{r['ort1_ms'] / r['kiln_ms']:6.2f} {r['ort_ms']:8.3f} "
                  f"{r['ort_ms'] / r['kiln_ms']:6.2f} {r['load_ms']:8.2f} "
                  f"{r['ort_session_ms']:11.2f} {r['compile_s']:9.2f} {r['max_abs_err']:8.1e}")


if __name__ == "__main__":
    main()
