"""Bring your own codegen end to end (docs/byoc.md): models with some nodes offloaded to an
external engine and the rest on kiln's kernels, exported, loaded and run.

Mixed models with several separate regions match onnxruntime run on the whole model, with
both executors, in this process and a fresh one; the engine is built once per loaded
library whatever the runs and executors (a counting backend proves it); a backend missing
at export warns, at load fails naming the package; MLF refuses an offloaded model;
offloaded weights are stored once; prebuilt engines are used when their key matches and
rebuilt with a warning when not.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.cli import main
from kiln.errors import BackendError, ExportError
from kiln.runtime.external import registry
from kiln.runtime.external.reference import ReferenceBackend
from tests.util import ort_run, run_in_fresh_process

RNG = np.random.default_rng(5)
TOL = 1e-4  # float32 sums in another order (the engines' kernels, kiln's)


def _mixed_model(channels: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """conv -> relu -> Erf (kiln only) -> conv -> add(residual) -> sigmoid -> Erf (kiln) ->
    matmul: with an engine that lacks Erf, three separate regions."""
    c = channels
    w1 = (RNG.standard_normal((c, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (RNG.standard_normal((c, c, 3, 3)) / (3 * np.sqrt(c))).astype(np.float32)
    m = (RNG.standard_normal((8, 5)) / 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Erf", ["r1"], ["e1"]),
             helper.make_node("Conv", ["e1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Erf", ["s"], ["e2"]),
             helper.make_node("MatMul", ["e2", "m"], ["y"])]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(m, "m")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"x": RNG.standard_normal((1, 3, 6, 8)).astype(np.float32)}


class CountingBackend(ReferenceBackend):
    """The reference backend, counting engine builds (class-wide) and refusing Erf."""

    name = "counting"
    builds = 0

    @classmethod
    def supports(cls, node: dict) -> bool:
        return node["op"] != "erf" and super().supports(node)

    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        type(self).builds += 1
        super().init(graph, constants)


class MissingBackend(CountingBackend):
    """A backend whose engine is not installed on this machine."""

    name = "missing"
    package = "kiln-test-missing-engine"

    @classmethod
    def available(cls) -> bool:
        return False


@pytest.fixture
def test_backends(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "counting", "tests.test_byoc:CountingBackend")
    monkeypatch.setitem(registry.BUILTIN, "missing", "tests.test_byoc:MissingBackend")
    CountingBackend.builds = 0


def _build(model, inputs, offload, **options):
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    return kiln.build(mod, params=params, offload=offload, progress=False, **options)


def _externals(lib) -> dict:
    return lib.compiled["default"].spec.get("externals", {})


def _run(lib, inputs, executor_lib=None) -> np.ndarray:
    gmod = kiln.GraphModule((executor_lib or lib)["default"](kiln.cpu(0)))
    gmod.run(**inputs)
    return gmod.get_output(0)


@pytest.mark.parametrize("executor", ["graph", "aot"])
def test_mixed_model_matches_onnxruntime(test_backends, tmp_path: Path, executor: str) -> None:
    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["counting"], executor=executor)
    externals = _externals(lib)
    assert len(externals) == 3, lib.ir()  # conv+relu | conv+add+sigmoid | matmul
    assert all(e["backend"] == "counting" for e in externals.values())
    assert "erf" in lib.ir()  # Erf stayed on kiln's kernels
    expected = ort_run(model, inputs)[0]
    path = lib.export_library(tmp_path / "m.so")
    loaded = kiln.load_module(path)
    np.testing.assert_allclose(_run(lib, inputs, loaded), expected, rtol=TOL, atol=TOL)


def test_engines_are_built_once_per_loaded_library(test_backends, tmp_path: Path) -> None:
    model, inputs = _mixed_model()
    path = _build(model, inputs, ["counting"]).export_library(tmp_path / "m.so")
    lib = kiln.load_module(path)
    assert CountingBackend.builds == 0  # nothing is built before an executor needs it
    outputs = []
    for _ in range(3):
        gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
        for _ in range(4):
            gmod.run(**inputs)
        outputs.append(gmod.get_output(0))
    assert CountingBackend.builds == 3 == lib.engines.builds  # one per external function
    np.testing.assert_array_equal(outputs[0], outputs[2])
    kiln.GraphModule(kiln.load_module(path)["default"](kiln.cpu(0))).run(**inputs)
    assert CountingBackend.builds == 6  # another loaded library builds its own


def test_round_trip_in_a_fresh_process_on_the_reference_backend(tmp_path: Path) -> None:
    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["reference"])
    assert _externals(lib), lib.ir()
    got, report = run_in_fresh_process(Path(lib.export_library(tmp_path / "m.so")), inputs,
                                       tmp_path)
    np.testing.assert_allclose(got[0], ort_run(model, inputs)[0], rtol=TOL, atol=TOL)


def test_onnxruntime_backend_runs_the_offloaded_parts() -> None:
    pytest.importorskip("onnxruntime")
    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["onnxruntime"])
    assert {e["backend"] for e in _externals(lib).values()} == {"onnxruntime"}
    np.testing.assert_allclose(_run(lib, inputs), ort_run(model, inputs)[0], rtol=TOL,
                               atol=TOL)


def test_missing_backend_warns_at_export_and_fails_at_load(test_backends,
                                                           tmp_path: Path) -> None:
    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["missing"])
    with pytest.warns(UserWarning, match="backend 'missing'.*pip install kiln-test-missing"):
        path = lib.export_library(tmp_path / "m.so")
    with pytest.raises(BackendError, match="backend 'missing'.*pip install kiln-test-missing"):
        kiln.load_module(path)


def test_model_library_format_refuses_an_offloaded_model(test_backends,
                                                         tmp_path: Path) -> None:
    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["counting"])
    with pytest.raises(ExportError, match="function 'ext0'.*external backend 'counting'"):
        lib.export_library(tmp_path / "m.mlf.tar")
    assert not (tmp_path / "m.mlf.tar").exists()


def test_offloaded_constants_are_stored_once(test_backends, tmp_path: Path) -> None:
    """The weights the engines read are the library's weights, by name: the file holds
    each once, and the JSON graphs hold none of their data."""
    model, inputs = _mixed_model(channels=96)  # 0.3 MB of weights
    offloaded = Path(_build(model, inputs, ["counting"]).export_library(tmp_path / "a.so"))
    plain = Path(_build(model, inputs, []).export_library(tmp_path / "b.so"))
    weights = sum(t.raw_data.__len__() for t in model.graph.initializer)
    manifest = kiln.load_module(offloaded).manifest
    stored = sum(r["nbytes"] for r in manifest["weights"])
    assert stored == weights  # conv, conv and matmul weights, each once
    graphs = json.dumps(manifest["models"]["default"]["externals"])
    assert len(graphs) < 4096  # names, not data
    assert offloaded.stat().st_size < plain.stat().st_size + weights / 2


def test_prebuilt_engine_is_used_when_its_key_matches(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from kiln.runtime.external.onnxruntime import OnnxRuntimeBackend

    model, inputs = _mixed_model()
    lib = _build(model, inputs, ["onnxruntime"], prebuild=True)
    path = lib.export_library(tmp_path / "m.so")
    manifest = kiln.load_module(path).manifest
    assert all("engine" in e for e in manifest["models"]["default"]["externals"].values())
    inits: list[int] = []
    original = OnnxRuntimeBackend.init
    monkeypatch.setattr(OnnxRuntimeBackend, "init",
                        lambda self, g, c: (inits.append(1), original(self, g, c))[1])
    expected = ort_run(model, inputs)[0]
    np.testing.assert_allclose(_run(kiln.load_module(path), inputs), expected, rtol=TOL,
                               atol=TOL)
    assert inits == []  # every engine came from the library
    monkeypatch.setattr(OnnxRuntimeBackend, "engine_key", classmethod(lambda cls: "other"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _run(kiln.load_module(path), inputs)
    assert any("building it again" in str(w.message) for w in caught)
    assert inits  # rebuilt
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)


def test_unknown_backend_is_refused_at_build() -> None:
    model, inputs = _mixed_model()
    with pytest.raises(BackendError, match="unknown backend 'nope'.*reference"):
        _build(model, inputs, ["nope"])


def test_inspect_and_viz_show_what_went_where(test_backends, tmp_path: Path) -> None:
    model, inputs = _mixed_model()
    path = _build(model, inputs, ["counting"]).export_library(tmp_path / "m.so")
    done = CliRunner().invoke(main, ["inspect", path, "--json"])
    assert done.exit_code == 0, done.output
    externals = json.loads(done.output)["models"]["default"]["externals"]
    assert {e["backend"] for e in externals.values()} == {"counting"}
    assert sorted(op for e in externals.values() for op in e["ops"]) == \
        ["add", "conv", "conv", "matmul", "relu", "sigmoid"]
    done = CliRunner().invoke(main, ["viz", path, "-o", str(tmp_path / "m.html")])
    assert done.exit_code == 0, done.output
    assert "external:counting" in (tmp_path / "m.html").read_text()
