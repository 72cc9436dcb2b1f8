"""The kiln blob: the versioned section that carries a library's graph, metadata and weights.

Layout (integers little-endian; docs/format.md is the normative description):
  0   8  magic b"KILNBLOB"
  8   2  format major      10  2  format minor      12  4  header size (256)
  16  8  manifest offset   24  8  manifest size     (offsets from the blob start)
  32  8  weights offset    40  8  weights size      (weights offset is 64-byte aligned)
  48  32 BLAKE3 of header bytes [0, 48) then bytes [header size, weights offset): the
         fixed header fields, the manifest and its padding
  80  32 BLAKE3 of the weights region (each region's own digest is in the manifest)
  112 32 BLAKE3 of the library file outside the blob: the native code and ELF tables
  144 32 Ed25519 public key of the signer (zero if unsigned)
  176 64 Ed25519 signature of the header with these 64 bytes zeroed (zero if unsigned)
  240 16 reserved, zero (checked)
Together the digests and the signature cover every byte of a library file: a signed header
is checked against its embedded key when verifying fully, against trusted keys when given.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from blake3 import blake3

from ..errors import FormatError
from .manifest import check_manifest

SECTION = ".kiln"  # the non-loaded ELF section of a library that holds its blob
MAGIC = b"KILNBLOB"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
HEADER = struct.Struct("<8sHHIQQQQ32s32s32s32s64s16s")
HEADER_SIZE = HEADER.size  # 256
CODE_DIGEST_OFFSET = 112
SIGNER_OFFSET = 144
SIGNATURE_OFFSET = 176
SIGNATURE_SIZE = 64
ALIGN = 64
MAX_MANIFEST = 256 << 20


def digest(data) -> bytes:
    """BLAKE3-256: about 4 GB/s per core here, 5x hashlib's BLAKE2b, so verifying is cheap;
    large inputs are hashed on all cores (the digest does not depend on it)."""
    return blake3(data, max_threads=blake3.AUTO if len(data) >= 1 << 22 else 1).digest()


FIXED = 48  # header bytes [0, 48): magic, versions, sizes and offsets


def _manifest_digest(header_fixed, manifest_area) -> bytes:
    h = blake3()
    h.update(header_fixed)
    h.update(manifest_area)
    return h.digest()


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_blob(manifest: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """Serialize manifest and weight arrays; records each array's place in manifest["weights"]."""
    regions, chunks, offset = [], [], 0
    for array in arrays:
        data = np.ascontiguousarray(array).tobytes()
        regions.append({"offset": offset, "nbytes": len(data), "blake3": digest(data).hex()})
        chunks.append(data + b"\0" * _pad(len(data)))
        offset += len(chunks[-1])
    manifest = dict(manifest, weights=regions)
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    weights = b"".join(chunks)
    manifest_area = text + b"\0" * _pad(HEADER_SIZE + len(text))
    weights_off = HEADER_SIZE + len(manifest_area)
    fixed = HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, HEADER_SIZE, HEADER_SIZE, len(text),
                        weights_off, len(weights), *([bytes(32)] * 4), bytes(64), bytes(16))[:FIXED]
    header = fixed + struct.pack("<32s32s", _manifest_digest(fixed, manifest_area),
                                 digest(weights)) + bytes(HEADER_SIZE - FIXED - 64)
    return header + manifest_area + weights


def signed_message(header: bytes) -> bytes:
    """The bytes an Ed25519 signature covers: the header with the signature field zeroed."""
    end = SIGNATURE_OFFSET + SIGNATURE_SIZE
    return header[:SIGNATURE_OFFSET] + bytes(SIGNATURE_SIZE) + header[end:HEADER_SIZE]


@dataclass
class Blob:
    """A parsed blob: header fields, the manifest, and a view of the weights region."""

    major: int
    minor: int
    header: bytes
    manifest: dict[str, Any]
    weights: memoryview
    weights_digest: bytes
    code_digest: bytes
    signer: bytes  # 32 zero bytes if unsigned
    signature: bytes

    @property
    def signed(self) -> bool:
        return any(self.signature)

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

    def verify_weights(self, where: str) -> None:
        """Hash the weights; on a mismatch, name the damaged regions and the params using them."""
        if digest(self.weights) == self.weights_digest:
            return
        damaged = [k for k, r in enumerate(self.manifest.get("weights", []))
                   if not isinstance(r, dict) or digest(self.weight(k)).hex() != r.get("blake3")]
        users = sorted({f"{m}/{p['name']}" for m, spec in self.manifest["models"].items()
                        for p in spec.get("params", []) if p.get("weight") in damaged})
        detail = f" (weight regions {damaged}, params {users[:8]})" if damaged else \
            " (padding between weight regions)"
        raise FormatError(f"{where}: weights digest mismatch: the file is damaged{detail}")


def _writer_version(buf: memoryview, m_off: int, m_size: int) -> str:
    """Best effort: the kiln version a newer-format file names, for the upgrade message."""
    try:
        return str(json.loads(bytes(buf[m_off:m_off + min(m_size, MAX_MANIFEST)]))["kiln_version"])
    except Exception:  # a file of an unknown format: any failure means "unknown"
        return "a newer kiln"


def read_blob(buf: memoryview, where: str, *, verify_weights: bool = True,
              weights: memoryview | None = None) -> Blob:
    """Parse and check a blob held in buf (a memoryview of exactly the blob's bytes).

    weights: the weights region's bytes when they are held apart from buf (the loader keeps
    them out of the code image); its length must be what the header says.
    """
    if len(buf) < 16:
        raise FormatError(f"{where}: kiln section is {len(buf)} bytes, shorter than its header")
    magic, major, minor, hsize = struct.unpack_from("<8sHHI", buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r} in the kiln section (expected {MAGIC!r})")
    if major > FORMAT_MAJOR:
        m_off, m_size = struct.unpack_from("<QQ", buf, 16) if len(buf) >= 32 else (0, 0)
        raise FormatError(f"{where}: library format {major}.{minor}, written by "
                          f"{_writer_version(buf, m_off, m_size)}, is newer than this kiln reads "
                          f"(format {FORMAT_MAJOR}.x); upgrade kiln to that version or later")
    if major < 1 or hsize < HEADER_SIZE or len(buf) < HEADER_SIZE:
        raise FormatError(f"{where}: unknown or truncated library format {major}.{minor}")
    (_, _, _, _, m_off, m_size, w_off, w_size, m_dig, w_dig, c_dig, signer, signature,
     _reserved) = HEADER.unpack_from(buf, 0)
    if not hsize <= m_off <= m_off + m_size <= w_off <= w_off + w_size == len(buf):
        raise FormatError(f"{where}: manifest ({m_off}+{m_size}) and weights ({w_off}+{w_size}) "
                          f"do not tile the {len(buf)}-byte kiln section")
    if m_size > MAX_MANIFEST:
        raise FormatError(f"{where}: manifest claims {m_size} bytes (limit {MAX_MANIFEST})")
    if w_off % ALIGN:
        raise FormatError(f"{where}: weights offset {w_off} is not {ALIGN}-byte aligned")
    if _manifest_digest(buf[:FIXED], buf[hsize:w_off]) != m_dig:
        raise FormatError(f"{where}: header or manifest digest mismatch: the file is damaged")
    if any(_reserved):
        raise FormatError(f"{where}: reserved header bytes are not zero: the file is damaged")
    if any(signature) != any(signer):
        raise FormatError(f"{where}: a signature without its signer key (or the reverse): the "
                          "file is damaged")
    try:
        manifest = json.loads(bytes(buf[m_off:m_off + m_size]))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise FormatError(f"{where}: manifest is not valid JSON: {str(e)[:200]}") from None
    check_manifest(manifest, where)
    if weights is None:
        weights = buf[w_off:w_off + w_size]
    elif len(weights) != w_size:
        raise FormatError(f"{where}: weights region is {len(weights)} bytes, header says {w_size}")
    blob = Blob(major, minor, bytes(buf[:hsize]), manifest, weights, w_dig, c_dig, signer,
                signature)
    if verify_weights:
        blob.verify_weights(where)
    return blob


def weights_span(header: bytes) -> tuple[int, int] | None:
    """(offset, size) of the weights region that a blob header names, relative to the blob;
    None when the header is not one this kiln reads (read_blob then says what is wrong)."""
    if len(header) < HEADER_SIZE or header[:8] != MAGIC:
        return None
    major, = struct.unpack_from("<H", header, 8)
    w_off, w_size = struct.unpack_from("<QQ", header, 32)
    return (w_off, w_size) if major == FORMAT_MAJOR else None


def code_digest(buf, blob_offset: int, blob_size: int) -> bytes:
    """BLAKE3 of a library file's bytes outside its blob: the native code and ELF tables."""
    h = blake3()
    h.update(buf[:blob_offset])
    h.update(buf[blob_offset + blob_size:])
    return h.digest()
