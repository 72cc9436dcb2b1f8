"""The object cache key follows what the flags resolve to (the compiler's predefined macros),
not their literal text: a cache shared by two hosts never hands -march=native objects of one
CPU to another."""

from __future__ import annotations

import platform

import pytest

from kiln.codegen import target as target_module
from kiln.codegen.render import KernelSource
from kiln.codegen.target import resolve_target
from kiln.codegen.toolchain import compile_kernels, object_key

KERNEL = KernelSource("kiln_cache_probe", "void kiln_cache_probe(float *x) { x[0] += 1.0f; }\n")


@pytest.fixture(autouse=True)
def fresh_probes():
    """Each test asks the compiler anew (resolve_target caches its answers per process)."""
    target_module._probe.cache_clear()
    yield
    target_module._probe.cache_clear()


def test_flags_that_resolve_alike_share_keys():
    first = resolve_target("c")
    target_module._probe.cache_clear()
    again = resolve_target("c")  # the compiler asked again: the same macros, the same key
    assert again == first
    assert object_key(KERNEL, again) == object_key(KERNEL, first)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="compares two x86-64 CPU levels")
def test_targets_whose_macros_differ_get_different_keys():
    base, v3 = resolve_target({"mcpu": "x86-64"}), resolve_target({"mcpu": "x86-64-v3"})
    assert base.macros_digest != v3.macros_digest
    assert object_key(KERNEL, base) != object_key(KERNEL, v3)


def test_same_literal_flags_on_another_cpu_get_another_key(monkeypatch):
    here = resolve_target("c")
    target_module._probe.cache_clear()
    run = target_module._run

    def other_cpu(cmd: list[str], stdin: str = "") -> str:
        """The compiler as on a host whose CPU has one more feature."""
        out = run(cmd, stdin)
        return out + "#define __KILN_OTHER_CPU__ 1\n" if "-dM" in cmd else out

    monkeypatch.setattr(target_module, "_run", other_cpu)
    there = resolve_target("c")
    assert there.cflags == here.cflags  # e.g. the same literal -march=native
    assert there.macros_digest != here.macros_digest
    assert object_key(KERNEL, there) != object_key(KERNEL, here)


def test_objects_are_cached_under_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    tgt = resolve_target("c")
    objects = compile_kernels([KERNEL], tgt, progress=False)
    cached = tmp_path / "obj" / f"{object_key(KERNEL, tgt)}.o"
    assert cached.read_bytes() == objects[KERNEL.name]
    assert [p.name for p in (tmp_path / "obj").iterdir()] == [cached.name]  # no temp files
