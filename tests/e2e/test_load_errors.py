"""Damaged, foreign and misused artifacts raise kiln errors that say what is wrong; never a crash.

Every bad file is also loaded in a subprocess loop, which must exit normally: the runtime
checks a file completely before the dynamic loader or any kernel sees it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.codegen.target import resolve_target
from kiln.runtime.blob import HEADER, SECTION
from kiln.runtime.elf import read_elf
from tests.e2e.models import ModelBuilder

pytestmark = pytest.mark.e2e


def small_model() -> onnx.ModelProto:
    """Relu(x * w + b) on [4, 8]: elementwise kernels plus a weights region."""
    g = ModelBuilder(seed=3)
    y = g.op("Add", g.op("Mul", "x", g.const(g.normal((4, 8), 1.0), "w")),
             g.const(g.normal(8, 1.0), "b"))
    g.op("Relu", y, out="y")
    return g.model("small", [("x", TensorProto.FLOAT, [4, 8])],
                   [("y", TensorProto.FLOAT, [4, 8])], opset=17)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A valid kiln library of small_model()."""
    mod, params = kiln.from_onnx(small_model())
    path = tmp_path_factory.mktemp("good") / "small.so"
    kiln.build(mod, params=params, progress=False).export_library(path)
    return path


def _flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]


def _blob_regions(data: bytes) -> dict[str, int]:
    """File offsets of the code (.text), the manifest and the weights of a kiln library."""
    sections = read_elf(memoryview(data), "library").sections
    blob = sections[SECTION].offset
    manifest, weights = (HEADER.unpack_from(data, blob)[k] for k in (4, 6))  # offsets
    return {"code": sections[".text"].offset + 16, "manifest": blob + manifest + 8,
            "weights": blob + weights + 4}


def bad_files(library: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (path of a bad artifact, regex the error message must match)."""
    data = library.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def write(name: str, content: bytes, pattern: str) -> None:
        path = root / f"{name}.so"
        path.write_bytes(content)
        files[name] = (path, pattern)

    for cut in (16, 63, 64, 1000, len(data) // 2, len(data) - 64, len(data) - 1):
        write(f"truncated_{cut}", data[:cut], r"not an ELF file|truncated|outside the file")
    write("random", np.random.default_rng(0).bytes(len(data)).replace(b"\x7fELF", b"xELF"),
          "not an ELF file")
    write("empty", b"", "is empty")
    write("text", b"this is not a library\n" * 100, "not an ELF file")
    for region, offset in _blob_regions(data).items():
        write(f"flipped_{region}", _flipped(data, offset), f"{region}.* digest mismatch")
    directory = root / "directory.so"
    directory.mkdir()
    files["directory"] = (directory, "is a directory")
    files["missing"] = (root / "missing.so", "not found")
    return files


@pytest.fixture(scope="module")
def foreign_library(tmp_path_factory) -> Path:
    """A regular shared library built with the C compiler: valid ELF, no kiln section."""
    work = tmp_path_factory.mktemp("foreign")
    (work / "plain.c").write_text("int answer(void) { return 42; }\n")
    cc = resolve_target().cc
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(work / "plain.so"), str(work / "plain.c")],
                   check=True)
    return work / "plain.so"


def test_bad_files_raise_format_errors(library: Path, tmp_path: Path) -> None:
    for name, (path, pattern) in bad_files(library, tmp_path).items():
        with pytest.raises(kiln.FormatError, match=pattern) as info:
            kiln.load_module(path)
        assert str(path) in str(info.value), f"{name}: message does not name the file"


def test_foreign_shared_library(foreign_library: Path) -> None:
    with pytest.raises(kiln.FormatError, match=r"not a kiln library \(no \.kiln section\)"):
        kiln.load_module(foreign_library)


# Loads each path of argv[1:] (a JSON list); prints "error <class>" per kiln error, or runs
# the model when a file loads (a flip in bytes no reader uses) and prints its output checksum.
LOADER = """
import json, sys
import numpy as np
import kiln

for path in json.loads(sys.argv[1]):
    try:
        lib = kiln.load_module(path)
        gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
        gmod.run(x=np.ones((4, 8), np.float32))
        print("loaded", float(gmod.get_output(0).sum()))
    except kiln.KilnError as e:
        print("error", type(e).__name__)
"""


def _run_loader(paths: list[Path]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps([str(p) for p in paths])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"loader exited with {done.returncode}:\n{done.stderr}"
    return done.stdout.splitlines()


def test_bad_files_never_crash_the_process(library: Path, foreign_library: Path,
                                           tmp_path: Path) -> None:
    paths = [p for p, _ in bad_files(library, tmp_path).values()] + [foreign_library]
    assert _run_loader(paths) == ["error FormatError"] * len(paths)


def test_random_byte_flips_never_crash_the_process(library: Path, tmp_path: Path) -> None:
    """Any single flipped byte is refused, or lands in unused bytes and changes nothing."""
    data = library.read_bytes()
    offsets = np.random.default_rng(1).choice(len(data), size=40, replace=False)
    paths = []
    for offset in sorted(offsets):
        paths.append(tmp_path / f"flip_{offset}.so")
        paths[-1].write_bytes(_flipped(data, int(offset)))
    lines = _run_loader([library, *paths])
    assert lines[0].startswith("loaded")
    for path, line in zip(paths, lines[1:], strict=True):
        assert line in ("error FormatError", lines[0]), f"{path.name}: {line}"


def _executor(library: Path) -> kiln.GraphModule:
    return kiln.GraphModule(kiln.load_module(library)["default"](kiln.cpu(0)))


def test_wrong_input_name(library: Path) -> None:
    with pytest.raises(kiln.InputError, match=r"no input 'image'.*\['x'\]"):
        _executor(library).set_input(image=np.zeros((4, 8), np.float32))


def test_wrong_input_shape(library: Path) -> None:
    with pytest.raises(kiln.InputError, match=r"'x'.*float32\[4, 9\].*expected float32\[4, 8\]"):
        _executor(library).set_input(x=np.zeros((4, 9), np.float32))


def test_wrong_input_dtype(library: Path) -> None:
    with pytest.raises(kiln.InputError, match=r"'x'.*float64\[4, 8\].*expected float32\[4, 8\]"):
        _executor(library).set_input("x", np.zeros((4, 8), np.float64))


def test_export_unknown_suffix(tmp_path: Path) -> None:
    mod, params = kiln.from_onnx(small_model())
    with pytest.raises(kiln.ExportError, match=r"'\.onnx'"):
        kiln.build(mod, params=params, progress=False).export_library(tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir()), "a failed export left files behind"


def test_missing_dynamic_dim() -> None:
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["pixels"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(kiln.ShapeError, match=r"input 'pixels' has dynamic dims \['batch'\]"):
        kiln.from_onnx(model)


def test_unsupported_ops_are_all_listed() -> None:
    """Two op types kiln cannot compile (data-dependent output shapes), reported together."""
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="dedup"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["keep"], name="nms"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["unique"]),
         helper.make_tensor_value_info("keep", TensorProto.INT64, ["kept", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(kiln.UnsupportedOpError) as info:
        kiln.from_onnx(model)
    message = str(info.value)
    for expected in ("dedup (Unique)", "nms (NonMaxSuppression)"):
        assert expected in message, message
