"""The manifest's schema, checked once when a library is read (docs/format.md, "Manifest").

Every field a reader uses (the executors, the self-test, `kiln inspect`, `kiln viz`) is
checked for its type and range, and every reference for its target: a location's param, a
weight index, an arena span. A forged or damaged manifest is then one FormatError naming the
field (`models['default'].inputs[0].shape must be a list of ints >= 0, got ['x']`), never a
KeyError or AttributeError later. Keys not named here are ignored (minor versions add
optional fields). The schema is data, one table per record; a field's path is built only when
a check fails, so checking costs a few microseconds per kernel.

Left to their readers, which need the weights: where a weight region lies in the weights
section (Blob.weight) and whether its size fits the tensor it holds (the executor, the
self-test). Beyond any schema: whether the native code agrees with the manifest (how many
bytes a kernel really touches); the digests and the signature vouch for that.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from .executor import EXECUTORS

# The dtypes kiln compiles and their sizes: kiln.ir.types.DTYPE_SHORT's keys (a test keeps
# them equal; the runtime imports nothing of the compiler).
DTYPES = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4,
          "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}
MAX_INT = (1 << 63) - 1  # every size, offset and dim fits an int64
_HEX32 = re.compile(r"[0-9a-f]{64}\Z")
_SHOW = reprlib.Repr()  # a bounded repr of what was found, however large
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 6, 4, 40, 40
_MISSING = object()

Check = Callable[[Any], None]


class _Bad(Exception):
    """A field that breaks the schema; its path is collected as the error unwinds."""

    def __init__(self, must: str, found: Any) -> None:
        super().__init__(must)
        self.must, self.found, self.steps = must, found, []

    def at(self, step: str) -> _Bad:
        self.steps.append(step)
        return self

    def message(self, where: str) -> str:
        path = "".join(reversed(self.steps)).lstrip(".")
        if not path:
            return f"{where}: the manifest must {self.must}, got {_SHOW.repr(self.found)}"
        if self.found is _MISSING:
            return f"{where}: manifest field {path} is missing{self.must}"
        return f"{where}: manifest field {path} must {self.must}, got {_SHOW.repr(self.found)}"


# --- checks of one value (a leaf), and of lists, tables and records of them ------------------

def _is(kind: type, what: str) -> Check:
    def check(value: Any) -> None:
        if type(value) is not kind:
            raise _Bad(f"be {what}", value)
    return check


def _int(minimum: int = 0) -> Check:
    must = f"be an int >= {minimum}"

    def check(value: Any) -> None:
        if type(value) is not int or not minimum <= value <= MAX_INT:
            raise _Bad(must, value)
    return check


def _match(pattern: re.Pattern, what: str) -> Check:
    def check(value: Any) -> None:
        if type(value) is not str or not pattern.match(value):
            raise _Bad(f"be {what}", value)
    return check


def _one_of(choices: Any, what: str) -> Check:
    must = f"be {what}, one of {sorted(choices)}"

    def check(value: Any) -> None:
        if type(value) is not str or value not in choices:
            raise _Bad(must, value)
    return check


def _shape(value: Any) -> None:
    if type(value) is list:
        for dim in value:  # a loop: twice as fast as all() over a generator here
            if type(dim) is not int or not 0 <= dim <= MAX_INT:
                break
        else:
            return
    raise _Bad("be a list of ints >= 0", value)


def _strings(value: Any) -> None:
    if type(value) is list:
        for item in value:
            if type(item) is not str:
                break
        else:
            return
    raise _Bad("be a list of strings", value)


def _symbol(value: Any) -> None:
    """A kernel or entry point: a C identifier in kiln's namespace, so that a forged manifest
    cannot have an executor call a C library function (abort, system) by name."""
    if type(value) is not str or not value.startswith("kiln_") \
            or not (value.isascii() and value.isidentifier()):
        raise _Bad("be a kiln symbol (a C identifier starting kiln_)", value)


def _tolerance(value: Any) -> None:
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        raise _Bad("be a finite number >= 0", value)


def _nullable(check: Check) -> Check:
    def run(value: Any) -> None:
        if value is not None:
            check(value)
    return run


def _list_of(check: Check, what: str) -> Check:
    def run(value: Any) -> None:
        if type(value) is not list:
            raise _Bad(f"be a list of {what}", value)
        for k, item in enumerate(value):
            try:
                check(item)
            except _Bad as e:
                raise e.at(f"[{k}]") from None
    return run


def _table_of(check: Check, what: str) -> Check:
    def run(value: Any) -> None:
        if type(value) is not dict:
            raise _Bad(f"be a table {{name: {what}}}", value)
        for key, item in value.items():
            try:
                check(item)
            except _Bad as e:
                raise e.at(f"[{key!r}]") from None
    return run


def _record(what: str, required: dict[str, Check], optional: dict[str, Check] | None = None
            ) -> Check:
    fields = [(k, c, True) for k, c in required.items()]
    fields += [(k, c, False) for k, c in (optional or {}).items()]
    must = f"be {what}"

    def run(value: Any) -> None:
        if type(value) is not dict:
            raise _Bad(must, value)
        for key, check, needed in fields:
            if key in value:
                try:
                    check(value[key])
                except _Bad as e:
                    raise e.at(f".{key}") from None
            elif needed:
                raise _Bad("", _MISSING).at(f".{key}")
    return run


# --- the schema -----------------------------------------------------------------------------

_STR = _is(str, "a string")
_SIZE = _INDEX = _int(0)
_DTYPE = _one_of(DTYPES, "a dtype kiln supports")
_PARAM_LOC = _record("a param location", {"param": _STR})
_ARENA_LOC = _record("an arena location", {"arena": _SIZE, "nbytes": _SIZE})


def _loc(value: Any) -> None:
    """{"arena": offset, "nbytes": n} or {"param": name}, told apart as the executors do.

    The most frequent record (a few per kernel): the common case is checked inline, anything
    else by the two records, which name the bad field."""
    if type(value) is not dict:
        raise _Bad("be a location ({'arena': offset, 'nbytes': n} or {'param': name})", value)
    if "param" in value:
        if type(value["param"]) is not str:
            _PARAM_LOC(value)  # raises, naming the field
    else:
        arena, nbytes = value.get("arena"), value.get("nbytes")
        if type(arena) is not int or type(nbytes) is not int or not 0 <= arena <= MAX_INT \
                or not 0 <= nbytes <= MAX_INT:
            _ARENA_LOC(value)  # raises, naming the field


_TENSOR = _record("a tensor {name, shape, dtype, loc}",
                  {"name": _STR, "shape": _shape, "dtype": _DTYPE, "loc": _loc})
_PARAM = _record("a param {name, shape, dtype, weight}",
                 {"name": _STR, "shape": _shape, "dtype": _DTYPE, "weight": _nullable(_INDEX)})
_STEP_FIELDS = {"label": _STR, "node": _STR, "shapes": _list_of(_shape, "shapes"),
                "args": _list_of(_loc, "locations")}
_NATIVE = _record("a kernel {func, label, node, shapes, args}",
                  {"func": _symbol, **_STEP_FIELDS}, {"inputs": _strings, "outputs": _strings})
_EXTERNAL_STEP = _record("an external step {external, label, node, shapes, args}",
                         {"external": _STR, **_STEP_FIELDS},
                         {"inputs": _strings, "outputs": _strings})


def _kernel(value: Any) -> None:
    """A step of the model: a native kernel, or an external function's (docs/byoc.md)."""
    (_EXTERNAL_STEP if type(value) is dict and "external" in value else _NATIVE)(value)


def _indices(value: Any) -> None:
    if type(value) is not list or any(type(i) is not int or i < 0 for i in value):
        raise _Bad("be a list of node indices", value)


def _entries(value: Any) -> None:
    if type(value) is not list or any(
            type(e) is not list or len(e) != 2 or any(type(i) is not int or i < 0 for i in e)
            for e in value):
        raise _Bad("be a list of [node index, output index] pairs", value)


def _graph(value: Any) -> None:
    """An external function's JSON graph (docs/byoc.md): its nodes, and indices into them
    that exist; each node's content is its backend's to check when it builds the engine."""
    _GRAPH(value)
    count = len(value["nodes"])
    for field in ("inputs", "constants"):
        for k, i in enumerate(value[field]):
            if i >= count:
                raise _Bad(f"index one of the graph's {count} nodes", i).at(f".{field}[{k}]")
    for k, (i, _) in enumerate(value["outputs"]):
        if i >= count:
            raise _Bad(f"index one of the graph's {count} nodes", i).at(f".outputs[{k}]")


_GRAPH = _record("a kiln-external graph {nodes, inputs, constants, outputs}",
                 {"nodes": _list_of(_is(dict, "a JSON object"), "nodes"), "inputs": _indices,
                  "constants": _indices, "outputs": _entries})
_ENGINE = _record("a prebuilt engine {weight, key}", {"weight": _INDEX, "key": _STR})
_EXTERNAL = _record("an external function {backend, graph}",
                    {"backend": _STR, "graph": _graph}, {"engine": _ENGINE})


def _aot_step(value: Any) -> None:
    if type(value) is dict and "external" in value:
        _AOT_EXTERNAL(value)
    else:
        _AOT_ENTRY(value)


_AOT_ENTRY = _record("an aot step {entry} or {external}", {"entry": _symbol})
_AOT_EXTERNAL = _record("an aot step {entry} or {external}", {"external": _STR})
_BUFFER = _record("a buffer {tensor, offset, size, first, last}",
                  {"tensor": _STR, "offset": _SIZE, "size": _SIZE, "first": _int(-1),
                   "last": _int(-1)})
_MEMORY = _record("a memory plan {unplanned_bytes, buffers}",
                  {"unplanned_bytes": _SIZE, "buffers": _list_of(_BUFFER, "buffers")})
_SOURCE = _record("a source {format, opset, ir_version, producer, blake3}", {},
                  {"format": _STR, "opset": _STR, "ir_version": _STR, "producer": _STR,
                   "blake3": _match(_HEX32, "a BLAKE3 hex digest")})
_BUILD = _record("a build {passes}", {}, {"passes": _strings})
_ARRAY = {"weight": _INDEX, "shape": _shape, "dtype": _DTYPE}
_VECTOR = _record("a self-test vector {inputs, outputs, rtol, atol}",
                  {"inputs": _table_of(_record("an array {weight, shape, dtype}", _ARRAY),
                                       "array"),
                   "outputs": _list_of(_record("an array {name, weight, shape, dtype}",
                                               {"name": _STR, **_ARRAY}), "arrays"),
                   "rtol": _tolerance, "atol": _tolerance})
_MODEL = _record("a model entry (a JSON object)",
                 {"executor": _one_of(tuple(EXECUTORS), "an executor kind"),
                  "inputs": _list_of(_TENSOR, "tensors"),
                  "outputs": _list_of(_TENSOR, "tensors"),
                  "params": _list_of(_PARAM, "params"), "arena_bytes": _SIZE,
                  "kernels": _list_of(_kernel, "kernels"), "memory": _MEMORY},
                 {"entry": _symbol, "ir": _STR, "source": _SOURCE, "build": _BUILD,
                  "selftest": _list_of(_VECTOR, "self-test vectors"),
                  "externals": _table_of(_EXTERNAL, "external function"),
                  "aot": _list_of(_aot_step, "aot steps")})
_TARGET = _record("a target {kind, triple, features, cflags, compiler}",
                  {"kind": _STR, "triple": _STR, "features": _strings, "cflags": _strings,
                   "compiler": _STR})
_REGION = _record("a weight region {offset, nbytes, blake3}",
                  {"offset": _SIZE, "nbytes": _SIZE,
                   "blake3": _match(_HEX32, "a BLAKE3 hex digest")})
_MANIFEST = _record("a JSON object",
                    {"kiln_version": _STR, "target": _TARGET,
                     "weights": _list_of(_REGION, "weight regions"),
                     "models": _table_of(_MODEL, "model entry")})


# --- references between fields (run once the types are known to be right) -------------------

def _nbytes(entry: dict[str, Any]) -> int:
    """A tensor's size in bytes; refused when it does not fit an int64."""
    shape, size = entry["shape"], DTYPES[entry["dtype"]]
    if 0 in shape:
        return 0
    for dim in shape:  # stops early: a forged shape of huge dims costs no bignum arithmetic
        size *= dim
        if size > MAX_INT:
            raise _Bad("describe fewer than 2**63 bytes", shape).at(".shape")
    return size


def _weight(index: int, regions: int) -> None:
    if index >= regions:
        raise _Bad(f"index the {regions}-entry weights table", index).at(".weight")


def _place(loc: dict[str, Any], arena: int, params: set[str]) -> None:
    """A location names a param of the model, or lies within its arena."""
    if "param" in loc:
        if loc["param"] not in params:
            raise _Bad("name a param of the model", loc["param"]).at(".param")
    elif loc["arena"] + loc["nbytes"] > arena:
        raise _Bad(f"lie within the model's {arena}-byte arena (arena_bytes)", loc)


def _io_tensor(t: dict[str, Any], arena: int, params: set[str], is_input: bool) -> None:
    """A model input's or output's location holds exactly its bytes (or, for an output,
    names a param)."""
    size, loc = _nbytes(t), t["loc"]
    try:
        if "param" in loc:
            if is_input:
                raise _Bad("be an arena location (the caller writes an input)", loc)
        elif loc["nbytes"] != size:
            raise _Bad(f"be the tensor's size, {size} bytes", loc["nbytes"]).at(".nbytes")
        _place(loc, arena, params)
    except _Bad as e:
        raise e.at(".loc") from None


def _kernel_args(kernel: dict[str, Any], arena: int, params: set[str]) -> None:
    """Each arg names a param or lies in the arena; with the kernel's tensor names known (not
    in older files), there is one arg per input and output, and outputs are in the arena."""
    args = kernel["args"]
    first_output = len(args)
    if "inputs" in kernel and "outputs" in kernel:
        first_output = len(kernel["inputs"])
        if len(args) != first_output + len(kernel["outputs"]):
            raise _Bad("hold one location per kernel input and output", args).at(".args")
    for j, loc in enumerate(args):
        try:
            if j >= first_output and "param" in loc:
                raise _Bad("be an arena location (a kernel writes its outputs there)", loc)
            _place(loc, arena, params)
        except _Bad as e:
            raise e.at(f".args[{j}]") from None


def _external_refs(model: dict[str, Any], params: set[str], regions: int) -> None:
    """External steps name a function of the model, whose constants are params and whose
    prebuilt engine is a weight region."""
    externals = model.get("externals", {})
    steps = [(f".kernels[{k}]", s) for k, s in enumerate(model["kernels"])]
    steps += [(f".aot[{k}]", s) for k, s in enumerate(model.get("aot", ()))]
    for path, step in steps:
        if "external" in step and step["external"] not in externals:
            raise _Bad("name one of the model's external functions", step["external"]) \
                .at(".external").at(path)
    for name, ext in externals.items():
        graph = ext["graph"]
        try:
            for i in graph["constants"]:
                if graph["nodes"][i].get("name") not in params:
                    raise _Bad("name a param of the model", graph["nodes"][i].get("name")) \
                        .at(".name").at(f".graph.nodes[{i}]")
            if "engine" in ext:
                try:
                    _weight(ext["engine"]["weight"], regions)
                except _Bad as e:
                    raise e.at(".engine") from None
        except _Bad as e:
            raise e.at(f".externals[{name!r}]") from None


def _model_refs(model: dict[str, Any], regions: int) -> None:
    """The model's locations, weight indices, executor entry and vectors point somewhere."""
    params = set()
    for k, p in enumerate(model["params"]):
        try:
            if p["name"] in params:
                raise _Bad("be unique among the model's params", p["name"]).at(".name")
            params.add(p["name"])
            _nbytes(p)
            if p["weight"] is not None:
                _weight(p["weight"], regions)
        except _Bad as e:
            raise e.at(f".params[{k}]") from None
    arena = model["arena_bytes"]
    for kind in ("inputs", "outputs"):
        for k, tensor in enumerate(model[kind]):
            try:
                _io_tensor(tensor, arena, params, kind == "inputs")
            except _Bad as e:
                raise e.at(f".{kind}[{k}]") from None
    for k, kernel in enumerate(model["kernels"]):
        try:
            _kernel_args(kernel, arena, params)
        except _Bad as e:
            raise e.at(f".kernels[{k}]") from None
    _external_refs(model, params, regions)
    if model["executor"] == "aot" and "entry" not in model and "aot" not in model:
        raise _Bad(" (an aot model runs through its entry point)", _MISSING).at(".entry")
    for k, vector in enumerate(model.get("selftest", ())):
        arrays = [(f".inputs[{n!r}]", a) for n, a in vector["inputs"].items()]
        arrays += [(f".outputs[{j}]", a) for j, a in enumerate(vector["outputs"])]
        for step, array in arrays:
            try:
                _nbytes(array)
                _weight(array["weight"], regions)
            except _Bad as e:
                raise e.at(step).at(f".selftest[{k}]") from None


def check_manifest(manifest: object, where: str) -> None:
    """Raise FormatError naming the first field of manifest that breaks the schema."""
    try:
        _MANIFEST(manifest)
        regions = len(manifest["weights"])
        for name, model in manifest["models"].items():
            try:
                _model_refs(model, regions)
            except _Bad as e:
                raise e.at(f"[{name!r}]").at("models") from None
    except _Bad as e:
        raise FormatError(e.message(where)) from None
