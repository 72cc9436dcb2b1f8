"""Self-test vectors: inputs and expected outputs embedded in a library at export.

`export_library(..., test_inputs=...)` runs each model on the given inputs and stores inputs
and outputs as extra weight regions, described in the model's manifest entry as `selftest`
(see docs/format.md). `run_selftest` runs them again on this machine and compares: a quick
check that a deployed library computes what it computed where it was built. Both the
writer's checks and the reader live here, next to each other.

Tolerances: the same binary on another machine of the same architecture runs the same
instructions, and the thread count changes no result (threads split independent outputs,
never a reduction), so results are bitwise identical except where libm picks a different
code path for the CPU at hand (glibc chooses, e.g., FMA variants of logf or tanhf at load
time), worth a few ulp. Hence rtol 1e-5 (about 80 float32 ulp) and atol 1e-6 (for values
near zero), with rtol raised to 2 ulp of float16 for a vector with float16 outputs. A
float compares like numpy.allclose(equal_nan=True); an integer or bool output exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, InputError, KilnError
from .device import cpu
from .params import load_params, model_entries

if TYPE_CHECKING:
    from .library import Library

RTOL = 1e-5
ATOL = 1e-6

# One model's: an input set {input name: array} or a list of them; several: {model: those}.
TestInputs = Mapping[str, Any] | Sequence[Mapping[str, Any]]
InputSets = dict[str, list[dict[str, np.ndarray]]]  # model -> checked input sets


# --- writer side: checking test_inputs and describing a vector --------------------------------

def _input_sets(value: Any, where: str) -> list[Any]:
    """One input set or a list of them, as a list."""
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InputError(f"{where} must be a dict {{input name: array}} or a list of such dicts, "
                     f"got {type(value).__name__}")


def _check_input_set(feeds: Any, spec: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """feeds checked against the model's inputs (names, shapes, dtypes), as C-order arrays."""
    if not isinstance(feeds, Mapping):
        raise InputError(f"{where} must be a dict {{input name: array}}, "
                         f"got {type(feeds).__name__}")
    expected = {str(e["name"]): e for e in spec["inputs"]}
    unknown = sorted(set(map(str, feeds)) - set(expected))
    if unknown:
        raise InputError(f"{where}: the model has no input(s) {unknown}; its inputs are "
                         f"{list(expected)}")
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise InputError(f"{where}: missing input(s) {missing}; every input needs a value")
    arrays = {}
    for name, entry in expected.items():
        array = np.asarray(feeds[name])
        shape, dtype = [int(d) for d in entry["shape"]], np.dtype(entry["dtype"])
        if list(array.shape) != shape or array.dtype != dtype:
            raise InputError(f"{where}: input '{name}' is {array.dtype}{list(array.shape)}, "
                             f"expected {dtype}{shape}")
        arrays[name] = np.ascontiguousarray(array)
    return arrays


def check_test_inputs(test_inputs: TestInputs, specs: Mapping[str, dict[str, Any]]) -> InputSets:
    """test_inputs checked against the models' manifest entries: {model: [input set, ...]}.

    One model: an input set {input name: array} or a list of them. Several models: {model
    name: input set or list}; models left out get no vectors. Raises InputError naming the
    model, the set and the input at fault.
    """
    if len(specs) == 1:
        (model,) = specs
        per_model = {model: test_inputs}
    elif isinstance(test_inputs, Mapping):
        per_model = dict(test_inputs)
        unknown = sorted(set(map(str, per_model)) - set(specs))
        if unknown:
            raise InputError(f"test_inputs names models {unknown} that are not in this "
                             f"factory; it holds {sorted(specs)} (several models: give "
                             f"{{model name: inputs}})")
    else:
        raise InputError(f"test_inputs for a factory of several models must be {{model name: "
                         f"input set or list}}, got {type(test_inputs).__name__}")
    checked = {}
    for model, value in sorted(per_model.items()):
        sets = _input_sets(value, f"test_inputs of model '{model}'")
        checked[model] = [_check_input_set(feeds, specs[model],
                                           f"test_inputs[{k}] of model '{model}'")
                          for k, feeds in enumerate(sets)]
    return checked


def tolerances(outputs: Iterable[np.ndarray]) -> tuple[float, float]:
    """(rtol, atol) for a vector with these expected outputs (see the module docstring)."""
    floats = [np.finfo(o.dtype).eps for o in outputs if o.dtype.kind == "f"]
    return max([RTOL, *(2 * float(eps) for eps in floats)]), ATOL


def vector_entry(inputs: dict[str, np.ndarray], outputs: Sequence[tuple[str, np.ndarray]],
                 store: Callable[[np.ndarray], int]) -> dict[str, Any]:
    """The manifest entry of one vector; store(array) places an array, returns its region."""
    def place(array: np.ndarray) -> dict[str, Any]:
        return {"weight": store(array), "shape": list(array.shape), "dtype": array.dtype.name}

    rtol, atol = tolerances(a for _, a in outputs)
    return {"inputs": {name: place(a) for name, a in inputs.items()},
            "outputs": [{"name": name, **place(a)} for name, a in outputs],
            "rtol": rtol, "atol": atol}


# --- reader side: running the vectors ---------------------------------------------------------

def _read_array(lib: Library, entry: Any, what: str) -> np.ndarray:
    """A vector's array from its weight region, its shape and dtype checked against the bytes."""
    try:
        shape = tuple(int(d) for d in entry["shape"])
        dtype = np.dtype(str(entry["dtype"]))
        index = int(entry["weight"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{lib.path}: {what} has a malformed entry: {e!r}") from None
    data = lib.blob.weight(index)
    count = int(np.prod(shape, dtype=np.int64))
    if min(shape, default=0) < 0 or count * dtype.itemsize != len(data):
        raise FormatError(f"{lib.path}: {what} is {dtype}{list(shape)}, which does not match "
                          f"its {len(data)}-byte weight region {index}")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def compare(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """How far got is from expected: errors, elements outside tolerance, worst index."""
    g, e = got.astype(np.float64), expected.astype(np.float64)
    if expected.dtype.kind == "f":
        same = (g == e) | (np.isnan(g) & np.isnan(e))
        with np.errstate(invalid="ignore"):  # inf - inf: such elements are `same`
            err = np.where(same, 0.0, np.abs(g - e))
        err[np.isnan(err)] = np.inf  # NaN on one side only
        ok = same | (np.isfinite(err) & (err <= atol + rtol * np.abs(e)))
    else:
        ok = got == expected
        err = np.where(ok, 0.0, np.abs(g - e))
    nonzero = e != 0
    rel = np.divide(err, np.abs(e), out=np.zeros_like(err), where=nonzero)
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    return {"passed": bool(ok.all()), "mismatched": int(ok.size - np.count_nonzero(ok)),
            "size": int(ok.size), "max_abs_error": float(err.max(initial=0.0)),
            "max_rel_error": float(rel.max(initial=0.0)), "worst_index": list(map(int, worst))}


def _tolerance(vector: dict[str, Any], key: str, where: str) -> float:
    value = vector.get(key)
    if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise FormatError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _run_vector(lib: Library, executor: Any, model: str, index: int,
                vector: Any) -> dict[str, Any]:
    where = f"{lib.path}: self-test vector {index} of model '{model}'"
    if not isinstance(vector, dict) or not isinstance(vector.get("inputs"), dict) \
            or not isinstance(vector.get("outputs"), list):
        raise FormatError(f"{where} is malformed (needs inputs and outputs)")
    if sorted(vector["inputs"]) != sorted(executor.inputs):
        raise FormatError(f"{where} has inputs {sorted(vector['inputs'])}; the model's inputs "
                          f"are {sorted(executor.inputs)}")
    names = [n for n, _ in executor.outputs]
    if [o.get("name") if isinstance(o, dict) else None for o in vector["outputs"]] != names:
        raise FormatError(f"{where} does not list the model's outputs {names}")
    rtol, atol = _tolerance(vector, "rtol", where), _tolerance(vector, "atol", where)
    for name, entry in vector["inputs"].items():
        array = _read_array(lib, entry, f"self-test vector {index} input '{name}'")
        if array.shape != executor.inputs[name].shape or \
                array.dtype != executor.inputs[name].dtype:
            raise FormatError(f"{where}: input '{name}' is {array.dtype}{list(array.shape)}, "
                              f"the model takes {executor.inputs[name].dtype}"
                              f"{list(executor.inputs[name].shape)}")
        executor.set_input(name, array)
    executor.run()
    details = []
    for k, entry in enumerate(vector["outputs"]):
        expected = _read_array(lib, entry, f"self-test vector {index} output '{names[k]}'")
        got = executor.get_output(k)
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise FormatError(f"{where}: expected output '{names[k]}' is {expected.dtype}"
                              f"{list(expected.shape)}, the model gives {got.dtype}"
                              f"{list(got.shape)}")
        details.append({"name": names[k], **compare(got, expected, rtol, atol)})
    return {"model": model, "index": index, "passed": all(d["passed"] for d in details),
            "max_abs_error": max((d["max_abs_error"] for d in details), default=0.0),
            "max_rel_error": max((d["max_rel_error"] for d in details), default=0.0),
            "rtol": rtol, "atol": atol, "outputs": details}


def _model_params(params: Mapping[str, Any] | str | os.PathLike, model: str) -> dict[str, Any]:
    """Model `model`'s weights from a .safetensors path or a dict laid out like one."""
    if not isinstance(params, Mapping):
        return load_params(params, model=model)
    return model_entries(params, model)


def _selected(lib: Library, models: Iterable[str] | None) -> list[str]:
    with_vectors = [m for m in lib.models if lib.manifest["models"][m].get("selftest")]
    if models is None:
        if not with_vectors:
            raise KilnError(f"{lib.path} has no self-test vectors; export it with "
                            f"export_library(..., test_inputs=...) or `kiln compile --selftest`")
        return with_vectors
    chosen = [models] if isinstance(models, str) else list(models)
    for m in chosen:
        if m not in lib.models:
            raise KilnError(f"no model named '{m}' in {lib.path}; it holds {lib.models}")
        if m not in with_vectors:
            raise KilnError(f"model '{m}' of {lib.path} has no self-test vectors; models with "
                            f"vectors: {with_vectors}")
    return chosen


def run_selftest(lib: Library, *, params: Mapping[str, Any] | str | os.PathLike | None = None,
                 models: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Run the library's embedded test vectors on cpu:0; one result row per vector.

    Each row: model, index, passed, max_abs_error, max_rel_error, rtol, atol, and outputs
    (per output: name, passed, mismatched/size elements, errors, worst_index). params: the
    weights of a library exported with package_params=False (a .safetensors path from
    export_params, or a dict laid out like one). models: which models (default: all with
    vectors). Raises KilnError if there are no vectors to run.
    """
    rows = []
    for model in _selected(lib, models):
        executor = lib[model](cpu(0))
        if params is not None:
            executor.load_params(_model_params(params, model))
        missing = executor.missing_params()
        if missing:
            raise InputError(f"model '{model}' of {lib.path} was exported without its weights "
                             f"(package_params=False): pass params=... (the .safetensors file "
                             f"from export_params) to run its self-test; missing "
                             f"{len(missing)} params, e.g. {missing[:3]}")
        vectors = lib.manifest["models"][model]["selftest"]
        if not isinstance(vectors, list):
            raise FormatError(f"{lib.path}: model '{model}': selftest is not a list")
        rows.extend(_run_vector(lib, executor, model, k, v) for k, v in enumerate(vectors))
    return rows
