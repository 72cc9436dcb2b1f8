"""Self-test vectors: embedded by export_library(test_inputs=...) or `kiln compile --selftest`,
run by Library.selftest and `kiln selftest`; a forged expected output must be caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kiln
from kiln.cli import main
from kiln.export.factory import FactoryModule
from kiln.runtime.blob import HEADER, SECTION
from kiln.runtime.elf import read_elf
from tests.e2e.models import MODELS
from tests.util import reseal_library, single_node_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example_cnn.onnx"


def _mlp(name: str = "default") -> tuple[FactoryModule, np.ndarray]:
    model, inputs = MODELS["mlp"]()
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    return kiln.build({name: mod}, params=params, progress=False), inputs["input"]


@pytest.fixture(scope="module")
def mlp():
    """The e2e MLP (input float32[2, 1, 28, 28] -> probs float32[2, 10]) and two input sets."""
    factory, x0 = _mlp()
    x1 = np.random.default_rng(1).standard_normal(x0.shape).astype(np.float32)
    return factory, [{"input": x0}, {"input": x1}]


@pytest.fixture(scope="module")
def bundle():
    """Two models in one factory: the MLP ("mlp") and an int32 Add of two inputs ("add")."""
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    model = single_node_model("Add", {"a": a, "b": a}, opset=17)
    mod, params = kiln.from_onnx(model)
    add = kiln.build({"add": mod}, params=params, progress=False)
    mlp, x = _mlp("mlp")
    return kiln.link([mlp, add]), {"mlp": {"input": x},
                                   "add": [{"a": a, "b": a}, {"a": a, "b": -3 * a}]}


def selftest_cli(*args: str):
    return CliRunner().invoke(main, ["selftest", *map(str, args)])


def test_vectors_are_embedded_and_pass(mlp, tmp_path):
    factory, sets = mlp
    lib = kiln.load_module(factory.export_library(tmp_path / "m.so", test_inputs=sets))
    vectors = lib.manifest["models"]["default"]["selftest"]
    assert len(vectors) == 2
    for vector, feeds in zip(vectors, sets, strict=True):
        assert vector["rtol"] == 1e-5 and vector["atol"] == 1e-6
        entry = vector["inputs"]["input"]
        assert (entry["shape"], entry["dtype"]) == ([2, 1, 28, 28], "float32")
        assert bytes(lib.blob.weight(entry["weight"])) == feeds["input"].tobytes()
        (out,) = vector["outputs"]
        assert (out["name"], out["shape"], out["dtype"]) == ("probs", [2, 10], "float32")
        gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
        gmod.run(**feeds)
        assert bytes(lib.blob.weight(out["weight"])) == gmod.get_output(0).tobytes()

    rows = lib.selftest()
    assert [(r["model"], r["index"], r["passed"]) for r in rows] == \
        [("default", 0, True), ("default", 1, True)]
    # Same binary, same machine: bitwise equal.
    assert all(r["max_abs_error"] == 0.0 and r["outputs"][0]["mismatched"] == 0 for r in rows)

    result = selftest_cli(tmp_path / "m.so")
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS") == 2 and "passed: all 2 vectors" in result.output


def test_identical_arrays_are_stored_once(mlp, tmp_path):
    factory, sets = mlp
    lib = kiln.load_module(factory.export_library(tmp_path / "m.so",
                                                  test_inputs=[sets[0], sets[0]]))
    first, second = lib.manifest["models"]["default"]["selftest"]
    assert first == second
    params = len(lib.manifest["models"]["default"]["params"])
    assert len(lib.manifest["weights"]) <= params + 2  # one input and one output region


def test_two_model_library(bundle, tmp_path):
    factory, test_inputs = bundle
    lib = kiln.load_module(factory.export_library(tmp_path / "both.so", test_inputs=test_inputs))
    rows = lib.selftest()
    assert [(r["model"], r["index"], r["passed"]) for r in rows] == \
        [("add", 0, True), ("add", 1, True), ("mlp", 0, True)]
    assert [r["index"] for r in lib.selftest(models=["add"])] == [0, 1]
    result = selftest_cli(tmp_path / "both.so", "--model", "mlp")
    assert result.exit_code == 0 and "passed: all 1 vectors" in result.output, result.output


def _alter_expected_output(path: Path, vector: int, element: int, delta: float) -> None:
    """Add delta to one element of a vector's expected output; re-seal so the file loads."""
    def edit(blob: bytearray, layout) -> None:
        out = layout.manifest["models"]["default"]["selftest"][vector]["outputs"][0]
        where = layout.region(out["weight"])
        values = np.frombuffer(bytes(blob[where]), dtype=np.float32).copy()
        values[element] += delta
        blob[where] = values.tobytes()

    reseal_library(path, edit)


def test_altered_expected_output_is_caught(mlp, tmp_path):
    factory, sets = mlp
    path = Path(factory.export_library(tmp_path / "m.so", test_inputs=sets))
    _alter_expected_output(path, vector=1, element=13, delta=0.5)

    lib = kiln.load_module(path)  # the digests match: only the self-test can tell
    first, second = lib.selftest()
    assert first["passed"] and not second["passed"]
    (detail,) = second["outputs"]
    assert (detail["name"], detail["mismatched"], detail["size"]) == ("probs", 1, 20)
    assert detail["worst_index"] == [1, 3]
    assert second["max_abs_error"] == pytest.approx(0.5, rel=1e-6)

    result = selftest_cli(path)
    assert result.exit_code == 1
    assert "FAIL model 'default' vector 1: output 'probs' has 1 of 20 values" in result.output
    assert "at index [1, 3]" in result.output
    assert "selftest FAILED: 1 of 2 vectors failed" in result.output


def test_reseal_library_is_faithful_and_needed(mlp, tmp_path):
    """A no-op edit leaves the file as it was; an edit without re-sealing is refused."""
    factory, sets = mlp
    path = Path(factory.export_library(tmp_path / "m.so", test_inputs=sets))
    original = path.read_bytes()
    reseal_library(path, lambda blob, layout: None)
    assert path.read_bytes() == original

    section = read_elf(memoryview(original), str(path)).sections[SECTION]
    weights_offset = HEADER.unpack_from(original, section.offset)[6]
    manifest = kiln.load_module(path).manifest
    region = manifest["weights"][manifest["models"]["default"]["selftest"][0]["outputs"][0]
                                 ["weight"]]
    damaged = bytearray(original)
    damaged[section.offset + weights_offset + region["offset"]] ^= 1
    (tmp_path / "damaged.so").write_bytes(damaged)
    with pytest.raises(kiln.FormatError, match="weights digest mismatch"):
        kiln.load_module(tmp_path / "damaged.so")


def test_a_vector_not_matching_its_bytes_is_a_format_error(mlp, tmp_path):
    factory, sets = mlp
    path = Path(factory.export_library(tmp_path / "m.so", test_inputs=sets[:1]))

    def edit(blob: bytearray, layout) -> None:  # the input's dtype: float32 -> float64
        start = blob.index(b'"selftest"', layout.manifest_offset)
        at = blob.index(b'"dtype":"float32"', start)
        blob[at:at + 17] = b'"dtype":"float64"'

    reseal_library(path, edit)
    lib = kiln.load_module(path)
    assert lib.manifest["models"]["default"]["selftest"][0]["inputs"]["input"]["dtype"] == \
        "float64"
    with pytest.raises(kiln.FormatError, match="float64.*does not match its 6272-byte weight"):
        lib.selftest()
    result = selftest_cli(path)
    assert result.exit_code == 1 and "does not match" in result.output


def test_library_without_vectors(mlp, bundle, tmp_path):
    factory, _ = mlp
    lib = kiln.load_module(factory.export_library(tmp_path / "m.so"))
    assert "selftest" not in lib.manifest["models"]["default"]
    with pytest.raises(kiln.KilnError, match="no self-test vectors.*test_inputs="):
        lib.selftest()
    result = selftest_cli(tmp_path / "m.so")
    assert result.exit_code == 1 and "has no self-test vectors" in result.output

    both, test_inputs = bundle
    lib = kiln.load_module(both.export_library(tmp_path / "b.so",
                                               test_inputs={"add": test_inputs["add"]}))
    with pytest.raises(kiln.KilnError, match="model 'mlp' .* has no self-test vectors"):
        lib.selftest(models=["mlp"])
    with pytest.raises(kiln.KilnError, match="no model named 'nope'"):
        lib.selftest(models=["nope"])


X = np.zeros((2, 1, 28, 28), np.float32)


@pytest.mark.parametrize("test_inputs, message", [
    ({"image": X}, r"test_inputs\[0\] of model 'default': the model has no input\(s\) "
                   r"\['image'\]; its inputs are \['input'\]"),
    ([{"input": X}, {}], r"test_inputs\[1\] of model 'default': missing input\(s\) \['input'\]"),
    ({"input": X[:1]}, r"input 'input' is float32\[1, 1, 28, 28\], expected float32\[2, 1, 28"),
    ({"input": X.astype(np.float64)}, r"is float64\[2, 1, 28, 28\], expected float32"),
    ([X], r"test_inputs\[0\] of model 'default' must be a dict"),
    ("input", r"must be a dict \{input name: array\} or a list of such dicts, got str"),
])
def test_bad_test_inputs_raise_and_write_nothing(mlp, tmp_path, test_inputs, message):
    factory, _ = mlp
    with pytest.raises(kiln.InputError, match=message):
        factory.export_library(tmp_path / "lib", test_inputs=test_inputs)  # a directory
    with pytest.raises(kiln.InputError, match=message):
        factory.export_library(tmp_path / "m.so", test_inputs=test_inputs)
    assert not any(tmp_path.iterdir())


def test_bad_test_inputs_of_several_models(bundle, tmp_path):
    factory, test_inputs = bundle
    with pytest.raises(kiln.InputError, match=r"models \['nope'\] that are not in this factory"):
        factory.export_library(tmp_path / "b.so", test_inputs={"nope": test_inputs["add"]})
    with pytest.raises(kiln.InputError, match="several models must be {model name"):
        factory.export_library(tmp_path / "b.so", test_inputs=[test_inputs["mlp"]])
    bad = {"add": [test_inputs["add"][0], {"a": test_inputs["add"][0]["a"]}]}
    with pytest.raises(kiln.InputError, match=r"test_inputs\[1\] of model 'add': missing"):
        factory.export_library(tmp_path / "b.so", test_inputs=bad)
    assert not any(tmp_path.iterdir())


def test_library_without_packaged_params(mlp, tmp_path):
    factory, sets = mlp
    path = factory.export_library(tmp_path / "m.so", package_params=False, test_inputs=sets)
    weights = factory.export_params(tmp_path / "w.safetensors")
    lib = kiln.load_module(path)
    with pytest.raises(kiln.InputError, match=r"without its weights.*pass params="):
        lib.selftest()
    assert all(r["passed"] for r in lib.selftest(params=weights))
    assert all(r["passed"] for r in lib.selftest(params=kiln.load_params(weights)))

    result = selftest_cli(path)
    assert result.exit_code == 1 and "without its weights" in result.output
    result = selftest_cli(path, "--params", weights)
    assert result.exit_code == 0 and "passed: all 2 vectors" in result.output, result.output


def test_compile_selftest_embeds_what_kiln_run_feeds(tmp_path):
    runner = CliRunner()
    lib_path = tmp_path / "cnn.so"
    result = runner.invoke(main, ["compile", str(EXAMPLE), "-o", str(lib_path), "--selftest"])
    assert result.exit_code == 0, result.output
    assert "1 self-test vector" in result.output
    result = selftest_cli(lib_path)
    assert result.exit_code == 0 and "passed: all 1 vectors" in result.output, result.output

    # `kiln run` (default seed) feeds the embedded inputs, so it gives the embedded outputs.
    result = runner.invoke(main, ["run", str(lib_path), "-o", str(tmp_path / "out.npz")])
    assert result.exit_code == 0, result.output
    lib = kiln.load_module(lib_path)
    (out,) = lib.manifest["models"]["default"]["selftest"][0]["outputs"]
    assert bytes(lib.blob.weight(out["weight"])) == np.load(tmp_path / "out.npz")[out["name"]] \
        .tobytes()
