"""One engine or one build in a process of its own: `python -m benchmarks.worker SPEC.json`.

The runner starts one measuring worker per (model, engine, thread count), so each engine's
memory high-water mark is its own (`peak_rss_mib`: VmHWM at the end; `model_rss_mib`: that
minus the resident size after importing the engine, before loading the model), a crash or
hang costs one cell of the table, and no engine's allocator disturbs another's. The spec
names the engine, the files and the thread count; the outputs go to spec["outputs"] (.npz,
out_0, out_1, ...). A measuring worker (task "serve") reports `load_ms` (library load,
session creation or model compile) and `first_ms` (the first run after that), runs
`warmup` more, then times slices of runs when the runner asks (see serve); a build's
result (JSON) is written to spec["result"].
A run includes copying the inputs in (kiln: set_input + run; onnxruntime: run with a feed
dict; OpenVINO: infer with a feed dict; TVM: the VM call on device arrays made once).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = tuple[Callable[[], None], Callable[[], list[np.ndarray]]]  # run, outputs


def _status_mib(field: str) -> float:
    """A memory figure of /proc/self/status (VmRSS: now, VmHWM: the high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat: busy is user,
    nice, system, irq and softirq time of every process; steal is time the hypervisor gave
    this VM's CPUs to others."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec, so a
    # worker started by a runner holding PyTorch would report the runner's size.
    return _status_mib("VmHWM")


# --- engines: each prepares a model and returns (run, outputs) ----------------------------

def _kiln(spec: dict, inputs: dict[str, np.ndarray]) -> Runner:
    import kiln

    gmod = kiln.GraphModule(kiln.load_module(spec["library"])["default"](
        kiln.cpu(0, num_threads=spec["threads"])))

    def run() -> None:
        gmod.set_input(**inputs)
        gmod.run()

    return run, lambda: [gmod.get_output(i) for i in range(gmod.get_num_outputs())]


def _ort(spec: dict, inputs: dict[str, np.ndarray]) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(spec["onnx"], opts, providers=["CPUExecutionProvider"])
    last: list = []

    def run() -> None:
        last[:] = session.run(None, inputs)

    return run, lambda: list(last)


def _openvino(spec: dict, inputs: dict[str, np.ndarray]) -> Runner:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
    compiled = core.compile_model(core.read_model(spec["onnx"]), "CPU", config)
    request = compiled.create_infer_request()

    def run() -> None:
        request.infer(inputs)

    return run, lambda: [np.array(request.get_output_tensor(i).data)
                         for i in range(len(compiled.outputs))]


def _tvm_args(inputs: dict[str, np.ndarray]) -> list:
    import tvm

    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    return [make(v) for v in inputs.values()]


def _tvm(spec: dict, inputs: dict[str, np.ndarray]) -> Runner:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(spec["library"]), tvm.cpu())
    args = _tvm_args(inputs)
    last: list = []

    def run() -> None:
        last[:] = [vm["main"](*args)]

    def outputs() -> list[np.ndarray]:
        out = last[0]
        return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]

    return run, outputs


def _numpy(spec: dict, inputs: dict[str, np.ndarray]) -> Runner:
    """A one-MatMul model as np.matmul (sgemm) into a preallocated output."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(spec["onnx"])
    (node,) = model.graph.node
    if node.op_type != "MatMul":
        raise ValueError(f"the numpy engine runs one MatMul, not {node.op_type}")
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    a, b = ({**inputs, **weights}[n] for n in node.input)
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    return (lambda: np.matmul(a, b, out=out)), lambda: [out.copy()]


ENGINES = {"kiln": _kiln, "ort": _ort, "openvino": _openvino, "tvm": _tvm, "numpy": _numpy}
# Imported before the baseline resident size is read: an engine's own code is not the model's.
IMPORTS = {"kiln": ["kiln"], "ort": ["onnxruntime"], "openvino": ["openvino"],
           "tvm": ["tvm", "tvm.relax"], "numpy": ["onnx"]}
MIN_RUNS = 3  # timed runs kept even past the time budget
MAX_RUNS = 100_000  # of a tiny model, past the slice's min_s
SLICE_WARMUP = 2  # untimed runs that start each slice (caches and threads after the others)


def _more(samples: list[float], repeat: int, deadline: float, min_end: float) -> bool:
    """Whether to time another run: until `repeat` runs and min_end are both reached, but
    stopping at the deadline once MIN_RUNS are done."""
    now = time.perf_counter()
    if len(samples) < MIN_RUNS:
        return True
    if now >= deadline or len(samples) >= MAX_RUNS:
        return False
    return len(samples) < repeat or now < min_end


def time_slice(run: Callable[[], None], command: dict, *, slow: bool) -> dict:
    """One slice of timed runs: SLICE_WARMUP untimed runs (none when a run takes seconds),
    then runs until command["runs"] and command["min_s"] are reached, fewer past
    command["max_s"] (but at least MIN_RUNS); the samples in ms, and the machine's busy and
    steal CPU seconds and this process's own over the timed window."""
    for _ in range(0 if slow else SLICE_WARMUP):
        run()
    samples: list[float] = []
    (busy0, steal0), own0, wall0 = cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    deadline, min_end = wall0 + command["max_s"], wall0 + command["min_s"]
    while _more(samples, command["runs"], deadline, min_end):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    (busy1, steal1), own1 = cpu_seconds(), _own_cpu_seconds()
    return {"samples": samples, "busy_s": busy1 - busy0, "steal_s": steal1 - steal0,
            "own_s": own1 - own0, "wall_s": time.perf_counter() - wall0}


def serve(spec: dict, commands, replies) -> None:
    """Prepare the engine and time its first run, then answer the runner's commands (JSON
    lines): {"op": "time", ...} a slice of timed runs (time_slice), {"op": "finish"} save
    the outputs and report memory, and exit. The runner interleaves the slices of every
    engine of a model, so that all of them see the machine in the same states."""
    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    inputs = dict(np.load(spec["inputs"]))
    engine = ENGINES[spec["engine"]]
    for module in IMPORTS[spec["engine"]]:
        importlib.import_module(module)
    load_average = os.getloadavg()[0]  # other work on the machine when this one started
    base_rss = _status_mib("VmRSS")
    start = time.perf_counter()
    run, outputs = engine(spec, inputs)
    load_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    run()
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(spec["warmup"] if first_ms < 1e3 else 1):
        run()
    reply({"ok": True, "load_ms": load_ms, "first_ms": first_ms, "load_average": load_average})
    for line in commands:
        command = json.loads(line)
        if command["op"] == "time":
            reply(time_slice(run, command, slow=first_ms >= 1e3))
            continue
        np.savez(spec["outputs"], **{f"out_{i}": o for i, o in enumerate(outputs())})
        peak = _peak_rss_mib()
        reply({"peak_rss_mib": peak, "model_rss_mib": peak - base_rss})
        return


# --- builds: kiln and TVM compile here, so a crash or a time limit costs only this step ----

def build_kiln(spec: dict) -> dict:
    """Compile with an empty kernel cache (cold), again (cache hit), then the AOT executor;
    export both libraries."""
    import kiln

    shapes = {k: v.shape for k, v in np.load(spec["inputs"]).items()}
    times = {}
    for label, executor, path in [("cold_s", "graph", spec["graph_library"]),
                                  ("hit_s", "graph", None),
                                  ("aot_s", "aot", spec["aot_library"])]:
        start = time.perf_counter()
        mod, params = kiln.from_onnx(spec["onnx"], shapes=shapes)
        lib = kiln.build(mod, params=params, executor=executor, progress=False)
        if path:
            lib.export_library(path)
        times[label] = time.perf_counter() - start
    return {**times, "peak_rss_mib": _peak_rss_mib()}


def build_tvm(spec: dict) -> dict:
    """Import with the relax ONNX frontend, compile for llvm with the host's mcpu, export."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    inputs = dict(np.load(spec["inputs"]))
    start = time.perf_counter()
    mod = from_onnx(onnx.load(spec["onnx"]), shape_dict={k: v.shape for k, v in inputs.items()})
    mcpu = tvm.target.codegen.llvm_get_system_cpu()
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": os.cpu_count()})
    tvm.compile(mod, target=target).export_library(spec["library"])
    return {"build_s": time.perf_counter() - start, "mcpu": mcpu,
            "peak_rss_mib": _peak_rss_mib()}


TASKS = {"build_kiln": build_kiln, "build_tvm": build_tvm}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec["task"] == "serve":  # talks over the two pipes the runner passed
        with (os.fdopen(spec["command_fd"]) as commands,
              os.fdopen(spec["reply_fd"], "w") as replies):
            try:
                serve(spec, commands, replies)
            except Exception as e:  # reported in the table as this cell's failure
                lines = traceback.format_exception_only(e)
                replies.write(json.dumps({"ok": False, "error": "".join(lines).strip()}) + "\n")
        return
    try:
        result = {"ok": True, **TASKS[spec["task"]](spec)}
    except Exception as e:  # reported in the table as this cell's failure
        lines = traceback.format_exception_only(e)
        result = {"ok": False, "error": "".join(lines).strip(), "trace": traceback.format_exc()}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
