"""Imports go one way: ir <- ops <- passes <- codegen <- export <- compiler, runtime apart.

Each stage is imported (with all its modules) in a fresh interpreter, and what it pulled in
is checked: nothing from a later stage. A static check refuses imports placed inside
functions (the usual way to hide a cycle), except the lazy imports listed below, each with
its reason.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kiln"

# The compiler's modules: everything but the runtime and what both share.
COMPILER = ["kiln.ir", "kiln.ops", "kiln.passes", "kiln.codegen", "kiln.export",
            "kiln.frontend", "kiln.compiler", "kiln.pipeline", "kiln.dump", "kiln.onnx_backend"]
LATER_THAN_CODEGEN = ["kiln.export", "kiln.frontend", "kiln.compiler", "kiln.pipeline",
                      "kiln.dump", "kiln.onnx_backend"]

# stage -> the modules importing it (and all its submodules) must not pull in.
FORBIDDEN = {
    "kiln.ir": ["kiln.ops", "kiln.passes", "kiln.codegen", *LATER_THAN_CODEGEN],
    "kiln.ops": ["kiln.passes", "kiln.codegen", *LATER_THAN_CODEGEN],
    "kiln.passes": ["kiln.codegen", *LATER_THAN_CODEGEN],
    "kiln.codegen": LATER_THAN_CODEGEN,
    "kiln.runtime": COMPILER,
    "kiln": COMPILER,  # import kiln loads the runtime eagerly, the compiler lazily
}

_LIST_IMPORTED = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
if sys.argv[1] != "kiln":
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), sys.argv[1] + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("kiln."))))
"""


def _imported_by(module: str) -> list[str]:
    """The kiln modules a fresh interpreter holds after importing module and its submodules."""
    out = subprocess.run([sys.executable, "-c", _LIST_IMPORTED, module], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("stage", list(FORBIDDEN))
def test_a_stage_imports_nothing_from_later_stages(stage):
    imported = _imported_by(stage)
    bad = [m for m in imported if any(_is_in(m, f) for f in FORBIDDEN[stage])]
    assert bad == [], f"importing {stage} pulled in later stages: {bad}"


# In-function imports that stay, (file under src/kiln, module) -> why.
LAZY = {
    # Optional dependencies, needed only by the feature that imports them.
    ("runtime/source.py", "zstandard"): "optional: only .so.zst libraries need it",
    ("export/pack.py", "zstandard"): "optional: only kiln pack / .so.zst export needs it",
    ("runtime/signing.py", "cryptography"): "optional: only signing and signed loads need it",
    ("runtime/params.py", "safetensors"): "optional: only weights shipped apart need it",
    ("export/mlf.py", "safetensors"): "optional: only the Model Library Format export needs it",
    ("runtime/external/onnx_graph.py", "onnx"): "optional: only the ONNX-reading backends need it",
    ("cli.py", "rich"): "optional: the CLI's tables",
    ("codegen/toolchain.py", "rich"): "optional: the progress bar while compiling",
    # The CLI loads the compiler (and onnx) only for the commands that compile.
    ("cli.py", "kiln.compiler"): "CLI: only `kiln compile` loads the compiler",
    ("cli.py", "kiln.frontend"): "CLI: only `kiln compile` loads onnx and the frontend",
    ("cli.py", "kiln.ir.types"): "CLI: the dtype names of `--dtype`, without the compiler",
    ("cli.py", "kiln.export.pack"): "CLI: `kiln pack` only",
    ("cli.py", "kiln.viz"): "CLI: `kiln viz` only",
}
def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module a from-import names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = ["kiln", *path.relative_to(SRC).parent.parts]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _in_function_imports(path: Path) -> set[str]:
    """Modules (not of the standard library) imported inside a function body of path."""
    found = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.add(_absolute(node, path))
    return {m for m in found if m.split(".")[0] not in sys.stdlib_module_names}


def _allowed_name(module: str, rel: str) -> tuple[str, str] | None:
    """The LAZY key covering module imported in file rel, if any."""
    for key in LAZY:
        third_party = not key[1].startswith("kiln")  # rich covers rich.console...
        if key[0] == rel and (module == key[1]
                              or third_party and module.startswith(key[1] + ".")):
            return key
    return None


def test_no_imports_inside_functions_but_the_listed_lazy_ones():
    seen, bad = set(), []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for module in sorted(_in_function_imports(path)):
            key = _allowed_name(module, rel)
            if key is None:
                bad.append(f"{rel}: {module}")
            seen.add(key)
    assert bad == [], "imports inside functions (move the shared thing down a stage instead)"
    stale = sorted(set(LAZY) - seen)
    assert stale == [], f"allow-list entries no longer needed: {stale}"
