"""kiln against onnxruntime, OpenVINO and Apache TVM on real models, in one run.

    python -m benchmarks.run [--models resnet50,bert_base] [--threads 1,2] [--repeat 20]
                             [--peers ort,openvino,tvm] [--micro include|only|skip]
                             [--kiln-ref HEAD] [--markdown docs/performance.md]
                             [--json results.json]
    python -m benchmarks.run --report-only results.json --markdown docs/performance.md

For each model: export it from PyTorch (cached), count its FLOPs, compile it with kiln
(cold kernel cache, then a cache hit, then the AOT executor), compile it with TVM (under a
time limit), then at each thread count measure kiln's graph and AOT executors,
onnxruntime, OpenVINO and TVM, each in a worker process of its own (benchmarks/worker.py),
their timed runs interleaved in --rounds slices so that all see the machine alike.
onnxruntime always runs: it is the reference for the outputs and the ratios. A failure of
any engine on any model is reported in its cell and the run goes on. Measurements wait for
the machine to go quiet (--settle). --kiln-ref measures kiln as committed at a git ref, whatever the
working tree holds. Progress goes to stderr, the tables to stdout (and --markdown); all
numbers to --json, written after every model.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import os
import platform
import select
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from . import machine, micro, report, worker, zoo
from .flops import count_flops
from .merge import merge_runs

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["ort", "openvino", "tvm"]
MODULES = {"ort": "onnxruntime", "openvino": "openvino", "tvm": "tvm"}
MIN_OBSERVED_S = 0.5  # the shortest timed window whose interference figure is reported


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spawn(spec: dict, *, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run one worker task in a fresh interpreter; its result, or why there is none."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_path)],
                                  cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        if result_path.exists():
            return json.loads(result_path.read_text())
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        how = (f"signal {-proc.returncode}" if proc.returncode < 0
               else f"exit {proc.returncode}")
        return {"ok": False, "error": f"worker died ({how}): {tail[:200]}"}


def max_abs_diff(a_path: Path, b_path: Path) -> tuple[float, float]:
    """Max |a - b| over all outputs, and max |b| (the reference's scale)."""
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        return float("nan"), float("nan")
    diff = scale = 0.0
    for key in b.files:
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        if x.shape != y.shape:
            return float("nan"), float("nan")
        diff = max(diff, float(np.max(np.abs(x - y), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(y), initial=0.0)))
    return diff, scale


def build(model: zoo.BenchModel, work: Path, peers: list[str], args) -> dict:
    """kiln's three builds (cold, cache hit, AOT) and TVM's compile of one model."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-cache-") as cold_cache:
        log(f"[{model.name}] kiln build (cold cache, cache hit, aot)")
        out["kiln"] = spawn({"task": "build_kiln", "onnx": str(model.onnx_path),
                             "inputs": str(model.inputs_path),
                             "graph_library": str(work / "kiln-graph.so"),
                             "aot_library": str(work / "kiln-aot.so")},
                            timeout=args.timeout, env={"KILN_CACHE_DIR": cold_cache})
    log(f"[{model.name}]   kiln: {report.build_text(out['kiln'])}")
    if "tvm" in peers:
        log(f"[{model.name}] tvm build (limit {args.tvm_timeout:.0f} s)")
        out["tvm"] = spawn({"task": "build_tvm", "onnx": str(model.onnx_path),
                            "inputs": str(model.inputs_path),
                            "library": str(work / "tvm.so")}, timeout=args.tvm_timeout)
        log(f"[{model.name}]   tvm: {report.build_text(out['tvm'], key='build_s')}")
    return out


def engines(builds: dict, peers: list[str], *, micro_numpy: bool) -> list[str]:
    """The engines to measure, onnxruntime first (the reference)."""
    names = ["ort"]
    if builds["kiln"].get("ok"):
        names += ["kiln-graph", "kiln-aot"]
    names += [p for p in peers if p == "openvino"]
    if "tvm" in peers and builds.get("tvm", {}).get("ok"):
        names.append("tvm")
    return names + (["numpy"] if micro_numpy else [])


def wait_for_quiet(max_wait: float, *, threshold: float = 0.15) -> float:
    """Wait (at most max_wait seconds) until other processes use under `threshold` of the
    machine's CPU over one second; the busy fraction last seen."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, _ = worker.cpu_seconds()
        time.sleep(1.0)
        busy = (worker.cpu_seconds()[0] - busy0) / (os.cpu_count() or 1)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


class Served:
    """A measuring worker (benchmarks/worker.py, task "serve") and its two pipes."""

    def __init__(self, spec: dict, env: dict[str, str], timeout: float) -> None:
        self.timeout = timeout
        command_read, self._command = os.pipe()
        reply_read, reply_write = os.pipe()
        self.tmp = tempfile.TemporaryDirectory(prefix="kiln-bench-")
        spec_path = Path(self.tmp.name) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "task": "serve", "command_fd": command_read,
                                         "reply_fd": reply_write}))
        self.log = Path(self.tmp.name) / "stderr.txt"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker",
                                          str(spec_path)], cwd=ROOT, env={**os.environ, **env},
                                         pass_fds=(command_read, reply_write),
                                         stdout=subprocess.DEVNULL, stderr=log)
        os.close(command_read)
        os.close(reply_write)
        self.replies = os.fdopen(reply_read)
        self.error: str | None = None
        self.ready = self._receive()

    def _receive(self) -> dict:
        """The worker's next reply, or {"ok": False, "error": why} (and the worker gone)."""
        if self.error is None:
            ready, _, _ = select.select([self.replies], [], [], self.timeout)
            line = self.replies.readline() if ready else ""
            if line:
                reply = json.loads(line)
                if reply.get("ok", True):
                    return reply
                self.error = reply["error"]
            else:
                self.error = self._death(ready)
            self.close()
        return {"ok": False, "error": self.error}

    def _death(self, replied: list) -> str:
        if not replied:
            self.proc.kill()
            return f"timed out after {self.timeout:.0f} s"
        code = self.proc.wait()
        tail = (self.log.read_text().strip().splitlines() or ["no output"])[-1]
        how = f"signal {-code}" if code < 0 else f"exit {code}"
        return f"worker died ({how}): {tail[:200]}"

    def ask(self, command: dict) -> dict:
        """Send a command; the reply (a worker that died since its last one says how)."""
        if self.error is None:
            try:
                os.write(self._command, (json.dumps(command) + "\n").encode())
            except BrokenPipeError:
                pass  # gone: _receive reads the end of its replies and reports how it died
        return self._receive()

    def close(self) -> None:
        """Close the command pipe (a worker still reading exits) and wait for the worker."""
        if self._command >= 0:
            os.close(self._command)
            self._command = -1
        self.proc.wait()
        self.replies.close()
        self.tmp.cleanup()


def measure_together(model: zoo.BenchModel, names: list[str], threads: int, work: Path,
                     args) -> dict[str, dict]:
    """Every engine's timing of one model at one thread count, interleaved: each engine's
    worker loads the model and times its first run (one worker at a time), then --rounds
    rounds each give every engine a slice of its timed runs (the order rotating), so a
    drift of the machine's speed over the measurement hits all engines alike."""
    n = str(threads)
    env = {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "TVM_NUM_THREADS": n,
           "MKL_NUM_THREADS": n}
    workers: dict[str, Served] = {}
    for engine in names:
        library = {"kiln-graph": work / "kiln-graph.so", "kiln-aot": work / "kiln-aot.so",
                   "tvm": work / "tvm.so"}.get(engine)
        spec = {"engine": engine.split("-")[0], "onnx": str(model.onnx_path),
                "inputs": str(model.inputs_path), "library": str(library), "threads": threads,
                "warmup": args.warmup, "outputs": str(work / f"out-{engine}-{threads}.npz")}
        workers[engine] = Served(spec, env, args.timeout)
    busy = wait_for_quiet(args.settle)
    rounds = max(1, args.rounds)
    command = {"op": "time", "runs": -(-args.repeat // rounds), "min_s": args.min_time / rounds,
               "max_s": args.budget / rounds}
    slices: dict[str, list[dict]] = {e: [] for e in names}
    for r in range(rounds):
        for engine in names[r % len(names):] + names[:r % len(names)]:
            reply = workers[engine].ask(command)
            if "samples" in reply:
                slices[engine].append(reply)
    cells = {}
    for engine, served in workers.items():
        cell = {**served.ready, **served.ask({"op": "finish"}), "busy_before_pct": 100 * busy}
        served.close()
        if served.error is None:
            cell.update(_timing(slices[engine]))
        cells[engine] = {**cell, "ok": served.error is None} | (
            {"error": served.error} if served.error else {})
    return cells


def _timing(slices: list[dict]) -> dict:
    """An engine's latency figures from its slices, and the CPU other processes took (as a
    percentage of all cores) and the hypervisor stole over its timed windows."""
    samples = [s for part in slices for s in part["samples"]]
    wall = sum(part["wall_s"] for part in slices)
    capacity = (os.cpu_count() or 1) * wall / 100
    other = sum(max(0.0, part["busy_s"] - part["own_s"]) for part in slices)
    # /proc/stat counts in clock ticks (10 ms): over a shorter window the figure means nothing
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "runs": len(samples), "rounds": len(slices), "timed_s": wall,
            "other_cpu_pct": other / capacity if wall >= MIN_OBSERVED_S else None,
            "steal_pct": sum(part["steal_s"] for part in slices) / capacity}


def bench_model(model: zoo.BenchModel, peers: list[str], args, *, numpy_peer: bool) -> dict:
    """Build and measure one model at every thread count; the result as a dict."""
    inputs = dict(np.load(model.inputs_path))
    entry: dict = {"source": model.source,
                   "flops": count_flops(onnx.load(model.onnx_path), inputs), "runs": {}}
    with tempfile.TemporaryDirectory(prefix=f"kiln-bench-{model.name}-") as tmp:
        work = Path(tmp)
        entry["builds"] = build(model, work, peers, args)
        names = engines(entry["builds"], peers, micro_numpy=numpy_peer)
        for threads in args.threads:
            log(f"[{model.name}] threads={threads}: measuring {', '.join(names)} together")
            cells = entry["runs"][str(threads)] = measure_together(model, names, threads, work,
                                                                   args)
            ref = work / f"out-ort-{threads}.npz"
            for engine, cell in cells.items():
                if cell.get("ok") and engine != "ort" and cells["ort"].get("ok"):
                    mine = work / f"out-{engine}-{threads}.npz"
                    cell["max_abs_diff"], cell["ref_scale"] = max_abs_diff(mine, ref)
                log(f"[{model.name}] {engine:10} threads={threads}: {report.cell_text(cell)}")
    return entry


def use_kiln_ref(ref: str, folder: Path) -> str:
    """Extract kiln's src/ at git `ref` into folder and put it first on every worker's
    PYTHONPATH, so the run measures that commit whatever the working tree holds."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    paths = [str(folder / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    return commit


def kiln_identity(ref_commit: str | None) -> dict[str, str]:
    """The kiln the workers import (asked of a fresh interpreter) and which commit it is."""
    probe = subprocess.run([sys.executable, "-c", "import kiln; print(kiln.__version__); "
                            "print(kiln.__file__)"], cwd=ROOT, capture_output=True, text=True)
    version, _, path = probe.stdout.strip().partition("\n")
    if ref_commit:
        return {"kiln": version, "kiln commit": f"{ref_commit} (committed tree only)"}
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    inside = Path(path).resolve().is_relative_to(ROOT)
    state = " + uncommitted changes in src/" if dirty and inside else ""
    return {"kiln": version, "kiln commit": (commit + state) if inside else f"from {path}"}


def versions(ref_commit: str | None) -> dict[str, str]:
    """Versions of everything measured, and the kiln commit."""
    out = {"python": platform.python_version(), **kiln_identity(ref_commit)}
    for name in ["onnxruntime", "openvino", "tvm", "numpy", "torch", "onnx"]:
        if importlib.util.find_spec(name) is None:
            out[name] = "not installed"
            continue
        module = __import__(name)
        out[name] = getattr(module, "__version__", "?")
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    out["gcc"] = (gcc.splitlines() or ["not found"])[0]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all",
                        help="comma list of model names, or all / zoo / e2e / none "
                             f"(known: {', '.join(zoo.all_models())})")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs after the first")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma list of ort, openvino, tvm (onnxruntime always runs)")
    parser.add_argument("--micro", choices=["include", "only", "skip"], default="include")
    parser.add_argument("--kiln-ref", metavar="GIT_REF",
                        help="measure kiln as committed at this ref (git archive of src/), "
                             "not the working tree")
    parser.add_argument("--markdown", type=Path, help="write the report here as Markdown")
    parser.add_argument("--json", type=Path,
                        help="write every number here (with --report-only: the merged runs)")
    parser.add_argument("--title", help="the report's title (default: kiln performance)")
    parser.add_argument("--report-only", type=Path, metavar="JSON", nargs="+",
                        help="measure nothing: render the report of earlier --json files "
                             "(several: each measurement's least disturbed result)")
    parser.add_argument("--budget", type=float, default=120,
                        help="seconds of timed runs per measurement: a slower engine does "
                             "fewer than --repeat runs (at least 3)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed runs at least: a fast model does more than "
                             "--repeat runs")
    parser.add_argument("--settle", type=float, default=120,
                        help="seconds to wait, before each measurement, for other processes "
                             "to leave the CPUs idle")
    parser.add_argument("--rounds", type=int, default=5,
                        help="slices each engine's timed runs are cut in, interleaved with "
                             "the other engines' (--repeat, --min-time and --budget are "
                             "shared among them)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument("--tvm-timeout", type=float, default=600,
                        help="seconds for one TVM compile")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {PEERS}")
    return args


def select_models(spec: str) -> list[str]:
    groups = {"all": zoo.all_models(), "zoo": list(zoo.TORCH_MODELS), "e2e": zoo.e2e_models(),
              "none": []}
    names = groups.get(spec) or [n for n in spec.split(",") if n]
    unknown = [n for n in names if n not in zoo.all_models()]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {zoo.all_models()}")
    return names


def available_peers(peers: list[str], results: dict) -> list[str]:
    """The peers whose Python package imports; the others are noted as not installed."""
    out = []
    for peer in peers:
        if importlib.util.find_spec(MODULES[peer]) is None:
            results["peer_status"][peer] = "not installed"
        else:
            out.append(peer)
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    results: dict = {"title": args.title or "kiln performance",
                     "date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "command": shlex.join(["python", "-m", "benchmarks.run", *sys.argv[1:]]),
                     "repeat": args.repeat, "warmup": args.warmup, "min_time": args.min_time,
                     "threads": args.threads,
                     "peer_status": {}, "models": {}, "micro": {}}
    peers = available_peers(args.peers, results)
    ref_commit = use_kiln_ref(args.kiln_ref, work) if args.kiln_ref else None
    results["versions"] = versions(ref_commit)
    log(f"kiln {results['versions']['kiln commit']}; measuring the fp32 FMA peak")
    wait_for_quiet(args.settle)
    before = machine.probe(args.threads)
    results["machine"] = before.as_dict()
    names = [] if args.micro == "only" else select_models(args.models)
    for name in names:
        log(f"[{name}] preparing")
        try:
            model = zoo.prepare(name)
        except Exception as e:  # an export failure is a row of its own
            results["models"][name] = {"error": f"export failed: {e}"[:300]}
            continue
        results["models"][name] = bench_model(model, peers, args, numpy_peer=False)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    micro_peers = [p for p in peers if p != "tvm"]
    for name in [] if args.micro == "skip" else micro.MICRO:
        is_gemm = isinstance(micro.MICRO[name], micro.Gemm)
        results["micro"][name] = bench_model(micro.prepare(name), micro_peers, args,
                                             numpy_peer=is_gemm)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    log("measuring the fp32 FMA peak again (the better of the two is used)")
    wait_for_quiet(args.settle)
    results["machine"] = machine.best_of(before, machine.probe(args.threads)).as_dict()
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        results = merge_runs([json.loads(p.read_text()) for p in args.report_only])
        results["title"] = args.title or results.get("title")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    else:
        with tempfile.TemporaryDirectory(prefix="kiln-bench-src-") as work:
            results = run(args, Path(work))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    text = report.render(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
