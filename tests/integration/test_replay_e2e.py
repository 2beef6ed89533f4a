"""A long mixed stream run live through the real engine process, then replayed from Kafka
(serially and in 2 workers) and from the database into fresh databases: all verify with zero
differences, and the live history's hash chains verify against the checkpoint the engine
wrote."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_db, replay_from_kafka
from dossier.replay.serial import compare
from dossier.settings import Settings
from dossier.tools.simulation import Workload
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import create_input_producer, publish, read_topic
from engine.calendar import WorkingCalendar
from engine.events import AUDIT_CHECKPOINT_TOPIC
from engine.procedures import load_catalogue
from engine.store.audit import verify, write_checkpoint
from engine.store.sql import create_db_engine
from schemas.codec import encode_outbound
from tests.integration.conftest import isolated_run
from tests.integration.test_replay_parallel import assert_same_rows


@pytest.fixture
def live_settings(
    settings: Settings, kafka_bootstrap: str, pg_schema: str, tmp_path: Path
) -> Iterator[Settings]:
    with isolated_run(settings, pg_schema, tmp_path, "replay") as isolated:
        yield isolated


def test_live_run_replays_from_kafka_and_db_with_zero_differences(
    live_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=606,
        # Across the 2025-07-01 cutover: DD.GCN.LD runs v1 (district) and v2 (province).
        start=datetime.fromisoformat("2025-06-02T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-07-25T00:00:00+07:00"),
        dossiers=400,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.03,
        bad_share=0.02,
        reorder_share=0.08,
    ).messages()
    expected = Counter(m.expected for m in messages)
    assert expected["duplicate"] > 10 and len(expected) > 3  # duplicates and bad inputs in it
    producer = create_input_producer(live_settings)
    publish(producer, messages, live_settings.topic)
    producer.close()

    with EngineProcess(live_settings, tmp_path / "engine.log") as engine:
        wait_caught_up(live_settings, 120, engine)
    live = create_db_engine(live_settings.database_url)
    try:
        assert write_checkpoint(live, live_settings.engine_source, encode_outbound) is not None
        # The engine process's own periodic checkpoint went out through its outbox relay.
        published = read_topic(
            live_settings,
            live_settings.topic(AUDIT_CHECKPOINT_TOPIC),
            timeout_s=5,
        )
        assert published and json.loads(published[0].value)["data"]["root"]

        from_kafka = create_db_engine(f"sqlite:///{tmp_path / 'from-kafka.db'}")
        report = replay_from_kafka(live_settings, from_kafka)
        assert report.inputs == len(messages)
        assert report.outcomes.get("dead_lettered", 0) > 0
        result = compare(from_kafka, live)
        assert result.differences == [] and result.ok
        assert result.live > 300

        # In 2 workers (the run's 3 partitions split 2 + 1), the same rows as serially.
        from_kafka_2 = create_db_engine(f"sqlite:///{tmp_path / 'from-kafka-2.db'}")
        parallel = replay_from_kafka(live_settings, from_kafka_2, workers=2)
        assert (parallel.workers, parallel.warnings) == (2, [])
        assert compare(from_kafka_2, live).ok
        assert_same_rows(from_kafka_2, from_kafka)
        from_kafka_2.dispose()

        from_db = create_db_engine(f"sqlite:///{tmp_path / 'from-db.db'}")
        replay_from_db(live_settings, live, from_db)
        result = compare(from_db, live)
        assert result.differences == [] and result.ok

        assert verify(live).findings == []
        assert verify(from_kafka).findings == []

        # The command line says the same, and exits non-zero on a divergence.
        kafka_url = f"sqlite:///{tmp_path / 'from-kafka.db'}"
        args = ["replay", "--verify", "--into", kafka_url, "--against", live_settings.database_url]
        assert cli(args) == 0
        assert "differing 0" in capsys.readouterr().out
        with from_kafka.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE dossiers SET snapshot = json_set(snapshot, '$.due_at', NULL)"
                " WHERE code = (SELECT min(code) FROM dossiers WHERE due_at IS NOT NULL)"
            )
        assert cli(args) == 1
        out = capsys.readouterr().out
        assert "differing 1" in out and "due_at" in out
        from_kafka.dispose()
        from_db.dispose()
    finally:
        live.dispose()
