"""The run's summary and HTML report across the end of the district level (contract 1.1,
"Handover"): a simulated fortnight played through the service layer into SQLite, then read
back as `dossier demo` reads it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from kafka.partitioner.default import murmur2

from dossier.tools.generate_catalogue import SIMULATION_REGISTRY
from dossier.tools.report import charts, html, load
from dossier.tools.report.data import RunData
from dossier.tools.report.summary import Summary
from dossier.tools.simulation import ProvinceProfile, Workload, manifest
from engine import indicators as ind
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import VN_TZ, WorkingCalendar
from engine.decider import Decider
from engine.history import Position
from engine.procedures import load_catalogue
from engine.registry import default_registry_file, load_registry
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec

CATALOGUE = load_catalogue()
CALENDAR = WorkingCalendar.load()
START = datetime(2025, 6, 23, tzinfo=VN_TZ)
END = datetime(2025, 7, 8, tzinfo=VN_TZ)
CUTOVER = datetime(2025, 7, 1, tzinfo=VN_TZ)
PERIOD = ind.Period(START, END)
GROUP = "report-test"
PARTITIONS = 3


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Summary, RunData, Workload]:
    workload = Workload(
        CATALOGUE,
        CALENDAR,
        seed=3,
        start=START,
        end=END,
        dossiers=500,
        duplicate_share=0.02,
        bad_share=0.02,
        reorder_share=0.1,
        profile=ProvinceProfile.load(),
        until=END,
    )
    messages = workload.messages()
    registry = load_registry([default_registry_file(), SIMULATION_REGISTRY])
    processor = BatchProcessor(
        Decider(CATALOGUE, CALENDAR, registry),
        ContractCodec(),
        ServiceConfig("urn:test", GROUP, timedelta(days=7)),
        verifier=registry,
    )
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'engine.db'}"
    db = create_db_engine(url)
    upgrade(db)
    # Partitioned by dossier as the simulator's producer does, so that each partition's clock
    # passes the cutover on its own.
    offsets: Counter[tuple[str, int]] = Counter()
    for start in range(0, len(messages), 300):
        raws = []
        for m in messages[start : start + 300]:
            partition = (murmur2(m.key) & 0x7FFFFFFF) % PARTITIONS if m.key else 0
            offset = offsets[(m.topic, partition)]
            offsets[(m.topic, partition)] += 1
            position = Position(m.topic, partition, offset)
            raws.append(RawInput(m.topic, position, m.key, m.value, m.headers))
        processor.process(SqlUnitOfWork(db, writes=True), raws)
    db.dispose()
    content = manifest(
        messages,
        handovers=workload.expected_handovers(),
        migrations=workload.expected_migrations(),
    )
    summary, run = load(url, GROUP, CATALOGUE, CALENDAR, PERIOD, province="test", manifest=content)
    return summary, run, workload


def test_the_accounting_closes_with_the_handovers_counted(
    reported: tuple[Summary, RunData, Workload],
) -> None:
    summary, run, workload = reported
    assert [c for c in summary.checks if not c.ok] == []
    lines = {c.name: c for c in summary.checks}
    expected = workload.expected_handovers()
    # The province department, or a district's commune for a dossier at a commune step.
    assert set(expected) == {"district → province", "district → commune"}
    assert sum(expected.values()) == len(workload.handed_over)
    for levels, count in expected.items():
        assert lines[f"handovers: {levels}"].actual == count
    history = lines["history rows: inputs applied + handovers + migrations"]
    migrations = sum(run.migrations_by_levels.values())
    assert history.actual == run.applied_inputs + len(run.handovers) + migrations
    assert history.actual == run.history_rows
    assert dict(summary.handovers) == expected
    assert {h.dossier_code for h in run.handovers} == set(workload.handed_over)
    assert all(h.time == CUTOVER for h in run.handovers)
    assert {h.to_agency for h in run.handovers} == set(workload.handed_over.values())
    assert {h.dossier_code: h.to_agency for h in run.handovers} == workload.handed_over
    fates = summary.handed_over
    assert fates.dossiers == len(workload.handed_over)
    assert fates.finished + fates.closed + fates.open == fates.dossiers
    assert fates.returned > 0  # the successor returned results the districts had started


def test_the_accounting_closes_with_the_migrations_counted(
    reported: tuple[Summary, RunData, Workload],
) -> None:
    """The v1 dossiers open on 1 July of the procedures whose version changes then
    (workflows/migrations/): each moved to version 2 once, as the simulator expected, and what
    became of them."""
    summary, run, workload = reported
    lines = {c.name: c for c in summary.checks}
    expected = workload.expected_migrations()
    assert expected and sum(expected.values()) == len(workload.migrated)
    for levels, count in expected.items():
        assert lines[f"migrations: {levels}"].actual == count
    assert dict(summary.migrations) == expected
    migrated = run.migrated_rows()
    assert {r.code for r in migrated} == set(workload.migrated)
    assert {(r.workflow_version, r.migrated_at) for r in migrated} == {(2, CUTOVER)}
    fates = summary.migrated
    assert fates.dossiers == len(workload.migrated)
    assert fates.finished + fates.closed + fates.open == fates.dossiers


def test_no_district_receives_after_its_last_day(
    reported: tuple[Summary, RunData, Workload],
) -> None:
    """A dossier submitted to a district and received after 30 June was received by the
    successor: drawn at the successor's level, not the district's (nor at the commune, the
    receiving level of the version a plan moved it to before the successor received it)."""
    _, run, workload = reported
    spans, counts = charts.receptions_per_day(run, PERIOD)
    after = [i for i, span in enumerate(spans) if span.start >= CUTOVER]
    before = [i for i, span in enumerate(spans) if span.start < CUTOVER]
    assert after and sum(counts["district"][i] for i in before) > 0
    assert [counts["district"][i] for i in after] == [0] * len(after)
    by_successor = [
        r
        for r in run.rows
        if workload.agencies.level(r.receiving_agency) == "district"
        and r.received_at is not None and r.received_at >= CUTOVER
    ]  # fmt: skip
    # Received by the successor the registry names for the level of its step (the province
    # department; the district's commune once a plan moved the step down), never the district.
    assert by_successor and {r.reception_level for r in by_successor} <= {"province", "commune"}


def test_the_backlog_draws_a_line_for_the_handed_over_dossiers(
    reported: tuple[Summary, RunData, Workload],
) -> None:
    summary, run, _ = reported
    series = charts.backlog_series(run, PERIOD)
    line = dict(zip(series.closes, series.handed_over, strict=True))
    assert all(n == 0 for close, n in line.items() if close < CUTOVER)
    first = min(close for close in line if close >= CUTOVER)
    # Open at the first close after the cutover: every dossier handed over that was received
    # and not closed by then.
    assert 0 < line[first] <= summary.handed_over.dossiers
    assert all(
        opened <= total
        for opened, total in zip(
            series.handed_over,
            [a + b for a, b in zip(series.in_time, series.overdue, strict=True)],
            strict=True,
        )
    )
    page = html.render(html.ReportContext(summary, run, CALENDAR, CATALOGUE))
    assert "handed over to its successor" in page
    for levels, count in summary.handovers.items():
        assert f"{levels}: {count:,}" in page


def test_the_report_is_written(reported: tuple[Summary, RunData, Workload], tmp_path: Path) -> None:
    summary, run, _ = reported
    path = html.write(
        tmp_path / "report.html", html.ReportContext(summary, run, CALENDAR, CATALOGUE)
    )
    text = path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 7
    assert "history rows" in text
