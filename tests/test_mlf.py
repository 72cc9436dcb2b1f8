"""The Model Library Format writer (kiln/export/mlf.py, docs/mlf.md).

Archives of the e2e models: their layout and metadata.json against docs/mlf.schema.json;
the C built as the spec promises (C11, -Wall -Wextra -Werror, no threads, no malloc) into a
small host program that runs the model through its C API and matches kiln's runtime;
several models in one archive; the run function's error codes; refusals (no C source,
no weights); the same build gives the same bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load

import kiln
from kiln.cli import main
from kiln.errors import ExportError
from kiln.export import mlf
from tests.e2e.models import MODELS
from tests.util import run_outputs

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "mlf.schema.json").read_text())
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]
# kiln's runtime (-march=native, FMA) against the archive built with plain -O2: the same
# sums in the same order, but multiply-adds contracted differently
RTOL, ATOL = 1e-4, 1e-5

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _build(names: list[str]) -> tuple[kiln.export.factory.FactoryModule, dict]:
    """The named e2e models built into one factory (one model: named 'default')."""
    mods, params, inputs = {}, {}, {}
    for name in names:
        model, feeds = MODELS[name]()
        key = name if len(names) > 1 else "default"
        mods[key], params[key] = kiln.from_onnx(model,
                                                shapes={k: v.shape for k, v in feeds.items()})
        inputs[key] = feeds
    return kiln.build(mods, model_params=params, progress=False), inputs


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


HARNESS = """#include <stdio.h>
#include <stdlib.h>
#include "kiln_{ident}.h"
_Alignas(64) static uint8_t workspace[KILN_{IDENT}_WORKSPACE_SIZE + 64];
static void* load(const char* path, size_t size) {{
    void* p = malloc(size ? size : 1);
    FILE* f = fopen(path, "rb");
    if (!f || fread(p, 1, size, f) != size) exit(3);
    fclose(f);
    return p;
}}
int main(int argc, char** argv) {{
    (void)argc;
    struct kiln_{ident}_inputs in;
    struct kiln_{ident}_outputs out;
{load}
    if (kiln_{ident}_run(&in, &out, workspace + 1) != 1) return 4; /* misaligned */
    if (kiln_{ident}_run(&in, &out, NULL) != 1) return 5;
    if (kiln_{ident}_run(NULL, &out, workspace) != 2) return 6;
    if (kiln_{ident}_run(&in, &out, workspace) != 0) return 7;
{save}
    return 0;
}}
"""


def _harness(entry: dict) -> str:
    """A host program: inputs from files argv[1..], outputs to files after them."""
    ident = entry["prefix"][len("kiln_"):]
    load, save = [], []
    for k, t in enumerate(entry["inputs"]):
        load.append(f"    in.{t['c_name']} = load(argv[{k + 1}], {t['bytes']});")
    first = len(entry["inputs"]) + 1
    for k, t in enumerate(entry["outputs"]):
        load.append(f"    out.{t['c_name']} = malloc({max(1, t['bytes'])});")
        save.append(f"    {{ FILE* f = fopen(argv[{first + k}], \"wb\"); "
                    f"fwrite(out.{t['c_name']}, 1, {t['bytes']}, f); fclose(f); }}")
    return HARNESS.format(ident=ident, IDENT=ident.upper(), load="\n".join(load),
                          save="\n".join(save))


# What the archive's code may not call: the heap, files, threads, signals, the process.
FORBIDDEN = re.compile(r"(malloc|calloc|realloc|free|aligned_alloc|posix_memalign|f?open|"
                       r"v?f?printf|fwrite|fread|puts|abort|exit|_exit|mmap|munmap|sigaction|"
                       r"signal|pthread_\w+|omp_\w+|GOMP_\w+)")


def _os_calls(work: Path, members: dict[str, bytes]) -> set[str]:
    """The forbidden functions the archive's C sources call (undefined in their objects)."""
    work.mkdir()
    for name, data in members.items():
        if name.endswith((".c", ".h")):
            (work / Path(name).name).write_bytes(data)
    sources = sorted(p.name for p in work.glob("*.c"))
    done = subprocess.run(["gcc", *CFLAGS, "-I.", "-c", *sources], cwd=work,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    nm = subprocess.run(["nm", "-u", *sorted(p.name for p in work.glob("*.o"))], cwd=work,
                        capture_output=True, text=True, check=True).stdout
    return {s for s in re.findall(r"\bU (\w+)", nm) if FORBIDDEN.fullmatch(s)}


def _compile(root: Path, extra: list[str], program: str = "model") -> Path:
    sources = sorted(str(p.relative_to(root)) for p in root.rglob("*.c"))
    cmd = ["gcc", *CFLAGS, "-Icodegen/host/include", "-Iruntime/include", *extra, *sources,
           "-o", program, "-lm"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / program


def _run_archive(archive: Path, work: Path, model: str, inputs: dict) -> list[np.ndarray]:
    """Build the archive with a harness for `model` and run it on inputs."""
    root = work / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    entry = json.loads((root / "metadata.json").read_text())["models"][model]
    (root / "main.c").write_text(_harness(entry))
    program = _compile(root, [])
    args = []
    for t in entry["inputs"]:
        path = work / f"in_{t['c_name']}.bin"
        path.write_bytes(np.ascontiguousarray(inputs[t["name"]]).tobytes())
        args.append(str(path))
    outs = [work / f"out_{t['c_name']}.bin" for t in entry["outputs"]]
    done = subprocess.run([str(program), *args, *map(str, outs)], capture_output=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    return [np.frombuffer(p.read_bytes(), dtype=t["dtype"]).reshape(t["shape"])
            for p, t in zip(outs, entry["outputs"], strict=True)]


@pytest.mark.parametrize("name", ["resnet18_like", "mobilenetv2_like", "bert_like",
                                  "detector_head", "mlp"])
def test_archive_builds_and_matches_the_runtime(name: str, tmp_path: Path) -> None:
    lib, inputs = _build([name])
    archive = Path(lib.export_library(tmp_path / "m.mlf.tar", test_inputs=inputs["default"]))
    members = _members(archive)
    metadata = json.loads(members["metadata.json"])
    jsonschema.validate(metadata, SCHEMA)
    entry = metadata["models"]["default"]
    listed = set(entry["files"].values()) | set(metadata["runtime"])
    listed |= {f"codegen/host/src/{k}.c" for k in entry["kernels"]}
    assert listed == set(members) - {"metadata.json"}  # every member is accounted for
    assert _os_calls(tmp_path / "objects", members) == set()
    weights = load(members[entry["files"]["safetensors"]])
    assert sorted(weights) == sorted(p["name"] for p in entry["params"])
    assert sum(a.nbytes for a in weights.values()) == entry["memory"]["constant_bytes"]
    selftest = load(members[entry["files"]["selftest"]])
    expected = run_outputs(lib, inputs["default"])
    got = _run_archive(archive, tmp_path, "default", inputs["default"])
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(selftest[f"output.0.{k}"], e)


def test_several_models_share_kernels_and_keep_their_symbols(tmp_path: Path) -> None:
    lib, inputs = _build(["mlp", "bert_like"])
    archive = Path(lib.export_library(tmp_path / "two.mlf.tar"))
    metadata = json.loads(_members(archive)["metadata.json"])
    jsonschema.validate(metadata, SCHEMA)
    assert sorted(metadata["models"]) == ["bert_like", "mlp"]
    assert {m["prefix"] for m in metadata["models"].values()} == {"kiln_bert_like", "kiln_mlp"}
    for name in ("mlp", "bert_like"):  # both link into one program (no symbol clashes)
        gmod = kiln.GraphModule(lib[name](kiln.cpu(0)))
        gmod.run(**inputs[name])
        expected = [gmod.get_output(i) for i in range(gmod.get_num_outputs())]
        got = _run_archive(archive, tmp_path / name, name, inputs[name])
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_same_build_same_bytes_and_the_cli_writes_one(tmp_path: Path) -> None:
    model, feeds = MODELS["mlp"]()
    onnx_path = tmp_path / "mlp.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    paths = [tmp_path / "a.mlf.tar", tmp_path / "b.mlf.tar"]
    for path in paths:
        done = CliRunner().invoke(main, ["compile", str(onnx_path), "-o", str(path),
                                         "--selftest"])
        assert done.exit_code == 0, done.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    metadata = json.loads(_members(paths[0])["metadata.json"])
    assert metadata["models"]["default"]["selftest"] == {"vectors": 1,
                                                         "tolerance": mlf.TOLERANCE}


def test_a_kernel_without_c_source_cannot_be_expressed(tmp_path: Path) -> None:
    lib, _ = _build(["mlp"])
    model = lib.compiled["default"]
    func = model.spec["kernels"][0]["func"]
    del model.sources[func]  # as a part handed to an external engine would be
    out = tmp_path / "m.mlf.tar"
    with pytest.raises(ExportError, match=f"model 'default' kernel '{func}'.*no C source"):
        lib.export_library(out)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_an_archive_always_holds_the_weights(tmp_path: Path) -> None:
    lib, _ = _build(["mlp"])
    with pytest.raises(ExportError, match="without the weights"):
        lib.export_library(tmp_path / "m.mlf.tar", package_params=False)


def test_c_identifiers_are_unique_case_blind() -> None:
    taken: set[str] = set()
    names = [mlf.c_identifier(n, taken) for n in ["x", "X", "1st", "a.b", "a-b", ""]]
    assert names == ["x", "X_1", "_1st", "a_b", "a_b_1", "_"]
