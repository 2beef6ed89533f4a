"""Where the audit's keys and evidence come from: the engine's signing key (a file or an
environment variable, never the database), the verifier's public keys, an auditor's anchor
file, and the checkpoints as published on `dossier.audit-checkpoint`.

The signatures themselves are engine.signing's; what a checkpoint is and how its published
copies are folded is engine.audit's. This module only reads and writes files and the topic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from dossier.settings import Settings
from engine.audit import CheckpointHeader, PublishedCheckpoints
from engine.events import AUDIT_CHECKPOINT_TOPIC
from engine.signing import (
    PublicKeys,
    Signer,
    SigningKeyError,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
)

log = logging.getLogger(__name__)

ANCHOR_FORMAT = "dossier-engine audit anchor v1"


class AuditKeyError(ValueError):
    """A key or anchor that cannot be used; the message names the setting or file."""


def signer_of(settings: Settings) -> Signer | None:
    """The engine's checkpoint signer from DOSSIER_AUDIT_SIGNING_KEY_FILE, else
    DOSSIER_AUDIT_SIGNING_KEY; None when neither is set. A set but unusable key is an error:
    an engine told to sign must not quietly write unsigned checkpoints."""
    path = settings.audit_signing_key_file
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuditKeyError(
                f"DOSSIER_AUDIT_SIGNING_KEY_FILE: cannot read {path} ({exc.strerror or exc})"
            ) from None
        where = f"DOSSIER_AUDIT_SIGNING_KEY_FILE ({path})"
    elif settings.audit_signing_key:
        data = settings.audit_signing_key.encode("utf-8", "replace")
        # An environment variable cannot hold a newline everywhere: accept "\n" escapes.
        data = data.replace(b"\\n", b"\n")
        where = "DOSSIER_AUDIT_SIGNING_KEY"
    else:
        return None
    try:
        return Signer.of(load_private_key(data))
    except SigningKeyError as exc:
        raise AuditKeyError(f"{where}: {exc}") from None


def warn_if_unsigned(signer: Signer | None) -> None:
    if signer is None:
        log.warning(
            "audit: no signing key (DOSSIER_AUDIT_SIGNING_KEY_FILE or DOSSIER_AUDIT_SIGNING_KEY):"
            " checkpoints are written unsigned, and a database writer can rewrite them unseen"
        )
    else:
        log.info("audit: checkpoints are signed with key %s", signer.key_id)


def keygen(out: Path, *, force: bool = False) -> str:
    """A new signing key: `out` (PKCS8 PEM, mode 0600) and `out`.pub (public PEM, for
    verifiers); the key id. An existing key file is kept unless `force`: overwriting it
    loses the key that signed every checkpoint so far."""
    key = generate_private_key()
    public = Path(f"{out}.pub")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(out, flags, 0o600)
    except FileExistsError:
        raise AuditKeyError(f"{out} exists; keep it, or give --force to replace it") from None
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)  # a replaced file keeps its old mode otherwise
        file.write(private_key_pem(key))
    public.write_bytes(public_key_pem(key.public_key()))
    return Signer.of(key).key_id


def public_keys(paths: Iterable[Path]) -> PublicKeys:
    """The verifier's public keys: PEM files (FILE.pub of `keygen`) or base64 raw keys."""
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path.read_bytes()))
        except OSError as exc:
            raise AuditKeyError(
                f"--public-key: cannot read {path} ({exc.strerror or exc})"
            ) from None
        except SigningKeyError as exc:
            raise AuditKeyError(f"--public-key {path}: {exc}") from None
    return PublicKeys(keys)


def write_anchor(out: Path, header: CheckpointHeader) -> None:
    """A checkpoint as an auditor keeps it: a small JSON file, mode 0600."""
    body = orjson.dumps({"format": ANCHOR_FORMAT, **header.fields()}, option=orjson.OPT_INDENT_2)
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(body + b"\n")


def read_anchor(path: Path) -> CheckpointHeader:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise AuditKeyError(f"--anchor: cannot read {path} ({exc.strerror or exc})") from None
    except orjson.JSONDecodeError:
        raise AuditKeyError(f"--anchor {path}: not JSON") from None
    if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
        raise AuditKeyError(f"--anchor {path}: not an anchor ({ANCHOR_FORMAT!r})")
    try:
        return CheckpointHeader.parse(data)
    except ValueError as exc:
        raise AuditKeyError(f"--anchor {path}: {exc}") from None


def published_checkpoints(
    settings: Settings, *, stall_timeout_s: float = 30.0, up_to: int | None = None
) -> PublishedCheckpoints:
    """The checkpoints on the deployment's `dossier.audit-checkpoint`, read whole and folded
    (engine.audit.PublishedCheckpoints): a message that is not one is a finding, not an
    error. A missing topic is a finding too: every stored checkpoint is then unpublished."""
    from dossier import kafka_clients

    topic = settings.topic(AUDIT_CHECKPOINT_TOPIC)
    folded = PublishedCheckpoints(up_to=up_to)
    try:
        for partition, offset, value in kafka_clients.read_topic(
            settings, topic, stall_timeout_s=stall_timeout_s
        ):
            where = f"{topic} [{partition}] offset {offset}"
            data, error = decode_message(value)
            folded.add(where, data, error)
    except kafka_clients.TopicNotFound:
        folded.add(topic, None, "the topic does not exist")
    folded.finish()
    return folded


def decode_message(value: bytes | None) -> tuple[Any, str | None]:
    """A checkpoint message's `data`, or why there is none: the topic's bytes may be anything."""
    if value is None:
        return None, "no value"
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, f"not JSON ({len(value)} bytes)"
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
        return None, "not a CloudEvent with a data object"
    return envelope["data"], None


def public_key_paths(values: Sequence[str] | None) -> list[Path]:
    return [Path(v).expanduser() for v in values or ()]
