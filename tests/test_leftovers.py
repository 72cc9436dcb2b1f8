"""No leftovers: temp files and work folders go away on failure, and what a killed export left
is removed by the next export (never what a live process is still writing)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.render import KernelSource
from kiln.codegen.toolchain import compile_kernels
from kiln.runtime import files
from tests.util import single_node_model

# Exports argv[2] to argv[3], blocked (then killed by the test) where argv[1] says: "link"
# (inside the link step's work folder) or "rename" (the library written beside the target,
# not yet renamed onto it).
EXPORT_AND_BLOCK = """
import os, subprocess, sys, time
import kiln

def block(*args, **kwargs):
    print("blocked", flush=True)
    time.sleep(600)

real_run = subprocess.run

def run_blocking_the_link(cmd, **kwargs):
    return block() if "-shared" in cmd else real_run(cmd, **kwargs)

mod, params = kiln.from_onnx(sys.argv[2])
lib = kiln.build(mod, params=params, progress=False)
if sys.argv[1] == "link":
    subprocess.run = run_blocking_the_link
else:
    os.replace = block
lib.export_library(sys.argv[3])
"""


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """A system temp folder of this test's own (for work folders), shared with its children."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    return root


@pytest.fixture
def model(tmp_path):
    x = np.ones((2, 3), np.float32)
    path = tmp_path / "relu.onnx"
    path.write_bytes(single_node_model("Relu", {"x": x}, opset=13).SerializeToString())
    return path


def _blocked_export(where: str, model: Path, out: Path) -> subprocess.Popen:
    """A child process exporting model to out, blocked at `where` (see EXPORT_AND_BLOCK)."""
    child = subprocess.Popen([sys.executable, "-c", EXPORT_AND_BLOCK, where, str(model), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    line = child.stdout.readline()
    if line.strip() != "blocked":
        child.kill()
        pytest.fail(f"the exporting child did not block at {where}: {child.stderr.read()}")
    return child


def _kill(child: subprocess.Popen) -> None:
    child.kill()  # SIGKILL: no finally block, no context manager exit runs
    child.wait()
    child.stdout.close()
    child.stderr.close()


def test_next_export_removes_what_a_killed_export_left(tmp_path, temp_root, model):
    out = tmp_path / "out"
    out.mkdir()
    live = _blocked_export("rename", model, out / "m.so")
    try:
        for where in ("rename", "link"):  # the link last: an export sweeps work folders
            _kill(_blocked_export(where, model, out / "m.so"))
        work_root = temp_root / f"kiln-{os.getuid()}"
        assert len(list(work_root.iterdir())) == 1  # the killed link's work folder
        temps = sorted(out.glob(".m.so.kiln-*.tmp"))
        assert len(temps) == 2 and not (out / "m.so").exists()
        live_temp = next(p for p in temps if f"-{live.pid}-" in p.name)

        mod, params = kiln.from_onnx(str(model))
        kiln.build(mod, params=params, progress=False).export_library(out / "m.so")
        assert sorted(out.iterdir()) == sorted([live_temp, out / "m.so"])
        assert list(work_root.iterdir()) == []
    finally:
        _kill(live)


def _temp_file(folder: Path, host: str, pid: int, age_s: float = 0) -> Path:
    """A file named as an atomic write's temp file of process pid on host, age_s old."""
    path = folder / f".x.so.kiln-{host}-{pid}-{secrets.token_hex(6)}.tmp"
    path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_stale_means_dead_here_or_untouched_for_an_hour(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = _temp_file(tmp_path, files._HOST, gone.pid)
    reused = _temp_file(tmp_path, files._HOST, os.getpid(), age_s=files.STALE_AFTER_S + 60)
    alive = _temp_file(tmp_path, files._HOST, os.getpid(), age_s=files.STALE_AFTER_S - 60)
    elsewhere = _temp_file(tmp_path, "0badc0de", gone.pid)  # another host's pids mean nothing
    user_file = tmp_path / ".x.so.notes.tmp"
    user_file.write_bytes(b"")
    files.atomic_write(tmp_path / "y.bin", b"data")
    assert not dead.exists() and not reused.exists()
    assert alive.exists() and elsewhere.exists() and user_file.exists()


def test_failed_compile_and_link_leave_nothing(tmp_path, temp_root, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    model = single_node_model("Relu", {"x": np.ones(4, np.float32)}, opset=13)
    mod, params = kiln.from_onnx(model)
    lib = kiln.build(mod, params=params, progress=False)
    with pytest.raises(kiln.CompileError, match="compiling kernel broken"):
        compile_kernels([KernelSource("broken", "this is not C")], lib.target, progress=False)
    lib.target = dataclasses.replace(lib.target, cflags=(*lib.target.cflags, "-Wl,--no-such"))
    with pytest.raises(kiln.CompileError, match="linking the library failed"):
        lib.export_library(tmp_path / "m.so")
    assert list((tmp_path / "cache" / "obj").glob(".*")) == []
    assert not (tmp_path / "m.so").exists() and not list(tmp_path.glob(".*.tmp"))
    assert list((temp_root / f"kiln-{os.getuid()}").iterdir()) == []


def test_work_root_of_another_owner_or_mode_is_refused(temp_root):
    root = temp_root / f"kiln-{os.getuid()}"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    with pytest.raises(kiln.ExportError, match="not a private folder"), files.work_folder("x"):
        pass
