"""Contract 1.1, "Handover", and issue 19's workflow migrations, end to end through real Kafka
into SQLite and PostgreSQL: a DD.GCN.LD dossier (workflow v1, upper level `district`) open at a
district on 30 June 2025 moves to v2 (upper level `province`: workflows/migrations/reference.yaml)
and passes to the district's successor (the fixtures' province 000.00.00.H56) when the business
clock passes 1 July 00:00 +07:00, and the province finishes it on dossier.province with its
first appointment; the ended district's later input is dead-lettered `unauthenticated`; a
dossier whose inputs reach the engine only after the cutover passed (a backfill) is migrated and
handed over just before its first input dated after it; and the live database, a replay from
Kafka and a replay from the database agree.

"The clock" is the clock of the dossier's inbound partition (docs/CONTRACT.md, Handover): the
other dossiers whose inputs move it here are chosen on the same partition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_db, replay_from_kafka
from dossier.replay.serial import compare
from dossier.settings import Settings
from engine.history import HistoryRow
from engine.store.audit import verify
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.fixtures import events as ev
from tests.integration.test_engine_e2e import (  # noqa: F401 - fixtures
    engine_settings,
    outputs,
    run_engine_until_caught_up,
    send,
    statuses_by_dossier,
)

COMMUNE, DISTRICT, PROVINCE = ev.COMMUNE_AGENCY, ev.DISTRICT_AGENCY, ev.PROVINCE_AGENCY
HANDOVER_ID = f"handover:{DISTRICT}:2025-07-01"
MIGRATION_ID = "migration:DD.GCN.LD:v1-v2:2025-07-01"
PARTITIONS = 3


def partition_of(code: str) -> int:
    return (murmur2(code.encode()) & 0x7FFFFFFF) % PARTITIONS


def codes_on_one_partition(agency: str, days: list[str]) -> list[str]:
    """A dossier code of `agency` received on each of `days`, all on the first one's partition."""
    found: list[str] = []
    for day in days:
        for n in range(1, 500):
            code = f"{agency}-{day}-{n:04d}"
            if not found or partition_of(code) == partition_of(found[0]):
                found.append(code)
                break
    assert len(found) == len(days)
    return found


def _step(row: HistoryRow) -> tuple[Any, ...]:
    return (row.seq, row.source, row.event_id, row.type, row.event_time, row.position,
            row.state_before, row.state_after, row.status_code, row.workflow_version)  # fmt: skip


def at(day: str, clock: str) -> str:
    return f"2025-{day}T{clock}:00+07:00"


def open_at_district(code: str, day: str) -> list[tuple[str, dict[str, Any]]]:
    """Received at the commune, transferred to the district, asked for payment and paid there:
    in `upper_processing` (status 4), held by the district."""
    return [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=code, time=at(day, "08:00")),
        ),
        ("dossier.commune", ev.received(dossier=code, time=at(day, "08:30"))),
        ("dossier.commune", ev.processing_started(dossier=code, time=at(day, "09:00"))),
        (
            "dossier.commune",
            ev.transferred(
                dossier=code, to_level="district", to_agency=DISTRICT, time=at(day, "10:00")
            ),
        ),
        (
            "dossier.district",
            ev.payment_requested(dossier=code, agency=DISTRICT, time=at(day, "11:00")),
        ),
        ("dossier.submission", ev.payment_completed(dossier=code, time=at(day, "14:00"))),
    ]


@pytest.mark.parametrize("engine_settings", ["sqlite", "postgresql"], indirect=True)
def test_a_district_dossier_is_handed_over_finished_by_the_successor_and_replayed(
    engine_settings: Settings,  # noqa: F811
    send: Callable[..., None],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    held, other, backfill = codes_on_one_partition(COMMUNE, ["250630", "250701", "250629"])
    assert len({partition_of(c) for c in (held, other, backfill)}) == 1

    # 30 June: open at the district. 1 July: another dossier's input moves the clock past the
    # cutover. 2 July: the province resolves and sends it back, the commune returns the result;
    # the ended district's input of the same day is refused.
    for topic, event in [
        *open_at_district(held, "06-30"),
        ("dossier.submission", ev.submitted(dossier=other, time=at("07-01", "08:00"))),
        (
            "dossier.province",
            ev.resolved(dossier=held, agency=PROVINCE, time=at("07-02", "09:00")),
        ),
        (
            "dossier.district",
            ev.stopped(dossier=held, agency=DISTRICT, reason="late", time=at("07-02", "09:30")),
        ),
        (
            "dossier.province",
            ev.transferred(
                dossier=held,
                agency=PROVINCE,
                to_level="commune",
                to_agency=COMMUNE,
                time=at("07-02", "10:00"),
            ),
        ),
        ("dossier.commune", ev.result_returned(dossier=held, time=at("07-02", "15:00"))),
    ]:
        send(topic, event)
    run_engine_until_caught_up(engine_settings, tmp_path)

    # A backfill: its inputs, dated 29 June, reach the engine only after the cutover passed;
    # they apply at the district, and the province's first input of 3 July follows a handover.
    for topic, event in [
        *open_at_district(backfill, "06-29"),
        (
            "dossier.province",
            ev.resolved(dossier=backfill, agency=PROVINCE, time=at("07-03", "09:00")),
        ),
    ]:
        send(topic, event)
    run_engine_until_caught_up(engine_settings, tmp_path)

    statuses = statuses_by_dossier(engine_settings)
    steps = statuses[held]
    assert [s["data"]["status_code"] for s in steps] == [1, 2, 4, 4, 6, 4, 4, 4, 9, 9, 10]
    assert [s["data"]["sequence"] for s in steps] == list(range(1, 12))
    migration, handover = steps[6]["data"], steps[7]["data"]
    assert migration["caused_by"] == {
        "source": engine_settings.engine_source,
        "id": MIGRATION_ID,
        "type": "vn.gov.dossier.workflow-migrated",
    }
    assert (migration["state"], migration["workflow_version"]) == ("upper_processing", 2)
    assert handover["caused_by"] == {
        "source": engine_settings.engine_source,
        "id": HANDOVER_ID,
        "type": "vn.gov.dossier.handed-over",
    }
    assert (handover["agency"], handover["level"]) == (PROVINCE, "province")
    assert (handover["state"], handover["workflow_version"]) == ("upper_processing", 2)
    assert steps[6]["time"] == steps[7]["time"] == "2025-07-01T00:00:00+07:00"
    first_appointment = steps[1]["data"]["due_at"]
    assert first_appointment is not None
    assert {s["data"]["due_at"] for s in steps[1:]} == {first_appointment}
    assert [s["data"]["agency"] for s in steps[8:]] == [PROVINCE, COMMUNE, COMMUNE]
    assert [s["data"]["level"] for s in steps[3:8]] == ["district"] * 3 + ["province"] * 2
    assert {s["data"]["workflow_version"] for s in steps[6:]} == {2}

    dead = [d["data"] for d in outputs(engine_settings, "dossier.dlq")]
    assert [(d["reason"], d["detail"].split(":")[0]) for d in dead] == [
        ("unauthenticated", "agency-window")
    ]

    late = statuses[backfill]
    assert [s["data"]["status_code"] for s in late] == [1, 2, 4, 4, 6, 4, 4, 4, 9]
    assert [s["data"]["caused_by"]["id"] for s in late[6:8]] == [MIGRATION_ID, HANDOVER_ID]
    assert late[7]["data"]["agency"] == PROVINCE and late[5]["data"]["agency"] == DISTRICT

    live = create_db_engine(engine_settings.database_url)
    try:
        with SqlUnitOfWork(live) as uow:
            history = uow.repo.history(held)
            backfilled = uow.repo.history(backfill)
        kinds = [row.type.rsplit(".", 1)[1] for row in history]
        assert kinds[5:9] == ["payment-completed", "workflow-migrated", "handed-over", "resolved"]
        entry = history[7]
        assert (entry.source, entry.event_id) == (engine_settings.engine_source, HANDOVER_ID)
        assert entry.position.partition is None and entry.position.offset is None
        assert [row.type.rsplit(".", 1)[1] for row in backfilled][-3:] == [
            "workflow-migrated",
            "handed-over",
            "resolved",
        ]
        assert (history[6].event_id, history[6].workflow_version) == (MIGRATION_ID, 2)
        assert verify(live).findings == []

        # The audit trail shows the engine's own entry, chained with the inputs.
        url = engine_settings.database_url
        assert cli(["audit", "show", held, "--url", url, "--format", "json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert [s["type"] for s in document["steps"]][6:8] == ["workflow-migrated", "handed-over"]
        assert {s["source"] for s in document["steps"][6:8]} == {engine_settings.engine_source}

        from_kafka = create_db_engine(f"sqlite:///{tmp_path / 'from-kafka.db'}")
        replay_from_kafka(engine_settings, from_kafka)
        result = compare(from_kafka, live)
        assert result.differences == [] and result.ok
        from_db = create_db_engine(f"sqlite:///{tmp_path / 'from-db.db'}")
        report = replay_from_db(engine_settings, live, from_db)
        assert report.outcomes.get("dead_lettered", 0) == 0
        result = compare(from_db, live)
        assert result.differences == [] and result.ok
        for rebuilt in (from_kafka, from_db):
            with SqlUnitOfWork(rebuilt) as uow:
                # Envelopes are sealed afresh (personal data), so compared by what they say.
                assert [_step(row) for row in uow.repo.history(held)] == [
                    _step(row) for row in history
                ]
            assert verify(rebuilt).findings == []
            rebuilt.dispose()
        for name in ("from-kafka", "from-db"):
            into = f"sqlite:///{tmp_path / name}.db"
            assert cli(["replay", "--verify", "--into", into, "--against", url]) == 0
            assert "differing 0" in capsys.readouterr().out
    finally:
        live.dispose()
