"""The runner's report: Markdown tables from the results dict that benchmarks.run builds."""

from __future__ import annotations

import math

PEER_NAMES = {"ort": "onnxruntime", "openvino": "OpenVINO", "tvm": "TVM"}
KILN = ["kiln-graph", "kiln-aot"]

HOW_TO_RUN = """\
## How to run

    python -m pip install -c constraints.txt -e '.[test,bench]' torch==2.13.0
    python -m benchmarks.run --repeat 20 --markdown docs/performance.md --json results.json

`--models resnet50,bert_base` (or `zoo`, `e2e`, `none`) picks models, `--threads 1,2` the
thread counts, `--peers ort,openvino,tvm` the peers (onnxruntime always runs: it is the
reference), `--micro include|only|skip` the microbenchmarks, `--title` this page's title,
`--kiln-ref HEAD` measures kiln as committed (not the working tree's uncommitted changes);
`--report-only a.json [b.json ...]` re-renders saved runs, filling in or replacing the first
run's missing, failed or disturbed measurements from the later ones. Models are PyTorch
definitions in `benchmarks/zoo/` at their published sizes with seeded random weights,
exported to ONNX (TorchScript exporter, opset 17) into `~/.cache/kiln-bench`
(`$KILN_BENCH_CACHE`), plus the end-to-end test models of `tests/e2e/models.py`. Batch
size 1 everywhere."""

METHOD = """\
## Method

- **One process per measurement, engines interleaved.** Every (model, engine, thread
  count) runs in a fresh worker process (`benchmarks/worker.py`); an engine that fails or
  hangs loses its own cell only. A model's engines at one thread count are loaded side by
  side, then take turns: `--rounds` rounds (5 by default), each giving every engine a slice
  of its timed runs (two untimed runs first), the order rotating, so that a change of the
  machine's speed during the measurement (this VM's 2-thread timings of 0.1 ms models move
  by 2x between minutes) hits every engine alike. Engines: kiln's graph and AOT executors
  (`kiln.cpu(0, num_threads=N)`), onnxruntime (`intra_op_num_threads=N`,
  `inter_op_num_threads=1`, sequential, all graph optimizations), OpenVINO CPU
  (`INFERENCE_NUM_THREADS=N`, `PERFORMANCE_HINT=LATENCY`, `NUM_STREAMS=1`,
  `INFERENCE_PRECISION_HINT=f32`), Apache TVM (relax ONNX frontend, `tvm.compile` for
  llvm with the host's `-mcpu`, untuned, `TVM_NUM_THREADS=N`).
- **Latency**: median of all the slices' timed runs (at least `--repeat`, and at least
  `--min-time` seconds of them, in all) after the first run and the warm-up runs; a run
  includes copying the inputs in. An engine whose runs would exceed `--budget` seconds does
  fewer (at least 3), marked *(n=...)*. *First run*: the first inference after the library is
  loaded (kiln), the session created (onnxruntime) or the model compiled (OpenVINO).
- **kiln compile**: `from_onnx` + `build` + `export_library`, once with an empty kernel
  cache (*cold*), once more in the same process (*cache hit*).
- **Peak memory**: the worker's RSS high-water mark (VmHWM) minus its resident size
  after importing the engine, before loading the model: what the model cost the process
  (weights, arenas, compiled code, the engine's own copies).
- **FLOPs** are counted from the ONNX graph: Conv 2*N*Cout*Hout*Wout*Cin/groups*kh*kw
  (ConvTranspose over the input pixels), MatMul/Gemm 2*M*N*K. Elementwise ops,
  normalization, pooling and softmax are *not* counted. GFLOP/s = FLOPs / median latency;
  *% peak* divides by the measured peak at that thread count (below).
- **Ratios** are latency ratios, kiln's best executor over the peer: above 1 means kiln is
  slower. *Best peer* = the faster of onnxruntime and OpenVINO. Geomeans are over the
  models where both sides have a number.
- **Other CPU %**: the most CPU time other processes used during any timed loop of the
  row (TVM's left out), as a percentage of all cores (from /proc/stat less the worker's
  own time, so the other engines' idle workers count; timed windows under 0.5 s, a few
  clock ticks, report none). Before each model's rounds the runner waits (up to
  `--settle` s) for the machine to go quiet. A high figure marks a row measured while
  something else ran (2-thread rows suffer most). The JSON also has the
  hypervisor's steal time per measurement.
- **Max abs diff**: largest |kiln - onnxruntime| over all outputs (kiln's best executor at
  that thread count), with the largest |onnxruntime output| beside it for scale."""


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if value >= 1 else f"{value:.{digits + 1}f}"


def cell_text(cell: dict) -> str:
    """One measurement for the progress log."""
    if not cell.get("ok"):
        return f"failed: {cell.get('error', '?').splitlines()[0][:160]}"
    return (f"{cell['median_ms']:.3f} ms (first {cell['first_ms']:.1f} ms, "
            f"+{cell['model_rss_mib']:.0f} MiB)")


def build_text(build: dict, key: str = "cold_s") -> str:
    if not build.get("ok"):
        return f"failed: {build.get('error', '?').splitlines()[0][:160]}"
    if key == "cold_s":
        return (f"cold {build['cold_s']:.1f} s, hit {build['hit_s']:.1f} s, "
                f"aot {build['aot_s']:.1f} s")
    return f"{build[key]:.1f} s"


def _ms(cell: dict | None) -> float | None:
    return cell["median_ms"] if cell and cell.get("ok") else None


def _kiln_best(cells: dict) -> tuple[str | None, dict | None]:
    """The faster of kiln's executors at one thread count."""
    ok = [(cells[e]["median_ms"], e) for e in KILN if cells.get(e, {}).get("ok")]
    if not ok:
        return None, None
    name = min(ok)[1]
    return name, cells[name]


def _best_peer(cells: dict) -> float | None:
    times = [t for t in (_ms(cells.get("ort")), _ms(cells.get("openvino"))) if t]
    return min(times) if times else None


def _latency_cell(cell: dict | None, repeat: int) -> str:
    """The median, with the number of timed runs when the time budget cut it short."""
    if cell is None:
        return "—"
    if not cell.get("ok"):
        return "failed"
    runs = cell.get("runs", repeat)
    return fmt(cell["median_ms"]) + (f" (n={runs})" if runs < repeat else "")


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _ratios(models: dict, threads: int, peer) -> dict[str, float]:
    """model -> kiln best / peer latency at `threads`, where both measured."""
    out = {}
    for name, entry in models.items():
        cells = entry.get("runs", {}).get(str(threads), {})
        _, best = _kiln_best(cells)
        other = peer(cells)
        if best and other:
            out[name] = best["median_ms"] / other
    return out


def summary(results: dict) -> list[str]:
    lines = ["## Summary", "", "| | " + " | ".join(f"{t} thread{'s' * (t > 1)}"
                                                   for t in results["threads"]) + " |",
             "|---|" + "---|" * len(results["threads"])]
    rows = [("geomean latency kiln / onnxruntime", lambda c: _ms(c.get("ort"))),
            ("geomean latency kiln / best of (onnxruntime, OpenVINO)", _best_peer)]
    for label, peer in rows:
        cells = []
        for t in results["threads"]:
            ratios = _ratios(results["models"], t, peer)
            g = _geomean(list(ratios.values()))
            n = len(ratios)
            cells.append(f"{fmt(g)}x over {n} model{'s' * (n != 1)}" if g else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    worst = []
    for t in results["threads"]:
        ratios = _ratios(results["models"], t, lambda c: _ms(c.get("ort")))
        name = max(ratios, key=ratios.get) if ratios else None
        worst.append(f"{fmt(ratios[name])}x ({name})" if name else "—")
    lines.append("| worst model, kiln / onnxruntime | " + " | ".join(worst) + " |")
    return lines


def _peers_in(results: dict, section: str) -> list[str]:
    seen = {e for entry in results[section].values()
            for cells in entry.get("runs", {}).values() for e in cells}
    return [e for e in ["kiln-graph", "kiln-aot", "ort", "openvino", "tvm", "numpy"]
            if e in seen]


def _build_failure(entry: dict) -> str | None:
    if "error" in entry:
        return entry["error"]
    kiln = entry.get("builds", {}).get("kiln", {})
    return None if kiln.get("ok") else "kiln: " + kiln.get("error", "?").splitlines()[0]


def latency_table(results: dict) -> list[str]:
    engines = ["kiln-graph", "kiln-aot", "ort", "openvino", "tvm"]
    head = ["model", "thr", "kiln graph", "kiln aot", "onnxruntime", "OpenVINO", "TVM",
            "kiln best", "kiln/ort", "kiln/best peer", "max abs diff (max abs ref)",
            "other CPU %"]
    lines = ["## Latency (ms, median)", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for name, entry in results["models"].items():
        failure = _build_failure(entry)
        for t in results["threads"]:
            cells = entry.get("runs", {}).get(str(t), {})
            executor, best = _kiln_best(cells)
            ort, peer = _ms(cells.get("ort")), _best_peer(cells)
            row = [name, str(t), *[_latency_cell(cells.get(e), results["repeat"]) for e in engines]]
            if best is None:
                row += [f"failed: {failure}"[:120] if failure else "—", "—", "—", "—"]
                row.append(_interference(cells))
            else:
                diff = (f"{best.get('max_abs_diff', float('nan')):.1e} "
                        f"({fmt(best.get('ref_scale'))})")
                row += [executor.removeprefix("kiln-"),
                        fmt(best["median_ms"] / ort) if ort else "—",
                        fmt(best["median_ms"] / peer) if peer else "—", diff,
                        _interference(cells)]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _interference(cells: dict) -> str:
    """The most CPU other processes took during any timed runs of a row's kiln, onnxruntime
    and OpenVINO measurements (% of all cores)."""
    values = [c["other_cpu_pct"] for e, c in cells.items()
              if e != "tvm" and c.get("other_cpu_pct") is not None]
    return f"{max(values):.0f}" if values else "—"


def _gflops(flops: int, cell: dict | None) -> float | None:
    return flops / cell["median_ms"] / 1e6 if cell and cell.get("ok") else None


def _rate(flops: int, cell: dict | None, peak: float) -> str:
    g = _gflops(flops, cell)
    return f"{fmt(g, 1)} ({100 * g / peak:.0f}%)" if g else "—"


def _first(cells: dict, engine: str) -> str:
    cell = cells.get(engine)
    return fmt(cell["first_ms"]) if cell and cell.get("ok") else "—"


def _memory(cells: dict, engine: str) -> str:
    cell = cells.get(engine)
    return f"{cell['model_rss_mib']:.0f}" if cell and cell.get("ok") else "—"


def details_table(results: dict) -> list[str]:
    peaks = {int(t): p for t, p in results["machine"]["peak"].items()}
    head = ["model", "GFLOP", "thr", "GFLOP/s (% peak): kiln best", "onnxruntime",
            "OpenVINO", "first run ms: kiln best", "ort", "OV",
            "peak mem MiB: kiln graph", "kiln aot", "ort", "OV", "kiln compile s: cold",
            "hit", "aot"]
    lines = ["## Throughput, first run, memory, compile time", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, entry in results["models"].items():
        if "runs" not in entry:
            continue
        build = entry["builds"].get("kiln", {})
        times = ([fmt(build[k], 1) for k in ("cold_s", "hit_s", "aot_s")] if build.get("ok")
                 else ["failed", "—", "—"])
        for t in results["threads"]:
            cells = entry["runs"].get(str(t), {})
            executor, best = _kiln_best(cells)
            flops = entry["flops"]
            row = [name, fmt(flops / 1e9, 2), str(t), _rate(flops, best, peaks[t]),
                   _rate(flops, cells.get("ort"), peaks[t]),
                   _rate(flops, cells.get("openvino"), peaks[t]),
                   _first(cells, executor) if executor else "—", _first(cells, "ort"),
                   _first(cells, "openvino"), _memory(cells, "kiln-graph"),
                   _memory(cells, "kiln-aot"), _memory(cells, "ort"),
                   _memory(cells, "openvino"), *(times if t == results["threads"][0]
                                                 else ["", "", ""])]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def failures(results: dict) -> list[str]:
    """Every failed build or measurement with its reason."""
    out = []
    for section in ("models", "micro"):
        for name, entry in results[section].items():
            if "error" in entry:
                out.append(f"- **{name}**: {entry['error']}")
            for engine, build in entry.get("builds", {}).items():
                if not build.get("ok"):
                    out.append(f"- **{name}**, {engine} build: "
                               f"`{build.get('error', '?').strip()[:400]}`")
            for t, cells in entry.get("runs", {}).items():
                for engine, cell in cells.items():
                    if not cell.get("ok"):
                        out.append(f"- **{name}**, {engine}, {t} thread(s): "
                                   f"`{cell.get('error', '?').strip()[:400]}`")
    statuses = [f"- {PEER_NAMES[p]}: {s}" for p, s in results.get("peer_status", {}).items()]
    if not out and not statuses:
        return []
    return ["## Failures", "", *statuses, *out]


def micro_table(results: dict) -> list[str]:
    from .micro import MICRO, describe

    if not results["micro"]:
        return []
    peaks = {int(t): p for t, p in results["machine"]["peak"].items()}
    engines = [e for e in _peers_in(results, "micro") if e != "tvm"]
    names = {"kiln-graph": "kiln graph", "kiln-aot": "kiln aot", "ort": "onnxruntime",
             "openvino": "OpenVINO", "numpy": "NumPy sgemm"}
    head = ["layer", "GFLOP", "thr", *[names[e] for e in engines], "kiln best % peak",
            "kiln / NumPy", "other CPU %"]
    lines = ["## Microbenchmarks (GFLOP/s, higher is better)", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, entry in results["micro"].items():
        if "runs" not in entry:
            continue
        flops = entry["flops"]
        for t in results["threads"]:
            cells = entry["runs"].get(str(t), {})
            rates = [_gflops(flops, cells.get(e)) for e in engines]
            _, best = _kiln_best(cells)
            kiln, numpy = _gflops(flops, best), _gflops(flops, cells.get("numpy"))
            label = describe(MICRO[name]) if name in MICRO else name
            row = [label, fmt(flops / 1e9, 3), str(t),
                   *[fmt(r, 1) if r else ("failed" if e in cells else "—")
                     for r, e in zip(rates, engines, strict=True)],
                   f"{100 * kiln / peaks[t]:.0f}%" if kiln else "—",
                   f"{kiln / numpy:.2f}" if kiln and numpy else "—", _interference(cells)]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def machine_section(results: dict) -> list[str]:
    m = results["machine"]
    lines = ["## Machine", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores as seen by the OS "
             f"({m.get('cpu_id', '')}); /proc/cpuinfo \"cpu MHz\": {m['clock_mhz']:.0f}",
             f"- Vector flags: {' '.join(m['vector_flags'])}",
             f"- Nominal fp32 peak per core = clock ({m['clock_mhz'] / 1e3:.2f} GHz, \"cpu MHz\") "
             f"x 2 FMA units (assumed) x {m['nominal_lanes']} lanes (from the flags) x 2 = "
             f"{m['nominal_peak_per_core']:.0f} GFLOP/s",
             "- Measured fp32 peak (the denominator of every *% peak*): a register-only loop "
             "of 16 independent FMA chains, gcc -O3 -march=native, on every thread at once, "
             "best of 3:", "", "| threads | 256-bit FMA | 512-bit FMA | peak used |",
             "|---:|---:|---:|---:|"]
    for t, widths in m["measured"].items():
        w = {int(k): v for k, v in widths.items()}
        lines.append(f"| {t} | {fmt(w.get(8), 1)} | {fmt(w.get(16), 1)} | "
                     f"{fmt(m['peak'][t], 1)} |")
    lines += ["", f"The measured one-thread peak implies {m.get('implied_clock_ghz', 0):.2f} "
              "GHz at 2 FMA units x the faster vector width: the loop runs at the boost "
              "clock, not the clock /proc/cpuinfo shows."]
    return lines


def render(results: dict) -> str:
    v = results["versions"]
    title = results.get("title") or "kiln performance"
    lines = [f"# {title}", "",
             f"Measured {results['date']} with `{results['command']}`: median of at least "
             f"{results['repeat']} runs (and {results.get('min_time', 0):g} s) after the "
             f"first and {results['warmup']} warm-up runs.",
             "", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", ""]
    for section in (summary(results), latency_table(results), details_table(results),
                    micro_table(results), machine_section(results), failures(results)):
        if section:
            lines += [*section, ""]
    lines += [HOW_TO_RUN, "", METHOD, ""]
    return "\n".join(lines)
