"""Ed25519 keys and the signature of a library's blob header (signing and verifying a
library file, which needs the loader's checks, are library.sign and library.verify).

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

from ..errors import KilnError, VerificationError
from .blob import signed_message
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
