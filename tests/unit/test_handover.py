"""Contract 1.1, "Handover": an ended agency's open dossiers pass to its successor, by the
business clock and before a backfilled dossier's first input dated at or after the cutover,
as entries of the engine's own in the history; over the in-memory store.

The fixtures' registry (tests/fixtures/registry.yaml): district 000.00.12.H56 ends on
2025-06-30, its successor is the province 000.00.00.H56; cutover 2025-07-01 00:00 +07:00.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dossier.replay.serial import StoredInputs, stored_input
from engine.application.ports import HistoryRow, Position
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import VN_TZ, WorkingCalendar
from engine.decider import HANDED_OVER_TYPE, Decider
from engine.history import ENGINE_TOPIC
from engine.procedures import Catalogue, load_catalogue
from engine.registry import load_registry
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec
from tests.fixtures import events as ev

REGISTRY = load_registry(ev.registry_files_with_fixtures())
# The shipped procedures without their migration plans: the handover rule on its own, as for a
# version no plan moves (a DD.GCN.LD v1 dossier stays v1, its district steps the province's).
# With the plans: tests/unit/test_migration.py.
DECIDER = Decider(Catalogue(load_catalogue().all_versions()), WorkingCalendar.load(), REGISTRY)
CODEC = ContractCodec()
ENGINE_SOURCE = "urn:test:engine"
GROUP = "handover-test"
COMMUNE, DISTRICT, PROVINCE = ev.COMMUNE_AGENCY, ev.DISTRICT_AGENCY, ev.PROVINCE_AGENCY
CUTOVER = datetime(2025, 7, 1, tzinfo=VN_TZ)
HANDOVER_ID = f"handover:{DISTRICT}:2025-07-01"
TYPE = "vn.gov.dossier."

Script = list[tuple[str, dict[str, Any]]]


def processor(limit: int = 5000, partitions: frozenset[int] | None = None) -> BatchProcessor:
    config = ServiceConfig(
        ENGINE_SOURCE, GROUP, timedelta(days=7), handover_scan_limit=limit, notice_scan_limit=limit
    )
    made = BatchProcessor(DECIDER, CODEC, config, verifier=REGISTRY)
    made.notice_partitions = partitions
    return made


class Feed:
    """Inputs with increasing offsets per topic; partition by the dossier's last digit."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def __call__(self, topic: str, event: dict[str, Any], partition: int = 0) -> RawInput:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        return RawInput(
            topic,
            Position(topic, partition, offset),
            str(event["subject"]).encode(),
            ev.to_bytes(event),
        )


def at_district(code: str, day: str = "2025-06-30") -> Script:
    """A DD.GCN.LD (v1: commune, then district) dossier received at the commune and
    transferred to the district on `day`, where it is still being processed."""
    return [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=code, time=f"{day}T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=code, time=f"{day}T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T09:00:00+07:00")),
        (
            "dossier.commune",
            ev.transferred(
                dossier=code, to_level="district", to_agency=DISTRICT, time=f"{day}T10:00:00+07:00"
            ),
        ),
    ]


def finish_at_province(code: str, day: str = "2025-07-02") -> Script:
    """What the successor (and the applicant, and the commune) do next: pay, resolve, return."""
    return [
        (
            "dossier.province",
            ev.payment_requested(dossier=code, agency=PROVINCE, time=f"{day}T09:00:00+07:00"),
        ),
        ("dossier.submission", ev.payment_completed(dossier=code, time=f"{day}T10:00:00+07:00")),
        (
            "dossier.province",
            ev.resolved(dossier=code, agency=PROVINCE, time=f"{day}T11:00:00+07:00"),
        ),
        (
            "dossier.province",
            ev.transferred(
                dossier=code,
                agency=PROVINCE,
                to_level="commune",
                to_agency=COMMUNE,
                time=f"{day}T14:00:00+07:00",
            ),
        ),
        ("dossier.commune", ev.result_returned(dossier=code, time=f"{day}T15:00:00+07:00")),
    ]


def other_dossier_on(code: str, when: str) -> Script:
    """Another dossier's input: what moves the business clock."""
    return [("dossier.submission", ev.submitted(dossier=code, time=when))]


def run(store: InMemoryStore, feed: Feed, script: Script, made: BatchProcessor) -> BatchResult:
    return made.process(InMemoryUnitOfWork(store), [feed(t, e) for t, e in script])


def history(store: InMemoryStore, code: str) -> list[HistoryRow]:
    with InMemoryUnitOfWork(store) as uow:
        return uow.repo.history(code)


def dossier(store: InMemoryStore, code: str) -> Any:
    with InMemoryUnitOfWork(store) as uow:
        return uow.repo.load_dossiers([code])[code].dossier


def outbox(store: InMemoryStore, topic: str) -> list[dict[str, Any]]:
    with InMemoryUnitOfWork(store) as uow:
        messages = uow.repo.unsent_outbox(100_000)
    return [json.loads(m.value) for m in messages if m.topic == topic]


def statuses(store: InMemoryStore, code: str) -> list[dict[str, Any]]:
    return [e for e in outbox(store, "dossier.status") if e["subject"] == code]


A = f"{COMMUNE}-250630-0001"
B = f"{COMMUNE}-250630-0002"
OTHER = f"{ev.OTHER_COMMUNE_AGENCY}-250701-0001"


def test_the_registry_knows_each_ending_its_successor_and_cutover() -> None:
    ending = REGISTRY.ending_of(DISTRICT)
    assert ending is not None
    assert ending.successor.code == PROVINCE and ending.successor.level == "province"
    assert ending.cutover == CUTOVER
    assert ending.handover_id == HANDOVER_ID
    assert REGISTRY.ending_of(PROVINCE) is None
    assert list(REGISTRY.endings()) == sorted(
        REGISTRY.endings(), key=lambda e: (e.cutover, e.agency.code)
    )


def test_nothing_is_handed_over_before_the_clock_passes_the_cutover() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    result = run(store, feed, at_district(A), made)
    assert not result.handovers
    run(store, feed, other_dossier_on(OTHER, "2025-06-30T23:59:59+07:00"), made)
    assert dossier(store, A).agency == DISTRICT


def test_the_clock_crossing_the_cutover_hands_the_district_dossier_to_its_successor() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_district(A), made)
    before = dossier(store, A)
    assert (before.agency, before.level, before.state) == (DISTRICT, "district", "upper_processing")

    result = run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)

    assert result.handovers == {("district", "province"): 1}
    after = dossier(store, A)
    assert (after.agency, after.level, after.state) == (PROVINCE, "province", "upper_processing")
    assert after.due_at == before.due_at  # the appointment stands
    assert after.workflow_version == 1 and after.acting_levels == {"district": "province"}
    assert after.receiving_agency == COMMUNE
    rows = history(store, A)
    entry = rows[-1]
    assert [r.seq for r in rows] == list(range(1, 6))
    assert entry.type == HANDED_OVER_TYPE and entry.source == ENGINE_SOURCE
    assert entry.event_id == HANDOVER_ID and entry.event_time == CUTOVER
    assert entry.position == Position(ENGINE_TOPIC, None, None)
    assert (entry.state_before, entry.state_after) == ("upper_processing", "upper_processing")
    assert entry.envelope["data"]["to_agency"] == PROVINCE
    status = statuses(store, A)[-1]
    assert status["id"] == f"{A}/status/{after.sequence}"
    assert status["data"]["agency"] == PROVINCE and status["data"]["level"] == "province"
    assert status["data"]["status_code"] == 4 and status["data"]["state"] == "upper_processing"
    assert status["data"]["due_at"] == before.due_at.isoformat()
    assert status["data"]["caused_by"] == {
        "source": ENGINE_SOURCE,
        "id": HANDOVER_ID,
        "type": "vn.gov.dossier.handed-over",
    }
    assert status["time"] == CUTOVER.isoformat()

    # Once: later batches hand nothing over again.
    again = run(
        store,
        feed,
        other_dossier_on(f"{ev.OTHER_COMMUNE_AGENCY}-250702-0001", "2025-07-02T08:00:00+07:00"),
        made,
    )
    assert not again.handovers
    assert len(history(store, A)) == 5


def test_the_successor_finishes_the_dossier_on_its_topic_and_the_district_is_refused() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_district(A), made)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    due_at = dossier(store, A).due_at
    late_district = ev.payment_requested(
        dossier=A, agency=DISTRICT, time="2025-07-02T08:00:00+07:00"
    )
    result = run(store, feed, [("dossier.district", late_district), *finish_at_province(A)], made)
    assert result.dead_letters == {"unauthenticated": 1}
    dlq = outbox(store, "dossier.dlq")
    assert dlq[0]["data"]["reason"] == "unauthenticated"
    assert dlq[0]["data"]["detail"].startswith("agency-window")
    final = dossier(store, A)
    assert (final.state, final.status_code, final.final) == ("returned", 10, True)
    assert final.due_at == due_at
    codes = [s["data"]["status_code"] for s in statuses(store, A)]
    assert codes == [1, 2, 4, 4, 4, 6, 4, 9, 9, 10]
    levels = [s["data"]["level"] for s in statuses(store, A)]
    assert levels == [
        "commune", "commune", "commune", "district", "province",
        "province", "province", "province", "commune", "commune",
    ]  # fmt: skip
    assert [s["data"]["sequence"] for s in statuses(store, A)] == list(range(1, 11))


def test_a_district_input_dated_before_the_cutover_arriving_after_the_handover_is_refused() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_district(A), made)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    late = ev.payment_requested(dossier=A, agency=DISTRICT, time="2025-06-30T16:00:00+07:00")
    result = run(store, feed, [("dossier.district", late)], made)
    assert result.dead_letters == {"unauthenticated": 1}
    assert "does not hold the dossier" in outbox(store, "dossier.dlq")[0]["data"]["detail"]


def test_an_input_dated_after_the_cutover_hands_over_first_in_the_same_batch() -> None:
    """Batch boundaries do not matter: the successor's first input, in the batch that moves
    the clock, finds the dossier handed over just before it."""
    store, feed, made = InMemoryStore(), Feed(), processor()
    result = run(store, feed, [*at_district(A), *finish_at_province(A)], made)
    assert result.handovers == {("district", "province"): 1}
    rows = history(store, A)
    assert [r.type.rsplit(".", 1)[1] for r in rows][3:6] == [
        "transferred",
        "handed-over",
        "payment-requested",
    ]
    assert dossier(store, A).state == "returned"


def test_a_backfilled_dossier_is_handed_over_just_before_its_first_input_after_the_cutover() -> (
    None
):
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, other_dossier_on(OTHER, "2025-07-02T08:00:00+07:00"), made)  # clock passed
    # Inputs dated 29 June reach the engine only now: they still apply at the district.
    backfill = [
        *at_district(B, "2025-06-29"),
        (
            "dossier.district",
            ev.processing_started(dossier=B, agency=DISTRICT, time="2025-06-29T11:00:00+07:00"),
        ),
    ]
    result = run(store, feed, backfill, made)
    assert result.count("applied") == 5 and not result.handovers
    assert dossier(store, B).agency == DISTRICT
    # An empty batch (the timer's) does not hand it over: the clock passed before it opened.
    assert not run(store, feed, [], made).handovers
    assert dossier(store, B).agency == DISTRICT
    # Its first input dated after the cutover: the handover comes just before it.
    result = run(store, feed, finish_at_province(B, "2025-07-03")[:1], made)
    assert result.handovers == {("district", "province"): 1} and result.count("applied") == 1
    kinds = [r.type.rsplit(".", 1)[1] for r in history(store, B)]
    assert kinds[-2:] == ["handed-over", "payment-requested"]
    assert dossier(store, B).state == "awaiting_payment"


def test_a_refused_input_after_the_cutover_does_not_hand_over() -> None:
    """Only an input that applies takes its handover with it: a replay from the database never
    sees refused inputs, and makes the same handovers."""
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, other_dossier_on(OTHER, "2025-07-02T08:00:00+07:00"), made)
    run(store, feed, at_district(B, "2025-06-29"), made)
    wrong = ev.resolved(dossier=B, agency=COMMUNE, time="2025-07-03T09:00:00+07:00")
    result = run(store, feed, [("dossier.commune", wrong)], made)
    assert result.count("dead_lettered") == 1 and not result.handovers
    assert dossier(store, B).agency == DISTRICT


def test_handovers_by_the_clock_come_in_bounded_chunks_by_code() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor(limit=2)
    codes = [f"{COMMUNE}-250630-{n:04d}" for n in range(1, 6)]
    run(store, feed, [step for code in codes for step in at_district(code)], made)
    first = run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    assert first.handovers == {("district", "province"): 2}
    assert [dossier(store, c).agency for c in codes] == [PROVINCE] * 2 + [DISTRICT] * 3
    assert run(store, feed, [], made).handovers == {("district", "province"): 2}
    assert run(store, feed, [], made).handovers == {("district", "province"): 1}
    assert not run(store, feed, [], made).handovers
    assert {dossier(store, c).agency for c in codes} == {PROVINCE}


def test_a_process_hands_over_only_the_dossiers_of_its_partitions() -> None:
    """Each process scans its own partitions' dossiers; and a partition's dossiers are handed
    over by its own clock: another partition's inputs after the cutover do not (the order of
    inputs across partitions is not one a replay can repeat)."""
    store, feed = InMemoryStore(), Feed()
    mine, theirs = processor(partitions=frozenset({0})), processor(partitions=frozenset({1}))
    script = at_district(A)
    mine.process(InMemoryUnitOfWork(store), [feed(t, e, partition=1) for t, e in script])
    later = other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00")
    result = mine.process(InMemoryUnitOfWork(store), [feed(t, e) for t, e in later])
    assert not result.handovers and dossier(store, A).agency == DISTRICT
    assert not theirs.process(InMemoryUnitOfWork(store), []).handovers  # its clock: 30 June
    on_1 = other_dossier_on(f"{ev.OTHER_COMMUNE_AGENCY}-250701-0002", "2025-07-01T09:00:00+07:00")
    result = mine.process(InMemoryUnitOfWork(store), [feed(t, e, partition=1) for t, e in on_1])
    assert not result.handovers and dossier(store, A).agency == DISTRICT  # not its partition
    assert theirs.process(InMemoryUnitOfWork(store), []).handovers == {("district", "province"): 1}
    assert dossier(store, A).agency == PROVINCE


def test_final_dossiers_and_other_agencies_dossiers_stay() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    refused = [
        (
            "dossier.submission",
            ev.submitted(dossier=B, procedure="DD.GCN.LD", time="2025-06-30T08:00:00+07:00"),
        ),
        (
            "dossier.commune",
            ev.reception_refused(dossier=B, time="2025-06-30T09:00:00+07:00"),
        ),
    ]  # fmt: skip
    run(store, feed, [*refused, *at_district(A)[:2]], made)
    result = run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    assert not result.handovers
    assert dossier(store, A).agency == COMMUNE and dossier(store, B).final


def replayed_from_history(live: InMemoryStore, codes: Sequence[str]) -> InMemoryStore:
    """What a replay from the database does (dossier.replay.serial): the history's rows as
    inputs, the engine's own handover entries included, made again where they stand."""
    with InMemoryUnitOfWork(live) as uow:
        rows = [row for code in codes for row in uow.repo.history(code)]
    rows.sort(key=lambda r: (r.event_time, r.dossier_code, r.seq))  # not live's order
    rows.sort(key=lambda r: r.dossier_code)  # ... only each dossier's, as the database keeps
    made = processor()
    made.replaying_own_steps = True
    rebuilt = InMemoryStore()
    decoder = StoredInputs(10**6)
    inputs = []
    for row in rows:
        raw, event = stored_input(
            row.position.topic,
            row.position.partition,
            row.position.offset,
            row.schema_version,
            dict(row.envelope),
        )
        decoder.ready[raw.value] = event  # type: ignore[index]
        inputs.append(raw)
    made.codec = decoder
    made.process(InMemoryUnitOfWork(rebuilt), inputs)
    return rebuilt


def fingerprint(store: InMemoryStore, codes: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for code in codes:
        d = dossier(store, code)
        found[code] = (
            d.agency,
            d.level,
            d.state,
            d.sequence,
            d.due_at,
            [
                (r.seq, r.type, r.event_id, r.state_after, r.event_time)
                for r in history(store, code)
            ],
            [
                (s["id"], s["data"]["agency"], s["data"]["caused_by"]["id"])
                for s in statuses(store, code)
            ],
        )
    return found


# A script across the cutover: two dossiers held by the district, one finished by the province,
# one left open; a backfilled one; other dossiers moving the clock; a refused district input.
C = f"{COMMUNE}-250629-0003"
ACROSS: Script = [
    *at_district(A),
    *at_district(B),
    *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"),
    *finish_at_province(A),
    *at_district(C, "2025-06-29"),
    (
        "dossier.district",
        ev.payment_requested(dossier=B, agency=DISTRICT, time="2025-07-02T16:00:00+07:00"),
    ),
    *finish_at_province(C, "2025-07-03"),
]  # fmt: skip
CODES = (A, B, C, OTHER)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(ACROSS) - 1), unique=True, max_size=8),
    limit=st.integers(min_value=1, max_value=3),
)
def test_the_handovers_do_not_depend_on_how_inputs_are_cut_into_batches(
    cuts: list[int], limit: int
) -> None:
    whole, feed = InMemoryStore(), Feed()
    run(whole, feed, ACROSS, processor())
    run(whole, feed, [], processor())
    cut, feed = InMemoryStore(), Feed()
    made = processor(limit=limit)
    bounds = [0, *sorted(cuts), len(ACROSS)]
    for start, end in itertools.pairwise(bounds):
        run(cut, feed, ACROSS[start:end], made)
    for _ in range(4):  # the rest of the chunks, as the timer's empty batches do
        run(cut, feed, [], made)
    expected = fingerprint(whole, CODES)
    assert fingerprint(cut, CODES) == expected
    assert expected[A][2] == "returned" and expected[B][0] == PROVINCE
    assert expected[C][0] == COMMUNE and expected[C][2] == "returned"


def test_a_replay_from_the_history_makes_the_same_handovers_where_they_stand() -> None:
    live, feed, made = InMemoryStore(), Feed(), processor()
    for step in ACROSS:
        run(live, feed, [step], made)
    rebuilt = replayed_from_history(live, CODES)
    assert fingerprint(rebuilt, CODES) == fingerprint(live, CODES)
    assert outbox(rebuilt, "dossier.dlq") == []


def test_a_replay_refuses_a_handover_the_rule_could_not_have_made() -> None:
    live, feed, made = InMemoryStore(), Feed(), processor()
    run(live, feed, [*at_district(A), *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00")], made)
    with InMemoryUnitOfWork(live) as uow:
        entry = uow.repo.history(A)[-1]
    assert entry.type == HANDED_OVER_TYPE
    rebuilt = InMemoryStore()
    replaying = processor()
    replaying.replaying_own_steps = True
    decoder = StoredInputs(10**6)
    replaying.codec = decoder
    # The handover before the dossier reached the district: it is not the district's to hand.
    rows = [*history(live, A)[:2], entry]
    inputs = []
    for row in rows:
        raw, event = stored_input(
            row.position.topic, None, None, row.schema_version, dict(row.envelope)
        )
        decoder.ready[raw.value] = event  # type: ignore[index]
        inputs.append(raw)
    result = replaying.process(InMemoryUnitOfWork(rebuilt), inputs)
    assert result.dead_letters == {"invalid-transition": 1} and not result.handovers
    assert "not held open by agency" in outbox(rebuilt, "dossier.dlq")[0]["data"]["detail"]


# Two partitions whose inputs interleave differently live than in a replay: each dossier's
# handover stands at the same place among its own partition's inputs whatever the interleaving.
D = f"{COMMUNE}-250630-0004"
ON_0: Script = [
    *at_district(A),
    *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"),
    ("dossier.submission", ev.withdrawal_requested(dossier=A, time="2025-06-30T16:00:00+07:00")),
]
ON_1: Script = [
    *at_district(D),
    (
        "dossier.district",
        ev.payment_requested(dossier=D, agency=DISTRICT, time="2025-06-30T15:00:00+07:00"),
    ),
    *other_dossier_on(f"{ev.OTHER_COMMUNE_AGENCY}-250701-0003", "2025-07-01T10:00:00+07:00"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations([0] * len(ON_0) + [1] * len(ON_1)),
    cuts=st.lists(st.integers(min_value=1, max_value=len(ON_0) + len(ON_1) - 1), max_size=4),
)
def test_the_handovers_do_not_depend_on_how_partitions_interleave(
    order: list[int], cuts: list[int]
) -> None:
    def play(sequence: list[int], bounds: list[int]) -> dict[str, Any]:
        store, feed, made = InMemoryStore(), Feed(), processor()
        queues = {0: list(ON_0), 1: list(ON_1)}
        inputs = [(p, *queues[p].pop(0)) for p in sequence]
        edges = [0, *sorted(set(bounds)), len(inputs)]
        for start, end in itertools.pairwise(edges):
            chunk = [feed(t, e, partition=p) for p, t, e in inputs[start:end]]
            made.process(InMemoryUnitOfWork(store), chunk)
        made.process(InMemoryUnitOfWork(store), [])
        return fingerprint(store, (A, D))

    expected = play([0] * len(ON_0) + [1] * len(ON_1), [])
    assert play(order, cuts) == expected
    # A's late withdrawal (dated 30 June, after its partition's clock passed) follows the
    # handover, whichever batch made it.
    assert [step[1] for step in expected[A][5]][-2:] == [
        HANDED_OVER_TYPE,
        TYPE + "withdrawal-requested",
    ]
    assert expected[D][0] == PROVINCE
