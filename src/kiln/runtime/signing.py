"""Ed25519 signatures that travel inside the library: sign in place, verify before loading.

The signature covers the blob header, which holds the digests of the manifest, the weights
and the native code (everything outside the blob), so one signature covers every byte of
the file. The signer's public key is stored next to it, so `kiln inspect` can name it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import FormatError, KilnError, VerificationError
from .blob import (
    HEADER_SIZE,
    SECTION,
    SIGNATURE_OFFSET,
    SIGNATURE_SIZE,
    SIGNER_OFFSET,
    signed_message,
)
from .elf import read_elf
from .files import atomic_write

KeyLike = Any  # an Ed25519 key object, a PEM path, or PEM bytes


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def fingerprint(public_raw: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _read_pem(key: KeyLike) -> bytes:
    if isinstance(key, bytes):
        return key
    try:
        return Path(key).read_bytes()
    except OSError as e:
        raise KilnError(f"cannot read key file {key}: {e}") from None


def load_public_key(key: KeyLike):
    """An Ed25519 public key from a key object (public or private), a PEM path, PEM bytes, or
    the 32 raw bytes a library header stores."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(key)
        except ValueError:
            raise VerificationError(f"stored signer key {key.hex()[:16]}… is not a valid "
                                    "Ed25519 key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    try:
        loaded = serialization.load_pem_public_key(_read_pem(key))
    except ValueError as e:
        raise KilnError(f"{key!r} is not a PEM public key: {e}") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise KilnError(f"{key!r} is not an Ed25519 public key")
    return loaded


def load_private_key(key: KeyLike):
    """An Ed25519 private key from a key object, a PEM path or PEM bytes (unencrypted)."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    try:
        loaded = serialization.load_pem_private_key(_read_pem(key), password=None)
    except (ValueError, TypeError) as e:
        raise KilnError(f"{key!r} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise KilnError(f"{key!r} is not an Ed25519 private key")
    return loaded


def raw_public(key) -> bytes:
    serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keygen(private_path: str | os.PathLike, public_path: str | os.PathLike) -> str:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, private, mode=0o600)
    atomic_write(public_path, public)
    return fingerprint(raw_public(key.public_key()))


def _blob_offset(data: bytes, where: str) -> int:
    section = read_elf(memoryview(data), where).sections.get(SECTION)
    if section is None or section.size < HEADER_SIZE:
        raise FormatError(f"{where} is not a kiln library (no {SECTION} section)")
    return section.offset


def sign(path: str | os.PathLike, key: KeyLike) -> str:
    """Sign a library in place (atomically); returns the signer's key fingerprint."""
    from .library import inspect_file

    path = Path(path)
    private = load_private_key(key)
    try:
        original = path.read_bytes()
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from None
    inspect_file(original, compat=False, name=str(path)).release()  # sign only what was checked
    data = bytearray(original)
    base = _blob_offset(original, str(path))
    public = raw_public(private.public_key())
    data[base + SIGNER_OFFSET:base + SIGNER_OFFSET + 32] = public
    signature = private.sign(signed_message(bytes(data[base:base + HEADER_SIZE])))
    data[base + SIGNATURE_OFFSET:base + SIGNATURE_OFFSET + SIGNATURE_SIZE] = signature
    atomic_write(path, bytes(data))
    return fingerprint(public)


def check_signature(header: bytes, signer: bytes, signature: bytes,
                    trusted_keys: Iterable[KeyLike], where: str) -> str:
    """Raise VerificationError unless header is signed by one of trusted_keys; return its id."""
    from cryptography.exceptions import InvalidSignature

    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise VerificationError(f"{where}: trusted_keys is empty: no signature can be trusted")
    if not any(signature):
        raise VerificationError(f"{where} is not signed, and trusted keys were given")
    for key in keys:
        if raw_public(key) == signer:
            try:
                key.verify(signature, signed_message(header))
            except InvalidSignature:
                raise VerificationError(f"{where}: bad signature for key {fingerprint(signer)}: "
                                        "the file was altered after signing") from None
            return fingerprint(signer)
    raise VerificationError(f"{where} is signed by key {fingerprint(signer)}, which is not "
                            f"among the trusted keys {[fingerprint(raw_public(k)) for k in keys]}")


def signature_status(signer: bytes, signature: bytes) -> str:
    """For display, of a library checked with verify="full" (so its signature was checked)."""
    if not any(signature):
        return "unsigned"
    return f"signed by {fingerprint(signer)} (signature valid; trust depends on the key)"


def verify(path: str | os.PathLike, trusted_keys: Iterable[KeyLike] | KeyLike) -> str:
    """Check a library's signature and every digest without loading its code; returns key id."""
    from .library import inspect_file

    if not isinstance(trusted_keys, (list, tuple, set)):
        trusted_keys = [trusted_keys]
    checked = inspect_file(path, trusted_keys=trusted_keys)
    checked.release()
    return checked.signer_id
