"""The module-based runtime interface: factories, bundles, executors, weights apart, devices.

build/link -> FactoryModule -> export_library (.so, .tar, directory) -> load_module ->
lib[name](device) -> GraphModule. Small models from tests/e2e/models.py, each imported once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import kiln
from kiln.export.factory import FactoryModule
from kiln.ir import Module
from kiln.runtime.blob import HEADER, SECTION
from kiln.runtime.elf import read_elf
from kiln.runtime.executor import AotExecutor, GraphExecutor
from tests.e2e.models import MODELS
from tests.util import ort_run

pytestmark = pytest.mark.e2e

# As in tests/e2e/test_models.py: float accumulation order needs nothing looser.
TOLERANCE = 1e-4


@dataclass
class Imported:
    """An e2e model, its inputs, and its kiln module and params (unbound)."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    module: Module
    params: dict[str, np.ndarray]


_IMPORTED: dict[str, Imported] = {}


def imported(name: str) -> Imported:
    """MODELS[name] imported into kiln (once per test process)."""
    if name not in _IMPORTED:
        model, inputs = MODELS[name]()
        mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
        _IMPORTED[name] = Imported(model, inputs, mod, params)
    return _IMPORTED[name]


def build(name: str, *, executor: str = "graph", as_name: str = "default") -> FactoryModule:
    m = imported(name)
    return kiln.build({as_name: m.module}, params=m.params, executor=executor, progress=False)


def outputs(gmod: kiln.GraphModule) -> list[np.ndarray]:
    return [gmod.get_output(k) for k in range(gmod.get_num_outputs())]


def run(lib, name: str, inputs: dict[str, np.ndarray], dev=None) -> list[np.ndarray]:
    """Create an executor of model `name` on dev (cpu:0), run it once on inputs."""
    gmod = kiln.GraphModule(lib[name](dev or kiln.cpu(0)))
    gmod.run(**inputs)
    return outputs(gmod)


def assert_matches_ort(got: list[np.ndarray], model: onnx.ModelProto,
                       inputs: dict[str, np.ndarray]) -> None:
    expected = ort_run(model, inputs)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert (g.shape, g.dtype) == (e.shape, e.dtype), f"output {k}"
        np.testing.assert_allclose(g, e, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"output {k}")


def assert_identical(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.dtype == e.dtype, f"output {k}"
        np.testing.assert_array_equal(g, e, err_msg=f"output {k}")


@pytest.fixture(scope="module")
def mlp_library(tmp_path_factory) -> kiln.Library:
    """The mlp, exported to a .so and loaded."""
    return kiln.load_module(build("mlp").export_library(tmp_path_factory.mktemp("mlp") / "m.so"))


# ---------------------------------------------------------------------------------------------
# 1. Several models in one library


# A fresh interpreter: argv = library, then per model: name, inputs .npz, outputs .npz.
BUNDLE_RUNNER = """
import json, sys
import numpy as np
import kiln

lib = kiln.load_module(sys.argv[1])
report = {"models": lib.models}
args = sys.argv[2:]
for name, inputs_path, outputs_path in zip(args[0::3], args[1::3], args[2::3]):
    gmod = kiln.GraphModule(lib[name](kiln.cpu(0)))
    with np.load(inputs_path) as inputs:
        gmod.run(**{k: inputs[k] for k in inputs.files})
    np.savez(outputs_path, *[gmod.get_output(k) for k in range(gmod.get_num_outputs())])
try:
    lib["nope"]
except kiln.KilnError as e:
    report["missing_model_error"] = [type(e).__name__, str(e)]
report["compiler_modules"] = [m for m in sys.modules if m.startswith(
    ("onnx", "kiln.compiler", "kiln.pipeline", "kiln.dump", "kiln.frontend", "kiln.ir", "kiln.ops",
     "kiln.passes", "kiln.codegen", "kiln.export"))]
print(json.dumps(report))
"""


def run_bundle_in_fresh_process(library: str, feeds: dict[str, dict[str, np.ndarray]],
                                work: Path) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Load library in a new interpreter, run each model on its feeds; outputs and report."""
    args = []
    for name, inputs in feeds.items():
        np.savez(work / f"{name}.in.npz", **inputs)
        args += [name, str(work / f"{name}.in.npz"), str(work / f"{name}.out.npz")]
    done = subprocess.run([sys.executable, "-c", BUNDLE_RUNNER, library, *args],
                          capture_output=True, text=True, cwd=work, timeout=120)
    assert done.returncode == 0, f"runner exited with {done.returncode}:\n{done.stderr}"
    got = {}
    for name in feeds:
        with np.load(work / f"{name}.out.npz") as out:
            got[name] = [out[f"arr_{k}"] for k in range(len(out.files))]
    return got, json.loads(done.stdout.strip().splitlines()[-1])


def test_two_models_in_one_library_run_in_fresh_process(tmp_path: Path) -> None:
    vision, text = imported("resnet18_like"), imported("bert_like")
    assert not set(vision.params) & set(text.params), "param names clash: build apart and link"
    factory = kiln.build({"classifier": vision.module, "encoder": text.module},
                         params={**vision.params, **text.params}, progress=False)
    assert factory.models == ["classifier", "encoder"]
    path = factory.export_library(tmp_path / "bundle.so")
    assert path == str(tmp_path / "bundle.so")
    assert sorted(os.listdir(tmp_path)) == ["bundle.so"]  # one file holds everything

    work = tmp_path / "work"
    work.mkdir()
    got, report = run_bundle_in_fresh_process(
        path, {"classifier": vision.inputs, "encoder": text.inputs}, work)
    assert report["compiler_modules"] == [], "the runtime imported compiler modules"
    assert report["models"] == ["classifier", "encoder"]
    kind, message = report["missing_model_error"]
    assert kind == "KilnError" and "'nope'" in message
    assert "classifier" in message and "encoder" in message
    assert_matches_ort(got["classifier"], vision.model, vision.inputs)
    assert_matches_ort(got["encoder"], text.model, text.inputs)

    lib = kiln.load_module(path)
    assert lib.models == ["classifier", "encoder"]
    with pytest.raises(kiln.KilnError, match=r"no model named 'nope'.*classifier.*encoder"):
        lib["nope"]
    with pytest.raises(kiln.KilnError, match="'default'"):
        lib["default"]


def _changed_classifier(name: str) -> Imported:
    """MODELS[name] with its smallest 2-D ONNX weight changed, imported into kiln."""
    base = imported(name)
    model = onnx.ModelProto()
    model.CopyFrom(base.model)
    init = min((i for i in model.graph.initializer if len(i.dims) == 2),
               key=lambda i: int(np.prod(i.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -0.5, init.name))
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in base.inputs.items()})
    return Imported(model, base.inputs, mod, params)


def test_bundle_stores_shared_weights_once(tmp_path: Path) -> None:
    """A model and a variant with one layer changed: the bundle holds their common weights once."""
    base = imported("mlp")
    variant = _changed_classifier("mlp")
    first = kiln.build({"base": base.module}, params=base.params, progress=False)
    second = kiln.build({"variant": variant.module}, params=variant.params, progress=False)
    bundle = kiln.link([first, second])
    assert bundle.models == ["base", "variant"]

    # The compiled weights: all but those derived from the changed layer are byte-identical.
    wa, wb = first.compiled["base"].weights, second.compiled["variant"].weights
    assert sorted(wa) == sorted(wb)
    shared = [k for k in wa if wa[k].dtype == wb[k].dtype and wa[k].tobytes() == wb[k].tobytes()]
    differing = sorted(set(wa) - set(shared))
    assert len(differing) == 1, differing
    shared_bytes = sum(wa[k].nbytes for k in shared)
    assert shared_bytes > 0.9 * sum(a.nbytes for a in wa.values())

    sizes = {}
    for name, factory in [("base", first), ("variant", second), ("both", bundle)]:
        sizes[name] = os.path.getsize(factory.export_library(tmp_path / f"{name}.so"))
    code_only = os.path.getsize(first.export_library(tmp_path / "code.so", package_params=False))
    saved = sizes["base"] + sizes["variant"] - sizes["both"]
    # Saved: the shared weights, plus at most one library's code and ELF tables.
    assert shared_bytes <= saved <= shared_bytes + code_only, (sizes, shared_bytes, code_only)
    assert sizes["both"] < sizes["base"] + sizes["variant"] - shared_bytes

    lib = kiln.load_module(tmp_path / "both.so")
    regions = lib.manifest["weights"]
    assert len(regions) == len(wa) + len(differing)  # one region per distinct tensor
    index = {m: {p["name"]: p["weight"] for p in lib.manifest["models"][m]["params"]}
             for m in ("base", "variant")}
    for k in shared:
        assert index["base"][k] == index["variant"][k], k
        assert regions[index["base"][k]]["nbytes"] == wa[k].nbytes
    assert index["base"][differing[0]] != index["variant"][differing[0]]
    assert sum(r["nbytes"] for r in regions) == shared_bytes + 2 * wa[differing[0]].nbytes

    assert_matches_ort(run(lib, "base", base.inputs), base.model, base.inputs)
    assert_matches_ort(run(lib, "variant", base.inputs), variant.model, base.inputs)
    assert not np.array_equal(run(lib, "base", base.inputs)[0],
                              run(lib, "variant", base.inputs)[0])


def test_link_refuses_two_models_of_one_name() -> None:
    with pytest.raises(kiln.ExportError, match="'default'"):
        kiln.link([build("mlp"), build("mlp_opset9")])
    with pytest.raises(kiln.ExportError):
        kiln.link([])


# ---------------------------------------------------------------------------------------------
# 2. Graph and AOT executors


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_and_aot_executors_agree(name: str, tmp_path: Path) -> None:
    m = imported(name)
    got, calls = {}, {}
    for kind in ("graph", "aot"):
        path = build(name, executor=kind).export_library(tmp_path / f"{kind}.so")
        lib = kiln.load_module(path)
        spec = lib.manifest["models"]["default"]
        assert spec["executor"] == kind
        ex = lib["default"](kiln.cpu(0))
        assert isinstance(ex, {"graph": GraphExecutor, "aot": AotExecutor}[kind])
        gmod = kiln.GraphModule(ex)
        assert ex.native_calls == 0
        gmod.run(**m.inputs)
        calls[kind] = ex.native_calls
        got[kind] = outputs(gmod)
        gmod.run()
        assert ex.native_calls == 2 * calls[kind]
        if kind == "graph":
            assert calls[kind] == len(spec["kernels"]) > 1
            kernels = spec["kernels"]
        else:
            assert calls[kind] == 1
            assert spec["kernels"] == kernels  # the same kernels, in the same order
    assert_identical(got["aot"], got["graph"])
    assert_matches_ort(got["aot"], m.model, m.inputs)


def test_one_library_holds_a_graph_and_an_aot_model(tmp_path: Path) -> None:
    mlp, detector = imported("mlp"), imported("detector_head")
    factory = kiln.link([build("mlp", executor="graph", as_name="mlp_graph"),
                         build("detector_head", executor="aot", as_name="detector_aot")])
    path = factory.export_library(tmp_path / "mixed.so")
    lib = kiln.load_module(path)
    assert lib.models == ["detector_aot", "mlp_graph"]
    assert {n: lib.manifest["models"][n]["executor"] for n in lib.models} == \
        {"detector_aot": "aot", "mlp_graph": "graph"}
    graph = kiln.GraphModule(lib["mlp_graph"](kiln.cpu(0)))
    aot = kiln.GraphModule(lib["detector_aot"](kiln.cpu(0)))
    assert isinstance(graph.executor, GraphExecutor) and isinstance(aot.executor, AotExecutor)
    graph.run(**mlp.inputs)
    aot.run(**detector.inputs)
    assert aot.executor.native_calls == 1
    assert graph.executor.native_calls == len(lib.manifest["models"]["mlp_graph"]["kernels"])
    assert_matches_ort(outputs(graph), mlp.model, mlp.inputs)
    assert_matches_ort(outputs(aot), detector.model, detector.inputs)


def test_unknown_executor_is_a_compile_error() -> None:
    m = imported("mlp")
    with pytest.raises(kiln.CompileError, match="'vm'.*graph.*aot"):
        kiln.build(m.module, params=m.params, executor="vm", progress=False)


# ---------------------------------------------------------------------------------------------
# 3. Weights apart: package_params=False + export_params


@pytest.fixture(scope="module")
def weightless(tmp_path_factory) -> dict:
    """The mlp exported with and without its weights, and its weights as .safetensors."""
    tmp = tmp_path_factory.mktemp("weightless")
    factory = build("mlp")
    return {
        "factory": factory,
        "full": factory.export_library(tmp / "full.so"),
        "light": factory.export_library(tmp / "light.so", package_params=False),
        "params": factory.export_params(tmp / "w.safetensors"),
    }


def test_params_file_is_plain_safetensors(weightless: dict) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    weights = weightless["factory"].compiled["default"].weights
    spec = kiln.load_module(weightless["full"]).manifest["models"]["default"]["params"]
    assert {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in spec} == \
        {k: (a.shape, a.dtype.name) for k, a in weights.items()}
    loaded = load_file(weightless["params"])
    assert sorted(loaded) == sorted(weights)
    for k, a in weights.items():
        assert (loaded[k].shape, loaded[k].dtype) == (a.shape, a.dtype), k
        np.testing.assert_array_equal(loaded[k], a)
    with safe_open(weightless["params"], framework="numpy") as f:
        assert sorted(f.keys()) == sorted(weights)
    with pytest.raises(kiln.ExportError, match="safetensors"):
        weightless["factory"].export_params(Path(weightless["params"]).with_suffix(".npz"))


def test_weightless_library_is_much_smaller(weightless: dict) -> None:
    weight_bytes = sum(a.nbytes for a in weightless["factory"].compiled["default"].weights.values())
    full, light = (os.path.getsize(weightless[k]) for k in ("full", "light"))
    assert light <= full - weight_bytes
    assert light < full / 3, (full, light)
    lib = kiln.load_module(weightless["light"])
    assert lib.manifest["weights"] == []
    assert all(p["weight"] is None for p in lib.manifest["models"]["default"]["params"])


def test_load_params_round_trip(weightless: dict) -> None:
    m = imported("mlp")
    expected = run(kiln.load_module(weightless["full"]), "default", m.inputs)
    params = kiln.load_params(weightless["params"])
    lib = kiln.load_module(weightless["light"])

    def fresh() -> kiln.GraphModule:
        gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
        gmod.set_input(**m.inputs)
        return gmod

    gmod = fresh()
    with pytest.raises(kiln.InputError, match="load_params"):
        gmod.run()
    with pytest.raises(kiln.InputError, match="load_params"):
        gmod.get_output(0)

    missing = sorted(params)[0]
    gmod.load_params({k: v for k, v in params.items() if k != missing})
    with pytest.raises(kiln.InputError, match=f"missing 1 params.*{missing}"):
        gmod.run()
    with pytest.raises(kiln.InputError, match=f"param '{missing}'.*expected"):
        gmod.load_params({missing: np.zeros((3, 3), np.float32)})
    with pytest.raises(kiln.InputError, match="float64"):
        gmod.load_params({missing: params[missing].astype(np.float64)})
    with pytest.raises(kiln.InputError, match="no params.*'nope'"):
        gmod.load_params({"nope": params[missing]})
    with pytest.raises(kiln.FormatError, match="not found"):
        gmod.load_params(str(Path(weightless["params"]).with_name("absent.safetensors")))
    gmod.load_params({missing: params[missing]})
    gmod.run()
    assert_identical(outputs(gmod), expected)

    by_path = fresh()
    by_path.load_params(weightless["params"])
    by_path.run()
    assert_identical(outputs(by_path), expected)

    by_input = fresh()
    by_input.set_input(**params)
    by_input.run()
    assert_identical(outputs(by_input), expected)

    # load_params replaces weights of a packaged library too.
    packaged = kiln.GraphModule(kiln.load_module(weightless["full"])["default"](kiln.cpu(0)))
    packaged.load_params({k: np.zeros_like(v) for k, v in params.items()})
    packaged.run(**m.inputs)
    np.testing.assert_allclose(packaged.get_output(0), np.full((2, 10), 0.1, np.float32),
                               rtol=1e-6)


def test_params_of_several_models_are_prefixed(tmp_path: Path) -> None:
    factory = kiln.link([build("mlp", as_name="a"), build("mlp_opset9", as_name="b")])
    lib = kiln.load_module(factory.export_library(tmp_path / "ab.so", package_params=False))
    path = factory.export_params(tmp_path / "ab.safetensors")
    from safetensors.numpy import load_file

    assert sorted(load_file(path)) == sorted(
        [f"a/{k}" for k in factory.compiled["a"].weights]
        + [f"b/{k}" for k in factory.compiled["b"].weights])
    assert sorted(kiln.load_params(path, model="b")) == sorted(factory.compiled["b"].weights)
    for name, model in [("a", "mlp"), ("b", "mlp_opset9")]:
        gmod = kiln.GraphModule(lib[name](kiln.cpu(0)))
        gmod.load_params(path)
        gmod.run(**imported(model).inputs)
        assert_matches_ort(outputs(gmod), imported(model).model, imported(model).inputs)


# ---------------------------------------------------------------------------------------------
# 4. Export forms: .tar, directory, bytes


def test_tar_export_is_deterministic_and_loads(tmp_path: Path) -> None:
    m = imported("mlp")
    factory = build("mlp")
    first = factory.export_library(tmp_path / "a.tar")
    second = build("mlp").export_library(tmp_path / "b.tar")  # a fresh build, same bytes
    data = Path(first).read_bytes()
    assert data == Path(second).read_bytes()
    assert data[257:263] == b"ustar\0"  # a plain, uncompressed POSIX tar
    with tarfile.open(first, mode="r:") as tar:
        names = tar.getnames()
        assert all(t.isfile() and t.mtime == 0 for t in tar.getmembers())
        manifest = json.loads(tar.extractfile("manifest.json").read())
        inner = tar.extractfile("lib.so").read()
        blob = tar.extractfile("blob.bin").read()
    objects = [n for n in names if n.startswith("objects/")]
    assert objects and all(n.endswith(".o") for n in objects)
    assert {"blob.bin", "manifest.json", "lib.so"} <= set(names)
    assert manifest["models"] == ["default"]
    assert blob[:8] == b"KILNBLOB"
    assert inner == Path(factory.export_library(tmp_path / "same.so")).read_bytes()

    lib = kiln.load_module(first)
    assert lib.models == ["default"]
    assert_matches_ort(run(lib, "default", m.inputs), m.model, m.inputs)


def test_directory_export_names_the_file(tmp_path: Path) -> None:
    m = imported("mlp")
    path = build("mlp").export_library(tmp_path / "out")
    assert path == str(tmp_path / "out" / "default.so") and os.path.isfile(path)
    assert_matches_ort(run(kiln.load_module(path), "default", m.inputs), m.model, m.inputs)
    existing = tmp_path / "existing"
    existing.mkdir()
    bundle = kiln.link([build("mlp", as_name="a"), build("mlp", as_name="b")])
    assert bundle.export_library(existing) == str(existing / "models.so")


@pytest.mark.parametrize("name", ["model.zip", "model.so.gz", "model.onnx"])
def test_unknown_suffix_is_an_export_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(kiln.ExportError, match="suffix"):
        build("mlp").export_library(tmp_path / name)
    assert os.listdir(tmp_path) == []
    with pytest.raises(kiln.ExportError, match="does not exist"):
        build("mlp").export_library(tmp_path / "absent" / "model.so")
    assert os.listdir(tmp_path) == []


def test_load_from_bytes_makes_no_file(tmp_path: Path) -> None:
    m = imported("mlp")
    data = Path(build("mlp").export_library(tmp_path / "model.so")).read_bytes()
    before = set(os.listdir(tmp_path))
    lib = kiln.load_module(data)
    assert not os.path.exists(lib.path)
    assert lib.native._name.startswith("/proc/")
    with open("/proc/self/maps") as f:
        mapped = {line.split(maxsplit=5)[-1].strip() for line in f if "kiln-library" in line}
    assert mapped and all(p.startswith("/memfd:") for p in mapped), mapped
    assert_matches_ort(run(lib, "default", m.inputs), m.model, m.inputs)
    assert set(os.listdir(tmp_path)) == before
    assert_matches_ort(run(kiln.load_module(bytearray(data)), "default", m.inputs),
                       m.model, m.inputs)


def _corruptions(data: bytes) -> dict[str, bytes]:
    """Damaged copies of a library: truncated, flipped bytes in code and weights, not ELF."""
    sections = read_elf(memoryview(data), "library").sections
    weights = sections[SECTION].offset + HEADER.unpack_from(data, sections[SECTION].offset)[6]

    def flip(offset: int) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]

    return {"truncated": data[:len(data) // 2], "code": flip(sections[".text"].offset + 16),
            "weights": flip(weights + 100), "garbage": b"\x7fELF" + bytes(200),
            "empty": b"", "text": b"not a kiln library"}


def test_corrupted_bytes_are_format_errors(mlp_library: kiln.Library) -> None:
    data = Path(mlp_library.path).read_bytes()
    for what, bad in _corruptions(data).items():
        with pytest.raises(kiln.FormatError):
            kiln.load_module(bad)
            pytest.fail(f"{what}: loaded")


# ---------------------------------------------------------------------------------------------
# 5. Concurrency


@pytest.mark.parametrize("executor", ["graph", "aot"])
def test_two_executors_run_concurrently(executor: str, tmp_path: Path) -> None:
    m = imported("detector_head")
    lib = kiln.load_module(build("detector_head", executor=executor)
                           .export_library(tmp_path / "det.so"))
    rng = np.random.default_rng(5)
    feeds = [[{"images": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)}
              for _ in range(20)] for _ in range(2)]
    serial = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    expected: list[list[list[np.ndarray]]] = [[], []]
    for t, thread_feeds in enumerate(feeds):
        for feed in thread_feeds:
            serial.run(**feed)
            expected[t].append(outputs(serial))
    assert_matches_ort(expected[1][7], m.model, feeds[1][7])

    gmods = [kiln.GraphModule(lib["default"](kiln.cpu(0, num_threads=1))) for _ in range(2)]
    arenas = [g.executor.arena for g in gmods]
    assert not np.shares_memory(arenas[0], arenas[1])
    barrier = threading.Barrier(2)
    failures: list[str] = []

    def worker(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            for k, feed in enumerate(feeds[t]):
                gmods[t].run(**feed)
                for j, (g, e) in enumerate(zip(outputs(gmods[t]), expected[t][k], strict=True)):
                    if not np.array_equal(g, e):
                        failures.append(f"thread {t} run {k} output {j}")
        except Exception as e:  # reported by the main thread
            failures.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert [g.executor.native_calls for g in gmods] == [serial.executor.native_calls // 2] * 2

    # Buffers are independent: running one executor leaves the other's outputs alone.
    gmods[0].run(**feeds[0][0])
    gmods[1].run(**feeds[1][0])
    assert_identical(outputs(gmods[0]), expected[0][0])
    assert_identical(outputs(gmods[1]), expected[1][0])


# ---------------------------------------------------------------------------------------------
# 6. Devices and profiling


def test_devices(mlp_library: kiln.Library, monkeypatch: pytest.MonkeyPatch) -> None:
    m = imported("mlp")
    factory = mlp_library["default"]
    with pytest.raises(kiln.KilnError, match="cuda:0"):
        factory(kiln.device("cuda:0"))
    with pytest.raises(kiln.KilnError, match="cuda:0"):
        factory("cuda:0")
    with pytest.raises(kiln.KilnError, match="cpu:1"):
        factory(kiln.cpu(1))
    with pytest.raises(kiln.KilnError, match="num_threads"):
        kiln.cpu(0, num_threads=0)
    with pytest.raises(kiln.KilnError, match="num_threads"):
        kiln.device("cpu:0", num_threads=-2)
    with pytest.raises(kiln.KilnError, match="bad device"):
        kiln.device("cpu:first")

    assert kiln.device("cpu:0") == kiln.device("cpu") == kiln.cpu(0)
    assert str(kiln.device("cpu:0")) == "cpu:0"
    monkeypatch.setenv("KILN_NUM_THREADS", "3")
    assert kiln.cpu(0).threads() == 3 and kiln.device("cpu:0").threads() == 3
    assert kiln.cpu(0, num_threads=2).threads() == 2  # an explicit count wins
    monkeypatch.setenv("KILN_NUM_THREADS", "many")
    with pytest.raises(kiln.KilnError, match="KILN_NUM_THREADS"):
        kiln.cpu(0).threads()
    monkeypatch.delenv("KILN_NUM_THREADS")
    assert kiln.cpu(0).threads() == len(os.sched_getaffinity(0))

    expected = run(mlp_library, "default", m.inputs, kiln.cpu(0, num_threads=1))
    assert_matches_ort(expected, m.model, m.inputs)
    for dev in ["cpu:0", kiln.device("cpu:0", num_threads=2), kiln.cpu(0, num_threads=4)]:
        assert_identical(run(mlp_library, "default", m.inputs, dev), expected)


def test_profile(mlp_library: kiln.Library, tmp_path: Path) -> None:
    m = imported("mlp")
    gmod = kiln.GraphModule(mlp_library["default"](kiln.cpu(0)))
    gmod.set_input(**m.inputs)
    rows = gmod.profile(repeat=3)
    kernels = mlp_library.manifest["models"]["default"]["kernels"]
    assert len(rows) == len(kernels) > 1
    for row, k in zip(rows, kernels, strict=True):
        assert row["kernel"] == k["label"] and row["kernel"]
        assert row["shapes"] == k["shapes"]
        assert row["node"] == k["node"]
        assert isinstance(row["ms"], float) and row["ms"] >= 0
    labels = " ".join(r["kernel"] for r in rows)
    assert "gemm" in labels and "softmax" in labels, labels
    assert rows[-1]["shapes"] == [[2, 10]]
    gmod.run()
    assert_matches_ort(outputs(gmod), m.model, m.inputs)

    aot = kiln.load_module(build("mlp", executor="aot").export_library(tmp_path / "aot.so"))
    with pytest.raises(kiln.KilnError, match="graph executor"):
        kiln.GraphModule(aot["default"](kiln.cpu(0))).profile()
