"""KILN_DUMP, build(dump=...) and `kiln compile --dump`: one file per pipeline step, in order,
for the e2e ResNet-style model; the C files are the manifest's kernels."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import kiln
from kiln.cli import main
from kiln.pipeline import PASSES, STEPS
from tests.e2e.models import mlp, resnet18_like

# The layout kiln/dump.py documents: the import IR, then one file per step of STEPS (IR
# text for the IR passes and the partition step, which replaces regions in the IR).
IR_STEPS = {*dict(PASSES), "partition"}
STEP_FILES = ["00-import.ir", *(f"{k:02d}-{s.name}.{'ir' if s.name in IR_STEPS else 'txt'}"
                                for k, s in enumerate(STEPS, start=1))]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under folder by relative path (c/ included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _step(folder: Path, name: str) -> str:
    """The text of step name's numbered file."""
    (path,) = folder.glob(f"[0-9][0-9]-{name}.*")
    return path.read_text()


def _ops(ir_text: str) -> set[str]:
    return set(re.findall(r"= (\w+)\(", ir_text))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> dict:
    """The ResNet-style model built once with $KILN_DUMP set: its dump folder and manifest."""
    root = tmp_path_factory.mktemp("dump")
    stale = root / "default"
    (stale / "c").mkdir(parents=True)
    for name in ("42-old_step.txt", "c/kiln_old_0000.c", "notes.md"):
        (stale / name).write_text("from an earlier dump")
    model, inputs = resnet18_like()
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_DUMP", str(root))
        factory = kiln.build(mod, params=params, progress=False)
    return {"model": model, "folder": root / "default",
            "spec": factory.compiled["default"].spec}


def test_one_file_per_step_in_pipeline_order(resnet):
    folder = resnet["folder"]
    numbered = sorted(p.name for p in folder.glob("[0-9][0-9]-*"))
    assert numbered == STEP_FILES  # what an earlier dump left is gone
    assert [n[3:].split(".")[0] for n in numbered[1:]] == [s.name for s in STEPS]
    assert resnet["spec"]["build"]["passes"] == [s.name for s in STEPS]
    assert (folder / "notes.md").exists()  # files the dump did not write are left alone


def test_ir_files_show_what_each_pass_did(resnet):
    folder = resnet["folder"]
    imported = (folder / "00-import.ir").read_text()
    assert imported.startswith("module @default {")
    assert "batch_norm" in _ops(imported)
    after = _ops(_step(folder, "fold_batch_norm"))
    assert "batch_norm" not in after and "conv" in after
    assert _step(folder, PASSES[-1][0]) == resnet["spec"]["ir"]  # what was compiled


def test_groups_plan_and_kernels_match_the_manifest(resnet):
    folder, spec = resnet["folder"], resnet["spec"]
    kernels = spec["kernels"]
    groups = _step(folder, "fuse")
    assert groups.startswith(f"{len(kernels)} kernel groups")
    assert all(f"group {k}: {c['label']}\n" in groups for k, c in enumerate(kernels))
    assert "epilogue  relu" in groups
    plan = _step(folder, "plan_memory")
    assert plan.startswith(f"arena {spec['arena_bytes']} bytes at peak")
    assert len(plan.splitlines()) >= 4 + len(spec["memory"]["buffers"])
    listing = _step(folder, "render")
    assert all(f"{c['func']}: {c['label']}" in listing for c in kernels)
    sources = {p.stem: p.read_text() for p in (folder / "c").glob("*.c")}
    assert set(sources) == {c["func"] for c in kernels}
    assert all(f"void {name}(void* const* args)" in text for name, text in sources.items())
    objects = _step(folder, "compile")
    assert all(f"{name}.o" in objects for name in sources)


def test_kiln_compile_dump_writes_the_same(resnet, tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_DUMP", raising=False)
    onnx.save(resnet["model"], tmp_path / "resnet.onnx")
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "resnet.onnx"), "-o",
                                       str(tmp_path / "m.so"), "--dump", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    expected = {k: v for k, v in _files(resnet["folder"]).items() if k != "notes.md"}
    assert _files(tmp_path / "d" / "default") == expected


def test_aot_entry_and_several_models_get_their_folders(tmp_path):
    model, _ = mlp()
    mod, params = kiln.from_onnx(model)
    factory = kiln.build({"a": mod, "../b": mod}, params=params, executor="aot",
                         progress=False, dump=tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["_b", "a"]
    spec = factory.compiled["a"].spec
    c_files = {p.stem for p in (tmp_path / "d" / "a" / "c").glob("*.c")}
    assert c_files == {spec["entry"], *(k["func"] for k in spec["kernels"])}
    assert f"entry point {spec['entry']}" in _step(tmp_path / "d" / "a", "render")


def test_a_folder_that_cannot_be_made_is_a_kiln_error(tmp_path):
    (tmp_path / "file").write_text("")
    model, _ = mlp()
    mod, params = kiln.from_onnx(model)
    with pytest.raises(kiln.ExportError, match="cannot write the dump folder"):
        kiln.build(mod, params=params, progress=False, dump=tmp_path / "file")
