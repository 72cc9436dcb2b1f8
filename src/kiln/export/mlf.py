"""The Model Library Format (docs/mlf.md): a build as plain C sources, weights and metadata,
for programs with no Python, no dynamic loader and no operating system.

FactoryModule.export_library writes it for a `.mlf.tar` path. The kernels are the sources
kiln compiled; the runtime is the GEMM driver, a kiln_scratch that carves the kernels'
buffers out of the caller's workspace (no malloc) and a serial kiln_parallel (the archive's
code runs in the caller's thread: each kernel's parallel loops run whole); each model gets
a C API (kiln_<model>.h/.c), its weights as const arrays and as safetensors, its IR, and
its self-test vectors if the export made some.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..codegen.aot import render_entry
from ..codegen.gemm import GEMM_DRIVER_SOURCE
from ..codegen.kernels.registry import ctype
from ..codegen.target import Target
from ..codegen.threadpool import SERIAL_POOL_SOURCE
from ..errors import ExportError
from .pack import tar_bytes

if TYPE_CHECKING:  # the factory imports this module: no cycle at run time
    from .factory import CompiledModel, VectorData

FORMAT = "kiln-mlf"
VERSION = 1
ALIGN = 64  # the workspace's and every scratch buffer's alignment, in bytes
SLOTS = 3  # kiln_scratch's slots (kiln/codegen/gemm.py)
# Self-test tolerance of a project built from the archive: another compiler, CPU or flags
# may contract multiply-adds differently (the sums' order is the same).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}

_SCRATCH_CALL = re.compile(r"kiln_scratch\((\d+), (\d+)\)")

RUNTIME_HEADER = """/* kiln Model Library Format runtime (docs/mlf.md). */
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H
#include <stddef.h>
#include <stdint.h>

/* The kernels' scratch buffers: `floats[slot]` floats for each of the 3 slots, carved in
   order out of `base` (64-byte aligned), which the caller's workspace provides. */
void kiln_runtime_scratch(uint8_t* base, const size_t floats[3]);
/* A kernel's scratch buffer of slot `slot`, at least `count` floats. */
float* kiln_scratch(int slot, size_t count);
#endif
"""

RUNTIME_SOURCE = """/* kiln MLF runtime: scratch buffers carved from the workspace (no malloc). */
#include "kiln_runtime.h"

static float* slots[3];
static size_t sizes[3];

void kiln_runtime_scratch(uint8_t* base, const size_t floats[3]) {
    for (int k = 0; k < 3; ++k) {
        slots[k] = (float*)(void*)base;
        sizes[k] = floats[k];
        base += (floats[k] * sizeof(float) + 63) / 64 * 64;
    }
}

float* kiln_scratch(int slot, size_t count) {
    /* the export sized every slot for the largest request of the model's kernels */
    if (slot < 0 || slot > 2 || count > sizes[slot]) __builtin_trap();
    return slots[slot];
}
"""

RUNTIME_FILES = {"runtime/include/kiln_runtime.h": RUNTIME_HEADER,
                 "runtime/src/kiln_runtime.c": RUNTIME_SOURCE,
                 "runtime/src/kiln_gemm.c": GEMM_DRIVER_SOURCE,
                 "runtime/src/kiln_parallel.c": SERIAL_POOL_SOURCE}


def c_identifier(name: str, taken: set[str]) -> str:
    """name as a C identifier (letters, digits, _) not in taken, compared case-blind
    (macros use it upper case); added to taken."""
    base = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if base[0].isdigit():
        base = f"_{base}"
    ident, k = base, 1
    while ident.upper() in taken:
        ident, k = f"{base}_{k}", k + 1
    taken.add(ident.upper())
    return ident


def _round(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def scratch_floats(sources: list[str]) -> list[int]:
    """The largest kiln_scratch request of each slot in these kernel sources: every call in
    generated kernels has literal arguments, and a GEMM call whose B the driver packs at run
    time states the slot-0 floats it takes in a comment of the same form."""
    floats = [0] * SLOTS
    for source in sources:
        for slot, count in _SCRATCH_CALL.findall(source):
            floats[int(slot)] = max(floats[int(slot)], int(count))
    return floats


def _c_bytes(data: bytes) -> str:
    """data as the body of a C array initializer, 16 bytes a line."""
    hexed = [f"0x{b:02x}" for b in data] or ["0"]
    return ",\n".join("    " + ", ".join(hexed[i:i + 16]) for i in range(0, len(hexed), 16))


@dataclass
class _Model:
    """One model as the archive writes it: names, C identifiers and sizes."""

    model: CompiledModel
    ident: str  # the model's C identifier: symbols are kiln_<ident>_...
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    params: list[dict[str, Any]]
    kernels: list[str]
    entry: Any  # codegen.render.KernelSource
    scratch: list[int]

    @property
    def prefix(self) -> str:
        return f"kiln_{self.ident}"

    @property
    def macro(self) -> str:
        return self.prefix.upper()

    @property
    def scratch_offset(self) -> int:
        return _round(self.model.spec["arena_bytes"])

    @property
    def scratch_bytes(self) -> int:
        return sum(_round(f * 4) for f in self.scratch)


def _io(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's inputs or outputs with their C names, sizes and where they live."""
    taken: set[str] = set()
    rows = []
    for t in tensors:
        nbytes = int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
        row = {"name": t["name"], "c_name": c_identifier(t["name"], taken),
               "shape": list(t["shape"]), "dtype": t["dtype"], "bytes": nbytes}
        loc = t["loc"]
        row.update({"param": loc["param"]} if "param" in loc else {"offset": loc["arena"]})
        rows.append(row)
    return rows


def _prepare(name: str, model: CompiledModel, idents: set[str]) -> _Model:
    """A model's archive view; ExportError when a kernel has no C source."""
    spec = model.spec
    for k in spec["kernels"]:
        if "external" in k:
            backend = spec["externals"][k["external"]]["backend"]
            raise ExportError(
                f"cannot write a Model Library Format archive: model '{name}' runs function "
                f"'{k['external']}' ({k['node']}) on the external backend '{backend}' "
                "(docs/byoc.md), and the format holds C only; build it without offload, or "
                "export it as .so")
        if k["func"] not in model.sources:
            raise ExportError(
                f"cannot write a Model Library Format archive: model '{name}' kernel "
                f"'{k['func']}' ({k['label']}, node '{k['node']}') has no C source (a part "
                "compiled for a non-C target or handed to an external engine); export it as "
                ".so or .tar instead")
    ident = c_identifier(name, idents)
    taken: set[str] = set()
    params = [{"name": p, "symbol": f"kiln_{ident}_p{j}", "c_name": c_identifier(p, taken),
               "shape": list(a.shape), "dtype": a.dtype.name, "bytes": a.nbytes}
              for j, (p, a) in enumerate(sorted(model.weights.items()))]
    kernels = [k["func"] for k in spec["kernels"]]
    entry = render_entry(spec["kernels"], sorted(model.weights))
    return _Model(model, ident, _io(spec["inputs"]), _io(spec["outputs"]), params, kernels,
                  entry, scratch_floats([model.sources[f] for f in kernels]))


def _header(m: _Model) -> str:
    """kiln_<model>.h: the model's C API."""
    mac, pre = m.macro, m.prefix
    lines = [f"/* Model '{m.model.name}': generated by kiln {__version__}, Model Library "
             f"Format {VERSION} (docs/mlf.md). */",
             f"#ifndef {mac}_H", f"#define {mac}_H", "#include <stddef.h>", "#include <stdint.h>",
             "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
             f"#define {mac}_WORKSPACE_SIZE {m.scratch_offset + m.scratch_bytes}u",
             f"#define {mac}_WORKSPACE_ALIGN {ALIGN}u",
             f"#define {mac}_NUM_INPUTS {len(m.inputs)}u",
             f"#define {mac}_NUM_OUTPUTS {len(m.outputs)}u"]
    for kind, rows in (("INPUT", m.inputs), ("OUTPUT", m.outputs)):
        lines += [f"#define {mac}_{kind}_{t['c_name'].upper()}_SIZE {t['bytes']}u  "
                  f"/* {t['name']}: {t['dtype']}{t['shape']} */" for t in rows]
    for kind, rows, const in (("inputs", m.inputs, "const "), ("outputs", m.outputs, "")):
        fields = "".join(f"    {const}{ctype(t['dtype'])}* {t['c_name']};\n" for t in rows)
        lines.append(f"\nstruct {pre}_{kind} {{\n{fields}}};")
    lines += ["",
              "/* Run the model once: inputs are copied into the workspace (WORKSPACE_SIZE bytes,",
              "   WORKSPACE_ALIGN-aligned), outputs out of it. 0, or 1 for a NULL or misaligned",
              "   workspace, 2 for NULL inputs or outputs. */",
              f"int {pre}_run(const struct {pre}_inputs* inputs, struct {pre}_outputs* outputs,",
              "    void* workspace);", "", "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)


def _run_source(m: _Model) -> str:
    """kiln_<model>.c: the run function."""
    pre = m.prefix
    index = {p["name"]: p["symbol"] for p in m.params}
    copy_in = [f"    memcpy(ws + {t['offset']}, inputs->{t['c_name']}, {t['bytes']});"
               for t in m.inputs]
    sources = [index[t["param"]] if "param" in t else f"ws + {t['offset']}" for t in m.outputs]
    copy_out = [f"    memcpy(outputs->{t['c_name']}, {src}, {t['bytes']});"
                for t, src in zip(m.outputs, sources, strict=True)]
    scratch = ", ".join(str(f) for f in m.scratch)
    externs = "".join(f"extern const uint8_t {p['symbol']}[];\n" for p in m.params)
    symbols = ", ".join(p["symbol"] for p in m.params) or "0"
    return (f'#include <stdint.h>\n#include <string.h>\n#include "{pre}.h"\n'
            f'#include "kiln_runtime.h"\n\n{externs}'
            f"void {m.entry.name}(uint8_t* workspace, const void* const* params);\n\n"
            f"static const void* const params[] = {{{symbols}}};\n"
            f"static const size_t scratch[3] = {{{scratch}}};\n\n"
            f"int {pre}_run(const struct {pre}_inputs* inputs, struct {pre}_outputs* outputs,\n"
            "    void* workspace) {\n"
            "    uint8_t* ws = (uint8_t*)workspace;\n"
            f"    if (ws == NULL || (uintptr_t)ws % {ALIGN} != 0) return 1;\n"
            "    if (inputs == NULL || outputs == NULL) return 2;\n"
            + "\n".join(copy_in) + "\n"
            f"    kiln_runtime_scratch(ws + {m.scratch_offset}, scratch);\n"
            f"    {m.entry.name}(ws, params);\n"
            + "\n".join(copy_out) + "\n    return 0;\n}\n")


def _params_source(m: _Model) -> str:
    """kiln_<model>_params.c: every weight as a const, 64-byte aligned byte array (in
    flash on a microcontroller), in the entry point's param order."""
    parts = [f"/* Weights of model '{m.model.name}' (kiln {__version__}). */\n"
             "#include <stdint.h>\n"]
    for p in m.params:
        data = np.ascontiguousarray(m.model.weights[p["name"]]).tobytes()
        parts.append(f"/* {p['name']}: {p['dtype']}{p['shape']} */\n"
                     f"_Alignas({ALIGN}) const uint8_t {p['symbol']}[{max(1, len(data))}] = {{\n"
                     f"{_c_bytes(data)}\n}};\n")
    return "\n".join(parts)


def _shares(buffers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The memory plan's buffers, each with the tensors whose bytes overlap its own."""
    rows = []
    for b in buffers:
        end = b["offset"] + b["size"]
        others = [o["tensor"] for o in buffers if o is not b
                  and o["offset"] < end and b["offset"] < o["offset"] + o["size"]]
        rows.append(dict(b, shares_with=sorted(others)))
    return rows


def _metadata_entry(m: _Model, files: dict[str, str], vectors: int) -> dict[str, Any]:
    """A model's entry in metadata.json (docs/mlf.md)."""
    spec = m.model.spec
    return {
        "name": m.model.name, "prefix": m.prefix, "executor": "aot", "entry": m.entry.name,
        "inputs": m.inputs, "outputs": m.outputs,
        "memory": {
            "workspace_bytes": m.scratch_offset + m.scratch_bytes,
            "arena_bytes": spec["arena_bytes"], "scratch_offset": m.scratch_offset,
            "scratch_bytes": m.scratch_bytes, "scratch": list(m.scratch),
            "constant_bytes": sum(p["bytes"] for p in m.params),
            "io_bytes": sum(t["bytes"] for t in m.inputs + m.outputs),
            "buffers": _shares(spec["memory"]["buffers"]),
        },
        "kernels": m.kernels,
        "params": [{k: p[k] for k in ("name", "symbol", "shape", "dtype", "bytes")}
                   for p in m.params],
        "selftest": {"vectors": vectors, "tolerance": TOLERANCE} if vectors else None,
        "files": files,
    }


def _selftest(data: list[VectorData]) -> bytes:
    """The self-test vectors as safetensors: input.<k>.<name> and output.<k>.<index>."""
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    for k, (inputs, outputs) in enumerate(data):
        arrays.update({f"input.{k}.{n}": np.ascontiguousarray(a) for n, a in inputs.items()})
        arrays.update({f"output.{k}.{j}": np.ascontiguousarray(a)
                       for j, (_, a) in enumerate(outputs)})
    return save(arrays)


def write_mlf(compiled: dict[str, CompiledModel], target: Target,
              vectors: dict[str, list[VectorData]] | None = None) -> bytes:
    """The Model Library Format archive (tar bytes) of these compiled models."""
    from safetensors.numpy import save

    idents: set[str] = set()
    models = {name: _prepare(name, m, idents) for name, m in sorted(compiled.items())}
    members: dict[str, bytes] = {k: v.encode() for k, v in RUNTIME_FILES.items()}
    entries = {}
    for name, m in models.items():
        src, pre = "codegen/host/src", m.prefix
        files = {"header": f"codegen/host/include/{pre}.h", "source": f"{src}/{pre}.c",
                 "params": f"{src}/{pre}_params.c", "entry": f"{src}/{m.entry.name}.c",
                 "safetensors": f"parameters/{m.ident}.safetensors", "ir": f"src/{m.ident}.ir"}
        members[files["header"]] = _header(m).encode()
        members[files["source"]] = _run_source(m).encode()
        members[files["params"]] = _params_source(m).encode()
        members[files["entry"]] = m.entry.source.encode()
        for func in m.kernels:
            members[f"{src}/{func}.c"] = m.model.sources[func].encode()
        members[files["safetensors"]] = save({p["name"]: np.ascontiguousarray(
            m.model.weights[p["name"]]) for p in m.params})
        members[files["ir"]] = m.model.spec["ir"].encode()
        data = (vectors or {}).get(name, [])
        if data:
            files["selftest"] = f"selftest/{m.ident}.safetensors"
            members[files["selftest"]] = _selftest(data)
        entries[m.ident] = _metadata_entry(m, files, len(data))
    metadata = {"format": FORMAT, "version": VERSION, "kiln_version": __version__,
                "target": target.describe(), "models": entries, "runtime": sorted(RUNTIME_FILES)}
    members["metadata.json"] = json.dumps(metadata, indent=1, sort_keys=True).encode()
    return tar_bytes(members)
