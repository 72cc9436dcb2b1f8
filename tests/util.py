"""Test helpers: build ONNX models, compile them with kiln and compare with onnxruntime;
forge library files (reseal_library)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import helper, numpy_helper

import kiln
import kiln.pipeline
from kiln.ops import get_op, winograd
from kiln.runtime.blob import CODE_DIGEST_OFFSET, HEADER, SECTION, code_digest, write_blob
from kiln.runtime.elf import read_elf


def single_node_model(op_type: str, inputs: Mapping[str, np.ndarray], *,
                      consts: Mapping[str, np.ndarray | None] | None = None, opset: int,
                      outputs: Sequence[str] | Mapping[str, DTypeLike | None] = ("y",),
                      node_inputs: Sequence[str] | None = None, node_name: str = "",
                      **attrs) -> onnx.ModelProto:
    """A model of one op_type node with attributes attrs.

    inputs become graph inputs (of their dtype and shape), consts initializers; the node takes
    them in that order, a None const as an omitted optional input ('' in the middle, dropped at
    the end), unless node_inputs names them in another order. outputs names the node's outputs,
    or maps each name to its dtype; a dtype left out (or None) and every shape are left to
    inference.
    """
    consts = dict(consts or {})
    if node_inputs is None:
        node_inputs = [*inputs, *(n if a is not None else "" for n, a in consts.items())]
        while node_inputs and node_inputs[-1] == "":
            node_inputs.pop()
    dtypes = outputs if isinstance(outputs, Mapping) else dict.fromkeys(outputs)
    graph = helper.make_graph(
        [helper.make_node(op_type, list(node_inputs), list(dtypes), name=node_name, **attrs)],
        op_type.lower(),
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_empty_tensor_value_info(n) if t is None else
         helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(t)), None)
         for n, t in dtypes.items()],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items() if a is not None],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def graph_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, np.ndarray],
                consts: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A float32 model of nodes (opset 17): inputs as graph inputs, consts as initializers,
    the last node's first output as the graph's output."""
    graph = helper.make_graph(
        list(nodes), "g",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
         for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(nodes[-1].output[0])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


_DRAWS: dict[str, int] = {}  # random_data calls so far, per test


def build_with_sources(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], monkeypatch,
                       **options) -> tuple[kiln.export.factory.FactoryModule, list[str]]:
    """model built by kiln (build options as keywords), and the C sources of its kernels."""
    sources: list[str] = []
    compile_kernels = kiln.pipeline.compile_kernels

    def spy(kernels, *args, **kwargs):
        sources.extend(k.source for k in kernels)
        return compile_kernels(kernels, *args, **kwargs)

    monkeypatch.setattr(kiln.pipeline, "compile_kernels", spy)
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    return kiln.build(mod, params=params, progress=False, **options), sources


def direct_convs(monkeypatch) -> None:
    """Build convs without Winograd (kiln/ops/winograd.py: none has enough tiles, no weight
    is small enough), for tests of the direct conv kernels."""
    monkeypatch.setattr(winograd, "MIN_TILES", 1 << 62)
    monkeypatch.setattr(winograd, "CACHED_WEIGHT_BYTES", -1)


_FORK = re.compile(r"kiln_parallel\(kiln_task\d+, ")  # a call; the prelude's declaration
# names the parameter `kiln_task task`


def forks_threads(sources: Sequence[str]) -> bool:
    """Whether any of these kernel sources hands a loop nest to the thread pool."""
    return any(_FORK.search(s) for s in sources)


def run_outputs(lib, inputs: Mapping[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Every output of lib's default model run on inputs with `threads` threads."""
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0, num_threads=threads)))
    gmod.run(**inputs)
    return [gmod.get_output(i) for i in range(gmod.get_num_outputs())]


def ir_reference(mod, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """mod's outputs computed node by node with the ops' NumPy references; values gives the
    inputs (and any constants not bound to mod)."""
    env = {**values, **mod.params}
    for node in mod.graph.nodes:
        results = get_op(node.op).reference([env[v.name] for v in node.inputs], node.attrs)
        env.update({v.name: r for v, r in zip(node.outputs, results, strict=True)})
    return [env[v.name] for v in mod.graph.outputs]


def _test_rng() -> np.random.Generator:
    """A generator seeded by the running test's id and how many arrays it drew already:
    the same data whatever order (or worker) the tests run in, and distinct arrays."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    draw = _DRAWS.get(test, 0)
    _DRAWS[test] = draw + 1
    return np.random.default_rng([zlib.crc32(test.encode()), draw])


def random_data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Test data: standard normal floats, or integers in [-100, 100) within dtype's range."""
    rng = _test_rng()
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), shape).astype(dtype)


def ort_run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run model with onnxruntime on the CPU (graph optimizations off: the plain reference)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(inputs))


def reference_run(model: onnx.ModelProto,
                  inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run model with ONNX's reference evaluator: the oracle where onnxruntime lacks a kernel."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, dict(inputs))


def kiln_run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Import, compile and run model with kiln in this process."""
    shapes = {k: np.asarray(v).shape for k, v in inputs.items()}
    mod, params = kiln.from_onnx(model, shapes=shapes)
    lib = kiln.build(mod, params=params, progress=False)
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    gmod.set_input(**inputs)
    gmod.run()
    return [gmod.get_output(i) for i in range(gmod.get_num_outputs())]


def folded_outputs(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Import model with feeds baked in as initializers; every node must fold away (the
    importer evaluates a node whose inputs are all constant): the graph outputs' params."""
    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    baked.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in feeds.items())
    kept = [i for i in baked.graph.input if i.name not in feeds]
    del baked.graph.input[:]
    baked.graph.input.extend(kept)
    mod, params = kiln.from_onnx(baked)
    assert not mod.graph.nodes, f"not folded: {mod.graph.nodes}"
    return [params[v.name] for v in mod.graph.outputs]


def _assert_match(got: Sequence[np.ndarray], expected: Sequence[np.ndarray], *, rtol: float,
                  atol: float) -> None:
    assert len(got) == len(expected), f"{len(got)} outputs, onnxruntime gives {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        e = np.asarray(e)
        assert g.shape == e.shape, f"output {k}: shape {g.shape}, onnxruntime {e.shape}"
        assert g.dtype == e.dtype, f"output {k}: dtype {g.dtype}, onnxruntime {e.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {k}")


def check_against_ort(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], *,
                      rtol: float = 1e-5, atol: float = 1e-5) -> list[np.ndarray]:
    """Assert kiln's outputs equal onnxruntime's (shape, dtype and values within tolerance)."""
    expected = ort_run(model, inputs)
    got = kiln_run(model, inputs)
    _assert_match(got, expected, rtol=rtol, atol=atol)
    return got


def check_folded_against_ort(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], *,
                             rtol: float = 1e-5, atol: float = 1e-5) -> list[np.ndarray]:
    """Assert model with inputs made constant folds to onnxruntime's outputs (as above)."""
    got = folded_outputs(model, inputs)
    _assert_match(got, ort_run(model, inputs), rtol=rtol, atol=atol)
    return got


def check_op(op_type: str, inputs: Mapping[str, np.ndarray], *, opset: int, fold: bool = True,
             rtol: float = 1e-5, atol: float = 1e-5, **model_args) -> onnx.ModelProto:
    """single_node_model(op_type, inputs, opset=opset, **model_args) compiled, and with fold
    also constant-folded, against onnxruntime; returns the model."""
    model = single_node_model(op_type, inputs, opset=opset, **model_args)
    check_against_ort(model, inputs, rtol=rtol, atol=atol)
    if fold:
        check_folded_against_ort(model, inputs, rtol=rtol, atol=atol)
    return model


# Runs in a fresh interpreter: argv = library, inputs .npz, outputs .npz.
RUNNER = """
import json, sys
import numpy as np
import kiln

lib = kiln.load_module(sys.argv[1])
gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
with np.load(sys.argv[2]) as inputs:
    gmod.set_input(**{name: inputs[name] for name in inputs.files})
gmod.run()
np.savez(sys.argv[3], *[gmod.get_output(i) for i in range(gmod.get_num_outputs())])
compiler = [m for m in sys.modules if m.startswith(
    ("onnx", "kiln.compiler", "kiln.pipeline", "kiln.dump", "kiln.frontend", "kiln.ir", "kiln.ops",
     "kiln.passes", "kiln.codegen", "kiln.export"))]
print(json.dumps({"outputs": gmod.output_names, "compiler_modules": compiler}))
"""


def run_in_fresh_process(library: Path, inputs: dict[str, np.ndarray],
                         work: Path) -> tuple[list[np.ndarray], dict]:
    """Load and run library in a new interpreter; its outputs and what it reported."""
    np.savez(work / "inputs.npz", **inputs)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(library), str(work / "inputs.npz"),
         str(work / "outputs.npz")],
        capture_output=True, text=True, cwd=work, timeout=120,
    )
    assert done.returncode == 0, f"runner exited with {done.returncode}:\n{done.stderr}"
    with np.load(work / "outputs.npz") as out:
        outputs = [out[f"arr_{k}"] for k in range(len(out.files))]
    return outputs, json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class BlobLayout:
    """Where the parts of a library's blob lie (offsets from the blob's first byte), and its
    manifest, as they were before an edit."""

    header_size: int
    manifest_offset: int
    manifest_size: int
    weights_offset: int
    weights_size: int
    manifest: dict

    @property
    def fields(self) -> tuple[int, int, int, int, int]:
        """The header's size and offset fields, in header order."""
        return (self.header_size, self.manifest_offset, self.manifest_size,
                self.weights_offset, self.weights_size)

    def region(self, index: int) -> slice:
        """The blob bytes of weight region `index` (a param's or a self-test array's)."""
        r = self.manifest["weights"][index]
        start = self.weights_offset + r["offset"]
        return slice(start, start + r["nbytes"])


def reseal_library(path: str | Path, edit: Callable[[bytearray, BlobLayout], None]) -> None:
    """Forge the library at path: edit(blob, layout) changes its blob in place, then every
    digest kiln checks is made to match again, so the file loads and only a check of its
    content (a self-test, a result) can tell.

    The blob must keep its length and layout: edit weight bytes freely, and the manifest only
    into JSON of the same byte length (e.g. "float32" -> "float64"). kiln's own writer
    (write_blob) then re-makes the blob from the edited manifest and weight regions (region
    digests, manifest and weights digests), and the code digest is re-sealed as export does,
    so this follows any change of digest rules. Header fields and padding come out as the
    writer makes them; a signature is dropped (the forged file is unsigned).
    """
    data = bytearray(Path(path).read_bytes())
    section = read_elf(memoryview(bytes(data)), str(path)).sections[SECTION]
    start, end = section.offset, section.offset + section.size
    blob = bytearray(data[start:end])
    hsize, m_off, m_size, w_off, w_size = HEADER.unpack_from(blob, 0)[3:8]
    layout = BlobLayout(hsize, m_off, m_size, w_off, w_size,
                        json.loads(bytes(blob[m_off:m_off + m_size])))
    edit(blob, layout)
    if len(blob) != section.size:
        raise ValueError(f"the edit changed the blob's length ({section.size} -> {len(blob)})")
    manifest = json.loads(bytes(blob[m_off:m_off + m_size]))
    arrays = [np.frombuffer(bytes(blob[w_off + r["offset"]:w_off + r["offset"] + r["nbytes"]]),
                            dtype=np.uint8) for r in manifest.pop("weights")]
    sealed = write_blob(manifest, arrays)
    if len(sealed) != len(blob) or HEADER.unpack_from(sealed, 0)[3:8] != layout.fields:
        raise ValueError("the edit changed the manifest's length: keep its JSON the same size")
    data[start:end] = sealed
    seal = code_digest(bytes(data), start, section.size)
    data[start + CODE_DIGEST_OFFSET:start + CODE_DIGEST_OFFSET + 32] = seal
    forged = Path(f"{path}.forged")  # replaced, not rewritten: mappings of it stay intact
    forged.write_bytes(bytes(data))
    os.replace(forged, path)
