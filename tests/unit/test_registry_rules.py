"""Contract 1.1, "Rules": who may say what, decided by `Decider.apply` with a registry.

Every refused case gets `unauthenticated` with the rule's name first in its detail; every
allowed case still applies (or parks, for its order) as it did without a registry.
"""

from __future__ import annotations

from typing import Any

from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Decision, Dossier, NotYetApplicable, Rejected
from engine.events import InboundEvent
from engine.procedures import load_catalogue
from engine.registry import Registry, load_registry
from schemas.codec import ContractCodec
from tests.fixtures import events as ev

CATALOGUE = load_catalogue()
REGISTRY = load_registry(ev.registry_files_with_fixtures())
DECIDER = Decider(CATALOGUE, WorkingCalendar.load(), REGISTRY)
TRUSTING = Decider(CATALOGUE, WorkingCalendar.load())
CODEC = ContractCodec()

COMMUNE = ev.COMMUNE_AGENCY  # 000.00.19.H56, the fixtures' commune
DISTRICT = ev.DISTRICT_AGENCY  # 000.00.12.H56, a district until 2025-06-30
PROVINCE = ev.PROVINCE_AGENCY  # 000.00.00.H56
OTHER = ev.OTHER_COMMUNE_AGENCY
ATTACKER = ev.ATTACKER_SOURCE


def decode(event: dict[str, Any], topic: str | None = None) -> InboundEvent:
    topic = topic or ev.topic_for(event["type"])
    return CODEC.decode(ev.to_bytes(event), topic, key=event["subject"].encode())


def run(
    steps: list[tuple[str, dict[str, Any]]], decider: Decider = DECIDER
) -> tuple[Dossier | None, list[Decision]]:
    dossier: Dossier | None = None
    decisions: list[Decision] = []
    for topic, event in steps:
        decision = decider.apply(dossier, decode(event, topic))
        decisions.append(decision)
        if isinstance(decision, Applied):
            dossier = decision.dossier
    return dossier, decisions


def opened(dossier: str = ev.DOSSIER, time: str = "2025-03-03") -> Dossier:
    """A birth registration received by the fixtures' commune."""
    held, decisions = run(
        [
            (
                "dossier.submission",
                ev.submitted(dossier=dossier, time=f"{time}T08:00:00+07:00"),
            ),
            ("dossier.commune", ev.received(dossier=dossier, time=f"{time}T08:30:00+07:00")),
        ]
    )
    assert all(isinstance(d, Applied) for d in decisions), decisions
    assert held is not None
    return held


def refused(decision: Decision, rule: str) -> str:
    assert isinstance(decision, Rejected), decision
    assert decision.reason == "unauthenticated", decision
    assert decision.detail.startswith(f"{rule}: "), decision.detail
    return decision.detail


# --- allowed --------------------------------------------------------------------------------


def test_a_registered_province_s_whole_lifecycle_applies() -> None:
    dossier, decisions = run(ev.residence_lifecycle())
    assert all(isinstance(d, Applied) for d in decisions), decisions
    assert dossier is not None and dossier.status_code == 10


def test_an_inter_level_dossier_up_to_the_district_and_back_applies_before_the_cutover() -> None:
    code = f"{COMMUNE}-250630-0001"
    day = "2025-06-30"
    steps = [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=code, time=f"{day}T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=code, time=f"{day}T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T09:00:00+07:00")),
        ("dossier.commune", ev.transferred(dossier=code, time=f"{day}T10:00:00+07:00")),
        (
            "dossier.district",
            ev.resolved(dossier=code, agency=DISTRICT, time=f"{day}T15:00:00+07:00"),
        ),
    ]
    dossier, decisions = run(steps)
    assert all(isinstance(d, Applied) for d in decisions), decisions
    assert dossier is not None and dossier.agency == DISTRICT and dossier.status_code == 9


def test_every_registered_sender_may_send_what_it_is_allowed() -> None:
    """The national portal anything to anyone; a commune's counter to its own commune."""
    counter = f"urn:vn:counter:{OTHER}"
    other = f"{OTHER}-250303-0001"
    registry = Registry(
        [*REGISTRY.agencies()],
        [*REGISTRY.senders(), _sender(counter, ["submitted"], [OTHER])],
    )
    decider = Decider(CATALOGUE, WorkingCalendar.load(), registry)
    decision = decider.apply(None, decode(ev.submitted(dossier=other, source=counter)))
    assert isinstance(decision, Applied)
    decision = decider.apply(None, decode(ev.submitted(dossier=other, source=ev.PORTAL_SOURCE)))
    assert isinstance(decision, Applied)


def test_an_input_early_for_its_order_still_parks_when_its_sender_may_send_it() -> None:
    decision = DECIDER.apply(None, decode(ev.received()))
    assert isinstance(decision, NotYetApplicable)


def test_an_agency_with_several_sources_may_use_any_of_them() -> None:
    shared = "urn:vn:egov:huyen-mot-cua"
    agencies = [
        _agency_like(a, sources=(a.sources[0], shared)) if a.code == COMMUNE else a
        for a in REGISTRY.agencies()
    ]
    decider = Decider(CATALOGUE, WorkingCalendar.load(), Registry(agencies, REGISTRY.senders()))
    dossier = opened()
    decision = decider.apply(dossier, decode(ev.processing_started(source=shared)))
    assert isinstance(decision, Applied)


# --- refused: level topics ------------------------------------------------------------------


def test_a_stranger_claiming_the_holding_agency_is_refused() -> None:
    """Issue 17's first forgery: `urn:attacker:laptop` sends a `resolved` naming the agency that
    holds the dossier (which `dossier.status` publishes)."""
    dossier = opened()
    forged = decode(ev.resolved(source=ATTACKER, time="2025-03-03T10:00:00+07:00"))
    detail = refused(DECIDER.apply(dossier, forged), "agency-source")
    assert COMMUNE in detail and "urn:vn:agency:000.00.19.H56" in detail
    # Version 1 trusted it:
    processing = TRUSTING.apply(dossier, decode(ev.processing_started(source=ATTACKER)))
    assert isinstance(processing, Applied)


def test_a_stranger_is_refused_even_when_the_input_would_wait_for_its_dossier() -> None:
    detail = refused(DECIDER.apply(None, decode(ev.received(source=ATTACKER))), "agency-source")
    assert "not one of agency 000.00.19.H56's" in detail


def test_an_unregistered_agency_is_refused() -> None:
    detail = refused(
        DECIDER.apply(opened(), decode(ev.processing_started(agency="000.00.99.H56"))),
        "agency-unregistered",
    )
    assert "000.00.99.H56" in detail


def test_an_agency_on_another_level_s_topic_is_refused() -> None:
    event = ev.processing_started(source=ev.agency_source(COMMUNE))
    detail = refused(DECIDER.apply(opened(), decode(event, "dossier.province")), "agency-level")
    assert detail.endswith("registered at the commune level, not on dossier.province")


def test_an_agency_outside_its_window_is_refused() -> None:
    """The fixtures' district ends on 2025-06-30: on 1 July (local date) it says nothing."""
    code = f"{COMMUNE}-250630-0002"
    steps = [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=code, time="2025-06-30T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=code, time="2025-06-30T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time="2025-06-30T09:00:00+07:00")),
        ("dossier.commune", ev.transferred(dossier=code, time="2025-06-30T16:00:00+07:00")),
        # 16:30 UTC on 30 June is 23:30 local time: still the district's day.
        (
            "dossier.district",
            ev.supplement_requested(dossier=code, agency=DISTRICT, time="2025-06-30T16:30:00Z"),
        ),
        # 00:10 on 1 July local time (17:10 UTC on 30 June) is not.
        (
            "dossier.district",
            ev.resolved(dossier=code, agency=DISTRICT, time="2025-06-30T17:10:00Z"),
        ),
    ]
    _, decisions = run(steps)
    assert all(isinstance(d, Applied) for d in decisions[:-1]), decisions
    detail = refused(decisions[-1], "agency-window")
    assert detail == (
        "agency-window: agency 000.00.12.H56 acts from always to 2025-06-30, "
        "not on 2025-07-01 (local date)"
    )


def test_a_transfer_to_an_unregistered_agency_is_refused() -> None:
    dossier = _processing("DD.GCN.LD")
    event = ev.transferred(to_agency="000.00.97.H56", time="2025-03-03T10:00:00+07:00")
    detail = refused(DECIDER.apply(dossier, decode(event)), "to-agency-unregistered")
    assert "000.00.97.H56" in detail


def test_a_transfer_to_an_agency_of_another_level_is_refused() -> None:
    dossier = _processing("DD.GCN.LD")
    event = ev.transferred(
        to_level="district", to_agency=PROVINCE, time="2025-03-03T10:00:00+07:00"
    )
    detail = refused(DECIDER.apply(dossier, decode(event)), "to-agency-level")
    assert "registered at the province level, not at to_level district" in detail


def test_a_transfer_to_an_agency_that_has_ended_is_refused() -> None:
    dossier = _processing("DD.GCN.LD", day="2025-07-02")
    event = ev.transferred(to_agency=DISTRICT, time="2025-07-02T10:00:00+07:00")
    refused(DECIDER.apply(dossier, decode(event)), "to-agency-window")
    to_province = ev.transferred(
        to_level="province", to_agency=PROVINCE, time="2025-07-02T10:00:00+07:00"
    )
    assert isinstance(DECIDER.apply(dossier, decode(to_province)), Applied)


def test_a_registered_agency_that_does_not_hold_the_dossier_is_still_refused() -> None:
    """The version 1 holder check stands: a registered commune speaking for itself about
    another commune's dossier."""
    event = ev.processing_started(agency=OTHER)
    decision = DECIDER.apply(opened(), decode(event))
    assert isinstance(decision, Rejected) and decision.reason == "unauthenticated"
    assert decision.detail == f"agency {OTHER} does not hold the dossier (held by {COMMUNE})"


def test_a_detail_never_repeats_what_is_not_an_agency_code() -> None:
    # The schema refuses such an agency field first; the rule does not rely on it.
    from dataclasses import replace

    valid = decode(ev.processing_started())
    event = replace(valid, data={**valid.data, "agency": "Nguyễn Văn An"})
    detail = refused(DECIDER.apply(opened(), event), "agency-unregistered")
    assert "Nguyễn" not in detail and "(not an agency code)" in detail


# --- refused: dossier.submission ------------------------------------------------------------


def test_a_withdrawal_from_an_unknown_source_is_refused() -> None:
    """Issue 17's second forgery, which revoked a discount in version 1."""
    dossier = opened()
    forged = decode(ev.withdrawal_requested(source=ATTACKER, time="2025-03-03T10:00:00+07:00"))
    detail = refused(DECIDER.apply(dossier, forged), "sender-unregistered")
    assert ATTACKER not in detail  # the input's own text is not repeated
    assert isinstance(TRUSTING.apply(dossier, forged), Applied)


def test_a_sender_may_send_only_its_types() -> None:
    event = ev.withdrawal_requested(source="urn:vn:payment:paygov")
    detail = refused(DECIDER.apply(opened(), decode(event)), "sender-type")
    assert detail == (
        "sender-type: sender urn:vn:payment:paygov may not send withdrawal-requested "
        "(it may send payment-completed)"
    )


def test_a_counter_may_submit_only_to_its_own_agency() -> None:
    counter = "urn:vn:counter:000.20.10.H56"
    detail = refused(DECIDER.apply(None, decode(ev.submitted(source=counter))), "sender-agency")
    assert detail == f"sender-agency: sender {counter} may not submit to agency {COMMUNE}"


def test_a_submission_to_an_unregistered_agency_is_refused() -> None:
    code = "000.00.98.H56-250303-0001"
    detail = refused(
        DECIDER.apply(None, decode(ev.submitted(dossier=code))), "receiving-agency-unregistered"
    )
    assert "000.00.98.H56" in detail


def test_a_submission_to_an_agency_that_has_ended_is_refused() -> None:
    code = f"{DISTRICT}-250702-0001"
    event = ev.submitted(dossier=code, time="2025-07-02T08:00:00+07:00")
    refused(DECIDER.apply(None, decode(event)), "receiving-agency-window")


def test_a_submission_whose_code_is_another_agency_s_is_refused() -> None:
    """Issue 17's third forgery: the receiving agency does not match the dossier code."""
    event = ev.submitted(dossier=f"{OTHER}-250303-0001", agency=COMMUNE)
    detail = refused(DECIDER.apply(None, decode(event)), "dossier-code-agency")
    assert detail == (
        f"dossier-code-agency: dossier code {OTHER}-250303-0001 belongs to agency {OTHER}, "
        f"not to the receiving agency {COMMUNE}"
    )
    assert isinstance(TRUSTING.apply(None, decode(event)), Applied)


def test_who_may_say_comes_before_what_is_said() -> None:
    """An unknown procedure from an unregistered sender tells the sender nothing about the
    catalogue: it is refused as unauthenticated."""
    event = ev.submitted(procedure="0.000000", source=ATTACKER)
    refused(DECIDER.apply(None, decode(event)), "sender-unregistered")
    unknown = DECIDER.apply(None, decode(ev.submitted(procedure="0.000000")))
    assert isinstance(unknown, Rejected) and unknown.reason == "unknown-procedure"


# --- helpers --------------------------------------------------------------------------------


def _processing(procedure: str, day: str = "2025-03-03") -> Dossier:
    code = f"{COMMUNE}-{day[2:4]}{day[5:7]}{day[8:10]}-0009"
    steps = [
        (
            "dossier.submission",
            ev.submitted(procedure=procedure, dossier=code, time=f"{day}T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=code, time=f"{day}T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T09:00:00+07:00")),
    ]
    dossier, decisions = run(steps)
    assert all(isinstance(d, Applied) for d in decisions), decisions
    assert dossier is not None
    return dossier


def _sender(source: str, types: list[str], agencies: list[str] | None) -> Any:
    from engine.registry import Sender

    return Sender(
        source, source, frozenset(types), None if agencies is None else frozenset(agencies)
    )


def _agency_like(agency: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(agency, **changes)
