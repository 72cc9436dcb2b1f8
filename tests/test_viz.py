"""kiln viz: the HTML page of a library (one box per kernel, one rect per buffer, escaped
names, nothing fetched), its graph resolution and layout, and the page in headless Chromium."""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.cli import main
from kiln.ir.types import DTYPE_SHORT
from kiln.runtime.library import inspect_file
from kiln.viz import graph as viz_graph
from kiln.viz import render_html
from kiln.viz.graph import layout, read_graph
from tests.e2e import models as zoo

# Names a model file may carry; each would run script if the page did not escape it.
NASTY_INPUT = "x\"<script>alert(1)</script>'&"
NASTY_WEIGHT = "w</script><img src=x onerror=alert(2)>"
NASTY_TENSOR = "t\"><svg onload=alert(3)>"
NASTY_OUTPUT = "y<script>"
NASTY_NODE = "add'\"<script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _nasty_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones(4, np.float32), NASTY_WEIGHT)
    nodes = [helper.make_node("Add", [NASTY_INPUT, NASTY_WEIGHT], [NASTY_TENSOR], name=NASTY_NODE),
             helper.make_node("Relu", [NASTY_TENSOR], [NASTY_OUTPUT], name="relu<!--")]
    graph = helper.make_graph(
        nodes, "g<script>", [helper.make_tensor_value_info(NASTY_INPUT, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(NASTY_OUTPUT, TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("viz")
    models = {"resnet18_like": zoo.resnet18_like()[0], "bert_like": zoo.bert_like()[0],
              "nasty": _nasty_model()}
    paths = {}
    for name, model in models.items():
        mod, params = kiln.from_onnx(model)
        paths[name] = Path(kiln.build(mod, params=params).export_library(folder / f"{name}.so"))
    return paths


def _manifest(library: Path) -> dict:
    checked = inspect_file(library, verify="header")
    try:
        return checked.blob.manifest
    finally:
        checked.release()


def _spec(library: Path) -> dict:
    return _manifest(library)["models"]["default"]


def _viz(library: Path, out: Path) -> str:
    result = CliRunner().invoke(main, ["viz", str(library), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    return out.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["resnet18_like", "bert_like"])
def test_page_has_a_box_per_kernel_and_a_rect_per_buffer(libraries, tmp_path, name):
    page = _viz(libraries[name], tmp_path / "page.html")
    spec = _spec(libraries[name])
    kernels = [int(k) for k in re.findall(r'data-kernel="(\d+)"', page)]
    assert kernels == list(range(len(spec["kernels"])))
    buffers = [int(b) for b in re.findall(r'data-buffer="(\d+)"', page)]
    assert buffers == list(range(len(spec["memory"]["buffers"])))
    assert f'data-kernels="{len(kernels)}" data-buffers="{len(buffers)}"' in page
    assert '<body data-models="1">' in page
    for k, kern in enumerate(spec["kernels"]):  # box titles are clipped, the tip is whole
        title = f"#{k} {kern['label']}"
        shown = title if len(title) <= 27 else title[:26] + "\u2026"
        assert f">{shown}</text>" in page and kern["label"] in page
    assert not re.search(r"https?://|<link|<img|<iframe|@import|url\(['\"h/]", page)


@pytest.mark.parametrize("name", ["resnet18_like", "bert_like"])
def test_every_tensor_read_is_traced_to_its_producer(libraries, name):
    spec = _spec(libraries[name])
    graph = read_graph(spec, [])
    into = {e.dst for e in graph.edges}
    params = {p["name"] for p in spec["params"]}
    for k, kern in enumerate(spec["kernels"]):
        if set(kern["inputs"]) - params:
            assert f"k{k}" in into, f"kernel #{k} {kern['label']} has no incoming edge"
    assert all(f"o{i}" in into for i in range(len(spec["outputs"])))
    if name == "bert_like":  # a transpose reads a reshape (a view, no kernel) of a matmul+add
        k = next(k for k, kern in enumerate(spec["kernels"]) if kern["label"] == "transpose")
        assert spec["kernels"][k - 1]["label"] == "matmul+add"
        assert [e.src for e in graph.edges if e.dst == f"k{k}"] == [f"k{k - 1}"]


def test_kernel_dtypes_come_from_the_ir_text(libraries):
    assert viz_graph._DTYPES == {short: name for name, short in DTYPE_SHORT.items()}
    graph = read_graph(_spec(libraries["bert_like"]), [])
    assert graph.nodes["k0"].lines[1] == "float32 1\u00d716\u00d732"
    assert all("?" not in n.lines[1] for n in graph.nodes.values() if n.kind == "kernel")


def test_an_empty_model_renders(libraries):
    manifest = _manifest(libraries["nasty"])
    manifest["models"]["empty"] = {"executor": "graph", "inputs": [], "outputs": [],
                                   "kernels": [], "params": [], "memory": {}}
    page = render_html(manifest, "empty")
    assert '<body data-models="2">' in page and 'data-kernels="0" data-buffers="0"' in page


def test_layout_keeps_boxes_apart_and_inside(libraries):
    graph = read_graph(_spec(libraries["bert_like"]), [])
    layout(graph)
    boxes = sorted(graph.nodes.values(), key=lambda n: (n.y, n.x))
    for a, b in zip(boxes, boxes[1:], strict=False):
        if a.y == b.y:
            assert a.x + a.w < b.x, f"{a.id} overlaps {b.id}"
    assert all(0 <= n.x and n.x + n.w <= graph.width and n.y + n.h <= graph.height
               for n in boxes)
    assert max(n.layer for n in boxes) < len(boxes)  # parallel branches share layers


def test_names_from_the_model_are_escaped(libraries, tmp_path):
    page = _viz(libraries["nasty"], tmp_path / "nasty.html")
    assert page.count("<script") == 2  # the page's own two scripts only
    for raw in (NASTY_INPUT, NASTY_WEIGHT, NASTY_TENSOR, NASTY_OUTPUT, NASTY_NODE):
        assert raw not in page
    assert html.escape(NASTY_INPUT) in page and html.escape(NASTY_OUTPUT) in page
    titled = render_html(_manifest(libraries["nasty"]), "<script>alert(0)</script>")
    assert "<title>&lt;script&gt;alert(0)&lt;/script&gt;</title>" in titled


def test_viz_refuses_a_file_that_is_not_a_library(tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"\x7fELF not really")
    result = CliRunner().invoke(main, ["viz", str(bogus), "-o", str(tmp_path / "out.html")])
    assert result.exit_code == 1 and "error:" in result.output
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*.tmp"))


# --- in a browser --------------------------------------------------------------------------

def _chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium not found (Debian: apt-get install chromium)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", *args,
           page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _console_messages(stderr: str) -> list[str]:
    """Console output of the page as Chromium logs it: `INFO:CONSOLE:12] "msg", source: ...`
    (older versions: `CONSOLE(12)`), and uncaught exceptions."""
    return [line for line in stderr.splitlines()
            if re.search(r":CONSOLE[:(]", line) or "Uncaught" in line]


def _png_is_a_picture(png: bytes, size: tuple[int, int]) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert struct.unpack(">II", png[16:24]) == size
    chunks, pos = [], 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            chunks.append(png[pos + 8:pos + 8 + length])
        pos += 12 + length
    pixels = zlib.decompress(b"".join(chunks))
    assert len(set(pixels[::101])) > 50, "the screenshot is nearly one colour"


def test_console_capture_sees_script_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><body><script>console.error('boom'); nope();</script>")
    messages = _console_messages(_chromium(tmp_path, bad, "--dump-dom").stderr)
    assert any("boom" in m for m in messages) and any("Uncaught" in m for m in messages)


@pytest.mark.parametrize("name", ["resnet18_like", "bert_like"])
def test_page_renders_in_chromium(libraries, tmp_path, name):
    page = tmp_path / f"{name}.html"
    _viz(libraries[name], page)
    n_kernels = len(_spec(libraries[name])["kernels"])
    dom = _chromium(tmp_path, page, "--dump-dom")
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-ready="1"' in body, body
    assert "data-js-errors" not in body, html.unescape(body)
    assert f'data-rendered-kernels="{n_kernels}"' in dom.stdout
    assert len(re.findall(r'<g [^>]*data-kernel="', dom.stdout)) == n_kernels
    assert _console_messages(dom.stderr) == []
    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1400,1000")
    assert _console_messages(result.stderr) == []
    _png_is_a_picture(shot.read_bytes(), (1400, 1000))
