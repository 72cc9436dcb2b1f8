"""docs/format.md matches the code: an independent reader, written from the document alone
(its own ELF walk, struct, json, blake3, cryptography; nothing from kiln.runtime), parses and
verifies a library kiln wrote, and recovers the weights and the signature."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import kiln
from tests.e2e import models as zoo


def _section(data: bytes, wanted: str) -> tuple[int, int]:
    """(offset, size) of an ELF64 section, by the ELF spec."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + k * shentsize) for k in range(shnum)]
    names_off = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_off + name_off)
        if data[names_off + name_off:end].decode() == wanted:
            return offset, size
    raise AssertionError(f"no section {wanted}")


def read_as_documented(data: bytes) -> dict:
    """Everything format.md promises, checked."""
    base, size = _section(data, ".kiln")
    blob = data[base:base + size]
    assert base % 64 == 0
    magic, major, minor, hsize, m_off, m_size, w_off, w_size = struct.unpack_from(
        "<8sHHIQQQQ", blob, 0)
    assert (magic, major, minor, hsize) == (b"KILNBLOB", 1, 0, 256)
    assert m_off == hsize and w_off % 64 == 0 and w_off + w_size == len(blob)
    m_dig, w_dig, c_dig, signer = struct.unpack_from("<32s32s32s32s", blob, 48)
    signature, reserved = blob[176:240], blob[240:256]
    assert reserved == bytes(16)
    assert blake3(blob[:48] + blob[hsize:w_off]).digest() == m_dig
    assert blake3(blob[w_off:]).digest() == w_dig
    assert blake3(data[:base] + data[base + size:]).digest() == c_dig
    assert blob[m_off + m_size:w_off] == bytes(w_off - m_off - m_size)
    manifest = json.loads(blob[m_off:m_off + m_size])
    header = blob[:176] + bytes(64) + blob[240:256]
    return {"manifest": manifest, "weights": blob[w_off:], "signer": signer,
            "signature": signature, "signed_message": header}


def test_independent_reader_recovers_weights_and_structure(tmp_path):
    model, _ = zoo.mlp()
    mod, params = kiln.from_onnx(model)
    lib = kiln.build(mod, params=params, executor="aot", progress=False)
    data = Path(lib.export_library(tmp_path / "m.so")).read_bytes()
    doc = read_as_documented(data)
    manifest = doc["manifest"]
    assert manifest["kiln_version"] == kiln.__version__
    assert manifest["target"]["triple"].startswith("x86_64")
    spec = manifest["models"]["default"]
    assert spec["executor"] == "aot" and spec["entry"].startswith("kiln_aot_")
    assert spec["source"]["format"] == "onnx" and len(spec["source"]["blake3"]) == 64
    weights = lib.compiled["default"].weights
    for p in spec["params"]:
        region = manifest["weights"][p["weight"]]
        raw = doc["weights"][region["offset"]:region["offset"] + region["nbytes"]]
        assert region["offset"] % 64 == 0
        assert blake3(raw).hexdigest() == region["blake3"]
        array = np.frombuffer(raw, dtype=p["dtype"]).reshape(p["shape"])
        np.testing.assert_array_equal(array, weights[p["name"]])
    for k in spec["kernels"]:
        for loc in k["args"]:
            assert ("param" in loc) != ("arena" in loc)
            if "arena" in loc:
                assert loc["arena"] + loc["nbytes"] <= spec["arena_bytes"]
    assert doc["signature"] == bytes(64) and doc["signer"] == bytes(32)


def test_independent_reader_verifies_a_signature(tmp_path):
    model, _ = zoo.mlp()
    mod, params = kiln.from_onnx(model)
    path = Path(kiln.build(mod, params=params, progress=False).export_library(tmp_path / "s.so"))
    kiln.keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    kiln.sign(path, tmp_path / "k.pem")
    doc = read_as_documented(path.read_bytes())
    Ed25519PublicKey.from_public_bytes(doc["signer"]).verify(doc["signature"],
                                                           doc["signed_message"])
