"""A dossier's audit trail, read from history (upcast) and the outbox, rendered for people.

Every input with its source, agency, officer and time; each state and status code; the
appointment with its working-day arithmetic; discounts with their rule and legal basis (as
emitted, from the outbox); the workflow version; whether the input was signed (contract 1.1)
and whether its signature, over the bytes the history kept, still checks against the registry
today. Personal data (Decree 13/2023) is masked wherever the contract's declaration finds it
(schemas.personal_data), sealed or not; revealing it opens the sealed values with the privacy
secret (engine.store.privacy), and shows `[erased]` where the person was forgotten.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, Engine

from dossier.composition import build_vault
from dossier.settings import Settings
from engine.calendar import WorkingCalendar
from engine.events import FEE_DISCOUNT_TOPIC, TYPE_PREFIX
from engine.history import HistoryRow
from engine.procedures import load_catalogue
from engine.registry import Registry, RegistryError, load_registry, registry_files, verify_signature
from engine.store import queries
from engine.store.privacy import (
    PersonalDataVault,
    PrivacyKeyError,
    sealed_bytes_key_id,
    sealed_values,
    with_values,
)
from schemas.personal_data import personal_paths
from schemas.upcasting import upcast

VN = ZoneInfo("Asia/Ho_Chi_Minh")
MASK = "[masked]"
UNOPENED = "[sealed: no privacy key]"


@dataclass
class Step:
    seq: int
    time: str
    type: str
    source: str
    agency: str | None
    officer: str | None
    state_before: str | None
    state_after: str
    status_code: int
    workflow_version: int
    schema_version: int
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    # Contract 1.1, "Signed inputs": the key id it was signed with (None: unsigned), and
    # whether that signature still checks now, with why not.
    signed_with: str | None = None
    signature_checks: bool | None = None
    signature_note: str = "unsigned"


@dataclass
class Trail:
    dossier_code: str
    procedure: str | None
    as_of: str | None
    steps: list[Step]
    discounts: list[dict[str, Any]]


def _local(value: datetime) -> str:
    return value.astimezone(VN).strftime("%a %Y-%m-%d %H:%M")


def masked(type_: str, data: Mapping[str, Any]) -> Any:
    """`data` with every personal value (by the contract's declaration) and every sealed value
    replaced by MASK: a row stored before sealing began holds its values in clear."""
    hidden = {path: MASK for path in personal_paths(type_, data)}
    hidden.update({path: MASK for path, _ in sealed_values(data)})
    return with_values(data, hidden)


@dataclass
class _Opener:
    """What opens sealed values for this trail: the vault and the keys its rows name (None:
    no privacy secret here, so nothing sealed can be opened or checked)."""

    vault: PersonalDataVault | None
    keys: dict[str, bytes]


def _opener(connection: Connection, settings: Settings, rows: list[HistoryRow]) -> _Opener:
    try:
        vault = build_vault(settings)
    except PrivacyKeyError:
        return _Opener(None, {})
    sealed: list[Any] = [r.envelope for r in rows]
    sealed.extend(r.signed_value for r in rows if r.signed_value is not None)
    return _Opener(vault, vault.keys_for(connection, vault.key_ids_in(sealed)))


def load_trail(
    db: Engine,
    code: str,
    *,
    as_of: datetime | None,
    settings: Settings,
    reveal: bool = False,
) -> Trail | None:
    """The trail of dossier `code`; with `reveal`, sealed personal data is opened (the caller
    records the disclosure first)."""
    with db.connect() as connection:
        rows = queries.dossier_history(connection, code, until=as_of)
        discount_messages = list(
            queries.outbox_messages(connection, [FEE_DISCOUNT_TOPIC], key=code.encode())
        )
        opener = _opener(connection, settings, rows)
    if not rows:
        return None
    catalogue = load_catalogue(settings.workflows_dir)
    calendar = WorkingCalendar.load()
    registry: Registry | None
    try:
        registry = load_registry(registry_files(settings.registry_files))
    except RegistryError:
        registry = None  # said on each signed input: its signature cannot be checked
    steps: list[Step] = []
    procedure: str | None = None
    for r in rows:
        envelope = upcast(r.envelope, r.schema_version)
        data = dict(envelope.get("data") or {})
        if r.type.endswith(".submitted"):
            procedure = data.get("procedure")
        shown: Any
        if not reveal:
            shown = masked(r.type, data)
        elif opener.vault is not None:
            shown = opener.vault.open_data(code, data, opener.keys)
        else:
            shown = with_values(data, {p: UNOPENED for p, _ in sealed_values(data)})
        step = Step(
            seq=r.seq,
            time=_local(r.event_time),
            type=r.type.removeprefix(TYPE_PREFIX),
            source=r.source,
            agency=data.get("agency"),
            officer=data.get("officer"),
            state_before=r.state_before,
            state_after=r.state_after,
            status_code=r.status_code,
            workflow_version=r.workflow_version,
            schema_version=r.schema_version,
            data=shown,
        )
        _signature(step, r, envelope, registry, opener)
        version = catalogue.get(procedure, r.workflow_version) if procedure else None
        if step.type == "received" and version is not None:
            days = version.deadline.working_days
            due = calendar.due_at(r.event_time, float(days))
            step.note = (
                f"received {_local(r.event_time)} + {_days(days)} working days = {_local(due)}"
            )
        elif step.type == "rescheduled":
            step.note = f"new appointment {data.get('new_due')} ({data.get('reason', '')})"
        elif step.type == "supplement-provided" and version is not None:
            days = version.deadline.working_days
            due = calendar.due_at(r.event_time, float(days))
            step.note = (
                f"processing time restarts ({version.deadline.supplementation}): "
                f"{_local(r.event_time)} + {_days(days)} working days = {_local(due)}"
            )
        steps.append(step)
    discounts: list[dict[str, Any]] = []
    for message in discount_messages:
        if as_of is not None and message.created_at > as_of:
            continue
        event = orjson.loads(message.value)
        d = event.get("data", {})
        discounts.append(
            {
                "type": str(event.get("type", "")).removeprefix(TYPE_PREFIX),
                "fee_code": d.get("fee_code"),
                "base_amount": d.get("base_amount"),
                "discount_amount": d.get("discount_amount"),
                "payable_amount": d.get("payable_amount"),
                "rule": d.get("rule"),
                "legal_basis": d.get("legal_basis"),
            }
        )
    return Trail(code, procedure, as_of.isoformat() if as_of else None, steps, discounts)


def _signature(
    step: Step,
    row: HistoryRow,
    envelope: Mapping[str, Any],
    registry: Registry | None,
    opener: _Opener,
) -> None:
    """Whether the row's input was signed, and whether the signature checks today: against the
    registry's keys of the agency or sender, over the bytes kept, which must be this input.
    Bytes sealed with the person's data are opened to be checked, never shown."""
    if row.signature is None or row.signed_value is None:
        return
    key_id = row.signature.partition(":")[0]
    step.signed_with = key_id
    signed_value = row.signed_value
    if sealed_bytes_key_id(row.signed_value) is not None:
        if opener.vault is None:
            step.signature_note = (
                f"signed with key {key_id}; not checked: its bytes are sealed with personal"
                " data and no privacy key is configured here"
            )
            return
        opened = opener.vault.open_signed(
            row.dossier_code, row.event_id, row.signed_value, opener.keys
        )
        if opened is None:
            step.signature_note = (
                f"signed with key {key_id}; checked when applied; its bytes were erased with"
                " the person's data"
            )
            return
        signed_value = opened
    plain_data = envelope.get("data")
    if opener.vault is not None and isinstance(plain_data, Mapping):
        # The bytes were signed over the values in clear; the row holds them sealed.
        plain_data = opener.vault.open_data(row.dossier_code, plain_data, opener.keys)
    if registry is None:
        step.signature_checks = None
        step.signature_note = f"signed with key {key_id}; not checked: the registry does not load"
        return
    try:
        signed = orjson.loads(signed_value)
    except orjson.JSONDecodeError:
        signed = None
    same = isinstance(signed, dict) and all(
        signed.get(name) == value
        for name, value in (
            ("id", row.event_id),
            ("source", row.source),
            ("type", row.type),
            ("subject", row.dossier_code),
            ("data", plain_data),
        )
    )
    if not same:
        step.signature_checks = False
        step.signature_note = (
            f"signed with key {key_id}; DOES NOT CHECK: the kept bytes are not this input"
        )
        return
    topic = str(envelope.get("topic") or row.position.topic)
    who, keys = registry.signer(
        not topic.endswith("dossier.submission"),
        row.source,
        (envelope.get("data") or {}).get("agency"),
    )
    refused = verify_signature(who, keys, signed_value, row.signature)
    step.signature_checks = refused is None
    step.signature_note = (
        f"signed with key {key_id} of {who}; checks"
        if refused is None
        else f"signed with key {key_id}; DOES NOT CHECK: {refused}"
    )


def _signed(step: Mapping[str, Any]) -> str:
    if step["signed_with"] is None:
        return "unsigned"
    if step["signature_checks"] is None:
        return f"signed {step['signed_with']}, not checked"
    return f"signed {step['signed_with']}, " + (
        "checks" if step["signature_checks"] else "DOES NOT CHECK"
    )


def _days(days: Decimal) -> str:
    return format(days.normalize(), "f") if isinstance(days, Decimal) else str(days)


def render(trail: Trail, fmt: str, *, reveal: bool) -> str:
    steps = [asdict(s) for s in trail.steps]
    if fmt == "json":
        document = {
            "dossier_code": trail.dossier_code,
            "procedure": trail.procedure,
            "as_of": trail.as_of,
            "personal_data": "revealed" if reveal else "masked",
            "steps": steps,
            "discounts": trail.discounts,
        }
        return json.dumps(document, ensure_ascii=False, indent=2, default=str) + "\n"
    columns = [
        "seq",
        "time",
        "type",
        "source",
        "agency",
        "officer",
        "state_before",
        "state_after",
        "status_code",
        "workflow_version",
        "note",
        "signature_note",
    ]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([*columns, "data"])
        for s in steps:
            writer.writerow([*(s[c] for c in columns), json.dumps(s["data"], ensure_ascii=False)])
        return buffer.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in [*columns, "data"])
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(s[c] if s[c] is not None else ''))}</td>" for c in columns
            )
            + f"<td><code>{html.escape(json.dumps(s['data'], ensure_ascii=False))}</code></td></tr>"
            for s in steps
        )
        discounts = "".join(
            f"<li>{html.escape(str(d['fee_code']))}: {d['discount_amount']} of "
            f"{d['base_amount']} VND off ({html.escape(str(d['rule']))}; "
            f"{html.escape(str(d['legal_basis']))})</li>"
            for d in trail.discounts
        )
        return (
            f"<!doctype html><meta charset=utf-8><title>Audit trail "
            f"{html.escape(trail.dossier_code)}</title><h1>{html.escape(trail.dossier_code)}</h1>"
            f"<p>Procedure {html.escape(str(trail.procedure))}</p><table><tr>{head}</tr>{body}"
            f"</table><h2>Discounts</h2><ul>{discounts}</ul>\n"
        )
    lines = [
        f"Dossier {trail.dossier_code}  procedure {trail.procedure}"
        + (f"  as of {trail.as_of}" if trail.as_of else ""),
        f"personal data: {'REVEALED' if reveal else 'masked'}",
        "",
    ]
    for s in steps:
        transition = f"{s['state_before'] or '-'} -> {s['state_after']} (code {s['status_code']})"
        who = f"agency {s['agency']}" if s["agency"] else s["source"]
        # Officers act in an official capacity: the audit names them.
        officer = f", officer {s['officer']}" if s["officer"] else ""
        lines.append(
            f"{s['seq']:>3}  {s['time']}  {s['type']:<22} {transition}  "
            f"[{who}{officer}; workflow v{s['workflow_version']}; {_signed(s)}]"
        )
        if s["note"]:
            lines.append(f"     {s['note']}")
        if s["signed_with"] is not None:
            lines.append(f"     signature: {s['signature_note']}")
        if s["type"] == "submitted":
            lines.append(f"     data: {json.dumps(s['data'], ensure_ascii=False)}")
    if trail.discounts:
        lines.append("")
        lines.append("Fee discounts:")
        for d in trail.discounts:
            lines.append(
                f"  {d['type']}: {d['fee_code']} {d['base_amount']} VND, "
                f"-{d['discount_amount']} = {d['payable_amount']} VND; rule {d['rule']}; "
                f"legal basis: {d['legal_basis']}"
            )
    return "\n".join(lines) + "\n"
