"""kiln project generate / kiln footprint: standalone C projects from MLF archives.

A hand-made archive of a fake model (y = 2x, C written by hand) tests the generator without
the compiler: archive hardening, exact float literals (NaN, inf, denormals), a self-test
that fails. A keyword-spotting-sized depthwise-separable CNN, compiled and exported by kiln,
tests real projects: on the host (against the Python runtime), with ASan/UBSan, for
aarch64 under qemu-aarch64, and for every Cortex-M board under qemu-system-arm. A test
skips, saying why, when a toolchain or emulator is missing (CI installs them).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto
from safetensors.numpy import save

import kiln
from kiln.cli import main as cli
from kiln.errors import ExportError, FormatError
from kiln.project import BOARDS, footprint, generate
from kiln.project.main_c import c_literal
from tests.e2e.models import ModelBuilder

FAKE_HEADER = """#ifndef KILN_FAKE_H
#define KILN_FAKE_H
#include <stdint.h>
#define KILN_FAKE_WORKSPACE_SIZE 64u
#define KILN_FAKE_WORKSPACE_ALIGN 64u
#define KILN_FAKE_NUM_INPUTS 1u
#define KILN_FAKE_NUM_OUTPUTS 1u
struct kiln_fake_inputs { const float* x; };
struct kiln_fake_outputs { float* y; };
int kiln_fake_run(const struct kiln_fake_inputs* inputs, struct kiln_fake_outputs* outputs,
    void* workspace);
#endif
"""
FAKE_SOURCE = """#include <stdint.h>
#include "kiln_fake.h"
#include "kiln_runtime.h"
int kiln_fake_run(const struct kiln_fake_inputs* inputs, struct kiln_fake_outputs* outputs,
    void* workspace) {
    float* ws = (float*)workspace;
    if (ws == 0 || (uintptr_t)ws % 64 != 0) return 1;
    for (int i = 0; i < 6; ++i) ws[i] = inputs->x[i];
    for (int i = 0; i < 6; ++i) outputs->y[i] = kiln_twice(ws[i]);
    return 0;
}
"""
FAKE_RUNTIME_H = "float kiln_twice(float v);\n"
FAKE_RUNTIME_C = '#include "kiln_runtime.h"\nfloat kiln_twice(float v) { return 2.0f * v; }\n'
FAKE_X = np.array([1.5, -0.0, 3.4028235e38, np.nan, -np.inf, 1e-40], np.float32)


def fake_metadata(*, selftest: bool) -> dict:
    """metadata.json of the fake model (version 1)."""
    tensor = {"shape": [2, 3], "dtype": "float32", "bytes": 24, "offset": 0}
    files = {"header": "codegen/host/include/kiln_fake.h",
             "source": "codegen/host/src/kiln_fake.c",
             "params": "codegen/host/src/kiln_fake_params.c",
             "entry": "codegen/host/src/kiln_aot_0.c"}
    if selftest:
        files["selftest"] = "selftest/fake.safetensors"
    model = {"name": "fake", "prefix": "kiln_fake", "executor": "aot", "entry": "kiln_aot_0",
             "inputs": [{"name": "x:0", "c_name": "x", **tensor}],
             "outputs": [{"name": "y", "c_name": "y", **tensor}],
             "memory": {"workspace_bytes": 64, "arena_bytes": 64, "constant_bytes": 0,
                        "io_bytes": 48, "scratch_offset": 64, "scratch_bytes": 0},
             "kernels": [], "params": [], "files": files,
             "selftest": {"vectors": 1, "tolerance": {"rtol": 1e-4, "atol": 1e-5}}
             if selftest else None}
    return {"format": "kiln-mlf", "version": 1, "kiln_version": "0.1.0", "target": {},
            "models": {"fake": model},
            "runtime": ["runtime/include/kiln_runtime.h", "runtime/src/kiln_runtime.c"]}


def write_tar(path: Path, members: dict[str, bytes], *, extra=()) -> Path:
    """A tar of members (name -> bytes) plus extra TarInfo members (links...)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def fake_members(*, selftest: bool = True, expected=None) -> dict[str, bytes]:
    """The fake archive's members; expected replaces the self-test's expected output."""
    members = {
        "metadata.json": json.dumps(fake_metadata(selftest=selftest)).encode(),
        "codegen/host/include/kiln_fake.h": FAKE_HEADER.encode(),
        "codegen/host/src/kiln_fake.c": FAKE_SOURCE.encode(),
        "codegen/host/src/kiln_fake_params.c": b"/* no weights */\ntypedef int kiln_none;\n",
        "codegen/host/src/kiln_aot_0.c": b"/* no kernels */\ntypedef int kiln_none2;\n",
        "runtime/include/kiln_runtime.h": FAKE_RUNTIME_H.encode(),
        "runtime/src/kiln_runtime.c": FAKE_RUNTIME_C.encode(),
    }
    if selftest:
        x = FAKE_X.reshape(2, 3)
        with np.errstate(over="ignore"):  # 2 * FLT_MAX: inf, as in C
            y = (2 * x).astype(np.float32) if expected is None else expected
        members["selftest/fake.safetensors"] = save({"input.0.x:0": x, "output.0.0": y})
    return members


def kws_cnn() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A DS-CNN keyword spotter: 1x1x49x10 MFCCs, a 10x4 stride-2 conv, 4 depthwise-separable
    blocks of 48 channels, global average pool, 12 classes (about 50 KB of weights)."""
    g, c = ModelBuilder(seed=49), 48
    g.scope = "/conv1"
    w = g.const(g.normal((c, 1, 10, 4), np.sqrt(2.0 / 40)), "weight")
    y = g.op("Conv", "mfcc", w, g.const(g.normal(c, 0.1), "bias"), kernel_shape=[10, 4],
             strides=[2, 2], pads=[4, 1, 5, 2])
    y = g.op("Relu", g.batch_norm(y, c))
    for block in range(4):
        g.scope = f"/block{block}"
        y = g.op("Relu", g.batch_norm(g.conv(y, c, c, 3, group=c), c))
        y = g.op("Relu", g.batch_norm(g.conv(y, c, c, 1), c))
    g.scope = "/fc"
    y = g.op("Flatten", g.op("GlobalAveragePool", y), axis=1)
    g.gemm(y, c, 12, out="logits")
    model = g.model("kws_ds_cnn", [("mfcc", TensorProto.FLOAT, [1, 1, 49, 10])],
                    [("logits", TensorProto.FLOAT, [1, 12])], opset=17)
    mfcc = np.random.default_rng(490).standard_normal((1, 1, 49, 10)).astype(np.float32)
    return model, {"mfcc": mfcc}



def require(*tools: str) -> None:
    """Skip the calling test unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc "
                    "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm "
                    "gcc-aarch64-linux-gnu qemu-user)")


def make(project: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """make -C project args (-j2), stdout and stderr captured as text."""
    return subprocess.run(["make", "-s", "-C", str(project), "-j2", *args],
                          capture_output=True, text=True, timeout=timeout)


def printed_outputs(stdout: str) -> dict[int, np.ndarray]:
    """The `output <i>: v...` lines main.c prints, as float arrays."""
    found = re.findall(r"^output (\d+):(.*)$", stdout, re.MULTILINE)
    return {int(i): np.array(values.split(), dtype=np.float64) for i, values in found}


@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    """(archive path, the Python runtime's outputs) of the KWS CNN, exported with its
    input as self-test vector."""
    model, inputs = kws_cnn()
    mod, params = kiln.from_onnx(model)
    lib = kiln.build(mod, params=params, progress=False)
    path = tmp_path_factory.mktemp("kws") / "kws.mlf.tar"
    lib.export_library(path, test_inputs=inputs)
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    gmod.set_input(**inputs)
    gmod.run()
    return path, [gmod.get_output(i) for i in range(len(gmod.output_names))]


@pytest.fixture
def fake(tmp_path):
    return write_tar(tmp_path / "fake.mlf.tar", fake_members())


# --- the generator alone (no compiler) -------------------------------------------------

def test_project_package_imports_nothing_of_the_compiler():
    code = ("import sys, kiln.project; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('kiln.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    allowed = ("kiln.project", "kiln.errors", "kiln._version", "kiln.runtime")
    assert [m for m in loaded if not m.startswith(allowed)] == []


@pytest.mark.parametrize("value", [0.1, -0.0, 1e-40, 3.4028235e38, 1.0, 16777217.0, 7e-46])
def test_float_literals_round_trip(value):
    text = c_literal(np.float32(value), "float32")
    assert text.endswith("f") and float(np.float32(text[:-1])) == float(np.float32(value))
    assert c_literal(np.float32("nan"), "float32") == "NAN"
    assert c_literal(-np.inf, "float64") == "-INFINITY"
    assert c_literal(-(1 << 63), "int64") == "(-INT64_C(9223372036854775807) - 1)"


def _info(name: str, kind=tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, "metadata.json"
    return info


@pytest.mark.parametrize("extra, message", [
    (_info("../x"), "'../x' has an unsafe path"),
    (_info("/etc/x"), "'/etc/x' has an unsafe path"),
    (_info("codegen/host/src/evil.c", tarfile.SYMTYPE), "'codegen/host/src/evil.c' is a link"),
    (_info("src/hard.ir", tarfile.LNKTYPE), "is a link"),
    (_info("dev", tarfile.CHRTYPE), "is a special file"),
])
def test_unsafe_members_refuse_the_archive(tmp_path, extra, message):
    path = write_tar(tmp_path / "bad.mlf.tar", fake_members(), extra=[extra])
    with pytest.raises(FormatError, match=re.escape(message)):
        generate(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_oversized_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("kiln.project.archive.MAX_MEMBER_BYTES", 100)
    with pytest.raises(FormatError, match=r"'[\w./]+' is \d+ bytes, over the 100-byte limit"):
        generate(write_tar(tmp_path / "a.mlf.tar", fake_members()), tmp_path / "out")


@pytest.mark.parametrize("field, value, message", [
    ("version", 2, "metadata.json: MLF version 2 is not supported (this kiln reads version 1)"),
    ("format", "tvm-mlf", "metadata.json: format is 'tvm-mlf', expected 'kiln-mlf'"),
])
def test_unknown_format_or_version_is_refused(tmp_path, field, value, message):
    members = fake_members()
    meta = json.loads(members["metadata.json"])
    members["metadata.json"] = json.dumps({**meta, field: value}).encode()
    path = write_tar(tmp_path / "v.mlf.tar", members)
    with pytest.raises(FormatError, match=re.escape(f"{path}: {message}")):
        generate(path, tmp_path / "out")


def test_bad_arguments_are_clear_errors(fake, tmp_path):
    with pytest.raises(ExportError, match="unknown board 'stm32'.*mps2-an386, mps2-an385"):
        generate(fake, tmp_path / "o", template="cortex-m", board="stm32")
    with pytest.raises(ExportError, match="unknown template 'zephyr'.*host, cortex-m"):
        generate(fake, tmp_path / "o", template="zephyr")
    with pytest.raises(ExportError, match="no model 'other': it holds fake"):
        generate(fake, tmp_path / "o", model="other")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ExportError, match="exists and is not empty"):
        generate(fake, tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.mlf.tar", "full"]


def test_unknown_members_are_skipped(tmp_path):
    members = {**fake_members(), "docs/readme.txt": b"added in a later minor version"}
    out = generate(write_tar(tmp_path / "a.mlf.tar", members), tmp_path / "out")
    assert not (out / "docs").exists() and (out / "main.c").is_file()


def test_cli_usage_errors(fake, tmp_path):
    result = CliRunner().invoke(cli, ["project", "generate", str(fake), "--template",
                                      "cortex-m", "--board", "stm32", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "mps2-an386" in result.output
    result = CliRunner().invoke(cli, ["project", "generate", str(fake), "--board",
                                      "mps2-an385", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "needs --template cortex-m" in result.output


# --- the fake model, built and run on the host ------------------------------------------

def test_fake_model_exact_special_values(fake, tmp_path):
    require("cc", "make")
    result = CliRunner().invoke(cli, ["project", "generate", str(fake), "-o",
                                      str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    run = make(tmp_path / "p", "run")
    assert run.returncode == 0, run.stdout + run.stderr
    with np.errstate(over="ignore"):
        want = 2 * FAKE_X  # float32: inf for 2 * FLT_MAX, a denormal stays exact
    np.testing.assert_array_equal(printed_outputs(run.stdout)[0].astype(np.float32), want)
    assert "max abs error: 0" in run.stdout


def test_failing_selftest_exits_nonzero(tmp_path):
    require("cc", "make")
    with np.errstate(over="ignore"):
        wrong = (2 * FAKE_X).reshape(2, 3)
    wrong[0, 0] += 1e-3  # beyond rtol 1e-4 * 3
    path = write_tar(tmp_path / "f.mlf.tar", fake_members(expected=wrong))
    run = make(generate(path, tmp_path / "p"), "run")
    assert run.returncode != 0
    assert "FAIL: 1 values out of tolerance" in run.stdout


def test_without_selftest_inputs_are_zeros_and_unchecked(tmp_path):
    require("cc", "make")
    path = write_tar(tmp_path / "n.mlf.tar", fake_members(selftest=False))
    run = make(generate(path, tmp_path / "p"), "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert printed_outputs(run.stdout)[0].tolist() == [0.0] * 6
    assert "not checked" in run.stdout


# --- the KWS CNN compiled by kiln --------------------------------------------------------

def test_host_project_matches_the_python_runtime(kws, tmp_path):
    require("cc", "make")
    path, want = kws
    run = make(generate(path, tmp_path / "p"), "run")
    assert run.returncode == 0, run.stdout + run.stderr
    got = printed_outputs(run.stdout)
    assert sorted(got) == list(range(len(want)))
    for k, w in enumerate(want):
        np.testing.assert_allclose(got[k], w.reshape(-1)[:64], rtol=1e-4, atol=1e-5)


def test_host_project_is_clean_under_asan_and_ubsan(kws, tmp_path):
    require("cc", "make")
    sanitize = "-fsanitize=address,undefined -fno-sanitize-recover=all"
    run = make(generate(kws[0], tmp_path / "p"), "run",
               f"CFLAGS=-std=c11 -O1 -g -Wall -Werror {sanitize}", f"LDFLAGS={sanitize}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "runtime error" not in run.stderr and "max abs error" in run.stdout


def test_project_cross_compiles_for_aarch64(kws, tmp_path):
    require("aarch64-linux-gnu-gcc", "qemu-aarch64", "make")
    run = make(generate(kws[0], tmp_path / "p"), "run", "CC=aarch64-linux-gnu-gcc",
               "RUNNER=qemu-aarch64 -L /usr/aarch64-linux-gnu")
    assert run.returncode == 0, run.stdout + run.stderr
    np.testing.assert_allclose(printed_outputs(run.stdout)[0], kws[1][0].reshape(-1)[:64],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("board", list(BOARDS))
def test_cortex_m_project_runs_under_qemu(kws, tmp_path, board):
    require("arm-none-eabi-gcc", "qemu-system-arm", "make")
    result = CliRunner().invoke(cli, ["project", "generate", str(kws[0]), "--template",
                                      "cortex-m", "--board", board, "-o", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    run = make(tmp_path / "p", "run", timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    np.testing.assert_allclose(printed_outputs(run.stdout)[0], kws[1][0].reshape(-1)[:64],
                               rtol=1e-4, atol=1e-5)


def test_footprint_is_plausible(kws):
    require("arm-none-eabi-gcc", "arm-none-eabi-size", "make")
    sizes = footprint(kws[0])
    meta, program, model = sizes["metadata"], sizes["program"], sizes["model"]
    print(f"\nKWS CNN on {sizes['board']}: workspace {meta['workspace']} B, constants "
          f"{meta['constant']} B, io {meta['io']} B; program flash {program['flash']} B, RAM "
          f"{program['ram']} B; model + runtime objects flash {model['flash']} B")
    assert 20_000 <= meta["constant"] <= 100_000  # a KWS-sized model, as built
    assert program["flash"] >= model["flash"] >= meta["constant"]
    assert program["ram"] >= meta["workspace"]
    assert program["flash"] < meta["constant"] + 200_000  # code + newlib, not a copy more


def test_footprint_cli_prints_a_table(fake):
    require("arm-none-eabi-gcc", "arm-none-eabi-size", "make")
    result = CliRunner().invoke(cli, ["footprint", str(fake), "--board", "mps2-an385"])
    assert result.exit_code == 0, result.output
    assert "model fake on mps2-an385" in result.output
    assert "workspace 64, constants 0" in result.output
