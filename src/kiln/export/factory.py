"""FactoryModule: what kiln.build returns; exports one native library holding everything.

The output path's suffix states the intent: `.so` is the native library; `.tar` holds the
object files, the blob, a manifest and the linked library (to link or inspect elsewhere);
`.mlf.tar` is the Model Library Format (C sources for programs without Python:
kiln/export/mlf.py); a directory (a path without suffix) receives `<name>.so`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from blake3 import blake3

from .._version import __version__
from ..codegen.gemm import GEMM_NAME, GEMM_SOURCE
from ..codegen.prelude import SUPPORT_NAME, SUPPORT_SOURCE
from ..codegen.render import KernelSource
from ..codegen.target import Target
from ..codegen.toolchain import (
    blob_asm,
    cache_dir,
    compile_kernels,
    link_command,
    link_shared_library,
)
from ..errors import ExportError
from ..runtime.blob import CODE_DIGEST_OFFSET, SECTION, code_digest, digest, write_blob
from ..runtime.device import cpu
from ..runtime.elf import read_elf
from ..runtime.external.registry import get_backend
from ..runtime.files import atomic_write
from ..runtime.library import Library, load_module
from ..runtime.params import save_params
from ..runtime.selftest import TestInputs, check_test_inputs, vector_entry
from .mlf import write_mlf
from .pack import compress, tar_bytes

# One self-test vector as export computes it: the input set and the (name, output) pairs.
VectorData = tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]


@dataclass
class CompiledModel:
    """One compiled model: its manifest entry, its weights, its kernels' object code and C
    sources (by function name; the Model Library Format ships the sources)."""

    name: str
    spec: dict[str, Any]
    weights: dict[str, np.ndarray]
    objects: dict[str, bytes]
    sources: dict[str, str]
    # prebuilt external engines: {function: (engine bytes, compatibility key)} (byoc.md)
    engines: dict[str, tuple[bytes, str]] = field(default_factory=dict)


def _externals(m: CompiledModel, store: Callable[[np.ndarray], int]) -> dict[str, Any]:
    """m's external functions as the manifest records them, each prebuilt engine stored as
    a weight region (docs/byoc.md)."""
    out = {}
    for function, ext in m.spec["externals"].items():
        out[function] = dict(ext)
        if function in m.engines:
            data, key = m.engines[function]
            out[function]["engine"] = {"weight": store(np.frombuffer(data, np.uint8)),
                                       "key": key}
    return out


class FactoryModule:
    """Compiled models for one target, ready to export or to run directly."""

    def __init__(self, models: dict[str, CompiledModel], target: Target) -> None:
        self.compiled = models
        self.target = target
        # The units every library links: runtime support and the GEMM driver (both cached).
        self._support = compile_kernels([KernelSource(SUPPORT_NAME, SUPPORT_SOURCE),
                                         KernelSource(GEMM_NAME, GEMM_SOURCE)], target,
                                        progress=False)
        self._loaded: Library | None = None

    @property
    def models(self) -> list[str]:
        return sorted(self.compiled)

    def ir(self, name: str = "default") -> str:
        """The optimized IR text of a model: what was compiled."""
        return self.compiled[name].spec["ir"]

    def _blob(self, package_params: bool = True,
              vectors: dict[str, list[VectorData]] | None = None) -> bytes:
        """The blob: manifest plus weight arrays (params first, then self-test vectors)."""
        arrays: list[np.ndarray] = []
        index: dict[bytes, int] = {}

        def store(array: np.ndarray) -> int:
            key = digest(array.tobytes())
            if key not in index:  # byte-identical arrays are stored once
                index[key] = len(arrays)
                arrays.append(array)
            return index[key]

        models = {}
        for name, m in sorted(self.compiled.items()):
            params = []
            for pname, array in sorted(m.weights.items()):
                params.append({"name": pname, "shape": list(array.shape),
                               "dtype": array.dtype.name,
                               "weight": store(array) if package_params else None})
            models[name] = dict(m.spec, params=params)
            if "externals" in m.spec:
                models[name]["externals"] = _externals(m, store)
        for name, data in sorted((vectors or {}).items()):
            models[name]["selftest"] = [vector_entry(inputs, outputs, store)
                                        for inputs, outputs in data]
        manifest = {"kiln_version": __version__, "target": self.target.describe(),
                    "models": models}
        return write_blob(manifest, arrays)

    def _objects(self) -> dict[str, bytes]:
        objects = dict(self._support)
        for m in self.compiled.values():
            objects.update(m.objects)
        return objects

    def export_library(self, path: str | os.PathLike, *, package_params: bool = True,
                       test_inputs: TestInputs | None = None) -> str:
        """Write the library to path by suffix (.so, .so.zst, .tar, .mlf.tar for the Model
        Library Format, or a directory); returns it.

        Atomic: a failed export leaves nothing at path. With package_params=False the
        weights stay out (ship them with export_params; executors then need load_params).
        test_inputs: input sets ({input name: array}, or a list; {model name: those} for
        several models) to run now and embed with their outputs as self-test vectors
        (Library.selftest, `kiln selftest`); checked first, InputError if they do not fit.
        """
        self._warn_backends()
        vectors = self._vectors(test_inputs) if test_inputs is not None else None
        out = Path(path)
        if out.name.endswith(".mlf.tar"):
            if not package_params:
                raise ExportError(f"cannot export to '{out}' without the weights: a Model "
                                  "Library Format archive holds them as C arrays (docs/mlf.md)")
            self._check_folder(out)
            atomic_write(out, write_mlf(self.compiled, self.target, vectors))
            return str(out)
        if out.is_dir() or (out.suffix == "" and not out.exists()):
            out.mkdir(parents=True, exist_ok=True)
            out = out / f"{self.models[0] if len(self.models) == 1 else 'models'}.so"
        elif out.suffix not in (".so", ".tar") and not out.name.endswith(".so.zst"):
            raise ExportError(f"cannot export to '{out}': unknown suffix '{out.suffix}'; use "
                              ".so (native library), .so.zst (compressed), .tar (objects + "
                              "blob), .mlf.tar (Model Library Format: C sources, docs/mlf.md) "
                              "or a directory")
        self._check_folder(out)
        blob = self._blob(package_params, vectors)
        if out.suffix == ".tar":
            atomic_write(out, self._tar(blob))
        elif out.suffix == ".zst":
            atomic_write(out, compress(self._link(blob)))
        else:
            atomic_write(out, self._link(blob))
        return str(out)

    def _warn_backends(self) -> None:
        """Warn about each external backend (docs/byoc.md) that is not installed here: the
        library loads only where it is."""
        for name, m in sorted(self.compiled.items()):
            for function, ext in sorted(m.spec.get("externals", {}).items()):
                cls = get_backend(ext["backend"])
                if not cls.available():
                    warnings.warn(f"model '{name}' runs function '{function}' on the external "
                                  f"backend '{cls.name}', which is not installed here: the "
                                  f"machine that loads this library needs it (pip install "
                                  f"{cls.package})", stacklevel=3)

    @staticmethod
    def _check_folder(out: Path) -> None:
        if not out.parent.is_dir():
            raise ExportError(f"cannot export to '{out}': folder {out.parent} does not exist")

    def _vectors(self, test_inputs: TestInputs) -> dict[str, list[VectorData]]:
        """test_inputs checked, and each set run on this factory: {model: [(inputs, outputs)]}."""
        specs = {name: m.spec for name, m in self.compiled.items()}
        vectors: dict[str, list[VectorData]] = {}
        for name, input_sets in check_test_inputs(test_inputs, specs).items():
            executor = self[name](cpu(0))
            vectors[name] = []
            for inputs in input_sets:
                for iname, array in inputs.items():
                    executor.set_input(iname, array)
                executor.run()
                outputs = [(oname, executor.get_output(k))
                           for k, (oname, _) in enumerate(executor.outputs)]
                vectors[name].append((inputs, outputs))
        return vectors

    def _link(self, blob: bytes) -> bytes:
        """The sealed native library's bytes."""
        data = bytearray(link_shared_library(self._objects(), blob, self.target))
        section = read_elf(memoryview(bytes(data)), "linked library").sections[SECTION]
        seal = code_digest(bytes(data), section.offset, section.size)
        data[section.offset + CODE_DIGEST_OFFSET:section.offset + CODE_DIGEST_OFFSET + 32] = seal
        return bytes(data)

    def _tar(self, blob: bytes) -> bytes:
        """A deterministic, uncompressed tar: objects, blob, linker stub, manifest, library."""
        objects = self._objects()
        members = {f"objects/{n}.o": obj for n, obj in sorted(objects.items())}
        members["blob.bin"] = blob
        members["blob.s"] = blob_asm(Path("blob.bin")).encode()
        manifest = {"kiln_version": __version__, "target": self.target.describe(),
                    "models": self.models, "link_command": link_command(self.target, objects)}
        members["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
        members["lib.so"] = self._link(blob)
        return tar_bytes(members)

    def export_params(self, path: str | os.PathLike) -> str:
        """Write the weights to a .safetensors file (keys "<model>/<name>" for several models)."""
        if Path(path).suffix != ".safetensors":
            raise ExportError(f"cannot export params to '{path}': use a .safetensors path")
        one = len(self.compiled) == 1
        params = {(k if one else f"{name}/{k}"): v for name, m in self.compiled.items()
                  for k, v in m.weights.items()}
        return save_params(params, path)

    def _library(self) -> Library:
        """This factory exported to the cache and loaded (to run without exporting by hand)."""
        if self._loaded is None:
            blob = self._blob()
            h = blake3(blob)
            for name, obj in sorted(self._objects().items()):
                h.update(name.encode() + obj)
            path = cache_dir() / "lib" / f"{h.hexdigest()[:32]}.so"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # the blob is built once: link it as export_library would
                atomic_write(path, self._link(blob))
            self._loaded = load_module(path)
        return self._loaded

    def __getitem__(self, name: str):
        """The factory of model `name`; call it with a device to create an executor."""
        return self._library()[name]


def link(factories: Iterable[FactoryModule]) -> FactoryModule:
    """Combine built factories (same target, distinct model names) into one."""
    factories = list(factories)
    if not factories:
        raise ExportError("link needs at least one built factory")
    target = factories[0].target
    models: dict[str, CompiledModel] = {}
    for f in factories:
        if f.target != target:
            raise ExportError(f"cannot link factories built for different targets "
                              f"({target.triple} {list(target.cflags)} vs {f.target.triple} "
                              f"{list(f.target.cflags)})")
        for name, m in f.compiled.items():
            if name in models:
                raise ExportError(f"cannot link: two factories both have a model named "
                                  f"'{name}'; build them under different names")
            models[name] = m
    return FactoryModule(models, target)
