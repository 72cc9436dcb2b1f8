"""The manifest schema (kiln.runtime.manifest): every field a reader uses is checked at load, so
a forged or damaged manifest is one FormatError naming the field, never another exception."""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import kiln
from kiln.errors import CompatibilityError, FormatError, KilnError
from kiln.runtime.manifest import DTYPES, check_manifest
from kiln.runtime.summary import library_summary
from kiln.viz import render_html
from tests.e2e.models import MODELS
from tests.util import reseal_library

HEX = "0123456789abcdef" * 4
DELETE = object()  # as an edit's value: remove the key (or list element)


def _valid() -> dict[str, Any]:
    """A small manifest as kiln writes it: y = x + w in one kernel, and one self-test vector."""
    return {
        "kiln_version": "0.1.0",
        "target": {"kind": "c", "triple": "x86_64-linux-gnu", "features": ["avx2"],
                   "cflags": ["-O2"], "compiler": "cc 12"},
        "weights": [{"offset": 0, "nbytes": 16, "blake3": HEX},
                    {"offset": 64, "nbytes": 32, "blake3": HEX},
                    {"offset": 128, "nbytes": 32, "blake3": HEX}],
        "models": {"default": {
            "executor": "graph",
            "inputs": [{"name": "x", "shape": [2, 4], "dtype": "float32",
                        "loc": {"arena": 0, "nbytes": 32}}],
            "outputs": [{"name": "y", "shape": [2, 4], "dtype": "float32",
                         "loc": {"arena": 32, "nbytes": 32}}],
            "params": [{"name": "w", "shape": [4], "dtype": "float32", "weight": 0}],
            "arena_bytes": 64,
            "kernels": [{"func": "kiln_add_0123abcd", "label": "add", "node": "add0",
                         "shapes": [[2, 4]], "inputs": ["x", "w"], "outputs": ["y"],
                         "args": [{"arena": 0, "nbytes": 32}, {"param": "w"},
                                  {"arena": 32, "nbytes": 32}]}],
            "memory": {"unplanned_bytes": 64,
                       "buffers": [{"tensor": "x", "offset": 0, "size": 32, "first": -1,
                                    "last": 1},
                                   {"tensor": "y", "offset": 32, "size": 32, "first": 0,
                                    "last": 1}]},
            "ir": "module @default {\n  input %x: f32[2,4]\n}",
            "source": {"format": "onnx", "opset": "17", "ir_version": "8", "producer": "t",
                       "blake3": HEX},
            "build": {"passes": ["fold_constants"]},
            "selftest": [{"inputs": {"x": {"weight": 1, "shape": [2, 4], "dtype": "float32"}},
                          "outputs": [{"name": "y", "weight": 2, "shape": [2, 4],
                                       "dtype": "float32"}],
                          "rtol": 1e-5, "atol": 1e-6}],
        }},
    }


def _edit(manifest: dict, path: tuple, value: Any) -> None:
    """Set (or, with DELETE, remove) the field at path, a tuple of keys and indices."""
    *parents, last = path
    target = manifest
    for step in parents:
        target = target[step]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value


def _message(manifest: Any) -> str:
    with pytest.raises(FormatError) as info:
        check_manifest(manifest, "lib.so")
    return str(info.value)


# --- the schema on its own (no C compiler) -------------------------------------------------

def test_manifests_as_kiln_writes_them_pass():
    check_manifest(_valid(), "lib.so")
    apart = _valid()  # exported with package_params=False, with fields added by a newer kiln
    _edit(apart, ("models", "default", "params", 0, "weight"), None)
    _edit(apart, ("models", "default", "future_field"), {"anything": [1]})
    _edit(apart, ("target", "future_field"), 3)
    check_manifest(apart, "lib.so")
    old = _valid()  # written before kernels named their tensors and models their source
    for key in ("inputs", "outputs"):
        _edit(old, ("models", "default", "kernels", 0, key), DELETE)
    for key in ("source", "build", "ir", "selftest"):
        _edit(old, ("models", "default", key), DELETE)
    check_manifest(old, "lib.so")
    aot = _valid()
    _edit(aot, ("models", "default", "executor"), "aot")
    _edit(aot, ("models", "default", "entry"), "kiln_aot_0123abcd")
    check_manifest(aot, "lib.so")


M = ("models", "default")
K = (*M, "kernels", 0)
V = (*M, "selftest", 0)
CASES = [  # (field, forged value, what the message says)
    (("models", "default"), 7,
     r"models\['default'\] must be a model entry \(a JSON object\), got 7"),
    ((*M, "inputs"), {"x": 1}, r"models\['default'\]\.inputs must be a list of tensors"),
    ((*M, "inputs", 0, "shape"), ["x", 4],
     r"\.inputs\[0\]\.shape must be a list of ints >= 0, got \['x', 4\]"),
    ((*M, "inputs", 0, "shape"), [-2, 4], r"\.inputs\[0\]\.shape must be a list of ints >= 0"),
    ((*M, "inputs", 0, "shape"), [True, 4], r"\.inputs\[0\]\.shape must be a list of ints"),
    ((*M, "inputs", 0, "shape"), [2**40, 2**40],
     r"\.inputs\[0\]\.shape must describe fewer than 2\*\*63 bytes"),
    ((*M, "inputs", 0, "dtype"), "complex64",
     r"\.inputs\[0\]\.dtype must be a dtype kiln supports, one of \['bool', 'float16'"),
    ((*M, "inputs", 0, "loc"), {"param": "w"}, r"\.inputs\[0\]\.loc must be an arena location"),
    ((*M, "outputs", 0, "loc", "nbytes"), 8,
     r"\.outputs\[0\]\.loc\.nbytes must be the tensor's size, 32 bytes, got 8"),
    ((*M, "executor"), 1, r"\.executor must be an executor kind, one of \['aot', 'graph'\]"),
    ((*M, "executor"), "aot", r"models\['default'\]\.entry is missing \(an aot model"),
    ((*M, "arena_bytes"), DELETE, r"models\['default'\]\.arena_bytes is missing"),
    ((*M, "arena_bytes"), 2**63, r"\.arena_bytes must be an int >= 0"),
    ((*M, "params", 0, "weight"), 3,
     r"\.params\[0\]\.weight must index the 3-entry weights table, got 3"),
    ((*M, "params", 0, "weight"), "0", r"\.params\[0\]\.weight must be an int >= 0"),
    ((*M, "params", 0, "name"), ["w"], r"\.params\[0\]\.name must be a string"),
    ((*K, "func"), "kiln add", r"\.kernels\[0\]\.func must be a kiln symbol"),
    ((*K, "func"), "abort", r"\.kernels\[0\]\.func must be a kiln symbol"),
    ((*K, "func"), "kiln_\u00e9", r"\.kernels\[0\]\.func must be a kiln symbol"),
    ((*K, "label"), None, r"\.kernels\[0\]\.label must be a string, got None"),
    ((*K, "shapes"), [[2, "4"]], r"\.kernels\[0\]\.shapes\[0\] must be a list of ints"),
    ((*K, "args", 0, "arena"), 48,
     r"\.kernels\[0\]\.args\[0\] must lie within the model's 64-byte arena"),
    ((*K, "args", 0, "nbytes"), -1, r"\.kernels\[0\]\.args\[0\]\.nbytes must be an int >= 0"),
    ((*K, "args", 1), "w", r"\.kernels\[0\]\.args\[1\] must be a location"),
    ((*K, "args", 1, "param"), "nope",
     r"\.kernels\[0\]\.args\[1\]\.param must name a param of the model, got 'nope'"),
    ((*K, "args", 2), {"param": "w"},
     r"\.kernels\[0\]\.args\[2\] must be an arena location \(a kernel writes"),
    ((*K, "args", 2), DELETE,
     r"\.kernels\[0\]\.args must hold one location per kernel input and output"),
    ((*M, "memory", "buffers", 0, "first"), -2, r"\.memory\.buffers\[0\]\.first must be an int"),
    ((*M, "memory", "unplanned_bytes"), 1.5,
     r"\.memory\.unplanned_bytes must be an int >= 0, got 1\.5"),
    ((*M, "source", "blake3"), 7, r"\.source\.blake3 must be a BLAKE3 hex digest"),
    ((*M, "selftest"), {"inputs": {}}, r"\.selftest must be a list of self-test vectors"),
    ((*V, "inputs"), [], r"\.selftest\[0\]\.inputs must be a table \{name: array\}"),
    ((*V, "inputs", "x", "dtype"), DELETE, r"\.selftest\[0\]\.inputs\['x'\]\.dtype is missing"),
    ((*V, "outputs", 0, "weight"), None, r"\.selftest\[0\]\.outputs\[0\]\.weight must be an int"),
    ((*V, "outputs", 0, "weight"), 9, r"\.selftest\[0\]\.outputs\[0\]\.weight must index"),
    ((*V, "rtol"), float("nan"), r"\.selftest\[0\]\.rtol must be a finite number >= 0, got nan"),
    ((*V, "atol"), "0", r"\.selftest\[0\]\.atol must be a finite number >= 0"),
    (("target", "features"), "avx2", r"manifest field target\.features must be a list of strings"),
    (("target",), DELETE, r"manifest field target is missing"),
    (("kiln_version",), 1, r"manifest field kiln_version must be a string, got 1"),
    (("models",), [], r"manifest field models must be a table \{name: model entry\}"),
]
WEIGHT_CASES = [  # the weights table: reseal_library re-makes it, so forged only as data here
    (("weights",), {}, r"manifest field weights must be a list of weight regions"),
    (("weights", 1), [64, 32], r"manifest field weights\[1\] must be a weight region"),
    (("weights", 1, "offset"), -64, r"manifest field weights\[1\]\.offset must be an int >= 0"),
    (("weights", 1, "blake3"), HEX.upper(), r"weights\[1\]\.blake3 must be a BLAKE3 hex digest"),
]


def _ids(cases: list[tuple]) -> list[str]:
    return [f"{'.'.join(map(str, path))}={'DELETE' if value is DELETE else repr(value)[:16]}"
            for path, value, _ in cases]


@pytest.mark.parametrize(("path", "value", "message"), CASES + WEIGHT_CASES,
                         ids=_ids(CASES + WEIGHT_CASES))
def test_each_field_is_checked_and_named(path, value, message):
    manifest = _valid()
    _edit(manifest, path, value)
    text = _message(manifest)
    assert text.startswith("lib.so: ") and re.search(message, text), text


def test_whole_manifest_and_huge_values_are_refused_cheaply():
    assert _message([1, "x" * 10**6]).startswith("lib.so: the manifest must be a JSON object")
    assert len(_message({"kiln_version": "x" * 10**6})) < 300  # what was found, shortened
    huge = _valid()
    _edit(huge, (*M, "params", 0, "shape"), [2**62] * 200_000)
    start = time.perf_counter()
    assert "describe fewer than 2**63 bytes" in _message(huge)
    assert time.perf_counter() - start < 1.0  # no bignum product of 200,000 dims


def test_known_dtypes_are_the_compilers():
    from kiln.ir.types import DTYPE_SHORT

    assert set(DTYPES) == set(DTYPE_SHORT)
    assert all(np.dtype(n).name == n and np.dtype(n).itemsize == s for n, s in DTYPES.items())


def test_thousands_of_kernels_check_quickly():
    """10,000 kernels, 5,000 buffers, 9,000 weight regions: about 25 ms of CPU here."""
    manifest = _valid()
    model = manifest["models"]["default"]
    model["kernels"] *= 10_000
    model["memory"]["buffers"] *= 5_000
    manifest["weights"] *= 3_000
    start = time.perf_counter()
    check_manifest(manifest, "lib.so")
    assert time.perf_counter() - start < 0.5  # 20x headroom for a busy machine


# Random JSON values, biased towards what a manifest holds, to replace a field with.
LEAVES = (st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats()
          | st.text(max_size=10)
          | st.sampled_from([0, 1, -1, 64, 2**63, "", "float32", "int64", "graph", "aot",
                             "kiln_x", HEX]))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["arena", "nbytes", "param", "name", "shape", "dtype", "weight", "loc"])
    | st.text(max_size=6), inner, max_size=4), max_leaves=8)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every field's path in a manifest (the root excluded)."""
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    paths = []
    for key, item in items:
        paths += [(*prefix, key), *_paths(item, (*prefix, key))]
    return paths


def _mutate(manifest: dict, data: st.DataObject, paths: list[tuple]) -> None:
    """Replace (or delete) the field at one random path with a random JSON value."""
    path = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(st.just(DELETE) | JSON, label="value")
    _edit(manifest, path, value)


def _read_like_the_tools(checked: Any) -> None:
    """What `kiln viz` and `kiln inspect` read of a manifest the schema accepted."""
    render_html(checked.blob.manifest, "t")
    library_summary(checked, "t")


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_random_type_confusions_are_a_format_error_or_pass(data):
    manifest = _valid()
    _mutate(manifest, data, _paths(manifest))
    try:
        check_manifest(manifest, "lib.so")
    except FormatError:
        event("refused")
        return
    event("accepted")
    blob = SimpleNamespace(manifest=manifest, major=1, minor=0, signer=bytes(32),
                           signature=bytes(64))
    _read_like_the_tools(SimpleNamespace(blob=blob, file_size=1, packed_size=None))


# --- forged manifests in real libraries -----------------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory) -> bytes:
    """The e2e MLP exported with one self-test vector: the bytes of a real library."""
    model, inputs = MODELS["mlp"]()
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    factory = kiln.build(mod, params=params, progress=False)
    path = factory.export_library(tmp_path_factory.mktemp("lib") / "m.so", test_inputs=inputs)
    return Path(path).read_bytes()


_FORGED = itertools.count()


def _dumps(manifest: dict) -> bytes:
    """The manifest's JSON as kiln's writer makes it (so reseal_library keeps its length)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _forge(library: bytes, folder: Path, change) -> Path:
    """A copy of library whose manifest change(manifest) edited as data, re-sealed.

    reseal_library keeps the manifest's byte length: each model's IR text (read by no loader)
    is emptied to make room, and an unknown top-level key "~pad" (ignored by readers) takes up
    the rest. The weights table cannot be forged this way (the writer re-makes it).
    """
    path = folder / f"forged{next(_FORGED)}.so"  # a new name: no dlopen cache hit
    path.write_bytes(library)

    def edit(blob: bytearray, layout) -> None:
        manifest = copy.deepcopy(layout.manifest)
        for model in manifest["models"].values():
            model["ir"] = ""
        change(manifest)
        manifest["~pad"] = ""
        room = layout.manifest_size - len(_dumps(manifest))
        if room < 0:
            raise ValueError(f"the forged manifest is {-room} bytes too long")
        manifest["~pad"] = " " * room
        start = layout.manifest_offset
        blob[start:start + layout.manifest_size] = _dumps(manifest)

    reseal_library(path, edit)
    return path


def _run(lib: kiln.Library) -> None:
    """Create an executor, feed zeros, run, read the outputs; then the self-test."""
    executor = lib["default"](kiln.cpu(0))
    for name, dest in executor.inputs.items():
        executor.set_input(name, np.zeros(dest.shape, dest.dtype))
    executor.run()
    for k in range(len(executor.outputs)):
        executor.get_output(k)
    if lib.manifest["models"]["default"].get("selftest"):
        lib.selftest()


@pytest.mark.e2e
def test_a_forged_but_valid_manifest_loads_and_runs(library, tmp_path):
    path = _forge(library, tmp_path, lambda manifest: None)
    lib = kiln.load_module(path)
    assert "~pad" in lib.manifest and lib.manifest["models"]["default"]["ir"] == ""
    _run(lib)
    assert all(row["passed"] for row in lib.selftest())


REAL_CASES = [  # (field in the MLP's manifest, forged value, what the message says)
    (("models", "default"), [], r"models\['default'\] must be a model entry"),
    ((*M, "inputs"), "input", r"models\['default'\]\.inputs must be a list of tensors"),
    ((*M, "inputs", 0, "shape"), [2, "1", 28, 28], r"\.inputs\[0\]\.shape must be a list of"),
    ((*M, "inputs", 0, "shape"), [-2, 1, 28, 28], r"\.inputs\[0\]\.shape must be a list of"),
    ((*M, "inputs", 0, "shape"), [2, True, 28, 28], r"\.inputs\[0\]\.shape must be a list of"),
    ((*M, "outputs", 0, "dtype"), "float128", r"\.outputs\[0\]\.dtype must be a dtype kiln"),
    ((*M, "executor"), ["graph"], r"models\['default'\]\.executor must be an executor kind"),
    ((*K, "func"), "system", r"\.kernels\[0\]\.func must be a kiln symbol"),
    ((*K, "args", 3, "arena"), 7800, r"\.kernels\[0\]\.args\[3\] must lie within the model's"),
    ((*K, "args", 1, "param"), "nope", r"\.kernels\[0\]\.args\[1\]\.param must name a param"),
    ((*M, "params", 0, "weight"), 10, r"\.params\[0\]\.weight must index the 10-entry weights"),
    ((*V, "outputs"), {"probs": 1}, r"\.selftest\[0\]\.outputs must be a list of arrays"),
    ((*V, "inputs", "input", "weight"), -8, r"\.selftest\[0\]\.inputs\['input'\]\.weight must"),
    (("target", "features"), {"avx2": True}, r"manifest field target\.features must be a list"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("path", "value", "message"), REAL_CASES, ids=_ids(REAL_CASES))
def test_forged_fields_are_refused_at_load_and_named(library, tmp_path, path, value, message):
    forged = _forge(library, tmp_path, lambda manifest: _edit(manifest, path, value))
    with pytest.raises(FormatError, match=message) as info:
        kiln.load_module(forged)
    assert str(info.value).startswith(f"{forged}: manifest field ")


@pytest.mark.e2e
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_forgeries_load_or_fail_with_a_kiln_error_only(library, library_paths, tmp_path,
                                                              data):
    """Replace a random field of a real library's manifest (weights table aside) with a random
    JSON value: the load is refused with a FormatError (or CompatibilityError, for a target
    feature this machine lacks), or it loads, and then running it works or raises KilnError."""
    forged = _forge(library, tmp_path, lambda manifest: _mutate(manifest, data, library_paths))
    try:
        lib = kiln.load_module(forged)
    except (FormatError, CompatibilityError) as e:
        event(f"refused: {type(e).__name__}")
        return
    from kiln.runtime.library import inspect_file

    checked = inspect_file(forged, compat=False)
    try:
        _read_like_the_tools(checked)
    finally:
        checked.release()
    try:
        _run(lib)
        event("loaded and ran")
    except KilnError as e:
        event(f"loaded, then {type(e).__name__}")


@pytest.fixture(scope="module")
def library_paths(library) -> list[tuple]:
    """Every field's path in the library's manifest as _forge's change() sees it (IR text
    emptied), the weights table aside."""
    from kiln.runtime.library import inspect_file

    checked = inspect_file(library, verify="header", compat=False)
    manifest = copy.deepcopy(checked.blob.manifest)
    checked.release()
    for model in manifest["models"].values():
        model["ir"] = ""
    return [p for p in _paths(manifest) if p[0] != "weights"]
