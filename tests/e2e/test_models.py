"""Compile realistic models, export them, run them in a fresh process, compare with onnxruntime.

Each model is compiled and exported once per test process (a module-scoped fixture); the
exported library is then loaded by a new Python process that imports only kiln's runtime,
as a deployment would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.export.factory import FactoryModule
from kiln.ir import Module
from kiln.ops import VIEW, get_op
from kiln.pipeline import optimize
from tests.e2e.models import MODELS
from tests.util import ort_run, run_in_fresh_process

pytestmark = pytest.mark.e2e

# rtol = atol for every model: the largest absolute difference measured was 2e-6
# (detector_head), so float accumulation order needs nothing looser. That includes
# resnet18_like's 3x3 convs that run as Winograd F(4x4, 3x3): 1.2e-6 on outputs up to 2.8.
TOLERANCE = 1e-4


@dataclass
class Built:
    """A model compiled and exported once, with what the tests compare against."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    module: Module
    factory: FactoryModule
    library: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A function: model name -> Built, compiling and exporting each model once."""
    done: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in done:
            model, inputs = MODELS[name]()
            mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
            factory = kiln.build(mod, params=params, progress=False)
            path = tmp_path_factory.mktemp(name) / "model.so"
            factory.export_library(path)
            done[name] = Built(model, inputs, mod.bind(params), factory, path)
        return done[name]

    return get


@pytest.fixture(params=sorted(MODELS))
def built(request, build) -> Built:
    return build(request.param)


def test_matches_onnxruntime_in_fresh_process(built: Built, tmp_path: Path) -> None:
    got, report = run_in_fresh_process(built.library, built.inputs, tmp_path)
    expected = ort_run(built.model, built.inputs)
    assert report["compiler_modules"] == [], "the runtime imported compiler modules"
    assert report["outputs"] == [o.name for o in built.model.graph.output]
    assert len(got) == len(expected)
    for name, g, e in zip(report["outputs"], got, expected, strict=True):
        assert (g.shape, g.dtype) == (e.shape, e.dtype), name
        np.testing.assert_allclose(g, e, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"output {name}")


def test_winograd_is_among_what_the_models_check(build) -> None:
    """The comparisons above cover Winograd convs: resnet18_like's stride-1 3x3 convs of
    stages 1-3 take it (stage 4's 2x2 planes do not)."""
    ir = build("resnet18_like").factory.ir()
    assert ir.count("winograd_weight=[") - ir.count("winograd_weight=[]") == 10


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


def _other_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Different valid inputs: fresh floats; integer inputs (ids, masks) rolled along."""
    rng = np.random.default_rng(99)
    return {k: rng.standard_normal(a.shape).astype(a.dtype) if a.dtype.kind == "f"
            else np.roll(a, 3) for k, a in inputs.items()}


def test_executors_are_independent_and_rerunnable(built: Built) -> None:
    """Two executors of one library keep separate state; a rerun with new inputs is exact."""
    lib = kiln.load_module(built.library)
    first, second = (kiln.GraphModule(lib["default"](kiln.cpu(0))) for _ in range(2))
    other = _other_inputs(built.inputs)
    first.run(**built.inputs)
    second.run(**other)
    before = [first.get_output(k) for k in range(first.get_num_outputs())]
    first.run(**other)
    for k, expected in enumerate(ort_run(built.model, other)):
        np.testing.assert_allclose(first.get_output(k), expected, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_array_equal(first.get_output(k), second.get_output(k))
    first.run(**built.inputs)
    for k, out in enumerate(before):
        np.testing.assert_array_equal(first.get_output(k), out)


def test_kernels_are_fused(built: Built) -> None:
    """Fewer kernels than (non-view) nodes in the optimized IR, and some multi-op kernel."""
    kernels = built.factory.compiled["default"].spec["kernels"]
    nodes = [n for n in optimize(built.module).graph.nodes if get_op(n.op).kind != VIEW]
    assert len(kernels) < len(nodes), [k["label"] for k in kernels]
    assert any("+" in k["label"] for k in kernels), [k["label"] for k in kernels]


def _intersects(x: tuple[int, int], y: tuple[int, int]) -> bool:
    """Whether the closed ranges x and y share a point."""
    return x[0] <= y[1] and y[0] <= x[1]


def test_memory_plan_is_sound(built: Built) -> None:
    """Buffers alive at the same kernel step never overlap, and all lie inside the arena."""
    spec = built.factory.compiled["default"].spec
    buffers = spec["memory"]["buffers"]
    steps = [(b["first"], b["last"]) for b in buffers]
    spans = [(b["offset"], b["offset"] + b["size"] - 1) for b in buffers]
    for k, (a_steps, a_span) in enumerate(zip(steps, spans, strict=True)):
        assert 0 <= a_span[0] and a_span[1] < spec["arena_bytes"], buffers[k]
        for j in range(k + 1, len(buffers)):
            clash = _intersects(a_steps, steps[j]) and _intersects(a_span, spans[j])
            assert not clash, (buffers[k], buffers[j])


def test_memory_plan_reuses_buffers(build) -> None:
    spec = build("resnet18_like").factory.compiled["default"].spec
    memory, peak = spec["memory"], spec["arena_bytes"]
    assert 0 < peak < memory["unplanned_bytes"], memory
    # At most three activations are alive at once (block input, branch, shortcut).
    largest = max(b["size"] for b in memory["buffers"])
    assert peak <= 3 * largest, memory
