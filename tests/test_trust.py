"""The trustworthy artifact: signatures checked before loading, damage detection everywhere,
compression, format versioning, reproducible and atomic exports."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln.cli import main
from kiln.runtime import library as loader
from kiln.runtime.elf import read_elf
from tests.e2e import models as zoo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def built():
    model, inputs = zoo.mlp()
    mod, params = kiln.from_onnx(model)
    return kiln.build(mod, params=params, progress=False), inputs


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    kiln.keygen(d / "a.pem", d / "a.pub")
    kiln.keygen(d / "b.pem", d / "b.pub")
    return d


@pytest.fixture
def signed(built, keys, tmp_path):
    path = Path(built[0].export_library(tmp_path / "m.so"))
    kiln.sign(path, keys / "a.pem")
    return path


@pytest.fixture
def no_dlopen(monkeypatch):
    """Record (and forbid) every native load, to show refusals happen before it."""
    calls = []

    def refuse(path, *args, **kwargs):
        calls.append(path)
        raise AssertionError(f"dlopen of {path} was attempted")

    monkeypatch.setattr(loader.ctypes, "CDLL", refuse)
    return calls


def _run(lib, inputs):
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    gmod.run(**inputs)
    return gmod.get_output(0)


def test_correct_signature_loads_and_runs(built, signed, keys):
    lib = kiln.load_module(signed, trusted_keys=[keys / "a.pub"])
    assert lib.signer_id == kiln.verify(signed, keys / "a.pub")
    expected = _run(built[0], built[1])
    np.testing.assert_array_equal(_run(lib, built[1]), expected)
    runner = CliRunner()
    assert runner.invoke(main, ["verify", str(signed), "--pubkey", str(keys / "a.pub")]) \
        .exit_code == 0
    bad = runner.invoke(main, ["verify", str(signed), "--pubkey", str(keys / "b.pub")])
    assert bad.exit_code == 1 and "not among the trusted keys" in bad.output


def test_unsigned_and_wrongly_signed_are_refused_before_loading(built, keys, tmp_path,
                                                                no_dlopen):
    unsigned = built[0].export_library(tmp_path / "u.so")
    with pytest.raises(kiln.VerificationError, match="not signed"):
        kiln.load_module(unsigned, trusted_keys=[keys / "a.pub"])
    kiln.sign(unsigned, keys / "b.pem")
    with pytest.raises(kiln.VerificationError, match="not among the trusted keys"):
        kiln.load_module(unsigned, trusted_keys=[keys / "a.pub"])
    with pytest.raises(kiln.VerificationError, match="empty"):
        kiln.load_module(unsigned, trusted_keys=[])
    assert no_dlopen == []


def test_twenty_random_byte_flips_are_refused_before_loading(signed, keys, tmp_path,
                                                             no_dlopen):
    data = signed.read_bytes()
    rng = np.random.default_rng(20)
    positions = rng.choice(len(data), size=20, replace=False)
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        path = tmp_path / f"flip{pos}.so"
        path.write_bytes(bytes(damaged))
        with pytest.raises(kiln.KilnError):
            kiln.load_module(path, trusted_keys=[keys / "a.pub"])
    assert no_dlopen == []


def test_every_part_is_covered(signed, keys, tmp_path, no_dlopen):
    """A flip in each part (code, header, signature, manifest, padding, weights) is caught."""
    data = signed.read_bytes()
    section = read_elf(memoryview(data), "m").sections[".kiln"]
    base = section.offset
    m_off, m_size, w_off = struct.unpack_from("<QQQ", data, base + 16)
    places = {"code": 100, "header reserved": base + 250, "signature": base + 200,
              "signer": base + 150, "manifest": base + m_off + 5,
              "manifest padding": base + m_off + m_size, "weights": base + w_off + 8,
              "last byte": len(data) - 1}
    for name, pos in places.items():
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        path = tmp_path / "d.so"
        path.write_bytes(bytes(damaged))
        with pytest.raises(kiln.KilnError) as err:
            kiln.load_module(path, trusted_keys=[keys / "a.pub"])
        assert str(path) in str(err.value), name
    assert no_dlopen == []


def test_damaged_weights_name_the_params(built, tmp_path):
    path = Path(built[0].export_library(tmp_path / "w.so"))
    data = bytearray(path.read_bytes())
    base = read_elf(memoryview(bytes(data)), "w").sections[".kiln"].offset
    (w_off,) = struct.unpack_from("<Q", data, base + 32)
    data[base + w_off + 4] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(kiln.FormatError, match=r"weights digest mismatch.*params \['default/"):
        kiln.load_module(path)
    kiln.load_module(path, verify="header")  # the fast mode skips hashing the weights


def test_newer_major_format_is_refused_naming_the_needed_version(built, tmp_path, no_dlopen):
    path = Path(built[0].export_library(tmp_path / "v.so"))
    data = bytearray(path.read_bytes())
    base = read_elf(memoryview(bytes(data)), "v").sections[".kiln"].offset
    struct.pack_into("<H", data, base + 8, 2)
    path.write_bytes(bytes(data))
    with pytest.raises(kiln.FormatError, match=r"format 2\.0, written by 0\.1\.0.*upgrade kiln"):
        kiln.load_module(path)
    assert no_dlopen == []


def test_compressed_library_round_trip_and_sizes(built, tmp_path):
    lib, inputs = built
    raw = Path(lib.export_library(tmp_path / "m.so"))
    packed = Path(lib.export_library(tmp_path / "m.so.zst"))
    assert packed.stat().st_size < raw.stat().st_size
    np.testing.assert_array_equal(_run(kiln.load_module(packed), inputs),
                                  _run(kiln.load_module(raw), inputs))
    result = CliRunner().invoke(main, ["pack", str(raw), "-o", str(tmp_path / "p.so.zst")])
    assert result.exit_code == 0 and "% of" in result.output
    assert (tmp_path / "p.so.zst").read_bytes() == packed.read_bytes()  # lossless, deterministic
    info = CliRunner().invoke(main, ["inspect", str(packed), "--json"])
    import json

    sizes = json.loads(info.output)
    assert sizes["file_bytes"] == raw.stat().st_size
    assert sizes["packed_bytes"] == packed.stat().st_size
    bomb = tmp_path / "bad.so.zst"
    bomb.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(20))
    with pytest.raises(kiln.FormatError):
        kiln.load_module(bomb)


def test_reproducible_builds_are_byte_identical(tmp_path, monkeypatch):
    model, _ = zoo.bert_like()
    outs = []
    for k in range(2):  # cold compile caches: objects are really compiled twice
        monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / f"cache{k}"))
        mod, params = kiln.from_onnx(model)
        lib = kiln.build(mod, params=params, executor="aot", progress=False)
        outs.append((Path(lib.export_library(tmp_path / f"r{k}.so")).read_bytes(),
                     Path(lib.export_library(tmp_path / f"r{k}.tar")).read_bytes()))
    assert outs[0] == outs[1]


def test_failed_export_leaves_nothing(built, tmp_path, monkeypatch):
    import kiln.export.factory as factory

    def broken(*args, **kwargs):
        raise kiln.CompileError("linker exploded")

    monkeypatch.setattr(factory, "link_shared_library", broken)
    with pytest.raises(kiln.CompileError):
        built[0].export_library(tmp_path / "x.so")
    assert list(tmp_path.iterdir()) == []


_LIB_BYTES: dict[str, bytes] = {}


def _small_library() -> bytes:
    if "lib" not in _LIB_BYTES:
        model, _ = zoo.mlp()
        mod, params = kiln.from_onnx(model)
        lib = kiln.build(mod, params=params, progress=False)
        _LIB_BYTES["lib"] = lib._link(lib._blob())
    return _LIB_BYTES["lib"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_change_to_a_library_is_refused(data):
    """Every byte is covered by a digest: any change (or truncation) raises, never crashes."""
    original = _small_library()
    buf = bytearray(original)
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] = data.draw(st.integers(0, 255))
    if bytes(buf) == original:
        return
    with pytest.raises(kiln.KilnError):
        loader.inspect_file(bytes(buf)).release()


def _forge_manifest(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes of the manifest JSON (same length) and re-seal every digest."""
    from tests.util import reseal_library

    assert len(old) == len(new)

    def edit(blob: bytearray, layout) -> None:
        start, end = layout.manifest_offset, layout.manifest_offset + layout.manifest_size
        text = bytes(blob[start:end])
        assert old in text
        blob[start:end] = text.replace(old, new, 1)

    reseal_library(path, edit)


def test_missing_cpu_features_are_refused_before_loading(built, tmp_path, no_dlopen):
    path = Path(built[0].export_library(tmp_path / "f.so"))
    _forge_manifest(path, b'"fma"', b'"fmz"')  # a feature no machine reports
    with pytest.raises(kiln.CompatibilityError, match="lacks: fmz"):
        kiln.load_module(path)
    assert no_dlopen == []


def test_foreign_architecture_is_refused_before_loading(built, tmp_path, no_dlopen):
    path = Path(built[0].export_library(tmp_path / "a.so"))
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine: aarch64
    path.write_bytes(bytes(data))
    from tests.util import reseal_library

    reseal_library(path, lambda blob, layout: None)  # the code digest now matches again
    with pytest.raises(kiln.CompatibilityError, match="aarch64 code"):
        kiln.load_module(path)
    assert no_dlopen == []


def test_written_files_get_usual_permissions_and_keys_stay_private(built, tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        lib = Path(built[0].export_library(tmp_path / "p.so"))
        kiln.keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    finally:
        os.umask(umask)
    assert lib.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub", "p.so"]


def test_signature_is_checked_when_verifying_fully_not_on_the_fast_path(signed, tmp_path):
    import subprocess
    import sys

    script = ("import sys, kiln; kiln.load_module(sys.argv[1], verify='header'); "
              "print('cryptography' in sys.modules)")
    fast = subprocess.run([sys.executable, "-c", script, str(signed)], capture_output=True,
                          text=True, check=True)
    assert fast.stdout.strip() == "False"
    data = bytearray(signed.read_bytes())
    base = read_elf(memoryview(bytes(data)), "s").sections[".kiln"].offset
    data[base + 200] ^= 0x01  # inside the signature
    damaged = tmp_path / "sig.so"
    damaged.write_bytes(bytes(data))
    with pytest.raises(kiln.FormatError, match="embedded signature does not match"):
        kiln.load_module(damaged)
