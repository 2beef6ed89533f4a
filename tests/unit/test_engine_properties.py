"""Properties of `Decider.apply` over random sequences of contract events (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Dossier, NotYetApplicable, Rejected
from engine.events import InboundEvent, OutboundEvent
from engine.procedures import load_catalogue

ENGINE = Decider(load_catalogue(), WorkingCalendar.load())
CODE = "000.00.19.H56-250303-0001"
AGENCIES = {"commune": "000.00.19.H56", "district": "000.00.30.H56", "province": "000.00.01.H56"}
LEVEL_TYPES = [
    "received",
    "reception-refused",
    "processing-started",
    "transferred",
    "supplement-requested",
    "payment-requested",
    "stopped",
    "rescheduled",
    "resolved",
    "result-returned",
]
SUBMISSION_TYPES = ["supplement-provided", "payment-completed", "withdrawal-requested"]


@st.composite
def event_sequences(draw: st.DrawFn) -> list[InboundEvent]:
    procedure = draw(st.sampled_from(["1.001193", "1.004222", "DD.GCN.LD"]))
    start = datetime.fromisoformat("2025-06-20T08:00:00+07:00") + timedelta(
        hours=draw(st.integers(0, 24 * 30))
    )
    events = [
        _event(
            0,
            "submitted",
            "submission",
            start,
            procedure=procedure,
            agency=AGENCIES["commune"],
            channel=draw(st.sampled_from([1, 2, 3])),
            full_online=draw(st.booleans()),
            applicant={"kind": "citizen", "id_number": "001099012345", "name": "Trần Thị B"},
            vneid_authenticated=True,
            digitised=True,
        )
    ]
    time = start
    for i in range(1, draw(st.integers(1, 14)) + 1):
        time += timedelta(minutes=draw(st.integers(1, 60 * 24 * 5)))
        kind = draw(st.sampled_from(LEVEL_TYPES + SUBMISSION_TYPES))
        if kind in SUBMISSION_TYPES:
            data: dict[str, Any] = (
                {"amount": 50000, "online": True} if kind == "payment-completed" else {}
            )
            events.append(_event(i, kind, "submission", time, **data))
            continue
        level = draw(st.sampled_from(sorted(AGENCIES)))
        data = {"agency": AGENCIES[level], "reason": "lý do", "outcome": "approved"}
        if kind == "transferred":
            to_level = draw(st.sampled_from(sorted(AGENCIES)))
            data |= {"to_level": to_level, "to_agency": AGENCIES[to_level]}
        if kind == "payment-requested":
            data["fees"] = [{"code": "LP-GCN", "amount": 100000}]
        if kind == "rescheduled":
            data["new_due"] = (time + timedelta(days=draw(st.integers(-5, 60)))).isoformat()
        events.append(_event(i, kind, level, time, **data))
    return events


def _event(i: int, kind: str, topic: str, time: datetime, **data: Any) -> InboundEvent:
    return InboundEvent(
        source="urn:vn:prop",
        id=f"e{i}",
        type=f"vn.gov.dossier.{kind}",
        subject=CODE,
        time=time,
        data=data,
        topic=f"dossier.{topic}",
    )


def run(
    events: list[InboundEvent],
) -> tuple[Dossier | None, list[OutboundEvent], list[InboundEvent]]:
    """Apply in order, retrying parked inputs after each change as the service does."""
    dossier: Dossier | None = None
    outputs: list[OutboundEvent] = []
    applied: list[InboundEvent] = []
    parked: list[InboundEvent] = []
    for inbound in events:
        queue = [inbound]
        while queue:
            current = queue.pop(0)
            decision = ENGINE.apply(dossier, current)
            if isinstance(decision, Applied):
                dossier = decision.dossier
                outputs.extend(decision.outputs)
                applied.append(current)
                queue.extend(parked)
                parked.clear()
            elif isinstance(decision, NotYetApplicable):
                parked.append(current)
            else:
                assert isinstance(decision, Rejected)
    return dossier, outputs, applied


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(event_sequences())
def test_state_is_always_one_of_the_workflows(events: list[InboundEvent]) -> None:
    dossier, _, _ = run(events)
    assert dossier is not None
    version = ENGINE.catalogue.get(dossier.procedure, dossier.workflow_version)
    assert version is not None
    assert dossier.state in version.states
    assert dossier.status_code == version.states[dossier.state].status_code


@PROPERTY_SETTINGS
@given(event_sequences())
def test_status_sequence_has_no_gaps_and_ids_are_derived(events: list[InboundEvent]) -> None:
    _, outputs, _ = run(events)
    statuses = [o for o in outputs if o.type.endswith("status-changed")]
    assert [o.data["sequence"] for o in statuses] == list(range(1, len(statuses) + 1))
    assert [o.id for o in statuses] == [f"{CODE}/status/{n}" for n in range(1, len(statuses) + 1)]
    grants = [o.data["fee_code"] for o in outputs if o.type.endswith("fee-discount-granted")]
    assert len(grants) == len(set(grants))  # at most one grant per (dossier, fee)
    revokes = [o.data["fee_code"] for o in outputs if o.type.endswith("fee-discount-revoked")]
    assert set(revokes) <= set(grants)


@PROPERTY_SETTINGS
@given(event_sequences())
def test_rebuilding_from_the_applied_history_gives_the_same_dossier(
    events: list[InboundEvent],
) -> None:
    dossier, outputs, applied = run(events)
    rebuilt: Dossier | None = None
    rebuilt_outputs: list[OutboundEvent] = []
    for inbound in applied:
        decision = ENGINE.apply(rebuilt, inbound)
        assert isinstance(decision, Applied)
        rebuilt = decision.dossier
        rebuilt_outputs.extend(decision.outputs)
    assert rebuilt == dossier
    assert rebuilt_outputs == outputs


@PROPERTY_SETTINGS
@given(event_sequences())
def test_apply_is_deterministic(events: list[InboundEvent]) -> None:
    assert run(events) == run(events)
