"""The blob format: round trip, damage detection, and fuzzing of the parsers."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import FormatError
from kiln.runtime.blob import FORMAT_MAJOR, HEADER_SIZE, read_blob, write_blob
from kiln.runtime.elf import read_elf

ARRAYS = [np.arange(10, dtype=np.float32), np.ones((3, 3), np.int64), np.zeros(0, np.uint8)]
# The smallest manifest the schema accepts (kiln.runtime.manifest): a model of no kernels.
MANIFEST = {"kiln_version": "test",
            "target": {"kind": "c", "triple": "x86_64-linux-gnu", "features": [], "cflags": [],
                       "compiler": "cc"},
            "models": {"default": {"executor": "graph", "inputs": [], "outputs": [],
                                   "params": [], "arena_bytes": 0, "kernels": [],
                                   "memory": {"peak_bytes": 0, "unplanned_bytes": 0,
                                              "buffers": []}}}}


def test_round_trip_keeps_manifest_and_aligned_weights():
    blob = read_blob(memoryview(write_blob(MANIFEST, ARRAYS)), "mem")
    assert blob.major == FORMAT_MAJOR
    assert blob.manifest["models"] == MANIFEST["models"]
    for k, a in enumerate(ARRAYS):
        region = blob.manifest["weights"][k]
        assert region["offset"] % 64 == 0
        assert bytes(blob.weight(k)) == a.tobytes()


def test_newer_major_format_is_refused_with_needed_version():
    data = bytearray(write_blob(MANIFEST, ARRAYS))
    struct.pack_into("<H", data, 8, FORMAT_MAJOR + 1)
    with pytest.raises(FormatError, match=f"format {FORMAT_MAJOR + 1}"):
        read_blob(memoryview(bytes(data)), "mem")


@pytest.mark.parametrize("where", ["manifest", "weights"])
def test_damage_is_detected_and_named(where):
    data = bytearray(write_blob(MANIFEST, ARRAYS))
    off = struct.unpack_from("<Q", data, 16 if where == "manifest" else 32)[0]
    data[off + 3] ^= 0x40
    with pytest.raises(FormatError, match=f"{where} digest mismatch"):
        read_blob(memoryview(bytes(data)), "mem")


def test_weight_region_outside_section_is_refused():
    blob = read_blob(memoryview(write_blob(MANIFEST, ARRAYS)), "mem")
    blob.manifest["weights"][0] = {"offset": 1 << 40, "nbytes": 8}
    with pytest.raises(FormatError, match="outside"):
        blob.weight(0)
    with pytest.raises(FormatError, match="no valid weight region"):
        blob.weight(99)


_VALID = write_blob(MANIFEST, ARRAYS)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(_VALID)))
def test_mutated_blobs_raise_format_error_only(edits, cut):
    data = bytearray(_VALID[:cut])
    for pos, byte in edits:
        if pos < len(data):
            data[pos] = byte
    try:
        blob = read_blob(memoryview(bytes(data)), "fuzz", verify_weights=False)
    except FormatError:
        return
    assert blob.manifest["models"]


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 4095), st.integers(0, 2**16 - 1))
def test_random_and_header_mutated_elf_raise_format_error_only(junk, pos, value):
    header = bytearray(b"\x7fELF\x02\x01" + bytes(58)) + bytearray(junk)
    if pos + 2 <= len(header):
        struct.pack_into("<H", header, pos, value)
    for data in (bytes(junk), bytes(header)):
        try:
            read_elf(memoryview(data), "fuzz")
        except FormatError:
            pass


def test_header_size_constant_matches_layout():
    assert HEADER_SIZE == 256


@pytest.mark.parametrize("text", [b'{"models":' + b"1" * 5000 + b"}",  # over int()'s digit cap
                                  b"[" * 100_000 + b"]" * 100_000])  # deeper than recursion
def test_hostile_manifest_json_is_a_format_error(text):
    """A manifest that is valid-looking JSON but breaks the parser itself is refused."""
    from kiln.runtime.blob import FIXED, HEADER, MAGIC, _manifest_digest

    area = text + b"\0" * ((-(HEADER_SIZE + len(text))) % 64)
    fixed = HEADER.pack(MAGIC, FORMAT_MAJOR, 0, HEADER_SIZE, HEADER_SIZE, len(text),
                        HEADER_SIZE + len(area), 0, *([bytes(32)] * 4), bytes(64),
                        bytes(16))[:FIXED]
    header = fixed + _manifest_digest(fixed, area) + bytes(HEADER_SIZE - FIXED - 32)
    with pytest.raises(FormatError, match="manifest is not valid JSON"):
        read_blob(memoryview(header + area), "forged")
