"""Ed25519 signatures of audit checkpoints: key ids, signing and checking.

A checkpoint root stored beside the history it covers can be recomputed by whoever can write
that history; a signature made with a key that never enters the database cannot. The key id
is derived from the public key (the first 16 hex digits of sha256 of its raw 32 bytes), so a
rotated key gets a new id by itself and a verifier given several public keys picks the right
one without any registry.

Pure: bytes and keys in, strings out. Where the private key comes from (a file, an
environment variable) is the composition root's business (dossier.audit_keys).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

KEY_ID_HEX_DIGITS = 16


class SigningKeyError(ValueError):
    """A key that cannot be used: the message says why (never the key itself)."""


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:KEY_ID_HEX_DIGITS]


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted: the file's mode (0600) and its directory protect it."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def load_private_key(text: str | bytes) -> Ed25519PrivateKey:
    """A PKCS8 PEM Ed25519 private key, or its 32 raw bytes in base64 (what fits in an
    environment variable on one line)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            # The library's message may quote the PEM's header, never its body: say only why.
            reason = type(exc).__name__
            raise SigningKeyError(f"not a readable PEM private key ({reason})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"not an Ed25519 key ({type(key).__name__})")
        return key
    raw = _b64decode(data)
    if raw is None or len(raw) != 32:
        raise SigningKeyError("neither a PEM private key nor 32 raw bytes in base64")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A SubjectPublicKeyInfo PEM Ed25519 public key (what `dossier audit keygen` writes to
    FILE.pub), or its 32 raw bytes in base64."""
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            reason = type(exc).__name__
            raise SigningKeyError(f"not a readable PEM public key ({reason})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"not an Ed25519 key ({type(key).__name__})")
        return key
    raw = _b64decode(data)
    if raw is None or len(raw) != 32:
        raise SigningKeyError("neither a PEM public key nor 32 raw bytes in base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def _b64decode(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Signer:
    """The engine's checkpoint signer: a private key and the id of its public half."""

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def of(cls, private_key: Ed25519PrivateKey) -> Signer:
        return cls(private_key, key_id(private_key.public_key()))

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.private_key.sign(payload)).decode("ascii")


# Why a signature does not check out; None from `PublicKeys.check` means it does.
UNSIGNED = "unsigned"
UNKNOWN_KEY = "signed with a key id none of the given public keys has"
NOT_BASE64 = "signature is not base64 of 64 bytes"
BAD_SIGNATURE = "signature does not verify"


class PublicKeys(Mapping[str, Ed25519PublicKey]):
    """The verifier's public keys by key id: every key the engine signed with over time."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(k): k for k in keys}

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, kid: str | None, signature: str | None, payload: bytes) -> str | None:
        """None when `signature` (base64) is the key `kid`'s signature of `payload`, else the
        reason it is not. Never raises, whatever the strings hold: they come from a database
        or a topic an attacker may have written."""
        if not kid or not signature:
            return UNSIGNED
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            return f"{UNKNOWN_KEY} ({kid!r:.40})"
        raw = None
        if isinstance(signature, str):
            raw = _b64decode(signature.encode("ascii", "replace"))
        if raw is None or len(raw) != 64:
            return NOT_BASE64
        try:
            key.verify(raw, payload)
        except InvalidSignature:
            return BAD_SIGNATURE
        return None
