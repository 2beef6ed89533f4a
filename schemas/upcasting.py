"""Bringing stored inputs of older schema versions forward, at read time.

History is append-only and hash-chained, so an old input is never rewritten in place: it is
read as what it was (its stored `schema_version` and envelope) and upcast step by step, n to
n + 1, to the version the engine understands (`CURRENT_SCHEMA_VERSION`). Replay from the
database and `dossier audit show` read through `upcast`.

Version 0 is the legacy, pre-contract shape some provincial one-stop systems exported before
contract v1 (imported into history when a province migrates): a `submitted` named its channel
`kenh` with Vietnamese slugs instead of the integer `channel`, and "fully online" `toan_trinh`
instead of `full_online`. Nothing else differed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.events import CURRENT_SCHEMA_VERSION, TYPE_PREFIX

Envelope = dict[str, Any]
Upcaster = Callable[[Envelope], Envelope]

# version n -> the function that turns an n envelope into an n + 1 envelope
UPCASTERS: dict[int, Upcaster] = {}


class UpcastError(ValueError):
    """A stored version no upcaster chain leads from (or one from the future)."""


def upcaster(from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(function: Upcaster) -> Upcaster:
        if from_version in UPCASTERS:
            raise ValueError(f"an upcaster from version {from_version} is already registered")
        UPCASTERS[from_version] = function
        return function

    return register


def upcast(envelope: Mapping[str, Any], version: int) -> Envelope:
    """A copy of `envelope` (stored at `version`) in the current version's shape."""
    if version > CURRENT_SCHEMA_VERSION:
        raise UpcastError(f"schema version {version} is newer than {CURRENT_SCHEMA_VERSION}")
    current = dict(envelope)
    while version < CURRENT_SCHEMA_VERSION:
        step = UPCASTERS.get(version)
        if step is None:
            raise UpcastError(f"no upcaster from schema version {version}")
        current = step(current)
        version += 1
    return current


# Legacy channel slugs: in person at the one-stop, online, by public postal service.
LEGACY_CHANNELS: Mapping[str, int] = {"truc_tiep": 1, "truc_tuyen": 2, "buu_chinh": 3}


@upcaster(0)
def _legacy_to_v1(envelope: Envelope) -> Envelope:
    if envelope.get("type") != f"{TYPE_PREFIX}submitted":
        return envelope
    data = dict(envelope.get("data") or {})
    if "kenh" in data:
        slug = data.pop("kenh")
        if slug not in LEGACY_CHANNELS:
            raise UpcastError(f"legacy channel {slug!r} is none of {sorted(LEGACY_CHANNELS)}")
        data["channel"] = LEGACY_CHANNELS[slug]
    if "toan_trinh" in data:
        data["full_online"] = bool(data.pop("toan_trinh"))
    return {**envelope, "data": data}
