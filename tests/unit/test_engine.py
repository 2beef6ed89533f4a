"""The engine's decisions for the contract's reference procedures, with plain objects only."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Decision, Dossier, NotYetApplicable, Rejected
from engine.events import InboundEvent, OutboundEvent
from engine.procedures import load_catalogue

COMMUNE = "000.00.19.H56"
DISTRICT = "000.00.30.H56"
PROVINCE = "000.00.01.H56"
OTHER_COMMUNE = "000.00.20.H56"


@pytest.fixture(scope="module")
def engine() -> Decider:
    return Decider(load_catalogue(), WorkingCalendar.load())


_ids: Iterator[int] = itertools.count(1)


def event(
    kind: str, time: str, topic: str, code: str = "000.00.19.H56-250303-0001", **data: Any
) -> InboundEvent:
    return InboundEvent(
        source="urn:vn:test",
        id=f"evt-{next(_ids)}",
        type=f"vn.gov.dossier.{kind}",
        subject=code,
        time=datetime.fromisoformat(time),
        data=data,
        topic=f"dossier.{topic}",
    )


def submitted(
    time: str, procedure: str, *, channel: int = 2, full_online: bool = False, **extra: Any
) -> InboundEvent:
    return event(
        "submitted",
        time,
        "submission",
        procedure=procedure,
        agency=COMMUNE,
        channel=channel,
        full_online=full_online,
        applicant={"kind": "citizen", "id_number": "001099012345", "name": "Nguyễn Văn A"},
        vneid_authenticated=True,
        digitised=True,
        **extra,
    )


class Story:
    """Applies inputs one by one, keeping the dossier and every output."""

    def __init__(self, engine: Decider) -> None:
        self.engine = engine
        self.dossier: Dossier | None = None
        self.outputs: list[OutboundEvent] = []

    def apply(self, inbound: InboundEvent) -> Decision:
        decision = self.engine.apply(self.dossier, inbound)
        if isinstance(decision, Applied):
            self.dossier = decision.dossier
            self.outputs.extend(decision.outputs)
        return decision

    def ok(self, inbound: InboundEvent) -> Dossier:
        decision = self.apply(inbound)
        assert isinstance(decision, Applied), decision
        return decision.dossier

    def of_type(self, suffix: str) -> list[OutboundEvent]:
        return [o for o in self.outputs if o.type.endswith(suffix)]

    @property
    def status_codes(self) -> list[int]:
        return [int(o.data["status_code"]) for o in self.of_type("status-changed")]


def test_birth_registration_lifecycle(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    d = story.ok(event("received", "2025-03-03T09:00:00+07:00", "commune", agency=COMMUNE))
    assert d.due_at == datetime.fromisoformat("2025-03-04T09:00:00+07:00")
    story.ok(event("processing-started", "2025-03-03T10:00:00+07:00", "commune", agency=COMMUNE))
    story.ok(
        event(
            "resolved", "2025-03-03T14:00:00+07:00", "commune", agency=COMMUNE, outcome="approved"
        )
    )
    d = story.ok(event("result-returned", "2025-03-03T15:00:00+07:00", "commune", agency=COMMUNE))
    assert story.status_codes == [1, 2, 4, 9, 10]
    assert d.final and d.finished_at == datetime.fromisoformat("2025-03-03T14:00:00+07:00")
    statuses = story.of_type("status-changed")
    assert [o.data["sequence"] for o in statuses] == [1, 2, 3, 4, 5]
    assert [o.id for o in statuses][-1] == "000.00.19.H56-250303-0001/status/5"
    assert all(o.key == "000.00.19.H56-250303-0001" for o in statuses)
    assert statuses[-1].data["caused_by"]["type"] == "vn.gov.dossier.result-returned"
    assert statuses[1].data["status_label"] == "Được tiếp nhận"
    assert not story.of_type("fee-discount-granted")


def test_residence_registration_online_discount_and_payment(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2024-05-06T09:00:00+07:00", "1.004222", channel=2))
    [grant] = story.of_type("fee-discount-granted")
    assert grant.data["fee_code"] == "LP-CT"
    assert (
        grant.data["base_amount"],
        grant.data["discount_amount"],
        grant.data["payable_amount"],
    ) == (
        20000,
        10000,
        10000,
    )
    assert "75/2022/TT-BTC" in grant.data["legal_basis"]
    d = story.ok(event("received", "2024-05-06T10:00:00+07:00", "commune", agency=COMMUNE))
    # 7 working days from Monday 10:00 -> Wednesday of the next week, 10:00.
    assert d.due_at == datetime.fromisoformat("2024-05-15T10:00:00+07:00")
    story.ok(event("processing-started", "2024-05-06T11:00:00+07:00", "commune", agency=COMMUNE))
    story.ok(
        event(
            "payment-requested",
            "2024-05-07T09:00:00+07:00",
            "commune",
            agency=COMMUNE,
            fees=[{"code": "LP-CT", "amount": 20000}],
        )
    )
    # Resolving before the payment arrives would be premature: parked, not lost.
    early = story.apply(
        event(
            "resolved", "2024-05-07T09:30:00+07:00", "commune", agency=COMMUNE, outcome="approved"
        )
    )
    assert isinstance(early, NotYetApplicable)
    story.ok(
        event(
            "payment-completed",
            "2024-05-07T10:00:00+07:00",
            "submission",
            amount=10000,
            online=True,
        )
    )
    story.ok(
        event(
            "resolved", "2024-05-08T09:00:00+07:00", "commune", agency=COMMUNE, outcome="approved"
        )
    )
    d = story.ok(event("result-returned", "2024-05-08T10:00:00+07:00", "commune", agency=COMMUNE))
    assert story.status_codes == [1, 2, 4, 6, 4, 9, 10]
    assert d.paid and d.paid_online
    assert len(story.of_type("fee-discount-granted")) == 1  # at most one grant per fee


def test_residence_discount_depends_on_channel_and_submission_date(engine: Decider) -> None:
    in_person = Story(engine)
    in_person.ok(submitted("2024-05-06T09:00:00+07:00", "1.004222", channel=1))
    assert not in_person.of_type("fee-discount-granted")
    after_window = Story(engine)
    after_window.ok(submitted("2026-01-05T09:00:00+07:00", "1.004222", channel=2))
    assert not after_window.of_type("fee-discount-granted")
    last_day = Story(engine)
    last_day.ok(submitted("2025-12-31T16:00:00+07:00", "1.004222", channel=2))
    assert len(last_day.of_type("fee-discount-granted")) == 1


def test_withdrawal_before_payment_revokes_the_discount(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2024-05-06T09:00:00+07:00", "1.004222", channel=2))
    story.ok(event("received", "2024-05-06T10:00:00+07:00", "commune", agency=COMMUNE))
    d = story.ok(
        event("withdrawal-requested", "2024-05-07T10:00:00+07:00", "submission", reason="đổi ý")
    )
    [revoke] = story.of_type("fee-discount-revoked")
    assert revoke.data["discount_amount"] == 10000 and revoke.id.endswith("/LP-CT/revoked")
    assert d.status_code == 7 and d.final and d.discounts == {}


def test_land_certificate_district_era_end_to_end(engine: Decider) -> None:
    code = "000.00.19.H56-250630-0001"
    story = Story(engine)
    d = story.ok(submitted("2025-06-30T16:00:00+07:00", "DD.GCN.LD", full_online=True, code=code))
    assert d.workflow_version == 1
    assert story.of_type("fee-discount-granted")[0].data["discount_amount"] == 50000
    story.ok(event("received", "2025-06-30T16:30:00+07:00", "commune", code, agency=COMMUNE))
    story.ok(
        event("processing-started", "2025-07-01T08:00:00+07:00", "commune", code, agency=COMMUNE)
    )
    # Still the district era's workflow after 1 July: a dossier is pinned at submission.
    d = story.ok(
        event(
            "transferred",
            "2025-07-02T08:00:00+07:00",
            "commune",
            code,
            agency=COMMUNE,
            to_level="district",
            to_agency=DISTRICT,
        )
    )
    assert (d.level, d.agency, d.status_code) == ("district", DISTRICT, 4)
    story.ok(
        event(
            "payment-requested",
            "2025-07-03T08:00:00+07:00",
            "district",
            code,
            agency=DISTRICT,
            fees=[{"code": "LP-GCN", "amount": 100000}],
        )
    )
    story.ok(
        event(
            "payment-completed",
            "2025-07-03T09:00:00+07:00",
            "submission",
            code,
            amount=50000,
            online=True,
        )
    )
    story.ok(
        event(
            "resolved",
            "2025-07-10T09:00:00+07:00",
            "district",
            code,
            agency=DISTRICT,
            outcome="approved",
        )
    )
    story.ok(
        event(
            "transferred",
            "2025-07-10T10:00:00+07:00",
            "district",
            code,
            agency=DISTRICT,
            to_level="commune",
            to_agency=COMMUNE,
        )
    )
    d = story.ok(
        event("result-returned", "2025-07-11T10:00:00+07:00", "commune", code, agency=COMMUNE)
    )
    assert story.status_codes == [1, 2, 4, 4, 6, 4, 9, 9, 10]
    assert [o.data["level"] for o in story.of_type("status-changed")][-3:] == [
        "district",
        "commune",
        "commune",
    ]
    assert d.final and d.workflow_version == 1


def test_land_certificate_province_era_rejects_the_district(engine: Decider) -> None:
    code = "000.00.19.H56-250701-0001"
    story = Story(engine)
    d = story.ok(submitted("2025-07-01T09:00:00+07:00", "DD.GCN.LD", full_online=False, code=code))
    assert d.workflow_version == 2
    assert not story.of_type("fee-discount-granted")  # 50% needs full_online
    story.ok(event("received", "2025-07-01T10:00:00+07:00", "commune", code, agency=COMMUNE))
    wrong = story.apply(
        event(
            "transferred",
            "2025-07-01T11:00:00+07:00",
            "commune",
            code,
            agency=COMMUNE,
            to_level="district",
            to_agency=DISTRICT,
        )
    )
    assert isinstance(wrong, Rejected) and wrong.reason == "invalid-transition"
    d = story.ok(
        event(
            "transferred",
            "2025-07-01T11:00:00+07:00",
            "commune",
            code,
            agency=COMMUNE,
            to_level="province",
            to_agency=PROVINCE,
        )
    )
    assert (d.level, d.agency) == ("province", PROVINCE)


def test_out_of_order_upper_level_event_is_parked_not_rejected(engine: Decider) -> None:
    code = "000.00.19.H56-250303-0009"
    story = Story(engine)
    story.ok(submitted("2025-03-03T09:00:00+07:00", "DD.GCN.LD", code=code))
    story.ok(event("received", "2025-03-03T10:00:00+07:00", "commune", code, agency=COMMUNE))
    early = story.apply(
        event(
            "resolved",
            "2025-03-05T10:00:00+07:00",
            "district",
            code,
            agency=DISTRICT,
            outcome="approved",
        )
    )
    assert isinstance(early, NotYetApplicable)
    unknown = Story(engine).apply(
        event(
            "received",
            "2025-03-03T10:00:00+07:00",
            "commune",
            "000.00.19.H56-250303-0077",
            agency=COMMUNE,
        )
    )
    assert isinstance(unknown, NotYetApplicable)


@pytest.mark.parametrize(
    ("inbound", "reason"),
    [
        (
            event("received", "2025-03-03T10:00:00+07:00", "commune", agency=OTHER_COMMUNE),
            "unauthenticated",
        ),
        (
            event("result-returned", "2025-03-03T10:00:00+07:00", "commune", agency=COMMUNE),
            "not-yet",
        ),
        (
            event("received", "2025-03-03T10:00:00+07:00", "province", agency=COMMUNE),
            "invalid-transition",
        ),
    ],
)
def test_error_kinds_on_a_registered_dossier(
    engine: Decider, inbound: InboundEvent, reason: str
) -> None:
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    decision = story.apply(inbound)
    if reason == "not-yet":
        assert isinstance(decision, NotYetApplicable)
    else:
        assert isinstance(decision, Rejected) and decision.reason == reason


def test_unknown_procedure_and_second_submission(engine: Decider) -> None:
    decision = engine.apply(None, submitted("2025-03-03T08:00:00+07:00", "9.999999"))
    assert isinstance(decision, Rejected) and decision.reason == "unknown-procedure"
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    again = story.apply(submitted("2025-03-03T08:05:00+07:00", "1.001193"))
    assert isinstance(again, Rejected) and again.reason == "invalid-transition"


def test_nothing_applies_after_a_final_state(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    story.ok(
        event(
            "reception-refused",
            "2025-03-03T09:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="sai thẩm quyền",
        )
    )
    late = story.apply(event("received", "2025-03-03T10:00:00+07:00", "commune", agency=COMMUNE))
    assert isinstance(late, Rejected) and late.reason == "invalid-transition"
    assert story.dossier is not None and story.dossier.status_code == 3


def test_supplementation_restarts_the_clock(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2024-05-06T08:00:00+07:00", "1.004222"))
    story.ok(event("received", "2024-05-06T09:00:00+07:00", "commune", agency=COMMUNE))
    d = story.ok(
        event(
            "supplement-requested",
            "2024-05-07T09:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="thiếu giấy tờ",
        )
    )
    assert d.status_code == 5
    d = story.ok(event("supplement-provided", "2024-05-13T14:00:00+07:00", "submission"))
    # Decree 61 art. 19.4: 7 full working days again from Monday 13 May 14:00.
    assert d.due_at == datetime.fromisoformat("2024-05-22T14:00:00+07:00")
    assert d.status_code == 4
    assert story.of_type("status-changed")[-1].data["due_at"] == "2024-05-22T14:00:00+07:00"


def test_reschedule_only_once_and_only_later(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    story.ok(event("received", "2025-03-03T09:00:00+07:00", "commune", agency=COMMUNE))
    earlier = story.apply(
        event(
            "rescheduled",
            "2025-03-03T10:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="x",
            new_due="2025-03-03T16:00:00+07:00",
        )
    )
    assert isinstance(earlier, Rejected) and earlier.reason == "invalid-transition"
    d = story.ok(
        event(
            "rescheduled",
            "2025-03-03T10:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="x",
            new_due="2025-03-06T16:00:00+07:00",
        )
    )
    assert d.due_at == datetime.fromisoformat("2025-03-06T16:00:00+07:00") and d.state == "received"
    assert story.status_codes[-1] == 2  # the new appointment is announced, state unchanged
    twice = story.apply(
        event(
            "rescheduled",
            "2025-03-04T10:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="y",
            new_due="2025-03-10T16:00:00+07:00",
        )
    )
    assert isinstance(twice, Rejected) and "only once" in twice.detail


def test_deadline_warning_then_overdue_once_each(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2024-05-06T08:00:00+07:00", "1.004222"))
    d = story.ok(event("received", "2024-05-06T10:00:00+07:00", "commune", agency=COMMUNE))
    assert d.due_at == datetime.fromisoformat("2024-05-15T10:00:00+07:00")
    assert engine.next_notice_at(d) == datetime.fromisoformat("2024-05-14T10:00:00+07:00")
    quiet, nothing = engine.deadline_notices(d, datetime.fromisoformat("2024-05-14T09:59:00+07:00"))
    assert nothing == () and quiet == d
    warned, [warning] = engine.deadline_notices(
        d, datetime.fromisoformat("2024-05-14T10:00:00+07:00")
    )
    assert warning.type == "vn.gov.dossier.deadline-warning"
    assert warning.data["working_hours_left"] == 8.0
    assert (
        engine.deadline_notices(warned, datetime.fromisoformat("2024-05-14T15:00:00+07:00"))[1]
        == ()
    )
    late, [overdue] = engine.deadline_notices(
        warned, datetime.fromisoformat("2024-05-16T10:00:00+07:00")
    )
    assert overdue.type == "vn.gov.dossier.overdue" and overdue.data["working_hours_late"] == 8.0
    assert overdue.id == "000.00.19.H56-250303-0001/overdue/2024-05-15T10:00:00+07:00"
    assert (
        engine.deadline_notices(late, datetime.fromisoformat("2024-05-20T10:00:00+07:00"))[1] == ()
    )
    assert engine.next_notice_at(late) is None


def test_snapshot_round_trips_through_json(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2024-05-06T08:00:00+07:00", "1.004222"))
    d = story.ok(event("received", "2024-05-06T10:00:00+07:00", "commune", agency=COMMUNE))
    assert Dossier.from_json(d.to_json()) == d


def test_a_failed_guard_does_not_leak_into_the_next_decision(engine: Decider) -> None:
    story = Story(engine)
    story.ok(submitted("2025-03-03T08:00:00+07:00", "1.001193"))
    story.ok(event("received", "2025-03-03T09:00:00+07:00", "commune", agency=COMMUNE))
    refused = story.apply(
        event(
            "rescheduled",
            "2025-03-03T10:00:00+07:00",
            "commune",
            agency=COMMUNE,
            reason="x",
            new_due="2025-03-03T12:00:00+07:00",
        )
    )
    assert isinstance(refused, Rejected) and "guard" in refused.detail
    # No transition at all from `received` for this input: it waits, it is not rejected.
    later = story.apply(
        event("result-returned", "2025-03-03T11:00:00+07:00", "commune", agency=COMMUNE)
    )
    assert isinstance(later, NotYetApplicable)
