"""Load time of a library with ~100 MB of weights vs onnxruntime session creation.

    python benchmarks/bench_load.py [--mb 100] [--repeat 5]

verify="header" checks header, manifest and code and reads the weights in place (a
mapping of the file: no copy); verify="full" also copies the weights into private memory
and hashes them with BLAKE3, so that nothing written to the file later changes what runs;
trusted_keys is full plus the Ed25519 signature. Each load
runs in a fresh process, so the OS page cache is the only warm state, as for a service that
starts up; onnxruntime gets the same treatment.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import kiln

LOAD_KILN = """
import sys, time
t = time.perf_counter()
import kiln
t0 = time.perf_counter()
keys = [sys.argv[3]] if len(sys.argv) > 3 else None
lib = kiln.load_module(sys.argv[1], verify=sys.argv[2], trusted_keys=keys)
ex = lib["default"](kiln.cpu(0))
print(time.perf_counter() - t0)
"""
LOAD_ORT = """
import sys, time
import onnxruntime as ort
t0 = time.perf_counter()
ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(time.perf_counter() - t0)
"""


def big_mlp(megabytes: int) -> onnx.ModelProto:
    """An MLP whose square layers hold about `megabytes` MB of float32 weights."""
    width = 2048  # 16 MiB per layer
    layers = max(1, round(megabytes * 1e6 / (width * width * 4)))
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{k}"], [f"h{k}"]))
        nodes.append(helper.make_node("Relu", [f"h{k}"], [f"r{k}"]))
        x = f"r{k}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _fresh(script: str, *args: str, repeat: int) -> float:
    times = [float(subprocess.run([sys.executable, "-c", script, *args], check=True,
                                  capture_output=True, text=True).stdout) for _ in range(repeat)]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = big_mlp(args.mb)
        onnx_path = Path(tmp) / "big.onnx"
        onnx.save(model, onnx_path)
        mod, params = kiln.from_onnx(model)
        lib_path = kiln.build(mod, params=params, progress=False).export_library(
            Path(tmp) / "big.so")
        size = Path(lib_path).stat().st_size / 1e6
        header = _fresh(LOAD_KILN, lib_path, "header", repeat=args.repeat)
        full = _fresh(LOAD_KILN, lib_path, "full", repeat=args.repeat)
        kiln.keygen(Path(tmp) / "k.pem", Path(tmp) / "k.pub")
        kiln.sign(lib_path, Path(tmp) / "k.pem")
        signed = _fresh(LOAD_KILN, lib_path, "full", str(Path(tmp) / "k.pub"), repeat=args.repeat)
        ort = _fresh(LOAD_ORT, str(onnx_path), repeat=args.repeat)
    print(f"library {size:.1f} MB (ONNX file {onnx_path.name}), median of {args.repeat} fresh "
          "processes, load + executor creation:")
    print(f"  kiln load_module(verify='header'): {header * 1e3:8.2f} ms  "
          f"({ort / header:.1f}x faster than onnxruntime)")
    print(f"  kiln load_module(verify='full'):   {full * 1e3:8.2f} ms  "
          f"({ort / full:.1f}x faster than onnxruntime)")
    print(f"  kiln load_module(trusted_keys=...): {signed * 1e3:7.2f} ms  "
          f"({ort / signed:.1f}x faster than onnxruntime)")
    print(f"  onnxruntime InferenceSession:      {ort * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
