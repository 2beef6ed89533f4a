"""The parallel replay from Kafka rebuilds the very rows the serial one does.

A simulated province (duplicates, conflicts, inputs that fail to decode, one without a key,
inputs of one dossier across several topics and out of order across them) is published to
topics of 3 partitions with a unique prefix, with more disorder than a live run would leave:
some dossiers' inputs swapped within their partition (parked, then retried, some across
batches), an input for a dossier never submitted (parked for good), and some dossiers' times
written in UTC rather than +07:00 (the clock keeps the offset of the event that moved it). It is
replayed serially and in 2 and 3 workers (2 workers: partitions {0, 2} and {1}), with small
batches and a small notice scan limit, and every table is compared row by row, in id order,
except the wall-clock columns.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_kafka
from dossier.replay.serial import FOLDED, MERGED, compare
from dossier.settings import Settings
from dossier.tools.simulation import Workload
from dossier.tools.workload import create_input_producer
from engine.calendar import WorkingCalendar
from engine.procedures import load_catalogue
from engine.store.audit import verify
from engine.store.sql import create_db_engine
from tests.fixtures import events as ev
from tests.integration.conftest import isolated_run
from tests.integration.test_replay_parallel import assert_same_rows, table_rows

PARTITIONS = 3


@dataclass(frozen=True)
class Input:
    topic: str  # contract topic
    key: bytes | None
    value: bytes
    dossier: str | None
    expected: str = "valid"  # or "duplicate", or the reason it is dead-lettered


def province(dossiers: int, seed: int) -> list[Input]:
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=seed,
        start=datetime.fromisoformat("2025-05-02T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-07-20T00:00:00+07:00"),
        dossiers=dossiers,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.03,
        bad_share=0.03,
        reorder_share=0.05,
    ).messages()
    return [Input(m.topic, m.key, m.value, m.dossier, m.expected) for m in messages]


def _in_utc(value: bytes) -> bytes:
    event = json.loads(value)
    event["time"] = datetime.fromisoformat(event["time"]).astimezone(UTC).isoformat()
    return json.dumps(event).encode()


def disorder(inputs: list[Input]) -> list[Input]:
    """More disorder than the simulation's, as described in the module docstring."""
    codes = list(dict.fromkeys(i.dossier for i in inputs if i.dossier is not None))
    in_utc = set(codes[::5])
    swapped = set(codes[1::6])
    out = [
        Input(i.topic, i.key, _in_utc(i.value), i.dossier, i.expected) if i.dossier in in_utc else i
        for i in inputs
    ]
    last: dict[tuple[str, str], int] = {}
    done: set[str] = set()
    for n, item in enumerate(out):
        if item.dossier not in swapped or item.dossier in done:
            continue
        slot = (item.dossier, item.topic)
        if slot in last:
            m = last[slot]
            out[m], out[n] = out[n], out[m]  # the later action first in its partition
            done.add(item.dossier)
        last[slot] = n
    stray = next(i for i in out if i.dossier == codes[2] and i.topic != "dossier.submission")
    never = f"{codes[2][:-4]}9999"
    event = json.loads(stray.value)
    event.update(subject=never, id=f"{event['id']}-never")
    out.insert(len(out) // 3, Input(stray.topic, never.encode(), json.dumps(event).encode(), never))
    out.insert(len(out) // 2, Input("dossier.commune", None, b"{not json, no key", None))
    return out


def publish(
    settings: Settings, inputs: list[Input], partitions: dict[int, int] | None = None
) -> None:
    """In order; `partitions` sends the n-th input to another partition than its key's."""
    producer = create_input_producer(settings)
    try:
        for n, item in enumerate(inputs):
            partition = (partitions or {}).get(n)
            topic = settings.topic(item.topic)
            producer.send(topic, key=item.key, value=item.value, partition=partition)
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="module")
def published(
    settings: Settings, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The disordered province on topics of its own, published once for the module."""
    folder = tmp_path_factory.mktemp("replay-kafka")
    with isolated_run(settings, f"sqlite:///{folder / 'unused.db'}", folder, "rk") as isolated:
        inputs = province(300, seed=23)
        expected = Counter(i.expected for i in inputs)
        assert expected["duplicate"] > 10 and expected["malformed"] > 3 and expected["schema"] > 3
        publish(isolated, disorder(inputs))
        # Unsigned senders: `disorder` rewrites some inputs' bytes, which a signature would no
        # longer cover (signed replays are tests/integration/test_forgery.py's and the parallel
        # database replay's); the registry is the fixtures' and the province's, without keys.
        yield replace(isolated, registry_files=str(ev.REGISTRY_FILE))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Callable[[str], str]:
    return lambda name: f"sqlite:///{tmp_path / name}.db"


def test_parallel_kafka_replay_rebuilds_the_serial_rows(
    published: Settings, sqlite_url: Callable[[str], str]
) -> None:
    options: dict[str, Any] = {"batch_size": 250, "notice_scan_limit": 3}
    serial = create_db_engine(sqlite_url("serial"))
    told: list[tuple[str, int, int]] = []
    report = replay_from_kafka(published, serial, progress=lambda *a: told.append(a), **options)
    assert report.workers == 1 and report.batches > 6
    assert told == [(FOLDED, n, report.batches) for n in range(1, report.batches + 1)]
    outcomes = report.outcomes
    assert outcomes["parked"] >= 5 and outcomes["duplicate"] > 5 and outcomes["dead_lettered"] > 10
    # Left parked: the input of the dossier never submitted, and those waiting behind an input of
    # their own dossier that was refused (a conflicting copy delivered first, which then makes
    # the right payment wrong: which dossiers the disorder does that to depends on the seed's
    # draws, and so on every simulated life before them).
    waiting = {row[2] for row in table_rows(serial, "parked_inputs")}
    never = {code for code in waiting if code.endswith("-9999")}
    with serial.connect() as connection:
        refused = {
            key.decode()
            for (key,) in connection.exec_driver_sql(
                "SELECT key FROM outbox WHERE topic = 'dossier.dlq' AND key IS NOT NULL"
            )
        }
    assert len(never) == 1 and waiting - never <= refused
    outbox = Counter(row[1] for row in table_rows(serial, "outbox"))
    assert outbox["dossier.deadline"] > 10 and outbox["dossier.dlq"] >= outcomes["dead_lettered"]
    assert len(table_rows(serial, "consumer_positions")) == 4 * PARTITIONS
    for workers in (2, 3):
        rebuilt = create_db_engine(sqlite_url(f"parallel-{workers}"))
        told.clear()
        got = replay_from_kafka(
            published, rebuilt, workers=workers, progress=lambda *a: told.append(a), **options
        )
        folded = [(FOLDED, n, report.batches) for n in range(1, report.batches + 1)]
        merged = [(MERGED, n, 7) for n in range(1, 8)]  # 6 tables, then the outcomes
        assert told == folded + merged
        assert (got.inputs, got.batches, got.outcomes) == (
            report.inputs,
            report.batches,
            report.outcomes,
        )
        assert (got.workers, got.warnings) == (workers, [])
        assert_same_rows(rebuilt, serial)
        assert verify(rebuilt).findings == []
        assert compare(rebuilt, serial).ok
        rebuilt.dispose()
    serial.dispose()


def test_the_command_line_replays_kafka_in_workers(
    published: Settings, sqlite_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the service's scan limit and batch size, through `dossier replay`, more workers
    than cores, and `--since` before the first record (the same offsets as from the start).
    The notices differ from those with a limit of 3, so the test above did exercise it."""
    serial = create_db_engine(sqlite_url("serial"))
    replay_from_kafka(published, serial, batch_size=250)
    limited = create_db_engine(sqlite_url("limited"))
    replay_from_kafka(published, limited, batch_size=250, notice_scan_limit=3)
    assert table_rows(serial, "outbox") != table_rows(limited, "outbox")
    limited.dispose()
    monkeypatch.setenv("DOSSIER_TOPIC_PREFIX", published.topic_prefix)
    monkeypatch.setenv("DOSSIER_REGISTRY_FILES", published.registry_files)
    into = sqlite_url("cli")
    args = ["replay", "--source", "kafka", "--into", into, "--batch-size", "250"]
    since = ["--since", "2020-01-01T00:00:00+07:00"]
    assert cli([*args, "--workers", "3", *since]) == 0
    rebuilt = create_db_engine(into)
    assert_same_rows(rebuilt, serial)
    rebuilt.dispose()
    serial.dispose()


def test_parallel_kafka_replay_into_postgresql(
    published: Settings, pg_schemas: Callable[[], str]
) -> None:
    options: dict[str, Any] = {"batch_size": 400, "notice_scan_limit": 5}
    serial = create_db_engine(pg_schemas())
    replay_from_kafka(published, serial, **options)
    rebuilt = create_db_engine(pg_schemas())
    replay_from_kafka(published, rebuilt, workers=2, **options)
    assert_same_rows(rebuilt, serial)
    assert verify(rebuilt).findings == []
    serial.dispose()
    rebuilt.dispose()


def test_inputs_not_co_partitioned_are_replayed_serially(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """One input sent to a partition of the other worker than its dossier's: the parallel
    result is discarded, the replay runs serially and says why."""
    inputs = province(40, seed=29)
    n, moved = next(
        (n, i)
        for n, i in enumerate(inputs)
        if i.topic == "dossier.commune" and i.dossier is not None and i.key is not None
    )
    assert moved.key is not None
    home = (murmur2(moved.key) & 0x7FFFFFFF) % PARTITIONS  # the default partitioner's
    elsewhere = 1 if home % 2 == 0 else 0  # with 2 workers: {0, 2} and {1}
    with isolated_run(settings, f"sqlite:///{tmp_path / 'unused.db'}", tmp_path, "rkx") as run:
        publish(run, inputs, {n: elsewhere})
        serial = create_db_engine(f"sqlite:///{tmp_path / 'serial.db'}")
        replay_from_kafka(run, serial, batch_size=100)
        rebuilt = create_db_engine(f"sqlite:///{tmp_path / 'parallel.db'}")
        report = replay_from_kafka(run, rebuilt, batch_size=100, workers=2)
    assert report.workers == 1
    assert len(report.warnings) == 1 and "not co-partitioned" in report.warnings[0]
    assert f"dossier {moved.dossier} " in report.warnings[0]
    assert_same_rows(rebuilt, serial)
    serial.dispose()
    rebuilt.dispose()
