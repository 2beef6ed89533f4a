"""Workflow migration plans (issue 19): running dossiers moved from one workflow version to
another by business time, as entries of the engine's own in the history; over the in-memory
store, with the shipped catalogue and its plans (workflows/migrations/).

DD.GCN.LD v1 (commune, then district) ends on 2025-06-30; v2 (commune, then province) is in
force from 2025-07-01; the reference plan moves v1's open dossiers to v2 at 00:00 +07:00 on
2025-07-01, `district -> province`. The fixtures' registry ends the district 000.00.12.H56 on
2025-06-30, its successor the province 000.00.00.H56 (tests/unit/test_handover.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dossier.replay.serial import StoredInputs, stored_input
from engine.application.service import BatchProcessor, BatchResult, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import HANDED_OVER_TYPE, Decider
from engine.procedures import (
    MIGRATED_TYPE,
    Catalogue,
    MigrationPlan,
    Problem,
    WorkflowError,
    load_catalogue,
    load_migration_plans,
    parse_migration_plans,
)
from engine.registry import load_registry
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec
from tests.fixtures import events as ev
from tests.unit.test_handover import (
    COMMUNE,
    CUTOVER,
    DISTRICT,
    ENGINE_SOURCE,
    GROUP,
    OTHER,
    PROVINCE,
    REGISTRY,
    A,
    B,
    Feed,
    Script,
    at_district,
    dossier,
    finish_at_province,
    history,
    other_dossier_on,
    outbox,
    run,
    statuses,
)

CATALOGUE = load_catalogue()
PLAN = CATALOGUE.migration_from("DD.GCN.LD", 1)
PLAN_ID = "migration:DD.GCN.LD:v1-v2:2025-07-01"
CODEC = ContractCodec()


def processor(catalogue: Catalogue = CATALOGUE, limit: int = 5000) -> BatchProcessor:
    config = ServiceConfig(
        ENGINE_SOURCE, GROUP, timedelta(days=7), handover_scan_limit=limit, notice_scan_limit=limit
    )
    decider = Decider(catalogue, WorkingCalendar.load(), REGISTRY)
    return BatchProcessor(decider, CODEC, config, verifier=REGISTRY)


def at_commune(code: str, day: str = "2025-06-30") -> Script:
    """A DD.GCN.LD dossier received and being verified at the commune on `day`: under v1 its
    next step is a transfer to the district."""
    return [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=code, time=f"{day}T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=code, time=f"{day}T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T09:00:00+07:00")),
    ]


def transfer_up(code: str, to_level: str, to_agency: str, when: str) -> Script:
    return [
        (
            "dossier.commune",
            ev.transferred(dossier=code, to_level=to_level, to_agency=to_agency, time=when),
        )
    ]


def at(day: str, clock: str) -> str:
    return f"2025-{day}T{clock}:00+07:00"


def types(store: InMemoryStore, code: str) -> list[str]:
    return [row.type.removeprefix("vn.gov.dossier.") for row in history(store, code)]


# --------------------------------------------------------------------------------------------
# The plan as data
# --------------------------------------------------------------------------------------------


def test_the_shipped_reference_plan_moves_every_open_state_of_v1_to_v2() -> None:
    assert PLAN is not None
    v1 = CATALOGUE.get("DD.GCN.LD", 1)
    assert v1 is not None
    open_states = {name for name, state in v1.states.items() if not state.final}
    assert set(PLAN.states) == open_states
    assert PLAN.levels == {"district": "province"}
    assert PLAN.cutover == CUTOVER and PLAN.entry_id == PLAN_ID


def plan_problems(tmp_path: Path, **changes: Any) -> list[Problem]:
    raw: dict[str, Any] = {
        "procedure": "DD.GCN.LD",
        "from_version": 1,
        "to_version": 2,
        "effective": "2025-07-01",
        "states": {"received": "received", "upper_processing": "upper_processing"},
        "levels": {"district": "province"},
    }
    raw.update(changes)
    raw = {k: v for k, v in raw.items() if v is not None}
    problems: list[Problem] = []
    parse_migration_plans({"plans": [raw]}, "plan.yaml", CATALOGUE, problems)
    return problems


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"procedure": "NO.SUCH"}, "procedure", "unknown procedure"),
        ({"to_version": 9}, "to_version", "has no version 9"),
        ({"to_version": 1}, "to_version", "another version"),
        ({"effective": "2025-06-30"}, "effective", "in force for new dossiers until 2025-06-30"),
        ({"effective": "30/06/2025"}, "effective", "not a date"),
        ({"states": {"returned": "returned"}}, "states.returned", "final"),
        ({"states": {"received": "nowhere"}}, "states.received", "no state 'nowhere'"),
        ({"states": {"nowhere": "received"}}, "states.nowhere", "no state 'nowhere'"),
        # Half-moved: a district step landing on a commune state.
        ({"states": {"upper_processing": "verifying"}}, "states.upper_processing", "map the level"),
        # Without the level mapping the district's steps would have no level in v2.
        ({"levels": None}, "states.upper_processing", "at level district"),
        ({"levels": {"district": "commune"}}, "levels", "would become one"),
        ({"levels": {"region": "province"}}, "levels.region", "not a level of version 1"),
        ({"states": []}, "states", "a mapping of states is required"),
    ],
)
def test_a_broken_plan_is_refused_at_load_naming_its_field(
    tmp_path: Path, changes: dict[str, Any], field: str, says: str
) -> None:
    problems = plan_problems(tmp_path, **changes)
    assert problems, "the plan must be refused"
    assert any(p.path == f"plans[0].{field}" and says in p.message for p in problems), problems


def test_a_plan_whose_new_version_is_not_in_force_is_refused() -> None:
    problems: list[Problem] = []
    document = {
        "plans": [
            {
                "procedure": "DD.GCN.LD",
                "from_version": 2,
                "to_version": 1,
                "effective": "2026-01-01",
                "states": {"received": "received"},
            }
        ]
    }
    parse_migration_plans(document, "plan.yaml", CATALOGUE, problems)
    messages = " / ".join(p.message for p in problems)
    assert "version 2 is in force for new dossiers until open end" in messages
    assert "version 1 is not in force on 2026-01-01" in messages


def test_two_plans_for_one_version_are_refused_when_the_catalogue_loads(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "workflows"
    for folder in ("templates", "procedures"):
        (tmp_path / folder).symlink_to(shipped / folder)
    (tmp_path / "migrations").mkdir()
    reference = (shipped / "migrations" / "reference.yaml").read_text(encoding="utf-8")
    (tmp_path / "migrations" / "a.yaml").write_text(reference, encoding="utf-8")
    (tmp_path / "migrations" / "b.yaml").write_text(reference, encoding="utf-8")
    with pytest.raises(WorkflowError, match="a second plan for version 1"):
        load_catalogue(tmp_path)


@settings(max_examples=200, deadline=None)
@given(document=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.dates(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["plans", "procedure", "from_version", "to_version", "effective", "states", "levels",
             "basis", "received", "district", "DD.GCN.LD"]
        ) | st.text(max_size=6),
        inner,
        max_size=6,
    ),
    max_leaves=20,
))  # fmt: skip
def test_any_document_gives_plans_or_problems_never_a_crash(document: Any) -> None:
    problems: list[Problem] = []
    plans = parse_migration_plans(document, "hostile.yaml", CATALOGUE, problems)
    assert all(isinstance(p, MigrationPlan) for p in plans)
    # Every entry of the list is a plan or has its problem; an empty list is no plans.
    entries = document.get("plans") if isinstance(document, dict) else None
    if isinstance(entries, list):
        assert len(plans) + len({p.path.split(".")[0] for p in problems}) == len(entries)
    else:
        assert problems and not plans


def test_a_plan_file_that_is_not_yaml_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("plans: [\n  - {procedure: DD.GCN.LD", encoding="utf-8")
    problems: list[Problem] = []
    assert load_migration_plans(path, CATALOGUE, problems) == []
    assert problems and "cannot read YAML" in problems[0].message


# --------------------------------------------------------------------------------------------
# The engine applies it by business time
# --------------------------------------------------------------------------------------------


def test_nothing_moves_before_the_clock_passes_the_cutover() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, [*at_district(A), *at_commune(B)], made)
    result = run(store, feed, other_dossier_on(OTHER, "2025-06-30T23:59:59+07:00"), made)
    assert not result.migrations
    assert dossier(store, A).workflow_version == dossier(store, B).workflow_version == 1


def test_a_dossier_open_at_the_district_continues_at_the_province_under_v2() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_district(A), made)
    before = dossier(store, A)
    result = run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)

    assert result.migrations == {"inter-level": 1}
    assert result.handovers == {("district", "province"): 1}
    after = dossier(store, A)
    assert (after.workflow_version, after.state, after.level, after.agency) == (
        2,
        "upper_processing",
        "province",
        PROVINCE,
    )
    assert after.acting_levels == {}  # v2's own province steps: nothing acted for another level
    # Its appointment, money and the rest stand.
    assert (after.due_at, after.received_at, after.fees, after.discounts) == (
        before.due_at,
        before.received_at,
        before.fees,
        before.discounts,
    )
    # The history: the migration, then the handover, both the engine's own, at the cutover.
    rows = history(store, A)
    assert [r.type for r in rows[-2:]] == [MIGRATED_TYPE, HANDED_OVER_TYPE]
    migrated = rows[-2]
    assert (migrated.event_id, migrated.event_time, migrated.source) == (
        PLAN_ID,
        CUTOVER,
        ENGINE_SOURCE,
    )
    assert (migrated.state_before, migrated.state_after, migrated.workflow_version) == (
        "upper_processing",
        "upper_processing",
        2,
    )
    assert migrated.position.topic == "engine" and migrated.position.offset is None
    # One status-changed each, caused by the engine's own entries, in sequence.
    changes = statuses(store, A)[-2:]
    assert [s["data"]["caused_by"]["id"] for s in changes] == [
        PLAN_ID,
        f"handover:{DISTRICT}:2025-07-01",
    ]
    assert changes[0]["data"]["workflow_version"] == 2
    assert [s["data"]["sequence"] for s in changes] == [before.sequence + 1, before.sequence + 2]

    # The province finishes it with the first appointment and returns it to the commune.
    run(store, feed, finish_at_province(A), made)
    done = dossier(store, A)
    assert done.state == "returned" and done.final and done.due_at == before.due_at
    assert outbox(store, "dossier.dlq") == []


def test_a_dossier_at_the_commune_transfers_to_the_province_not_to_the_ended_district() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_commune(A), made)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    moved = dossier(store, A)
    assert (moved.workflow_version, moved.state, moved.agency) == (2, "verifying", COMMUNE)
    assert types(store, A)[-1] == "workflow-migrated"  # the commune did not end: no handover

    refused = run(
        store, feed, transfer_up(A, "district", DISTRICT, "2025-07-02T09:00:00+07:00"), made
    )
    assert refused.count("dead_lettered") == 1
    applied = run(
        store, feed, transfer_up(A, "province", PROVINCE, "2025-07-02T10:00:00+07:00"), made
    )
    assert applied.count("applied") == 1
    assert (dossier(store, A).state, dossier(store, A).agency) == ("upper_processing", PROVINCE)


def test_without_the_plan_the_same_dossier_is_stranded_at_the_commune() -> None:
    bare = processor(Catalogue(CATALOGUE.all_versions()))
    store, feed = InMemoryStore(), Feed()
    run(store, feed, at_commune(A), bare)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), bare)
    for to_level, to_agency in (("district", DISTRICT), ("province", PROVINCE)):
        result = run(
            store, feed, transfer_up(A, to_level, to_agency, "2025-07-02T09:00:00+07:00"), bare
        )
        assert result.count("dead_lettered") == 1
    assert dossier(store, A).workflow_version == 1


def test_an_input_dated_after_the_cutover_migrates_first_in_the_same_batch() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    script = [*at_commune(A), *transfer_up(A, "province", PROVINCE, "2025-07-01T09:00:00+07:00")]
    result = run(store, feed, script, made)
    assert result.count("applied") == len(script) and result.migrations == {"inter-level": 1}
    assert types(store, A)[-2:] == ["workflow-migrated", "transferred"]


def test_a_refused_input_after_the_cutover_does_not_migrate() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, at_commune(A), made)
    early = ev.result_returned(dossier=A, time="2025-07-01T09:00:00+07:00")
    parked = run(store, feed, [("dossier.commune", early)], made)
    assert parked.count("parked") == 1 and not parked.migrations
    to_ended = transfer_up(A, "district", DISTRICT, "2025-07-01T10:00:00+07:00")
    result = run(store, feed, to_ended, made)
    assert result.count("dead_lettered") == 1 and not result.migrations
    assert dossier(store, A).workflow_version == 1


def test_a_dossier_in_a_state_the_plan_does_not_map_stays_whole_on_its_version() -> None:
    assert PLAN is not None
    partial = MigrationPlan(
        PLAN.procedure,
        1,
        2,
        PLAN.effective,
        {k: v for k, v in PLAN.states.items() if k != "verifying"},
        PLAN.levels,
        "test",
        "test",
    )
    made = processor(Catalogue(CATALOGUE.all_versions(), [partial]))
    store, feed = InMemoryStore(), Feed()
    run(store, feed, [*at_commune(A), *at_district(B)], made)
    before = dossier(store, A)
    result = run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    assert result.migrations == {"inter-level": 1}  # B only
    assert dossier(store, A) == before and dossier(store, B).workflow_version == 2
    for _ in range(3):  # looked at again and again, never moved in part
        assert not run(store, feed, [], made).migrations
    assert dossier(store, A) == before


def test_a_backfilled_dossier_migrates_just_before_its_first_input_after_the_cutover() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    run(store, feed, other_dossier_on(OTHER, "2025-07-02T08:00:00+07:00"), made)
    # Submitted on 30 June (v1), delivered once the clock had passed the cutover.
    result = run(store, feed, at_commune(A), made)
    assert not result.migrations and dossier(store, A).workflow_version == 1
    assert not run(store, feed, [], made).migrations
    run(store, feed, transfer_up(A, "province", PROVINCE, "2025-07-02T09:00:00+07:00"), made)
    assert types(store, A)[-2:] == ["workflow-migrated", "transferred"]


def test_migrations_by_the_clock_come_in_bounded_chunks_by_code() -> None:
    codes = [f"{COMMUNE}-250630-{i:04d}" for i in range(1, 6)]
    store, feed, made = InMemoryStore(), Feed(), processor(limit=2)
    run(store, feed, [step for code in codes for step in at_commune(code)], made)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    moved = [code for code in codes if dossier(store, code).workflow_version == 2]
    assert moved == codes[:2]
    run(store, feed, [], made)
    run(store, feed, [], made)
    assert all(dossier(store, code).workflow_version == 2 for code in codes)


def test_final_dossiers_and_other_procedures_stay() -> None:
    store, feed, made = InMemoryStore(), Feed(), processor()
    withdrawn = [
        *at_commune(A),
        (
            "dossier.submission",
            ev.withdrawal_requested(dossier=A, time="2025-06-30T10:00:00+07:00"),
        ),
    ]
    run(store, feed, withdrawn, made)
    run(store, feed, other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"), made)
    assert dossier(store, A).workflow_version == 1 and dossier(store, A).final
    assert dossier(store, OTHER).procedure != "DD.GCN.LD"
    assert "workflow-migrated" not in types(store, OTHER)


# --------------------------------------------------------------------------------------------
# Replayable
# --------------------------------------------------------------------------------------------

C = f"{COMMUNE}-250629-0003"
ACROSS: Script = [
    *at_district(A),
    *at_commune(B),
    *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"),
    *finish_at_province(A),
    *at_commune(C, "2025-06-29"),
    *transfer_up(B, "province", PROVINCE, "2025-07-02T09:00:00+07:00"),
    *transfer_up(C, "province", PROVINCE, "2025-07-02T10:00:00+07:00"),
    *finish_at_province(C, "2025-07-03"),
]  # fmt: skip
CODES = (A, B, C, OTHER)


def fingerprint(store: InMemoryStore, codes: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for code in codes:
        d = dossier(store, code)
        found[code] = (
            d.workflow_version,
            d.agency,
            d.level,
            d.state,
            d.sequence,
            d.due_at,
            dict(d.acting_levels),
            [
                (r.seq, r.type, r.event_id, r.state_after, r.workflow_version)
                for r in history(store, code)
            ],
            [(s["id"], s["data"]["caused_by"]["id"]) for s in statuses(store, code)],
        )
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(ACROSS) - 1), unique=True, max_size=8),
    limit=st.integers(min_value=1, max_value=3),
)
def test_the_migrations_do_not_depend_on_how_inputs_are_cut_into_batches(
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
    for _ in range(4):
        run(cut, feed, [], made)
    expected = fingerprint(whole, CODES)
    assert fingerprint(cut, CODES) == expected
    assert expected[A][:4] == (2, COMMUNE, "commune", "returned")
    assert expected[B][:4] == (2, PROVINCE, "province", "upper_processing")
    assert expected[C][3] == "returned"


def replayed(
    live: InMemoryStore,
    codes: Sequence[str],
    rows_of: Any = None,
    made: BatchProcessor | None = None,
) -> tuple[InMemoryStore, BatchResult]:
    """What a replay from the database does: each dossier's history rows as inputs, the
    engine's own entries included, made again where they stand (by `made`, a processor of its
    own; by default one with the fixtures' registry)."""
    with InMemoryUnitOfWork(live) as uow:
        rows = [row for code in codes for row in (rows_of or uow.repo.history)(code)]
    made = made or processor()
    made.replaying_own_steps = True
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
    rebuilt = InMemoryStore()
    return rebuilt, made.process(InMemoryUnitOfWork(rebuilt), inputs)


def test_a_replay_from_the_history_makes_the_same_migrations_where_they_stand() -> None:
    live, feed, made = InMemoryStore(), Feed(), processor()
    for step in ACROSS:
        run(live, feed, [step], made)
    rebuilt, result = replayed(live, CODES)
    assert fingerprint(rebuilt, CODES) == fingerprint(live, CODES)
    assert result.migrations == {"inter-level": 3} and outbox(rebuilt, "dossier.dlq") == []


def test_a_replay_refuses_a_migration_the_plan_could_not_have_made() -> None:
    live, feed, made = InMemoryStore(), Feed(), processor()
    run(live, feed, [*at_commune(A), *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00")], made)
    rows = history(live, A)
    entry = rows[-1]
    assert entry.type == MIGRATED_TYPE
    # The migration entry twice: the second finds the dossier on v2 already.
    rebuilt, result = replayed(live, [A], rows_of=lambda _: [*rows, entry])
    assert result.dead_letters == {"invalid-transition": 1}
    detail = outbox(rebuilt, "dossier.dlq")[0]["data"]["detail"]
    assert detail.startswith("migration: no plan moves DD.GCN.LD version 2")
    assert dossier(rebuilt, A).workflow_version == 2


def test_a_district_received_dossier_finishes_at_a_commune_after_the_province_acted_for_it() -> (
    None
):
    # 1.002449 v1: received at the district, decided by the province; v2: received at the
    # commune. Open at the district on 1 July: migrated (its step is now the commune's), then
    # handed to the district's successor, which acts for the commune level from its own topic
    # until it sends the result to a commune, which returns it from dossier.commune.
    code = f"{DISTRICT}-250630-0001"
    script: Script = [
        (
            "dossier.submission",
            ev.submitted(
                procedure="1.002449", agency=DISTRICT, dossier=code,
                time="2025-06-30T08:00:00+07:00",
            ),
        ),
        ("dossier.district", ev.received(dossier=code, agency=DISTRICT, time=at("06-30", "08:30"))),
        ("dossier.district", ev.processing_started(
            dossier=code, agency=DISTRICT, time=at("06-30", "09:00")
        )),
        *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"),
        ("dossier.province", ev.transferred(
            dossier=code, agency=PROVINCE, to_level="province", to_agency=PROVINCE,
            time="2025-07-01T09:00:00+07:00",
        )),
        ("dossier.province", ev.resolved(dossier=code, agency=PROVINCE, time=at("07-01", "10:00"))),
        ("dossier.province", ev.transferred(
            dossier=code, agency=PROVINCE, to_level="commune", to_agency=COMMUNE,
            time="2025-07-01T11:00:00+07:00",
        )),
        ("dossier.commune", ev.result_returned(
            dossier=code, agency=COMMUNE, time=at("07-01", "14:00")
        )),
    ]  # fmt: skip
    store, feed, made = InMemoryStore(), Feed(), processor()
    result = run(store, feed, script, made)
    assert outbox(store, "dossier.dlq") == []
    assert result.count("applied") == len(script)
    assert types(store, code)[3:5] == ["workflow-migrated", "handed-over"]
    done = dossier(store, code)
    assert (done.workflow_version, done.state, done.agency, done.level) == (
        2,
        "returned",
        COMMUNE,
        "commune",
    )
    assert done.acting_levels == {}


def test_a_district_dossier_moved_down_goes_to_the_commune_its_registry_names(
    tmp_path: Path,
) -> None:
    # 1.001184 v1 is decided by the district, v2 by the commune. With the district naming a
    # commune successor for commune steps, a dossier open at the district on 1 July is migrated
    # (its step is now a commune's) and handed to that commune, which finishes it on its own
    # topic; nothing is acted for another level.
    document = yaml.safe_load(ev.REGISTRY_FILE.read_text(encoding="utf-8"))
    district = next(a for a in document["agencies"] if a["code"] == DISTRICT)
    district["successor_by_level"] = {"commune": COMMUNE}
    extra = tmp_path / "district-to-commune.yaml"
    extra.write_text(yaml.safe_dump({"agencies": [district]}), encoding="utf-8")
    registry = load_registry([*ev.registry_files_with_fixtures(), extra])
    made = BatchProcessor(
        Decider(CATALOGUE, WorkingCalendar.load(), registry),
        CODEC,
        ServiceConfig(ENGINE_SOURCE, GROUP, timedelta(days=7)),
        verifier=registry,
    )
    code = f"{DISTRICT}-250630-0002"
    script: Script = [
        (
            "dossier.submission",
            ev.submitted(
                procedure="1.001184", agency=DISTRICT, dossier=code, time=at("06-30", "08:00")
            ),
        ),
        ("dossier.district", ev.received(dossier=code, agency=DISTRICT, time=at("06-30", "08:30"))),
        ("dossier.district", ev.processing_started(
            dossier=code, agency=DISTRICT, time=at("06-30", "09:00")
        )),
        *other_dossier_on(OTHER, "2025-07-01T08:00:00+07:00"),
        ("dossier.commune", ev.resolved(dossier=code, agency=COMMUNE, time=at("07-01", "10:00"))),
        ("dossier.commune", ev.result_returned(
            dossier=code, agency=COMMUNE, time=at("07-01", "14:00")
        )),
    ]  # fmt: skip
    store, feed = InMemoryStore(), Feed()
    result = run(store, feed, script, made)
    assert outbox(store, "dossier.dlq") == []
    assert result.count("applied") == len(script)
    assert result.handovers == {("district", "commune"): 1}
    assert types(store, code)[3:5] == ["workflow-migrated", "handed-over"]
    handover = history(store, code)[4]
    assert (handover.envelope["data"]["to_agency"], handover.envelope["data"]["to_level"]) == (
        COMMUNE,
        "commune",
    )
    done = dossier(store, code)
    assert (done.workflow_version, done.state, done.agency, done.level) == (
        2,
        "returned",
        COMMUNE,
        "commune",
    )
    assert done.acting_levels == {}
    # A replay from the database makes the same handover, to the same commune.
    replaying = BatchProcessor(made.decider, CODEC, made.config, verifier=registry)
    rebuilt, replayed_result = replayed(store, [code], made=replaying)
    assert replayed_result.dead_letters == {}
    assert fingerprint(rebuilt, [code]) == fingerprint(store, [code])
