"""Crash-only operation: SIGKILL the engine five times during a 10,000-input stream, restart
it each time, and prove nothing was lost, nothing was applied twice, and the outputs are what an
uninterrupted run produces. Also: the broker itself restarts mid-stream."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dossier import kafka_clients
from dossier.settings import Settings
from dossier.tools.simulation import SimulatedMessage, Workload
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import create_input_producer, publish, read_topic
from engine.calendar import WorkingCalendar
from engine.procedures import load_catalogue
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.integration.conftest import isolated_run

STREAM_SIZE = 10_000
KILLS = 5


@pytest.fixture(scope="module")
def stream() -> list[SimulatedMessage]:
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=4242,
        start=datetime.fromisoformat("2025-05-05T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-08-29T00:00:00+07:00"),
        dossiers=1500,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.01,
        bad_share=0.005,
        reorder_share=0.03,
    ).messages()
    selected = whole_dossiers(messages, STREAM_SIZE)
    assert len(selected) >= STREAM_SIZE
    return selected


def whole_dossiers(messages: list[SimulatedMessage], size: int) -> list[SimulatedMessage]:
    """About `size` inputs of whole dossiers, in stream order: a dossier cut in half would
    leave inputs parked for predecessors that were never produced."""
    per_dossier = Counter(m.dossier for m in messages if m.dossier)
    chosen: set[str] = set()
    total = 0
    for message in messages:
        if message.dossier and message.dossier not in chosen and total < size:
            chosen.add(message.dossier)
            total += per_dossier[message.dossier]
    last = max(i for i, m in enumerate(messages) if m.dossier in chosen)
    return [
        m
        for i, m in enumerate(messages)
        if m.dossier in chosen or (m.dossier is None and i <= last)
    ]


def new_schema(postgres_url: str) -> Iterator[str]:
    schema = f"crash_{uuid.uuid4().hex[:10]}"
    admin = create_db_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def isolated(
    settings: Settings, kafka_bootstrap: str, postgres_url: str, tmp_path: Path
) -> Iterator[Any]:
    """Factory of isolated runs on PostgreSQL, each in a schema of its own."""
    with contextlib.ExitStack() as stack:

        def make(name: str) -> Settings:
            schema_url = stack.enter_context(contextlib.contextmanager(new_schema)(postgres_url))
            return stack.enter_context(
                isolated_run(settings, schema_url, tmp_path, name, batch_timeout_ms=200)
            )

        yield make


def produce(
    settings: Settings, messages: list[SimulatedMessage], rate: float | None = None
) -> None:
    producer = create_input_producer(settings)
    try:
        publish(producer, messages, settings.topic, rate=rate)
    finally:
        producer.close()


def assignments(engine: EngineProcess, at_least: int, timeout_s: float = 60) -> None:
    """Wait until the engine's consumer has been assigned partitions `at_least` times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine.log_tail(100_000).count("Executing _on_partitions_assigned") >= at_least:
            return
        assert engine.alive(), engine.log_tail()
        time.sleep(0.2)
    raise TimeoutError(f"no partition assignment #{at_least}:\n{engine.log_tail()}")


def owned_partitions(engine: EngineProcess, nth: int) -> set[int]:
    """The partitions of dossier.submission in the engine's nth assignment (faust's log table)."""
    text = engine.log_path.read_text(encoding="utf-8", errors="replace")
    tables = text.split("Setting newly assigned partitions")[1:]
    for line in tables[nth - 1].splitlines():
        if ".dossier.submission" in line and "|" in line:
            spec = line.split("|")[2].strip().strip("{}")
            owned: set[int] = set()
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                owned.update(range(int(lo), int(hi or lo) + 1))
            return owned
    return set()


def final_dossiers(settings: Settings) -> dict[str, tuple[Any, ...]]:
    db = create_db_engine(settings.database_url)
    try:
        with SqlUnitOfWork(db) as uow:
            rows = uow.repo.load_dossiers(all_codes(db))
        return {
            code: (
                s.dossier.state,
                s.dossier.status_code,
                s.dossier.level,
                s.dossier.agency,
                s.dossier.due_at,
                s.dossier.sequence,
                dict(s.dossier.discounts),
                s.dossier.inputs_applied,
            )
            for code, s in rows.items()
        }
    finally:
        db.dispose()


def all_codes(db: sa.Engine) -> list[str]:
    with db.connect() as connection:
        return [row[0] for row in connection.execute(sa.text("SELECT code FROM dossiers"))]


def outcome_counts(settings: Settings) -> Counter[str]:
    db = create_db_engine(settings.database_url)
    try:
        with SqlUnitOfWork(db) as uow:
            counts = uow.repo.outcome_counts(settings.consumer_group)
    finally:
        db.dispose()
    totals: Counter[str] = Counter()
    for (_, outcome), count in counts.items():
        totals[outcome] += count
    return totals


def statuses(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    by_dossier: dict[str, list[dict[str, Any]]] = {}
    records = read_topic(settings, settings.topic("dossier.status"), timeout_s=30)
    for record in records:
        event = json.loads(record.value)
        by_dossier.setdefault(event["subject"], []).append(event)
    return by_dossier


def assert_gap_free_with_identical_repeats(by_dossier: dict[str, list[dict[str, Any]]]) -> None:
    for code, events in by_dossier.items():
        first_copy: dict[str, dict[str, Any]] = {}
        for event in events:
            if event["id"] in first_copy:
                assert event["data"] == first_copy[event["id"]]["data"], (
                    f"{code}: {event['id']} changed"
                )
            first_copy.setdefault(event["id"], event)
        sequences = sorted(e["data"]["sequence"] for e in first_copy.values())
        assert sequences == list(range(1, len(sequences) + 1)), f"{code}: {sequences}"
        assert all(e["id"] == f"{code}/status/{e['data']['sequence']}" for e in events)
        # In dossier order on the topic: a copy may repeat, but never goes back past a newer one
        # it had not already shown.
        shown = 0
        for event in events:
            sequence = event["data"]["sequence"]
            assert sequence <= shown + 1, f"{code}: {sequence} after {shown}"
            shown = max(shown, sequence)


def expected_outcomes(messages: list[SimulatedMessage]) -> Counter[str]:
    expected: Counter[str] = Counter()
    for message in messages:
        if message.expected == "valid":
            expected["applied"] += 1
        elif message.expected == "duplicate":
            expected["duplicate"] += 1
        else:
            expected["dead_lettered"] += 1
    return expected


def test_kill_9_five_times_loses_nothing_and_matches_an_uninterrupted_run(
    isolated: Any, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    reference = isolated("ref")
    produce(reference, stream)
    with EngineProcess(reference, tmp_path / "reference.log") as engine:
        wait_caught_up(reference, 300, engine)

    crashed = isolated("crash")
    chaos = random.Random(20251127)
    producer = threading.Thread(target=produce, args=(crashed, stream, 700.0))
    producer.start()
    engine = EngineProcess(crashed, tmp_path / "crashed.log")
    engine.start()
    kills = 0
    try:
        while kills < KILLS:
            threading.Event().wait(chaos.uniform(2.0, 4.5))
            assert engine.alive(), engine.log_tail()
            engine.kill()
            kills += 1
            engine.start()
        producer.join(timeout=120)
        assert not producer.is_alive()
        wait_caught_up(crashed, 300, engine)
    finally:
        engine.stop()

    # Every produced input is accounted for, each exactly once.
    counts = outcome_counts(crashed)
    assert sum(counts.values()) == len(stream)
    assert counts == outcome_counts(reference)
    assert counts["parked"] == 0
    assert +counts == +expected_outcomes(stream)
    # The same final states as the uninterrupted run.
    assert final_dossiers(crashed) == final_dossiers(reference)
    # On dossier.status: 1..n per dossier, repeats only as identical copies, n as in the reference.
    crashed_statuses, reference_statuses = statuses(crashed), statuses(reference)
    assert_gap_free_with_identical_repeats(crashed_statuses)
    assert {c: len({e["id"] for e in es}) for c, es in crashed_statuses.items()} == {
        c: len({e["id"] for e in es}) for c, es in reference_statuses.items()
    }
    letters = read_topic(crashed, crashed.topic("dossier.dlq"), timeout_s=20)
    assert len({json.loads(r.value)["id"] for r in letters}) == counts["dead_lettered"]
    # The accounting, for the record (pytest -s): what the closing notes quote.
    print(
        f"\ncrash test: {kills} kills; produced {len(stream)} = "
        + " + ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items()))
        + f"; {len(crashed_statuses)} dossiers' status sequences gap-free"
        + f" ({sum(len(es) for es in crashed_statuses.values())} status records,"
        + f" {sum(len({e['id'] for e in es}) for es in crashed_statuses.values())} distinct ids)"
    )


def test_the_engine_survives_a_broker_restart_mid_stream(
    isolated: Any, settings: Settings, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    target = isolated("brk")
    part = whole_dossiers(stream, 3000)
    produce(target, part[:1500])
    with EngineProcess(target, tmp_path / "engine.log") as engine:
        wait_caught_up(target, 120, engine)
        assert kafka_clients.local_broker("down", settings) == 0
        threading.Event().wait(2)
        assert kafka_clients.local_broker("up", settings) == 0
        produce(target, part[1500:])
        wait_caught_up(target, 240, engine)
        assert engine.alive()
    counts = outcome_counts(target)
    assert sum(counts.values()) == len(part)
    assert counts["parked"] == 0
    assert_gap_free_with_identical_repeats(statuses(target))


def test_two_engine_processes_share_the_group_and_survive_rebalances(
    isolated: Any, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    shared = isolated("pair")
    part = whole_dossiers(stream, 4000)
    producer = threading.Thread(target=produce, args=(shared, part, 800.0))
    first = EngineProcess(shared, tmp_path / "first.log")
    second = EngineProcess(shared, tmp_path / "second.log")
    first.start()
    assignments(first, at_least=1)
    second.start()  # the group rebalances: some partitions move to the newcomer
    assignments(second, at_least=1)
    assignments(first, at_least=2)
    shared_out = [owned_partitions(first, 2), owned_partitions(second, 1)]
    assert all(shared_out) and set.union(*shared_out) == {0, 1, 2}, shared_out
    assert not set.intersection(*shared_out), shared_out  # really shared, not handed over
    producer.start()
    try:
        threading.Event().wait(3)  # both apply their share of the stream
        assert first.stop() == 0  # a clean leave: its partitions go to the second
        first.start()  # and come back
        producer.join(timeout=120)
        assert not producer.is_alive()
        wait_caught_up(shared, 240, second)
        assert first.alive() and second.alive()
    finally:
        first.stop()
        second.stop()
    counts = outcome_counts(shared)
    assert sum(counts.values()) == len(part)
    assert counts["parked"] == 0
    assert +counts == +expected_outcomes(part)
    assert_gap_free_with_identical_repeats(statuses(shared))
