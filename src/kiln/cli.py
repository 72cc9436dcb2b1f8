"""The `kiln` command line: compile, run and inspect libraries."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from .errors import KilnError
from .project import BOARDS, DEFAULT_BOARD, TEMPLATES, footprint, footprint_text, generate
from .runtime import GraphModule, cpu, load_module
from .runtime.executor import EXECUTORS
from .runtime.files import atomic_write
from .runtime.library import inspect_file, sign, verify
from .runtime.signing import keygen
from .runtime.summary import library_summary
from .text import size_text


class ShapeSpec(click.ParamType):
    """NAME:DIMxDIM... (e.g. x:1x3x224x224; NAME: for a scalar) -> (name, shape)."""

    name = "NAME:SHAPE"

    def convert(self, value, param, ctx) -> tuple[str, tuple[int, ...]]:
        name, sep, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 0 for d in shape):
            self.fail(f"'{value}': expected NAME:DIMxDIM... with dims >= 0, e.g. "
                      "x:1x3x224x224", param, ctx)
        return name, shape


class DtypeSpec(click.ParamType):
    """NAME:DTYPE (e.g. ids:int32) -> (name, dtype), DTYPE one kiln compiles."""

    name = "NAME:DTYPE"

    def convert(self, value, param, ctx) -> tuple[str, str]:
        from .ir.types import DTYPE_SHORT

        name, sep, dtype = value.rpartition(":")
        if not sep or not name or dtype not in DTYPE_SHORT:
            self.fail(f"'{value}': expected NAME:DTYPE, DTYPE one of "
                      f"{', '.join(sorted(DTYPE_SHORT))}", param, ctx)
        return name, dtype


class InputFile(click.ParamType):
    """NAME=FILE.npy -> (name, the array in FILE)."""

    name = "NAME=FILE.npy"

    def convert(self, value, param, ctx) -> tuple[str, np.ndarray]:
        name, sep, path = value.partition("=")
        if not sep or not name:
            self.fail(f"'{value}': expected NAME=FILE.npy", param, ctx)
        try:
            array = np.load(path, allow_pickle=False)
        except OSError as e:
            self.fail(f"'{value}': cannot read {path}: {e.strerror or e}", param, ctx)
        except (ValueError, EOFError):
            self.fail(f"'{value}': {path} is not a .npy file", param, ctx)
        if not isinstance(array, np.ndarray):
            array.close()
            self.fail(f"'{value}': {path} holds several arrays (.npz); give one .npy", param, ctx)
        return name, array


SELFTEST_SEED = 0  # `kiln compile --selftest` embeds what `kiln run` feeds by default


def _fail(e: KilnError) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="kiln-ml")
def main() -> None:
    """kiln: compile ONNX models to one native library; run and inspect them."""


@main.command("compile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, type=ShapeSpec(),
              help="fix an input's shape, e.g. x:1x3x224x224 (repeatable)")
@click.option("--dtype", "dtypes", multiple=True, type=DtypeSpec(),
              help="override an input's dtype, e.g. ids:int32 (repeatable)")
@click.option("--output", "-o", required=True, type=click.Path(),
              help="where to write: .so (library), .tar (objects + blob), .mlf.tar (Model "
              "Library Format: C sources, docs/mlf.md), or a directory")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="graph",
              show_default=True, help="graph: kernels stepped from Python (profilable); "
              "aot: one native entry point per model")
@click.option("--params-out", type=click.Path(dir_okay=False), metavar="FILE.safetensors",
              help="export the weights to this file and leave them out of the library")
@click.option("--mcpu", help="CPU to compile for (default: this machine)")
@click.option("--cc", help="C compiler (default: $CC or cc)")
@click.option("--print-ir", is_flag=True, help="print the optimized IR")
@click.option("--dump", type=click.Path(file_okay=False), metavar="DIR",
              help="write the IR after every step, the kernel groups, the memory plan and "
              "the C of every kernel under DIR/default/ (default: $KILN_DUMP)")
@click.option("--selftest", is_flag=True, help="embed a self-test vector: random inputs "
              f"(seed {SELFTEST_SEED}, as `kiln run` makes them) and their outputs, checked "
              "by `kiln selftest`")
def compile_cmd(model, inputs, dtypes, output, executor, params_out, mcpu, cc,
                print_ir, dump, selftest) -> None:
    """Compile an ONNX MODEL into one native library."""
    from .compiler import build
    from .frontend import from_onnx

    target = {"kind": "c", **({"mcpu": mcpu} if mcpu else {}), **({"cc": cc} if cc else {})}
    try:
        start = time.perf_counter()
        mod, params = from_onnx(model, shapes=dict(inputs), dtypes=dict(dtypes))
        lib = build(mod, params=params, target=target, executor=executor, dump=dump)
        info = {e["name"]: (tuple(e["shape"]), e["dtype"])
                for e in lib.compiled["default"].spec["inputs"]}
        test_inputs = _random_inputs(info, SELFTEST_SEED) if selftest else None
        path = lib.export_library(output, package_params=params_out is None,
                                  test_inputs=test_inputs)
        if params_out:
            click.echo(f"wrote {lib.export_params(params_out)}")
    except KilnError as e:
        _fail(e)
    if print_ir:
        click.echo(lib.ir())
    spec = lib.compiled["default"].spec
    click.echo(f"wrote {path}: {len(spec['kernels'])} kernels, "
               f"{size_text(Path(path).stat().st_size)}, "
               f"{time.perf_counter() - start:.2f} s"
               f"{', 1 self-test vector' if selftest else ''}")


def _random_inputs(info, seed: int, given=None) -> dict[str, np.ndarray]:
    """given, plus random values for the other inputs in info (name -> (shape, dtype)):
    standard normal floats, 0/1 integers, drawn in info's order from one seeded generator."""
    rng = np.random.default_rng(seed)
    feeds = dict(given or {})
    for name, (shape, dtype) in info.items():
        if name in feeds:
            continue
        if np.dtype(dtype).kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


@main.command("run")
@click.argument("library", type=click.Path(exists=True))
@click.option("--input", "-i", "inputs", multiple=True, type=InputFile(),
              help="input from a .npy file; inputs not given are random (repeatable)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="write outputs to .npz")
@click.option("--model", default="default", show_default=True, help="model in the library")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="seed of the random inputs")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="runs to time")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads (default: $KILN_NUM_THREADS or all)")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              help="weights (.safetensors) for a library exported without them")
@click.option("--profile", is_flag=True, help="print the time of each kernel (graph executor)")
def run_cmd(library, inputs, output, model, seed, repeat, threads, params_file,
            profile) -> None:
    """Run a model of LIBRARY on the CPU."""
    try:
        gmod = GraphModule(load_module(library)[model](cpu(0, num_threads=threads)))
        if params_file:
            gmod.load_params(params_file)
        gmod.set_input(**_random_inputs(gmod.input_info, seed, dict(inputs)))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            gmod.run()
            times.append(time.perf_counter() - start)
    except KilnError as e:
        _fail(e)
    outputs = {n: gmod.get_output(i) for i, n in enumerate(gmod.output_names)}
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype}{list(value.shape)} "
                   f"min {value.min():.6g} max {value.max():.6g} mean {value.mean():.6g}"
                   if value.size and value.dtype.kind in "fiub" else f"{name}: {value!r}")
    click.echo(f"run: {min(times) * 1e3:.3f} ms (best of {len(times)})")
    if profile:
        _print_profile(gmod)
    if output:
        np.savez(output, **outputs)
        click.echo(f"wrote {output}")


def _print_profile(gmod) -> None:
    from rich.console import Console
    from rich.table import Table

    try:
        rows = gmod.profile()
    except KilnError as e:
        _fail(e)
    total = sum(r["ms"] for r in rows) or 1.0
    table = Table("#", "kernel (fused ops)", "node", "output shape", "ms", "%")
    for k, r in enumerate(rows):
        shape = " ".join("x".join(map(str, s)) for s in r["shapes"])
        table.add_row(str(k), r["kernel"], r["node"], shape, f"{r['ms']:.4f}",
                      f"{100 * r['ms'] / total:.1f}")
    Console().print(table)


@main.command("inspect")
@click.argument("library", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def inspect_cmd(library, as_json) -> None:
    """Show what LIBRARY holds: models, inputs/outputs, ops, weights, memory plan."""
    from rich.console import Console
    from rich.table import Table

    try:
        checked = inspect_file(library, compat=False)
        info = library_summary(checked, library)
        checked.release()
    except KilnError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console = Console()
    t = info["target"]
    console.print(f"[bold]{info['path']}[/]  kiln {info['kiln_version']}, format "
                  f"{info['format_version']}, {t['triple']} ({', '.join(t['features']) or '-'})")
    size = f"{size_text(info['file_bytes'])}"
    if info["packed_bytes"]:
        size += f", {size_text(info['packed_bytes'])} compressed " \
                f"({100 * info['packed_bytes'] / info['file_bytes']:.0f}%)"
    console.print(f"size {size}; {info['signature']}; all digests verified")
    for name, m in info["models"].items():
        apart = "" if m["params_packaged"] else ", not in the file: run with --params"
        console.print(f"\n[bold]model {name}[/] ({m['executor']} executor): {m['kernels']} "
                      f"kernels, {m['params']} params ({size_text(m['param_bytes'])}{apart}), "
                      f"memory plan peak {size_text(m['memory_peak_bytes'])} "
                      f"(without reuse {size_text(m['memory_unplanned_bytes'])})")
        table = Table("", "name", "shape", "dtype")
        for kind in ("inputs", "outputs"):
            for e in m[kind]:
                table.add_row(kind[:-1], e["name"], "x".join(map(str, e["shape"])), e["dtype"])
        console.print(table)
        src = m["source"]
        if src:
            console.print(f"source: {src.get('format')} opset {src.get('opset')}, producer "
                          f"'{src.get('producer')}', blake3 {src.get('blake3', '')[:16]}…")
        ops = Table("kernel (fused ops)", "count")
        for label, n in m["ops"].items():
            ops.add_row(label, str(n))
        console.print(ops)
        for fn, e in m["externals"].items():
            console.print(f"external {fn} on {e['backend']}{' (prebuilt)' if e['prebuilt'] else ''}"
                          f": {len(e['ops'])} nodes ({', '.join(e['ops'])})")


@main.command("selftest")
@click.argument("library", type=click.Path(exists=True))
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              help="weights (.safetensors) for a library exported without them")
@click.option("--model", "models", multiple=True,
              help="test only this model (repeatable; default: all that have vectors)")
def selftest_cmd(library, params_file, models) -> None:
    """Run the test vectors embedded in LIBRARY; exit 1 if any output is off."""
    try:
        rows = load_module(library).selftest(params=params_file, models=models or None)
    except KilnError as e:
        _fail(e)
    _print_selftest(rows)
    failed = [r for r in rows if not r["passed"]]
    for r in failed:
        for o in r["outputs"]:
            if not o["passed"]:
                click.echo(f"FAIL model '{r['model']}' vector {r['index']}: output '{o['name']}' "
                           f"has {o['mismatched']} of {o['size']} values outside rtol "
                           f"{r['rtol']:g}, atol {r['atol']:g} (max abs error "
                           f"{o['max_abs_error']:.3g} at index {o['worst_index']})")
    if failed:
        click.echo(f"selftest FAILED: {len(failed)} of {len(rows)} vectors failed", err=True)
        sys.exit(1)
    click.echo(f"selftest passed: all {len(rows)} vectors")


def _print_selftest(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "vector", "result", "max abs error", "max rel error", "rtol / atol")
    for r in rows:
        table.add_row(r["model"], str(r["index"]), "PASS" if r["passed"] else "[red]FAIL[/]",
                      f"{r['max_abs_error']:.3g}", f"{r['max_rel_error']:.3g}",
                      f"{r['rtol']:g} / {r['atol']:g}")
    Console().print(table)


@main.command("keygen")
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.argument("public_key", type=click.Path(dir_okay=False))
def keygen_cmd(private_key, public_key) -> None:
    """Write a new Ed25519 key pair (PEM) for signing libraries."""
    click.echo(f"key {keygen(private_key, public_key)}: wrote {private_key} (keep it secret) "
               f"and {public_key}")


@main.command("sign")
@click.argument("library", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (PEM)")
def sign_cmd(library, key) -> None:
    """Sign LIBRARY in place; the signature travels inside the file."""
    try:
        click.echo(f"signed {library} with key {sign(library, key)}")
    except KilnError as e:
        _fail(e)


@main.command("verify")
@click.argument("library", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", "pubkeys", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False), help="trusted public key (PEM)")
def verify_cmd(library, pubkeys) -> None:
    """Exit 0 only if LIBRARY is intact and signed by one of the trusted keys."""
    try:
        click.echo(f"OK: {library} is intact and signed by trusted key "
                   f"{verify(library, list(pubkeys))}")
    except KilnError as e:
        _fail(e)


@main.command("pack")
@click.argument("library", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="default: LIBRARY.zst")
def pack_cmd(library, output) -> None:
    """Compress LIBRARY (zstd) into one file that load_module accepts directly."""
    from .export.pack import pack

    try:
        out = pack(library, output)
    except KilnError as e:
        _fail(e)
    raw, packed = Path(library).stat().st_size, Path(out).stat().st_size
    click.echo(f"wrote {out}: {size_text(packed)} ({100 * packed / raw:.0f}% of {size_text(raw)})")


@main.command("viz")
@click.argument("library", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              metavar="OUT.html", help="the HTML page to write")
def viz_cmd(library, output) -> None:
    """Write one self-contained HTML page of LIBRARY: each model's compiled graph (kernels,
    weights) and memory plan. Reads the manifest only; never loads the library's code."""
    from .viz import render_html

    try:
        checked = inspect_file(library, verify="header", compat=False)
    except KilnError as e:
        _fail(e)
    try:
        page = render_html(checked.blob.manifest, Path(library).name)
    finally:
        checked.release()
    try:
        atomic_write(output, page.encode())
    except OSError as e:
        click.echo(f"error: cannot write {output}: {e.strerror or e}", err=True)
        sys.exit(1)
    models = checked.blob.manifest["models"]
    click.echo(f"wrote {output}: {len(models)} model(s), "
               f"{sum(len(m['kernels']) for m in models.values())} kernels, "
               f"{size_text(len(page.encode()))}")


@main.group("project")
def project_group() -> None:
    """Standalone C projects from Model Library Format (.mlf.tar) archives."""


@project_group.command("generate")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", type=click.Choice(TEMPLATES), default="host", show_default=True,
              help="host: the host's cc; cortex-m: arm-none-eabi-gcc, run under QEMU")
@click.option("--board", type=click.Choice(list(BOARDS)),
              help=f"cortex-m board (QEMU machine; default {DEFAULT_BOARD})")
@click.option("--model", help="model of the archive (default: its only one)")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              metavar="DIR", help="the project folder to write (new or empty)")
def project_generate_cmd(archive, template, board, model, output) -> None:
    """Write a C project running ARCHIVE's model on its self-test vector (make run)."""
    if board is not None and template != "cortex-m":
        raise click.UsageError(f"--board {board} needs --template cortex-m")
    try:
        out = generate(archive, output, template=template, board=board, model=model)
    except KilnError as e:
        _fail(e)
    click.echo(f"wrote {out} ({template}{f', {board}' if board else ''}): make -C {out} run")


@main.command("footprint")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--board", type=click.Choice(list(BOARDS)), default=DEFAULT_BOARD,
              show_default=True, help="cortex-m board to build for")
@click.option("--model", help="model of the archive (default: its only one)")
def footprint_cmd(archive, board, model) -> None:
    """Build ARCHIVE's model for a Cortex-M board and print its flash and RAM use."""
    try:
        click.echo(footprint_text(footprint(archive, board=board, model=model), archive))
    except KilnError as e:
        _fail(e)

if __name__ == "__main__":
    main()
