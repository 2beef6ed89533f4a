"""Personal data sealed under a key per person, so that it can be erased without touching the
evidence (crypto-shredding).

The store hands every history row, and every parked input, through `PersonalDataVault` before
writing it. Each personal value (found by the contract's declaration, handed in as `locate`)
is replaced by a token `pd1:<key id>:<base64url(nonce || AES-256-GCM ciphertext)>` of its JSON
form; the exact signed bytes of a row that holds personal data are sealed whole the same way.
The hash chain covers the tokens, so deleting a person's key (`forget`) makes their data
unreadable while every hash, and every state a replay rebuilds, stays as it was.

Keys: one random 256-bit key per person, stored wrapped (AES-GCM) under a key-encryption key
derived from the privacy master secret, which never enters the database; the row is found by
an HMAC of the person's identity number under another key derived from that secret, so neither
the database nor a copy of it holds the number or lets it be guessed from a list of numbers.
A dossier's later inputs are sealed under the key its `submitted` was (`dossier_persons`).

Each value is bound to its dossier and its place (the GCM associated data), so a token copied
into another dossier or field does not open there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import ColumnElement, Connection, Select, delete, select

from engine.application.ports import HistoryRow, ParkedInput
from engine.store.tables import dossier_persons, personal_data_keys

Path = tuple[str | int, ...]
Locate = Callable[[str, Mapping[str, Any]], list[Path]]

TOKEN_PREFIX: Final = "pd1:"
SEALED_PREFIX: Final = b"pd1:"
ERASED: Final = "[erased]"
NONCE_BYTES: Final = 12
SECRET_BYTES: Final = 32
SUBMITTED_SUFFIX: Final = ".submitted"
_CHUNK: Final = 400


class PrivacyKeyError(ValueError):
    """The privacy master secret is missing, malformed, or does not open the stored keys."""


@dataclass(frozen=True, slots=True)
class PrivacySecret:
    """The master secret's two derived keys: one wraps the per-person keys, one finds them."""

    wrapping_key: bytes
    lookup_key: bytes

    @classmethod
    def from_bytes(cls, secret: bytes) -> PrivacySecret:
        if len(secret) < SECRET_BYTES:
            raise PrivacyKeyError(
                f"the privacy secret has {len(secret)} bytes; it needs at least {SECRET_BYTES}"
            )
        return cls(
            _derive(secret, b"dossier personal data: key wrapping"),
            _derive(secret, b"dossier personal data: person lookup"),
        )

    @classmethod
    def from_text(cls, text: str) -> PrivacySecret:
        """The secret as a key file holds it: base64 of at least 32 random bytes."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PrivacyKeyError("the privacy secret is not base64") from None
        return cls.from_bytes(raw)

    def person(self, id_number: str) -> str:
        """Who a key belongs to, as the key table finds it: never the number itself."""
        normalised = "".join(id_number.split()).upper()
        return hmac.new(self.lookup_key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()

    def wrap(self, key_id: str, key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.wrapping_key).encrypt(nonce, key, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.wrapping_key).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode()
            )
        except InvalidTag:
            raise PrivacyKeyError(
                f"the privacy secret does not open stored key {key_id}: a different secret "
                "than the one the keys were made with"
            ) from None


def new_secret_text() -> str:
    return base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def is_token(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith(TOKEN_PREFIX)


def token_key_id(value: str) -> str | None:
    key_id, colon, _ = value.removeprefix(TOKEN_PREFIX).partition(":")
    return key_id if colon and key_id else None


def _place(dossier_code: str, path: Path) -> bytes:
    return f"{dossier_code}\x1f{'/'.join(str(p) for p in path)}".encode()


def _signed_place(dossier_code: str, event_id: str) -> bytes:
    return f"{dossier_code}\x1fsigned\x1f{event_id}".encode()


def _parked_place(dossier_code: str, source: str, event_id: str) -> bytes:
    return f"{dossier_code}\x1fparked\x1f{source}\x1f{event_id}".encode()


def seal_value(key_id: str, key: bytes, value: Any, place: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + AESGCM(key).encrypt(nonce, orjson.dumps(value), place)
    return f"{TOKEN_PREFIX}{key_id}:{base64.urlsafe_b64encode(sealed).decode('ascii')}"


def seal_bytes(key_id: str, key: bytes, value: bytes, place: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return SEALED_PREFIX + key_id.encode() + b":" + nonce + AESGCM(key).encrypt(nonce, value, place)


def sealed_bytes_key_id(value: bytes) -> str | None:
    if not value.startswith(SEALED_PREFIX):
        return None
    key_id, colon, _ = value[len(SEALED_PREFIX) :].partition(b":")
    try:
        return key_id.decode("ascii") if colon and key_id else None
    except UnicodeDecodeError:
        return None


def open_value(token: str, keys: Mapping[str, bytes], place: bytes) -> Any:
    """The value a token seals, or ERASED when its key is gone (or it does not open here)."""
    key_id = token_key_id(token)
    key = keys.get(key_id) if key_id else None
    if key is None or key_id is None:
        return ERASED
    try:
        sealed = base64.urlsafe_b64decode(token[len(TOKEN_PREFIX) + len(key_id) + 1 :])
        return orjson.loads(AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], place))
    except (binascii.Error, ValueError, InvalidTag, orjson.JSONDecodeError):
        return ERASED


def open_bytes(value: bytes, keys: Mapping[str, bytes], place: bytes) -> bytes | None:
    """The bytes a sealed value holds; None when its key is gone. Unsealed bytes as they are."""
    key_id = sealed_bytes_key_id(value)
    if key_id is None:
        return value
    key = keys.get(key_id)
    if key is None:
        return None
    body = value[len(SEALED_PREFIX) + len(key_id) + 1 :]
    try:
        return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], place)
    except InvalidTag:
        return None


def _get(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def sealed_values(data: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """(path, token) of every sealed value in `data`, however deep."""
    found: list[tuple[Path, str]] = []
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))
        elif path and is_token(node):
            found.append((path, node))
    return found


def with_values(data: Mapping[str, Any], values: Mapping[Path, Any]) -> dict[str, Any]:
    """A copy of `data` with the value at each path replaced; only the containers on those
    paths are copied."""
    copied: dict[str, Any] = dict(data)
    for path, value in values.items():
        node: Any = copied
        for part in path[:-1]:
            child = node[part]
            child = dict(child) if isinstance(child, Mapping) else list(child)
            node[part] = child
            node = child
        node[path[-1]] = value
    return copied


@dataclass(frozen=True, slots=True)
class ForgetReport:
    key_id: str | None
    dossiers: list[str]


class PersonalDataVault:
    """Seals personal data on its way into the store and opens it for those entitled to it.

    Holds no keys between calls: a key `forget` deletes is never used again, by this process or
    another, from the next transaction on.
    """

    def __init__(self, secret: PrivacySecret, locate: Locate, *, replaying: bool = False) -> None:
        """`replaying`: the rows come from stored history, whose tokens this store made, so
        a token is kept as it is. Live, a value that merely looks like a token is sealed like
        any other: a sender cannot claim another person's key."""
        self.secret = secret
        self.locate = locate
        self.replaying = replaying

    # --- writing -----------------------------------------------------------------------------
    def seal_history(self, connection: Connection, rows: Sequence[HistoryRow]) -> list[HistoryRow]:
        """`rows` with their personal values sealed; rows without any, as they are. Values that
        are already tokens (a replay of stored history) are kept as they are."""
        found: list[tuple[int, list[Path]]] = []
        for index, row in enumerate(rows):
            data = row.envelope.get("data")
            if isinstance(data, Mapping):
                paths = self.locate(row.type, data)
                if paths:
                    found.append((index, paths))
        if not found:
            return list(rows)
        owners = self._owners(connection, [rows[i] for i, _ in found])
        sealed = list(rows)
        for index, paths in found:
            row = rows[index]
            key_id, key = owners[row.dossier_code]
            data = row.envelope["data"]
            values: dict[Path, Any] = {}
            for path in paths:
                value = _get(data, path)
                if not (self.replaying and is_token(value)):
                    values[path] = seal_value(key_id, key, value, _place(row.dossier_code, path))
            signed = row.signed_value
            if signed is not None and not (self.replaying and sealed_bytes_key_id(signed)):
                place = _signed_place(row.dossier_code, row.event_id)
                signed = seal_bytes(key_id, key, signed, place)
            if values or signed is not row.signed_value:
                envelope = {**row.envelope, "data": with_values(data, values)}
                sealed[index] = replace(row, envelope=envelope, signed_value=signed)
        return sealed

    def seal_parked(
        self, connection: Connection, inputs: Sequence[ParkedInput]
    ) -> list[ParkedInput]:
        """Parked inputs of dossiers whose person is known, sealed whole under that key. An
        input parked before its dossier exists names nobody the engine knows yet."""
        owned = self._dossier_keys(connection, {p.dossier_code for p in inputs})
        keys = self._keys(connection, set(owned.values()))
        sealed: list[ParkedInput] = []
        for p in inputs:
            key_id = owned.get(p.dossier_code)
            key = keys.get(key_id) if key_id else None
            if key_id is None or key is None:
                sealed.append(p)
                continue
            place = _parked_place(p.dossier_code, p.source, p.event_id)
            sealed.append(replace(p, value=seal_bytes(key_id, key, p.value, place)))
        return sealed

    def _owners(
        self, connection: Connection, rows: Sequence[HistoryRow]
    ) -> dict[str, tuple[str, bytes]]:
        """(key id, key) each dossier's personal values are sealed under, making keys and
        `dossier_persons` rows for dossiers this batch submits."""
        persons: dict[str, str] = {}  # dossier code -> person, for the dossiers submitted here
        claimed: dict[str, str] = {}  # dossier code -> key id, from a replayed token
        for row in rows:
            if not row.type.endswith(SUBMITTED_SUFFIX):
                continue
            applicant = row.envelope["data"].get("applicant")
            number = applicant.get("id_number") if isinstance(applicant, Mapping) else None
            if self.replaying and is_token(number):
                key_id = token_key_id(number)
                if key_id is not None:
                    claimed[row.dossier_code] = key_id
            elif isinstance(number, str) and number.strip():
                persons[row.dossier_code] = self.secret.person(number)
        others = {r.dossier_code for r in rows} - persons.keys() - claimed.keys()
        known = self._dossier_keys(connection, others)
        for code in others - known.keys():
            # No submission seen with an identity number (an input stored before sealing
            # began): the dossier's own key, so its data can still be sealed and erased.
            persons[code] = self.secret.person(f"dossier:{code}")
        by_person = self._person_keys(connection, set(persons.values()))
        new_keys: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for person in sorted(set(persons.values()) - by_person.keys()):
            key_id, key = secrets.token_hex(8), secrets.token_bytes(32)
            by_person[person] = (key_id, key)
            new_keys.append(
                {
                    "person": person,
                    "key_id": key_id,
                    "key": self.secret.wrap(key_id, key),
                    "created_at": now,
                }
            )
        if new_keys:
            connection.execute(personal_data_keys.insert(), new_keys)
        owners: dict[str, tuple[str, bytes]] = {
            code: by_person[person] for code, person in persons.items()
        }
        wanted = set(known.values()) | set(claimed.values())
        keys = self._keys(connection, wanted)
        for code, key_id in {**known, **claimed}.items():
            stored = keys.get(key_id)
            # The person was forgotten: what arrives for them now is sealed under a key kept
            # nowhere, that is, not kept at all.
            owners[code] = (key_id, stored if stored is not None else secrets.token_bytes(32))
        submitted = {**{c: owners[c][0] for c in persons}, **claimed}
        fresh = set(submitted) - set(self._dossier_keys(connection, set(submitted)))
        if fresh:
            connection.execute(
                dossier_persons.insert(),
                [{"dossier_code": c, "key_id": submitted[c]} for c in sorted(fresh)],
            )
        return owners

    # --- reading -----------------------------------------------------------------------------
    def open_parked(
        self, connection: Connection, inputs: Sequence[ParkedInput]
    ) -> list[ParkedInput]:
        """Parked inputs as they arrived; one whose person was forgotten stays sealed (it then
        fails to decode and is dead-lettered with the bytes the store holds)."""
        wanted = {k for p in inputs if (k := sealed_bytes_key_id(p.value)) is not None}
        if not wanted:
            return list(inputs)
        keys = self._keys(connection, wanted)
        opened: list[ParkedInput] = []
        for p in inputs:
            place = _parked_place(p.dossier_code, p.source, p.event_id)
            value = open_bytes(p.value, keys, place)
            opened.append(p if value is None else replace(p, value=value))
        return opened

    def keys_for(self, connection: Connection, key_ids: Iterable[str]) -> dict[str, bytes]:
        """The unwrapped keys that still exist among `key_ids`."""
        return self._keys(connection, set(key_ids))

    def open_data(
        self, dossier_code: str, data: Mapping[str, Any], keys: Mapping[str, bytes]
    ) -> dict[str, Any]:
        """`data` with every token opened (ERASED where its key is gone)."""
        values = {
            path: open_value(token, keys, _place(dossier_code, path))
            for path, token in sealed_values(data)
        }
        return with_values(data, values)

    def open_signed(
        self, dossier_code: str, event_id: str, value: bytes, keys: Mapping[str, bytes]
    ) -> bytes | None:
        return open_bytes(value, keys, _signed_place(dossier_code, event_id))

    @staticmethod
    def key_ids_in(values: Iterable[Any]) -> set[str]:
        """The key ids of every token or sealed value among `values` (searched deeply)."""
        found: set[str] = set()
        stack = list(values)
        while stack:
            node = stack.pop()
            if isinstance(node, Mapping):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
            elif is_token(node):
                if (key_id := token_key_id(node)) is not None:
                    found.add(key_id)
            elif isinstance(node, bytes) and (key_id := sealed_bytes_key_id(node)) is not None:
                found.add(key_id)
        return found

    def check(self, connection: Connection) -> int:
        """Raises PrivacyKeyError unless the secret opens the stored keys; the number of keys."""
        rows = connection.execute(
            select(personal_data_keys.c.key_id, personal_data_keys.c.key).limit(1)
        ).all()
        for key_id, wrapped in rows:
            self.secret.unwrap(key_id, bytes(wrapped))
        return len(rows)

    # --- erasure -----------------------------------------------------------------------------
    def forget(self, connection: Connection, id_number: str) -> ForgetReport:
        """Delete the key of the person with this identity number (in the caller's
        transaction); the dossiers whose personal data it sealed."""
        person = self.secret.person(id_number)
        k = personal_data_keys.c
        key_id = connection.scalar(select(k.key_id).where(k.person == person))
        if key_id is None:
            return ForgetReport(None, [])
        codes = sorted(
            connection.scalars(
                select(dossier_persons.c.dossier_code).where(dossier_persons.c.key_id == key_id)
            )
        )
        connection.execute(delete(personal_data_keys).where(k.person == person))
        return ForgetReport(key_id, codes)

    # --- queries -----------------------------------------------------------------------------
    def _dossier_keys(self, connection: Connection, codes: set[str]) -> dict[str, str]:
        c = dossier_persons.c
        rows = _select_in(connection, select(c.dossier_code, c.key_id), c.dossier_code, codes)
        return {code: key_id for code, key_id in rows}

    def _person_keys(
        self, connection: Connection, persons: set[str]
    ) -> dict[str, tuple[str, bytes]]:
        k = personal_data_keys.c
        rows = _select_in(connection, select(k.person, k.key_id, k.key), k.person, persons)
        return {
            person: (key_id, self.secret.unwrap(key_id, bytes(wrapped)))
            for person, key_id, wrapped in rows
        }

    def _keys(self, connection: Connection, key_ids: set[str]) -> dict[str, bytes]:
        k = personal_data_keys.c
        rows = _select_in(connection, select(k.key_id, k.key), k.key_id, key_ids)
        return {key_id: self.secret.unwrap(key_id, bytes(wrapped)) for key_id, wrapped in rows}


def _select_in(
    connection: Connection, query: Select[Any], column: ColumnElement[Any], values: set[str]
) -> list[tuple[Any, ...]]:
    """`query` for the rows whose `column` is one of `values`, in chunks of bound parameters."""
    ordered = sorted(values)
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        found.extend(tuple(row) for row in connection.execute(query.where(column.in_(chunk))))
    return found
