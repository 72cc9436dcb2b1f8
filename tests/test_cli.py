"""The kiln command line: compile, run (with profile, threads, weights apart), inspect; bad
option values are usage errors; $KILN_VERIFY."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kiln
import kiln.pipeline
from kiln.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example_cnn.onnx"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cnn.so"
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "kernels" in result.output
    return out


def test_run_writes_outputs_and_profiles(compiled, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(main, ["run", str(compiled), "-i", f"image={tmp_path / 'x.npy'}",
                                       "-o", str(out), "--profile", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "conv+relu" in result.output and "ms" in result.output
    gmod = kiln.GraphModule(kiln.load_module(compiled)["default"](kiln.cpu(0)))
    gmod.run(image=x)
    np.testing.assert_array_equal(np.load(out)["scores"], gmod.get_output(0))


def test_inspect_json_reports_models_and_memory(compiled):
    result = CliRunner().invoke(main, ["inspect", str(compiled), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    model = info["models"]["default"]
    assert model["inputs"][0]["name"] == "image"
    assert model["kernels"] == sum(model["ops"].values())
    assert 0 < model["memory_peak_bytes"] <= model["memory_unplanned_bytes"]
    assert info["format_version"] == "1.0"


def test_aot_with_weights_apart(tmp_path):
    runner = CliRunner()
    weights = str(tmp_path / "w.safetensors")
    result = runner.invoke(main, ["compile", str(EXAMPLE), "-o", str(tmp_path / "lib"),
                                  "--executor", "aot", "--params-out", weights])
    assert result.exit_code == 0, result.output
    lib = tmp_path / "lib" / "default.so"
    missing = runner.invoke(main, ["run", str(lib)])
    assert missing.exit_code == 1 and "load_params" in missing.output
    ok = runner.invoke(main, ["run", str(lib), "--params", str(tmp_path / "w.safetensors")])
    assert ok.exit_code == 0, ok.output
    prof = runner.invoke(main, ["run", str(lib), "--params", str(tmp_path / "w.safetensors"),
                                "--profile"])
    assert prof.exit_code == 1 and "graph executor" in prof.output


def test_errors_exit_nonzero_with_a_message(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = runner.invoke(main, ["compile", str(bad), "-o", str(tmp_path / "m.so")])
    assert result.exit_code == 1 and "cannot read ONNX model" in result.output
    result = runner.invoke(main, ["compile", str(EXAMPLE), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "unknown suffix" in result.output
    result = runner.invoke(main, ["compile", str(EXAMPLE), "-i", "image-1x3", "-o", "m.so"])
    assert result.exit_code == 2 and "NAME:DIMxDIM" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_inspect_a_library_with_weights_apart(tmp_path):
    runner = CliRunner()
    lib = tmp_path / "apart.so"
    result = runner.invoke(main, ["compile", str(EXAMPLE), "-o", str(lib), "--params-out",
                                  str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(lib), "--json"])
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)["models"]["default"]
    weights = kiln.load_params(tmp_path / "w.safetensors")
    assert model["params_packaged"] is False and model["params"] == len(weights)
    assert model["param_bytes"] == sum(w.nbytes for w in weights.values())
    result = runner.invoke(main, ["inspect", str(lib)])
    assert result.exit_code == 0 and "not in the file" in result.output, result.output


@pytest.mark.parametrize("command,args,accepted", [
    ("compile", ["--dtype", "foo"], "float32"),
    ("compile", ["--dtype", "image:float33"], "float32"),
    ("compile", ["-i", "image:1x-3"], "NAME:DIMxDIM"),
    ("compile", ["-i", "image:1xthree"], "NAME:DIMxDIM"),
    ("compile", ["--executor", "jit"], "'graph', 'aot'"),
    ("run", ["--seed", "-1"], "x>=0"),
    ("run", ["--repeat", "0"], "x>=1"),
    ("run", ["--threads", "0"], "x>=1"),
    ("run", ["-i", "image"], "NAME=FILE.npy"),
    ("run", ["-i", "image=missing.npy"], "No such file"),
])
def test_bad_option_values_are_usage_errors_naming_what_is_accepted(compiled, tmp_path, command,
                                                                     args, accepted):
    target = [str(EXAMPLE), "-o", str(tmp_path / "m.so")] if command == "compile" \
        else [str(compiled)]
    result = CliRunner().invoke(main, [command, *target, *args])
    assert result.exit_code == 2 and accepted in result.output, result.output
    assert not (tmp_path / "m.so").exists()


def test_npz_and_non_npy_inputs_are_usage_errors(compiled, tmp_path):
    np.savez(tmp_path / "x.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    (tmp_path / "x.npy").write_bytes(b"not an array")
    for path, message in [(tmp_path / "x.npz", "several arrays"), (tmp_path / "x.npy",
                                                                    "not a .npy file")]:
        result = CliRunner().invoke(main, ["run", str(compiled), "-i", f"image={path}"])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("value,on", [
    ("1", True), ("true", True), ("YES", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False), (" 0 ", False),
])
def test_kiln_verify_values(monkeypatch, value, on):
    monkeypatch.setenv("KILN_VERIFY", value)
    assert kiln.pipeline.verify_between_passes() is on


def test_kiln_verify_0_turns_verification_off(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(kiln.pipeline, "verify", checked.append)
    monkeypatch.setenv("KILN_VERIFY", "0")
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE), "-o", str(tmp_path / "m.so")])
    assert result.exit_code == 0 and checked == [], result.output
    monkeypatch.setenv("KILN_VERIFY", "1")
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE), "-o", str(tmp_path / "m.so")])
    assert result.exit_code == 0 and len(checked) == len(kiln.pipeline.PASSES), result.output
    monkeypatch.setenv("KILN_VERIFY", "maybe")
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE), "-o", str(tmp_path / "m.so")])
    assert result.exit_code == 1 and "KILN_VERIFY='maybe'" in result.output, result.output
