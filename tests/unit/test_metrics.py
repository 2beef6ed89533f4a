"""Engine metrics: what batches, the relay and the database make of them, and what never
appears in them (dossier codes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine

from dossier import monitoring as m
from engine import indicators as ind
from engine.application.ports import ChangeSet, OutboxMessage, ParkedInput, Position, StoredDossier
from engine.application.service import BatchResult, RawInput
from engine.calendar import WorkingCalendar
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.store_contract import make_dossier

NOW = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
AGENCY = "000.00.19.H56"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def raw(topic: str = "dossier.commune", offset: int = 0) -> RawInput:
    return RawInput(topic, Position(f"p.{topic}", 0, offset), b"k", b"{}")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


@pytest.fixture
def registry() -> CollectorRegistry:
    return m.new_registry(process=False)


def test_a_batch_is_counted_by_bounded_labels(registry: CollectorRegistry) -> None:
    metrics = m.EngineMetrics(registry, ["single-level", "inter-level"], wall_clock=lambda: NOW)
    result = BatchResult(
        outcomes=Counter(
            {
                ("dossier.commune", "applied"): 3,
                ("dossier.submission", "duplicate"): 1,
                ("dossier.commune", "dead_lettered"): 2,
            }
        ),
        dead_letters=Counter({"schema": 1, "conflict": 1}),
        transitions=Counter({("single-level", 2): 2, ("inter-level", 10): 1}),
        notices=Counter({"overdue": 1}),
        discounts_granted=Counter({"inter-level": 1}),
        discount_vnd=Counter({"inter-level": 50_000}),
        redelivered=4,
        applied_event_times=[NOW - timedelta(seconds=2), NOW + timedelta(seconds=5)],
    )
    metrics.batch_committed([raw(offset=i) for i in range(6)], result, 0.03)
    metrics.batch_committed(
        [raw(offset=9)], BatchResult(outcomes=Counter({("dossier.commune", "applied"): 1})), 0.01
    )

    assert value(registry, "dossier_inputs_total", topic="dossier.commune", outcome="applied") == 4
    assert (
        value(registry, "dossier_inputs_total", topic="dossier.submission", outcome="duplicate")
        == 1
    )
    assert value(registry, "dossier_inputs_total", topic="dossier.province", outcome="parked") == 0
    assert value(registry, "dossier_dead_letters_total", reason="schema") == 1
    assert value(registry, "dossier_dead_letters_total", reason="parked-expired") == 0
    assert value(registry, "dossier_transitions_total", group="single-level", status_code="2") == 2
    assert value(registry, "dossier_transitions_total", group="inter-level", status_code="10") == 1
    assert value(registry, "dossier_deadline_notices_total", kind="overdue") == 1
    assert value(registry, "dossier_deadline_notices_total", kind="deadline-warning") == 0
    assert value(registry, "dossier_fee_discounts_granted_total", group="inter-level") == 1
    assert value(registry, "dossier_fee_discounts_vnd_total", group="inter-level") == 50_000
    assert value(registry, "dossier_inputs_redelivered_total") == 4
    assert value(registry, "dossier_batch_inputs_count") == 2
    assert value(registry, "dossier_batch_inputs_sum") == 7
    assert value(registry, "dossier_consumed_to_committed_seconds_sum") == pytest.approx(0.04)
    # 2 s late lands under 2.5 s; an event from the future (clock skew) counts as 0, not -5.
    assert value(registry, "dossier_event_to_applied_seconds_bucket", le="1.0") == 1
    assert value(registry, "dossier_event_to_applied_seconds_bucket", le="2.5") == 2
    assert value(registry, "dossier_event_to_applied_seconds_sum") == 2


def test_empty_ticks_count_notices_but_are_not_batches(registry: CollectorRegistry) -> None:
    metrics = m.EngineMetrics(registry, ["single-level"])
    metrics.batch_committed([], BatchResult(notices=Counter({"deadline-warning": 2})), 0.001)
    assert value(registry, "dossier_deadline_notices_total", kind="deadline-warning") == 2
    assert value(registry, "dossier_batch_inputs_count") == 0
    assert value(registry, "dossier_consumed_to_committed_seconds_count") == 0


def test_handovers_are_counted_by_former_and_new_level(registry: CollectorRegistry) -> None:
    metrics = m.EngineMetrics(registry, ["inter-level"])
    name = "dossier_handovers_total"
    assert value(registry, name, from_level="district", to_level="province") == 0
    handed = BatchResult(handovers=Counter({("district", "province"): 3}))
    metrics.batch_committed([], handed, 0.001)
    assert value(registry, name, from_level="district", to_level="province") == 3
    assert value(registry, name, from_level="district", to_level="commune") == 0


def test_a_failing_listener_never_fails_the_batch(registry: CollectorRegistry) -> None:
    errors = m.errors_counter(registry)
    metrics = m.EngineMetrics(registry, [], errors=errors)
    broken = BatchResult(discount_vnd=Counter({"g": -5}))  # counters refuse to go down
    metrics.batch_committed([raw()], broken, 0.01)
    assert value(registry, "dossier_metrics_errors_total", source="listener") == 1


def test_commit_to_publish_latency_follows_outbox_ids(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    max_id = [3]  # rows 1-3 were committed before this process started
    metrics = m.EngineMetrics(registry, [], max_outbox_id=lambda: max_id[0], monotonic=clock)
    applied = BatchResult(applied_event_times=[NOW])

    max_id[0] = 5
    metrics.batch_committed([raw()], applied, 0.01)  # rows 4-5 committed at t=100
    clock.now = 101.0
    max_id[0] = 9
    metrics.batch_committed([raw()], applied, 0.01)  # rows 6-9 at t=101
    clock.now = 102.5
    metrics.published([message(i) for i in (2, 3, 4, 5, 6)])  # 2, 3: before our time
    assert value(registry, "dossier_committed_to_published_seconds_count") == 3
    assert value(registry, "dossier_committed_to_published_seconds_sum") == pytest.approx(
        2.5 + 2.5 + 1.5
    )
    # The relay won a race against the listener: row 10 is published before its mark.
    clock.now = 103.0
    metrics.published([message(i) for i in (7, 8, 9, 10)])
    assert value(registry, "dossier_committed_to_published_seconds_count") == 6
    max_id[0] = 10
    metrics.batch_committed([raw()], applied, 0.01)
    assert value(registry, "dossier_committed_to_published_seconds_count") == 7
    assert value(registry, "dossier_committed_to_published_seconds_sum") == pytest.approx(
        6.5 + 3 * 2.0 + 0.0
    )
    assert value(registry, "dossier_outputs_published_total", topic="dossier.status") == 9


def message(row_id: int) -> OutboxMessage:
    return OutboxMessage("dossier.status", b"k", b"v", f"m{row_id}", NOW, id=row_id)


def test_consumer_lag_counts_from_the_log_start() -> None:
    offsets = {("t.a", 0): (0, 100), ("t.a", 1): (40, 50), ("t.b", 0): (0, 7)}
    positions = {("t.a", 0): 60, ("t.b", 0): 9}  # t.a/1 never consumed; t.b ahead (retention)
    assert m.consumer_lag(offsets, positions) == {("t.a", 0): 40, ("t.a", 1): 10, ("t.b", 0): 0}


def test_lag_series_carry_contract_topics() -> None:
    lag: m.Refreshed[dict[tuple[str, int], int]] = m.Refreshed(
        "lag", lambda: {("x.dossier.commune", 2): 7}, min_interval=1, max_interval=1
    )
    lag.refresh()
    registry = m.new_registry(process=False)
    registry.register(m.LagCollector(lag, "x."))
    assert (
        value(registry, "dossier_consumer_lag_messages", topic="dossier.commune", partition="2")
        == 7
    )


def test_a_failed_refresh_keeps_the_last_value_and_counts() -> None:
    calls = iter([1, None])
    errors: list[str] = []

    def compute() -> int:
        result = next(calls)
        if result is None:
            raise RuntimeError("database gone")
        return result

    refreshed = m.Refreshed(
        "x", compute, min_interval=1, max_interval=1, on_error=lambda: errors.append("x")
    )
    assert refreshed.refresh() == 1
    assert refreshed.refresh() == 1
    assert errors == ["x"]


# --- state read from the database ---------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def code(n: int) -> str:
    return f"{AGENCY}-250303-{n:04d}"


def populate(db: Engine) -> None:
    past, future = NOW - timedelta(hours=1), NOW + timedelta(days=2)
    dossiers = [
        make_dossier(code(1), status_code=4, due_at=past),  # overdue
        make_dossier(code(2), status_code=4, due_at=future),
        make_dossier(code(3), status_code=5, due_at=past),  # waiting for the applicant
        make_dossier(code(4), status_code=9, due_at=past, finished_at=past),  # resolved
        make_dossier(code(5), status_code=6, level="province", due_at=past),  # overdue
        make_dossier(code(6), status_code=10, final=True, due_at=past, finished_at=past),
    ]
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 0, None) for d in dossiers]))
        uow.repo.write(ChangeSet(outbox=[message(i) for i in range(1, 4)]))
        uow.repo.mark_sent([1], NOW)
        waiting = ParkedInput(
            "urn:x", "e1", code(2), Position("t", 0, 1), b"k", b"v", (), NOW, future, "wait"
        )
        uow.repo.write(
            ChangeSet(
                parked=[waiting],
                group="engine",
                outcomes={("dossier.commune", "applied"): 7},
                clock=NOW,
            )
        )
        uow.repo.write(
            ChangeSet(group="other-group", outcomes={("dossier.commune", "applied"): 100})
        )
        uow.commit()


def test_database_state_after_a_restart(db: Engine) -> None:
    populate(db)
    registry = m.new_registry(process=False)
    # A fresh collector: what a restarted engine sees.
    registry.register(m.DatabaseState(db, group="engine"))
    open_ = {
        (s.labels["status_code"], s.labels["level"]): s.value
        for family in registry.collect()
        if family.name == "dossier_dossiers_open"
        for s in family.samples
    }
    assert open_ == {
        ("4", "commune"): 2,
        ("5", "commune"): 1,
        ("9", "commune"): 1,
        ("6", "province"): 1,
    }

    def overdue(status: str, level: str) -> float:
        return value(registry, "dossier_dossiers_overdue", status_code=status, level=level)

    assert overdue("4", "commune") == 1
    assert overdue("5", "commune") == 0  # the clock is stopped while the applicant supplements
    assert overdue("9", "commune") == 0  # resolved: only the return is left
    assert overdue("6", "province") == 1  # waiting for payment does not stop the clock
    assert value(registry, "dossier_outbox_unsent_messages") == 2
    assert value(registry, "dossier_parked_inputs") == 1
    assert value(registry, "dossier_engine_clock_timestamp_seconds") == NOW.timestamp()
    outcome = "dossier_input_outcomes"
    assert value(registry, outcome, topic="dossier.commune", outcome="applied") == 7
    assert value(registry, outcome, topic="dossier.province", outcome="parked") == 0


def test_database_state_is_cached_and_keeps_emptied_series(db: Engine) -> None:
    populate(db)
    clock = FakeClock()
    registry = m.new_registry(process=False)
    registry.register(m.DatabaseState(db, ttl=5.0, monotonic=clock))
    assert value(registry, "dossier_dossiers_open", status_code="6", level="province") == 1
    finished = make_dossier(code(5), status_code=10, level="province", final=True)
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(finished, 1, None)]))
        uow.commit()
    clock.now += 4.9
    assert value(registry, "dossier_dossiers_open", status_code="6", level="province") == 1
    clock.now += 0.2
    # Gone from the database, still a series: 0 says "none", an absent series "unknown".
    assert value(registry, "dossier_dossiers_open", status_code="6", level="province") == 0


def test_no_dossier_code_in_any_series(db: Engine) -> None:
    populate(db)
    monitoring = m.database_monitoring(db, WorkingCalendar.load(), lambda _p, _v: None, role="test")
    m.EngineMetrics(monitoring.registry, ["single-level"], errors=monitoring.errors)
    for refresher in monitoring.refreshers:
        refresher.refresh()
    text = generate_latest(monitoring.registry).decode()
    assert 'dossier_indicator_ratio{agency="000.00.19.H56"' in text  # the indicators are there
    for n in range(1, 7):
        assert code(n) not in text
    assert "Nguyễn" not in text and "001090012345" not in text


def test_indicator_gauges_omit_na_and_match_the_report(db: Engine) -> None:
    populate(db)
    calendar = WorkingCalendar.load()
    report: m.Refreshed[ind.Report | None] = m.Refreshed(
        "indicators",
        m.indicator_computer(db, calendar, lambda _p, _v: None, 30),
        min_interval=1,
        max_interval=1,
    )
    report.refresh()
    registry = m.new_registry(process=False)
    registry.register(m.IndicatorCollector(report, 30))
    assert report.value is not None
    group = report.value.agencies[0]
    labels = {"agency": AGENCY, "level": "commune"}
    for figure in group.figures.values():
        name = (
            "dossier_indicator_ratio"
            if figure.indicator.unit == "ratio"
            else "dossier_indicator_seconds"
        )
        exported = registry.get_sample_value(name, {"indicator": figure.indicator.key, **labels})
        assert exported == figure.value  # None: no series at all
    # make_dossier pays nothing: 3.6 has no denominator, hence no series.
    assert group.figures["3.6"].value is None
    assert value(registry, "dossier_indicator_window_end_timestamp_seconds") == pytest.approx(
        NOW.timestamp(), abs=1e-3
    )
