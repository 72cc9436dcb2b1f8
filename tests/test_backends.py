"""The external backends (docs/byoc.md): kiln-external graphs written by hand, run by each
backend and compared with NumPy written independently here (loops, not im2col).

Tolerances: the reference backend computes in the graph's float32 as NumPy does, so it is
held to rtol 1e-5 / atol 1e-5; onnxruntime and OpenVINO pick their own kernels (other
summation orders, vectorized exp), so they are held to rtol 1e-4 / atol 1e-5. onnxruntime
and OpenVINO tests are skipped with a reason where the package is not installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading

import numpy as np
import pytest

from kiln.errors import BackendError, FormatError
from kiln.runtime.external import Backend, backend_names, get_backend
from kiln.runtime.external.graph import describe
from kiln.runtime.external.onnx_graph import supports as onnx_supports

RNG = np.random.default_rng(12)
TOLERANCE = {"reference": dict(rtol=1e-5, atol=1e-5),
             "onnxruntime": dict(rtol=1e-4, atol=1e-5), "openvino": dict(rtol=1e-4, atol=1e-5)}


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


class Graph:
    """A kiln-external graph written node by node, as the partitioning pass writes one."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.inputs: list[int] = []
        self.constants: list[int] = []

    def _add(self, node: dict) -> list[int]:
        self.nodes.append(node)
        return [len(self.nodes) - 1, 0]

    def input(self, name: str, shape: tuple, dtype: str = "float32") -> list[int]:
        self.inputs.append(len(self.nodes))
        return self._add({"op": "input", "name": name, "shape": list(shape), "dtype": dtype})

    def constant(self, name: str, shape: tuple, dtype: str = "float32") -> list[int]:
        self.constants.append(len(self.nodes))
        return self._add({"op": "constant", "name": name, "shape": list(shape), "dtype": dtype})

    def op(self, op: str, inputs: list, out: tuple, dtype: str = "float32",
           **attrs: object) -> list[int]:
        """Add op node reading inputs, with one output of shape out; attrs as given."""
        return self._add({"op": op, "attrs": attrs, "inputs": inputs,
                          "outputs": [{"shape": list(out), "dtype": dtype}]})

    def done(self, *outputs: list[int], function: str = "ext0") -> dict:
        """The graph as the manifest holds it (through JSON, so tuples are lists)."""
        return json.loads(json.dumps({
            "format": "kiln-external", "version": 1, "function": function,
            "backend": "test", "nodes": self.nodes, "inputs": self.inputs,
            "constants": self.constants, "outputs": list(outputs)}))


def conv_attrs(stride: int = 1, pad: int = 0, dilation: int = 1, group: int = 1) -> dict:
    return {"strides": [stride] * 2, "dilations": [dilation] * 2, "pads": [pad] * 4,
            "group": group, "packed_weight": [], "winograd_weight": []}


def pool_attrs(kernel: int, stride: int, pad: int, **extra: object) -> dict:
    return {"kernel_shape": [kernel] * 2, "strides": [stride] * 2, "dilations": [1, 1],
            "pads": [pad] * 4, "ceil_mode": False, **extra}


# ---- NumPy expectations, by loops --------------------------------------------------------

def conv_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray, a: dict) -> np.ndarray:
    s, d, p, g = a["strides"][0], a["dilations"][0], a["pads"][0], a["group"]
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (p, p), (p, p)])
    m, cg, kh, kw = w.shape
    oh = (xp.shape[2] - d * (kh - 1) - 1) // s + 1
    ow = (xp.shape[3] - d * (kw - 1) - 1) // s + 1
    y = np.zeros((x.shape[0], m, oh, ow))
    for o in range(m):
        c0 = o // (m // g) * cg
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, c0:c0 + cg, i * s:i * s + d * (kh - 1) + 1:d,
                           j * s:j * s + d * (kw - 1) + 1:d]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def pool_loops(x: np.ndarray, k: int, s: int, p: int, kind: str) -> np.ndarray:
    """max, or average over the taps inside the input (count_include_pad off)."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = max(i * s - p, 0), max(j * s - p, 0)
            win = x[:, :, r0:i * s - p + k, c0:j * s - p + k]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- the cases: (graph, constants, inputs, expected outputs) -----------------------------

def case_conv_relu_add():
    g = Graph()
    x, z = g.input("x", (1, 3, 8, 8)), g.input("z", (1, 4, 8, 8))
    w, b = g.constant("conv.w", (4, 3, 3, 3)), g.constant("conv.b", (4,))
    y = g.op("conv", [x, w, b], (1, 4, 8, 8), **conv_attrs(pad=1))
    y = g.op("relu", [y], (1, 4, 8, 8))
    out = g.op("add", [y, z], (1, 4, 8, 8))
    consts = {"conv.w": rand(4, 3, 3, 3), "conv.b": rand(4)}
    xs = [rand(1, 3, 8, 8), rand(1, 4, 8, 8)]
    conv = conv_loops(xs[0], consts["conv.w"], consts["conv.b"], conv_attrs(pad=1))
    return g.done(out), consts, xs, [np.maximum(conv, 0) + xs[1]]


def case_grouped_strided_dilated_conv():
    g = Graph()
    a = conv_attrs(stride=2, pad=2, dilation=2, group=2)
    x, w, b = g.input("x", (2, 4, 9, 9)), g.constant("w", (6, 2, 3, 3)), g.constant("b", (6,))
    out = g.op("conv", [x, w, b], (2, 6, 5, 5), **a)
    consts, xs = {"w": rand(6, 2, 3, 3), "b": rand(6)}, [rand(2, 4, 9, 9)]
    return g.done(out), consts, xs, [conv_loops(xs[0], consts["w"], consts["b"], a)]


def case_matmul_softmax_gemm():
    g = Graph()
    x, w = g.input("x", (2, 5, 6)), g.constant("w", (6, 7))
    s = g.op("softmax", [g.op("matmul", [x, w], (2, 5, 7), packed_n=0)], (2, 5, 7), axis=2)
    a, bt, c = g.input("a", (3, 4)), g.constant("bt", (5, 4)), g.constant("c", (5,))
    gemm = g.op("gemm", [a, bt, c], (3, 5), alpha=0.5, beta=2.0, trans_a=False, trans_b=True,
                packed_n=0)
    consts = {"w": rand(6, 7), "bt": rand(5, 4), "c": rand(5)}
    xs = [rand(2, 5, 6), rand(3, 4)]
    expected = [softmax(xs[0].astype(np.float64) @ consts["w"], 2),
                0.5 * (xs[1] @ consts["bt"].T) + 2.0 * consts["c"]]
    return g.done(s, gemm), consts, xs, expected


def case_reshape_transpose_concat():
    """Also results that are an input, a constant and one value twice (ONNX needs Identity)."""
    g = Graph()
    x, c = g.input("x", (2, 3, 4)), g.constant("c", (4, 2))
    t = g.op("transpose", [g.op("reshape", [x], (6, 4), shape=[6, 4])], (4, 6), perm=[1, 0])
    cat = g.op("concat", [t, c], (4, 8), axis=1)
    consts, xs = {"c": rand(4, 2)}, [rand(2, 3, 4)]
    cat_expected = np.concatenate([xs[0].reshape(6, 4).T, consts["c"]], axis=1)
    return (g.done(cat, x, c, cat), consts, xs,
            [cat_expected, xs[0], consts["c"], cat_expected])


def case_pools_clip():
    g = Graph()
    x = g.input("x", (1, 2, 7, 7))
    mx = g.op("max_pool", [x], (1, 2, 4, 4), **pool_attrs(3, 2, 1))
    av = g.op("avg_pool", [x], (1, 2, 4, 4), **pool_attrs(3, 2, 1, count_include_pad=False))
    gap = g.op("global_avg_pool", [x], (1, 2, 1, 1))
    clip = g.op("clip", [x], (1, 2, 7, 7), min=-0.5, max=None)
    xs = [rand(1, 2, 7, 7)]
    return g.done(mx, av, gap, clip), {}, xs, [
        pool_loops(xs[0], 3, 2, 1, "max"), pool_loops(xs[0], 3, 2, 1, "avg"),
        xs[0].mean(axis=(2, 3), keepdims=True), np.maximum(xs[0], -0.5)]


def case_weight_read_twice():
    """Two constant nodes naming one library weight: one initializer in ONNX."""
    g = Graph()
    x, w1, w2 = g.input("x", (2, 3)), g.constant("w", (3,)), g.constant("w", (3,))
    out = g.op("mul", [g.op("sub", [x, w1], (2, 3)), w2], (2, 3))
    consts, xs = {"w": rand(3)}, [rand(2, 3)]
    return g.done(out), consts, xs, [(xs[0] - consts["w"]) * consts["w"]]


CASES = [case_conv_relu_add, case_grouped_strided_dilated_conv, case_matmul_softmax_gemm,
         case_reshape_transpose_concat, case_pools_clip, case_weight_read_twice]


def installed(name: str) -> type[Backend]:
    cls = get_backend(name)
    if not cls.available():
        pytest.skip(f"backend {name!r} needs `pip install {cls.package}`")
    return cls


def run(backend: Backend, graph: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """backend's results, from read-only inputs into fresh output arrays."""
    for x in inputs:
        x.setflags(write=False)
    outputs = []
    for ref in graph["outputs"]:
        node = graph["nodes"][ref[0]]
        spec = node if node["op"] in ("input", "constant") else node["outputs"][ref[1]]
        outputs.append(np.full(spec["shape"], np.nan, spec["dtype"]))
    backend.run(inputs, outputs)
    return outputs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
@pytest.mark.parametrize("name", ["reference", "onnxruntime", "openvino"])
def test_backend_matches_numpy(name, case):
    cls = installed(name)
    graph, constants, inputs, expected = case()
    backend = cls()
    backend.init(graph, constants)
    for got, want in zip(run(backend, graph, inputs), expected, strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE[name])


@pytest.mark.parametrize("name", ["reference", "onnxruntime", "openvino"])
def test_concurrent_runs_of_one_engine(name):
    graph, constants, inputs, expected = case_conv_relu_add()
    backend = installed(name)()
    backend.init(graph, constants)
    results: list = [None] * 4

    def work(k: int) -> None:
        results[k] = run(backend, graph, [x.copy() for x in inputs])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        np.testing.assert_allclose(got, expected[0], **TOLERANCE[name])


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_exported_engine_round_trips(name):
    cls = installed(name)
    graph, constants, inputs, expected = case_matmul_softmax_gemm()
    built = cls()
    built.init(graph, constants)
    data = built.export_engine()
    assert isinstance(data, bytes) and data
    assert cls.engine_key().startswith(name)
    loaded = cls()
    assert loaded.import_engine(data)
    for got, want in zip(run(loaded, graph, inputs), expected, strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE[name])
    assert not cls().import_engine(b"not an engine")


def test_reference_exports_no_engine():
    backend = get_backend("reference")()
    assert backend.export_engine() is None
    assert not backend.import_engine(b"anything")
    assert get_backend("reference").engine_key() == ""


# ---- supports(): what each backend refuses -----------------------------------------------

def node(op: str, attrs: dict, shapes: list, out: tuple, dtype: str = "float32") -> dict:
    """A node description (docs/byoc.md); inputs after the first are constants."""
    return {"op": op, "attrs": attrs,
            "inputs": [{"shape": list(s), "dtype": dtype, "constant": i > 0}
                       for i, s in enumerate(shapes)],
            "outputs": [{"shape": list(out), "dtype": dtype}]}


CONV = ([(1, 3, 8, 8), (4, 3, 3, 3)], (1, 4, 6, 6))
MATMUL = ([(2, 6), (6, 7)], (2, 7))


@pytest.mark.parametrize("description, onnx_ok, reference_ok", [
    (node("conv", conv_attrs(), *CONV), True, True),
    # a weight in kiln's own layouts: only kiln's kernels read those
    (node("conv", {**conv_attrs(), "packed_weight": [4, 3, 3, 3]}, *CONV), False, False),
    (node("conv", {**conv_attrs(), "winograd_weight": [4, 3, 3, 3]}, *CONV), False, False),
    (node("matmul", {"packed_n": 0}, *MATMUL), True, True),
    (node("matmul", {"packed_n": 7}, *MATMUL), False, False),
    (node("gemm", {"alpha": 1.0, "beta": 1.0, "trans_a": False, "trans_b": False,
                   "packed_n": 7}, *MATMUL), False, False),
    # an attribute the backend does not know, or one missing
    (node("matmul", {"packed_n": 0, "new_flag": 1}, *MATMUL), False, False),
    (node("conv", {k: v for k, v in conv_attrs().items() if k != "group"}, *CONV), False,
     False),
    (node("max_pool", pool_attrs(3, 2, 0, ceil_mode=True), [(1, 2, 7, 7)], (1, 2, 4, 4)),
     False, False),
    # AveragePool has dilations only from opset 19; the reference computes them
    (node("avg_pool", {**pool_attrs(2, 1, 0, count_include_pad=False), "dilations": [2, 2]},
          [(1, 2, 7, 7)], (1, 2, 5, 5)), False, True),
    # negative pads (output_padding folded in) have no ONNX form
    (node("conv_transpose", {"strides": [2, 2], "dilations": [1, 1], "pads": [0, 0, -1, -1],
                             "group": 1}, [(1, 3, 4, 4), (3, 2, 3, 3)], (1, 2, 10, 10)),
     False, False),
    (node("add", {}, [(2, 3), (3,)], (2, 3), dtype="int64"), False, False),
    (node("add", {}, [(2, 3), (3,)], (2, 3), dtype="float64"), False, True),
    (node("concat", {"axis": 0}, [(2, 3), (1, 3)], (3, 3), dtype="int64"), False, True),
    (node("gelu", {"approximate": "none"}, [(2, 3)], (2, 3)), False, False),
])
def test_supports_refuses_what_it_cannot_map(description, onnx_ok, reference_ok):
    assert onnx_supports(description) is onnx_ok
    assert get_backend("reference").supports(description) is reference_ok
    assert get_backend("onnxruntime").supports(description) is onnx_ok
    assert get_backend("openvino").supports(description) is onnx_ok


def test_init_names_the_nodes_a_backend_cannot_run():
    g = Graph()
    x, w = g.input("x", (2, 6)), g.constant("w", (6, 7))
    out = g.op("matmul", [x, w], (2, 7), packed_n=7)
    with pytest.raises(BackendError, match=r"'reference' cannot run node 2 \(matmul\) of "
                                           r"external function 'ext0'"):
        get_backend("reference")().init(g.done(out), {"w": rand(6, 7)})


def test_describe_rebuilds_the_node_description():
    graph = case_conv_relu_add()[0]
    assert describe(graph, 4) == node("conv", conv_attrs(pad=1), [(1, 3, 8, 8), (4, 3, 3, 3),
                                                                   (4,)], (1, 4, 8, 8))


# ---- malformed graphs and constants ------------------------------------------------------

def test_graph_format_and_references_are_checked():
    graph, constants, _, _ = case_conv_relu_add()
    backend = get_backend("reference")()
    with pytest.raises(FormatError, match="expected format 'kiln-external' version 1"):
        backend.init({**graph, "version": 2}, constants)
    bad = json.loads(json.dumps(graph))
    bad["nodes"][4]["inputs"][0] = [5, 0]  # a node reading a later one
    with pytest.raises(FormatError, match=r"node 4: input \[5, 0\] names node 5"):
        backend.init(bad, constants)
    with pytest.raises(FormatError, match="constant 'conv.b' is not among the weights"):
        backend.init(graph, {"conv.w": constants["conv.w"]})
    with pytest.raises(FormatError, match=r"'conv.b' is float32\[5\], the graph says"):
        backend.init(graph, {**constants, "conv.b": rand(5)})


# ---- the registry ------------------------------------------------------------------------

class FakeBackend(Backend):
    """A backend another package would register through the entry points."""

    name = "fake"
    package = "fake-kiln-backend"

    @classmethod
    def supports(cls, node: dict) -> bool:
        return False

    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        pass

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        pass


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Installed packages registering 'fake' (a backend), 'broken' (not a backend) and
    'reference' (a built-in name, which they cannot take over)."""
    eps = [importlib.metadata.EntryPoint(name, value, "kiln.backends") for name, value in [
        ("fake", f"{__name__}:FakeBackend"), ("broken", "json:dumps"),
        ("reference", f"{__name__}:FakeBackend")]]
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return eps if kw.get("group") == "kiln.backends" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_builtin_backends_by_name():
    assert backend_names()[:3] == ["onnxruntime", "openvino", "reference"]
    for name in ("reference", "onnxruntime", "openvino"):
        cls = get_backend(name)
        assert issubclass(cls, Backend) and cls.name == name and cls.package
    assert get_backend("reference").available()


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt'; known backends: "
                                           r"\['onnxruntime', 'openvino', 'reference'\]"):
        get_backend("tensorrt")


def test_entry_point_backends_are_found_by_name(fake_entry_points):
    assert get_backend("fake") is FakeBackend
    assert get_backend("reference").__name__ == "ReferenceBackend"
    assert backend_names() == ["onnxruntime", "openvino", "reference", "broken", "fake"]
    with pytest.raises(BackendError, match=r"backend 'broken' \(entry point json:dumps\) is "
                                           r".* not a subclass of"):
        get_backend("broken")
    with pytest.raises(BackendError, match=r"known backends: \[.*'fake'\]"):
        get_backend("nope")
