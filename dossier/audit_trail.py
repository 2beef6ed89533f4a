"""A dossier's audit trail, read from history (upcast) and the outbox, rendered for people.

Every input with its source, agency, officer and time; each state and status code; the
appointment with its working-day arithmetic; discounts with their rule and legal basis (as
emitted, from the outbox); the workflow version; whether the input was signed (contract 1.1)
and whether its signature, over the bytes the history kept, still checks against the registry
today. Personal data (Decree 13/2023) is masked unless the caller is entitled and says so.
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
from sqlalchemy import Engine

from dossier.settings import Settings
from engine.calendar import WorkingCalendar
from engine.events import FEE_DISCOUNT_TOPIC, TYPE_PREFIX
from engine.history import HistoryRow
from engine.procedures import load_catalogue
from engine.registry import Registry, RegistryError, load_registry, registry_files, verify_signature
from engine.store import queries
from schemas.upcasting import upcast

VN = ZoneInfo("Asia/Ho_Chi_Minh")
# Keys whose values identify a person: masked wherever they occur in an input's data.
PERSONAL_KEYS = frozenset(
    {"id_number", "name", "address", "dia_chi", "phone", "email", "full_name", "birth_date"}
)
MASK = "[masked]"


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


def mask(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (MASK if k in PERSONAL_KEYS else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def load_trail(
    db: Engine, code: str, *, as_of: datetime | None, settings: Settings
) -> Trail | None:
    with db.connect() as connection:
        rows = queries.dossier_history(connection, code, until=as_of)
        discount_messages = list(
            queries.outbox_messages(connection, [FEE_DISCOUNT_TOPIC], key=code.encode())
        )
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
            data=data,
        )
        _signature(step, r, envelope, registry)
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
    step: Step, row: HistoryRow, envelope: Mapping[str, Any], registry: Registry | None
) -> None:
    """Whether the row's input was signed, and whether the signature checks today: against the
    registry's keys of the agency or sender, over the bytes kept, which must be this input."""
    if row.signature is None or row.signed_value is None:
        return
    key_id = row.signature.partition(":")[0]
    step.signed_with = key_id
    if registry is None:
        step.signature_checks = None
        step.signature_note = f"signed with key {key_id}; not checked: the registry does not load"
        return
    try:
        signed = orjson.loads(row.signed_value)
    except orjson.JSONDecodeError:
        signed = None
    same = isinstance(signed, dict) and all(
        signed.get(name) == value
        for name, value in (
            ("id", row.event_id),
            ("source", row.source),
            ("type", row.type),
            ("subject", row.dossier_code),
            ("data", envelope.get("data")),
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
    refused = verify_signature(who, keys, row.signed_value, row.signature)
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
    for s in steps:
        if not reveal:
            s["data"] = mask(s["data"])
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
