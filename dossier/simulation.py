"""A deterministic workload: a province's agencies and portals, as contract messages.

Given a seed, the same messages come out in the same order, each labelled with the outcome
the engine must reach for it ("valid", "duplicate" or the dead-letter reason), so tests and
the main job can check the engine's accounting against what was produced.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import Catalogue, ProcedureVersion

HOUR = 3600
PORTAL = "urn:vn:portal:dichvucong.gov.vn"


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    topic: str  # contract topic, without deployment prefix
    key: bytes | None
    value: bytes
    expected: str  # "valid", "duplicate", or a dead-letter reason ("malformed", "schema", ...)
    time: datetime  # business time of the action (arrival order follows it)
    dossier: str | None = None


@dataclass(frozen=True)
class Shares:
    """Probabilities of the paths a dossier takes; defaults follow the seed's province."""

    online: float = 0.678
    postal: float = 0.02
    full_online_given_online: float = 0.6
    refused: float = 0.03
    supplementation: float = 0.10
    abandoned_supplementation: float = 0.1  # of those, the applicant never comes back
    withdrawal: float = 0.02
    stopped: float = 0.01
    reschedule: float = 0.03
    overdue: float = 0.07
    rejected_outcome: float = 0.04
    vneid: float = 0.85
    digitised: float = 0.95


@dataclass
class Agencies:
    """Agency codes by level; the province's districts end on 1 July 2025."""

    communes: list[str] = field(
        default_factory=lambda: [f"000.{20 + i // 90:02d}.{i % 90 + 10:02d}.H56" for i in range(60)]
    )
    districts: list[str] = field(default_factory=lambda: [f"000.00.{30 + i}.H56" for i in range(9)])
    province: list[str] = field(default_factory=lambda: [f"000.00.{10 + i:02d}.H56" for i in range(12)])

    def of_level(self, level: str) -> list[str]:
        return {"commune": self.communes, "district": self.districts, "province": self.province}[
            level
        ]


class Workload:
    def __init__(
        self,
        catalogue: Catalogue,
        calendar: WorkingCalendar,
        *,
        seed: int,
        start: datetime,
        end: datetime,
        dossiers: int,
        procedures: Sequence[str] | None = None,
        shares: Shares | None = None,
        duplicate_share: float = 0.0,
        bad_share: float = 0.0,
        reorder_share: float = 0.0,
    ) -> None:
        self.catalogue = catalogue
        self.calendar = calendar
        self.rng = random.Random(seed)
        self.start = start.astimezone(VN_TZ)
        self.end = end.astimezone(VN_TZ)
        self.dossiers = dossiers
        self.shares = shares or Shares()
        self.duplicate_share = duplicate_share
        self.bad_share = bad_share
        self.reorder_share = reorder_share
        self.procedures = list(procedures or catalogue.codes())
        self.agencies = Agencies()
        self._serial: dict[tuple[str, str], int] = {}
        self._ids = 0

    # -----------------------------------------------------------------------------------------
    def messages(self) -> list[SimulatedMessage]:
        """Every message, in arrival order."""
        stream: list[SimulatedMessage] = []
        span = max(1, int((self.end - self.start).total_seconds()))
        for _ in range(self.dossiers):
            at = self.start + timedelta(seconds=self.rng.randrange(span))
            stream.extend(self._dossier_life(self.calendar.clock_start(at)))
        stream.sort(key=lambda m: m.time)
        stream = self._reorder(stream)
        stream = self._add_duplicates(stream)
        stream = self._add_bad_inputs(stream)
        return stream

    def _dossier_code(self, agency: str, day: datetime) -> str:
        slot = (agency, day.strftime("%y%m%d"))
        self._serial[slot] = self._serial.get(slot, 0) + 1
        return f"{agency}-{slot[1]}-{self._serial[slot]:04d}"

    def _envelope(self, kind: str, code: str, time: datetime, source: str, data: dict[str, Any]) -> bytes:
        self._ids += 1
        return json.dumps(
            {
                "specversion": "1.0",
                "id": f"sim-{self._ids:09d}",
                "source": source,
                "type": f"vn.gov.dossier.{kind}",
                "subject": code,
                "time": time.isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    def _dossier_life(self, t: datetime) -> list[SimulatedMessage]:
        rng, shares, cal = self.rng, self.shares, self.calendar
        code_of_procedure = rng.choice(self.procedures)
        version = self.catalogue.in_force(code_of_procedure, t)
        if version is None:
            return []
        receiving = rng.choice(self.agencies.of_level(version.receiving_level))
        code = self._dossier_code(receiving, t)
        out: list[SimulatedMessage] = []

        def emit(kind: str, level: str | None, when: datetime, **data: Any) -> None:
            topic = "dossier.submission" if level is None else f"dossier.{level}"
            source = PORTAL if level is None else f"urn:vn:agency:{data.get('agency', receiving)}"
            value = self._envelope(kind, code, when, source, data)
            out.append(SimulatedMessage(topic, code.encode(), value, "valid", when, code))

        def later(when: datetime, lo_h: float, hi_h: float) -> datetime:
            return cal.add_working_seconds(cal.clock_start(when), int(rng.uniform(lo_h, hi_h) * HOUR))

        roll = rng.random()
        channel = 2 if roll < shares.online else (3 if roll < shares.online + shares.postal else 1)
        full_online = channel == 2 and rng.random() < shares.full_online_given_online
        emit(
            "submitted",
            None,
            t,
            procedure=version.code,
            agency=receiving,
            channel=channel,
            full_online=full_online,
            applicant={"kind": "citizen", "id_number": f"0{rng.randrange(10**10, 10**11)}", "name": "Nguyễn Văn An"},
            vneid_authenticated=rng.random() < shares.vneid,
            digitised=rng.random() < shares.digitised,
        )
        rcv = version.receiving_level
        t = later(t, 0.1, 4)
        if rng.random() < shares.refused:
            emit("reception-refused", rcv, t, agency=receiving, reason="Không thuộc thẩm quyền")
            return out
        emit("received", rcv, t, agency=receiving, officer="CB-01")
        received_at = t
        due = cal.due_at(received_at, version.deadline.working_days)
        if rng.random() < shares.withdrawal:
            emit("withdrawal-requested", None, later(t, 1, 16), reason="Người nộp rút hồ sơ")
            return out
        t = later(t, 0.5, 8)
        emit("processing-started", rcv, t, agency=receiving)
        holder, level = receiving, rcv
        upper = next((lvl for lvl in version.levels if lvl != rcv), None)
        budget_hours = float(version.deadline.working_days) * 8
        overdue = rng.random() < shares.overdue
        if rng.random() < shares.supplementation:
            t = later(t, 1, min(8, budget_hours / 4 + 1))
            emit("supplement-requested", level, t, agency=holder, reason="Thiếu giấy tờ")
            if rng.random() < shares.abandoned_supplementation:
                return out
            t = later(t, 4, 40)
            emit("supplement-provided", None, t, documents=["ban-sao.pdf"])
            due = cal.due_at(t, version.deadline.working_days)
        if upper is not None:
            t = later(t, 1, max(1.5, budget_hours * 0.15))
            holder = rng.choice(self.agencies.of_level(upper))
            emit("transferred", rcv, t, agency=receiving, to_level=upper, to_agency=holder)
            level = upper
        if rng.random() < shares.stopped:
            emit("stopped", level, later(t, 1, 8), agency=holder, reason="Dừng theo đề nghị")
            return out
        if rng.random() < shares.reschedule:
            t = later(t, 0.5, 4)
            new_due = cal.add_working_seconds(due, 5 * 8 * HOUR)
            emit("rescheduled", level, t, agency=holder, reason="Cần xác minh", new_due=new_due.isoformat())
            due = new_due
        if version.fees:
            t = later(t, 0.5, max(1.0, budget_hours * 0.2))
            fees = [{"code": f.code, "amount": f.amount} for f in version.fees.values()]
            emit("payment-requested", level, t, agency=holder, fees=fees)
            t = later(t, 0.5, 16)
            emit("payment-completed", None, t, amount=sum(f["amount"] for f in fees), online=channel == 2)
        # Resolve within or past the appointment, leaving time to return the result.
        left = max(0.5, cal.working_seconds_between(t, due) / HOUR)
        t = later(t, left * 1.05, left * 1.6) if overdue else later(t, 0.1, max(0.2, left * 0.7))
        outcome = "rejected" if rng.random() < shares.rejected_outcome else "approved"
        emit("resolved", level, t, agency=holder, outcome=outcome)
        if upper is not None:
            t = later(t, 0.2, 4)
            emit("transferred", upper, t, agency=holder, to_level=rcv, to_agency=receiving)
        emit("result-returned", rcv, later(t, 0.2, 8), agency=receiving)
        return out

    # -----------------------------------------------------------------------------------------
    def _reorder(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        """Swap some adjacent messages of one dossier on different topics (no order across topics)."""
        if self.reorder_share <= 0:
            return stream
        last_index: dict[str, int] = {}
        for i, message in enumerate(stream):
            code = message.dossier
            if code is None:
                continue
            j = last_index.get(code)
            if (
                j is not None
                and stream[j].topic != message.topic
                # An action that ends a dossier really can win a race; keep those in order.
                and not _ends_dossier(message)
                and not _ends_dossier(stream[j])
                and self.rng.random() < self.reorder_share
            ):
                stream[i], stream[j] = stream[j], stream[i]
                last_index[code] = i
                continue
            last_index[code] = i
        return stream

    def _add_duplicates(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        if self.duplicate_share <= 0:
            return stream
        result: list[SimulatedMessage] = []
        for message in stream:
            result.append(message)
            if self.rng.random() < self.duplicate_share:
                copy = SimulatedMessage(message.topic, message.key, message.value, "duplicate", message.time, message.dossier)
                result.append(copy)
        return result

    def _add_bad_inputs(self, stream: list[SimulatedMessage]) -> list[SimulatedMessage]:
        if self.bad_share <= 0:
            return stream
        result: list[SimulatedMessage] = []
        for message in stream:
            result.append(message)
            if self.rng.random() < self.bad_share:
                result.append(self._bad_like(message))
        return result

    def _bad_like(self, model: SimulatedMessage) -> SimulatedMessage:
        kind = self.rng.choice(["not-utf8", "not-json", "not-cloudevent", "unknown-type", "schema", "unknown-procedure"])
        key, topic, time = model.key, model.topic, model.time
        if kind == "not-utf8":
            return SimulatedMessage(topic, key, b"\xff\xfe\x00bad", "malformed", time)
        if kind == "not-json":
            return SimulatedMessage(topic, key, b"{not json", "malformed", time)
        if kind == "not-cloudevent":
            return SimulatedMessage(topic, key, b'{"hello": "world"}', "malformed", time)
        event = json.loads(model.value)
        self._ids += 1
        event["id"] = f"sim-bad-{self._ids:09d}"
        if kind == "unknown-type":
            event["type"] = "vn.gov.dossier.teleported"
            return SimulatedMessage(topic, key, _dump(event), "schema", time)
        if kind == "schema":
            event["time"] = "yesterday"
            return SimulatedMessage(topic, key, _dump(event), "schema", time)
        # An unknown procedure: a new dossier code so it never collides with a real one.
        code = f"999.99.99.H56-{time.strftime('%y%m%d')}-{self._ids % 10000:04d}"
        submitted = {
            "specversion": "1.0",
            "id": event["id"],
            "source": PORTAL,
            "type": "vn.gov.dossier.submitted",
            "subject": code,
            "time": time.isoformat(),
            "datacontenttype": "application/json",
            "data": {
                "procedure": "0.000000",
                "agency": "999.99.99.H56",
                "channel": 2,
                "full_online": False,
                "applicant": {"kind": "citizen", "id_number": "001099012345", "name": "X"},
                "vneid_authenticated": False,
                "digitised": False,
            },
        }
        return SimulatedMessage("dossier.submission", code.encode(), _dump(submitted), "unknown-procedure", time, code)


_ENDING_TYPES = (b'dossier.withdrawal-requested"', b'dossier.stopped"', b'dossier.reception-refused"')


def _ends_dossier(message: SimulatedMessage) -> bool:
    return any(marker in message.value for marker in _ENDING_TYPES)


def _dump(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def iter_chunks(messages: Sequence[SimulatedMessage], size: int) -> Iterator[Sequence[SimulatedMessage]]:
    for i in range(0, len(messages), size):
        yield messages[i : i + size]
