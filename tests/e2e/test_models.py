"""Compile realistic models, export them, run them in a fresh process, compare with onnxruntime.

Each model is compiled and exported once per session (module-scoped fixture); the exported
library is then loaded by a new Python process that imports only kiln's runtime, as a
deployment would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.ops import VIEW, get_op
from kiln.passes.pipeline import optimize
from tests.e2e.models import MODELS
from tests.util import ort_run

pytestmark = pytest.mark.e2e

# Tolerances beyond the default 1e-4 (rtol and atol), each with its measured reason.
TOLERANCE: dict[str, float] = {}
DEFAULT_TOLERANCE = 1e-4

# Runs in a fresh interpreter: argv = library, inputs .npz, outputs .npz.
RUNNER = """
import json, sys
import numpy as np
import kiln

lib = kiln.load_module(sys.argv[1])
gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
with np.load(sys.argv[2]) as inputs:
    gmod.set_input(**{name: inputs[name] for name in inputs.files})
gmod.run()
np.savez(sys.argv[3], *[gmod.get_output(i) for i in range(gmod.get_num_outputs())])
compiler = [m for m in sys.modules if m.startswith(("onnx", "kiln.compiler", "kiln.frontend",
                                                    "kiln.passes", "kiln.codegen", "kiln.ir"))]
print(json.dumps({"outputs": gmod.output_names, "compiler_modules": compiler}))
"""


@dataclass
class Built:
    """A model compiled and exported once, with what the tests compare against."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    module: kiln.ir.Module
    factory: kiln.export.factory.FactoryModule
    library: Path


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request, tmp_path_factory) -> Built:
    model, inputs = MODELS[request.param]()
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    factory = kiln.build(mod, params=params, progress=False)
    path = tmp_path_factory.mktemp(request.param) / "model.so"
    factory.export_library(path)
    return Built(model, inputs, mod.bind(params), factory, path)


def run_in_fresh_process(library: Path, inputs: dict[str, np.ndarray],
                         work: Path) -> tuple[list[np.ndarray], dict]:
    """Load and run library in a new interpreter; its outputs and what it reported."""
    np.savez(work / "inputs.npz", **inputs)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(library), str(work / "inputs.npz"),
         str(work / "outputs.npz")],
        capture_output=True, text=True, cwd=work, timeout=120,
    )
    assert done.returncode == 0, f"runner exited with {done.returncode}:\n{done.stderr}"
    with np.load(work / "outputs.npz") as out:
        outputs = [out[f"arr_{k}"] for k in range(len(out.files))]
    return outputs, json.loads(done.stdout.strip().splitlines()[-1])


def test_matches_onnxruntime_in_fresh_process(built: Built, tmp_path: Path) -> None:
    got, report = run_in_fresh_process(built.library, built.inputs, tmp_path)
    expected = ort_run(built.model, built.inputs)
    assert report["compiler_modules"] == [], "the runtime imported compiler modules"
    assert report["outputs"] == [o.name for o in built.model.graph.output]
    assert len(got) == len(expected)
    tol = TOLERANCE.get(built.model.graph.name, DEFAULT_TOLERANCE)
    for name, g, e in zip(report["outputs"], got, expected, strict=True):
        assert (g.shape, g.dtype) == (e.shape, e.dtype), name
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=f"output {name}")


def test_signature(built: Built) -> None:
    """Names, shapes and dtypes of inputs and outputs, as the loaded library reports them."""
    gmod = kiln.GraphModule(kiln.load_module(built.library)["default"](kiln.cpu(0)))
    expected = ort_run(built.model, built.inputs)
    outputs = [o.name for o in built.model.graph.output]
    assert gmod.output_names == outputs
    assert gmod.output_info == {n: (e.shape, e.dtype.name)
                                for n, e in zip(outputs, expected, strict=True)}
    assert gmod.input_info == {n: (a.shape, a.dtype.name) for n, a in built.inputs.items()}
    assert gmod.get_num_inputs() == len(built.inputs)
    assert gmod.get_num_outputs() == len(outputs)


def test_kernels_are_fused(built: Built) -> None:
    """Fewer kernels than (non-view) nodes in the optimized IR, and some multi-op kernel."""
    kernels = built.factory.compiled["default"].spec["kernels"]
    nodes = [n for n in optimize(built.module).graph.nodes if get_op(n.op).kind != VIEW]
    assert len(kernels) < len(nodes), [k["label"] for k in kernels]
    assert any("+" in k["label"] for k in kernels), [k["label"] for k in kernels]


def test_memory_plan_reuses_buffers(built: Built) -> None:
    if built.model.graph.name != "resnet18_like":
        pytest.skip("checked on the deepest model only (resnet18_like)")
    memory = built.factory.compiled["default"].spec["memory"]
    assert 0 < memory["peak_bytes"] < memory["unplanned_bytes"], memory
    # A chain of 20 convolutions: the arena holds a few activations, not all of them.
    assert memory["peak_bytes"] < memory["unplanned_bytes"] / 2, memory
