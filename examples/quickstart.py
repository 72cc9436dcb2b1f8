"""kiln quick start: compile an ONNX model, export one .so, load it back and run it.

    python examples/quickstart.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np

import kiln

MODEL = Path(__file__).with_name("example_cnn.onnx")  # made by examples/make_example.py

# 1. Compile: ONNX -> kiln IR -> fused C kernels -> one library (kernels + graph + weights).
mod, params = kiln.from_onnx(MODEL)
lib = kiln.build(mod, params=params)
image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)

with tempfile.TemporaryDirectory() as tmp:
    path = lib.export_library(Path(tmp) / "example_cnn.so")

    # 2. Deploy: any process loads the file with the runtime alone (NumPy, no compiler).
    start = time.perf_counter()
    gmod = kiln.GraphModule(kiln.load_module(path)["default"](kiln.cpu(0)))
    load_ms = (time.perf_counter() - start) * 1e3

    # 3. Run.
    gmod.set_input(image=image)
    start = time.perf_counter()
    gmod.run()
    run_ms = (time.perf_counter() - start) * 1e3
    scores = gmod.get_output(0)[0]

print("top-5 classes:")
for k in np.argsort(scores)[::-1][:5]:
    print(f"  class {k}: {scores[k]:+.4f}")
print(f"load: {load_ms:.1f} ms, run: {run_ms:.2f} ms")

try:
    import onnxruntime
except ImportError:
    print("(install onnxruntime to compare with it)")
else:
    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": image})
    print(f"max abs difference vs onnxruntime: {np.abs(scores - expected[0]).max():.2e}")
