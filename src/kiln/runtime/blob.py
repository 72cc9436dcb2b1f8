"""The kiln blob: the versioned section that carries a library's graph, metadata and weights.

Layout (all integers little-endian; docs/format.md is the normative description):
  0   8  magic b"KILNBLOB"
  8   2  format major      10  2  format minor      12  4  header size (160)
  16  8  manifest offset   24  8  manifest size     (offsets from the blob start)
  32  8  weights offset    40  8  weights size      (weights offset is 64-byte aligned)
  48 32  BLAKE2b-256 of the manifest bytes
  80 32  BLAKE2b-256 of the weights region
  112 32 BLAKE2b-256 of the library file outside the blob (the native code)
  144 16 reserved, zero
The manifest is UTF-8 JSON. Weight arrays live in the weights region, each 64-byte aligned,
so a loaded library uses them in place.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError

MAGIC = b"KILNBLOB"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
HEADER = struct.Struct("<8sHHIQQQQ32s32s32s16s")
HEADER_SIZE = HEADER.size  # 160
CODE_DIGEST_OFFSET = 112
ALIGN = 64
MAX_MANIFEST = 256 << 20


def digest(data) -> bytes:
    """BLAKE2b-256 (hashlib's fastest secure hash; no extra dependency)."""
    return hashlib.blake2b(data, digest_size=32).digest()


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_blob(manifest: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """Serialize manifest and weight arrays; records each array's place in manifest["weights"]."""
    regions, chunks, offset = [], [], 0
    for array in arrays:
        data = np.ascontiguousarray(array).tobytes()
        regions.append({"offset": offset, "nbytes": len(data)})
        chunks.append(data + b"\0" * _pad(len(data)))
        offset += len(chunks[-1])
    manifest = dict(manifest, weights=regions)
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    weights = b"".join(chunks)
    manifest_off = HEADER_SIZE
    weights_off = manifest_off + len(text) + _pad(HEADER_SIZE + len(text))
    header = HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, HEADER_SIZE, manifest_off, len(text),
                         weights_off, len(weights), digest(text), digest(weights), b"\0" * 32,
                         b"\0" * 16)
    return header + text + b"\0" * (weights_off - manifest_off - len(text)) + weights


@dataclass
class Blob:
    """A parsed blob: header fields, the manifest, and a view of the weights region."""

    major: int
    minor: int
    manifest: dict[str, Any]
    weights: memoryview
    weights_offset: int  # from the blob start
    weights_digest: bytes
    code_digest: bytes

    def weight(self, index: int) -> memoryview:
        """The bytes of weight region `index`, bounds-checked against the weights region."""
        try:
            region = self.manifest["weights"][index]
            off, n = int(region["offset"]), int(region["nbytes"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise FormatError(f"manifest has no valid weight region {index}") from None
        if off < 0 or n < 0 or off % ALIGN or off + n > len(self.weights):
            raise FormatError(f"weight region {index} ({off}+{n}) lies outside the weights "
                              f"section ({len(self.weights)} bytes)")
        return self.weights[off:off + n]


def read_blob(buf: memoryview, where: str, *, verify_weights: bool = True) -> Blob:
    """Parse and check a blob held in buf (a memoryview of exactly the blob's bytes)."""
    if len(buf) < HEADER_SIZE:
        raise FormatError(f"{where}: kiln section is {len(buf)} bytes, shorter than its header")
    (magic, major, minor, hsize, m_off, m_size, w_off, w_size, m_dig, w_dig, c_dig,
     _reserved) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r} in the kiln section (expected {MAGIC!r})")
    if major > FORMAT_MAJOR:
        raise FormatError(f"{where}: library format {major}.{minor} is newer than this kiln "
                          f"reads ({FORMAT_MAJOR}.x); upgrade kiln to one that reads format "
                          f"{major}")
    if major < 1 or hsize < HEADER_SIZE:
        raise FormatError(f"{where}: unknown library format {major}.{minor}")
    for name, off, size in (("manifest", m_off, m_size), ("weights", w_off, w_size)):
        if off < hsize or off + size > len(buf):
            raise FormatError(f"{where}: {name} ({off}+{size}) lies outside the kiln section "
                              f"({len(buf)} bytes)")
    if m_size > MAX_MANIFEST:
        raise FormatError(f"{where}: manifest claims {m_size} bytes (limit {MAX_MANIFEST})")
    if w_off % ALIGN:
        raise FormatError(f"{where}: weights offset {w_off} is not {ALIGN}-byte aligned")
    text = bytes(buf[m_off:m_off + m_size])
    if digest(text) != m_dig:
        raise FormatError(f"{where}: manifest digest mismatch: the file is damaged")
    weights = buf[w_off:w_off + w_size]
    if verify_weights and digest(weights) != w_dig:
        raise FormatError(f"{where}: weights digest mismatch: the file is damaged")
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where}: manifest is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise FormatError(f"{where}: manifest has no models table")
    return Blob(major, minor, manifest, weights, w_off, w_dig, c_dig)


def code_digest(buf, blob_offset: int, blob_size: int) -> bytes:
    """BLAKE2b-256 of a library file's bytes outside its blob: the native code and ELF tables."""
    h = hashlib.blake2b(digest_size=32)
    h.update(buf[:blob_offset])
    h.update(buf[blob_offset + blob_size:])
    return h.digest()
