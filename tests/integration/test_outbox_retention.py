"""The database's copy of a sent dead letter (its bytes may hold personal data) is deleted once
its retention has passed; unsent messages, and sent messages of other topics, are kept."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.application.ports import ChangeSet, OutboxMessage
from engine.events import DLQ_TOPIC, STATUS_TOPIC
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from producers.relay import OutboxRelay

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
KEEP = timedelta(days=7)


def memory() -> Callable[[], Any]:
    store = InMemoryStore()
    return lambda: InMemoryUnitOfWork(store)


def sqlite(tmp_path: Path) -> Callable[[], Any]:
    db = create_db_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    upgrade(db)
    return lambda: SqlUnitOfWork(db, writes=True)


@pytest.fixture(params=["memory", "sqlite"])
def uow(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    return memory() if request.param == "memory" else sqlite(tmp_path)


def message(topic: str, n: int) -> OutboxMessage:
    return OutboxMessage(topic, b"D-1", b"value %d" % n, f"{topic}/{n}", NOW - timedelta(days=30))


def test_only_sent_dead_letters_past_retention_are_deleted(uow: Callable[[], Any]) -> None:
    messages = [message(DLQ_TOPIC, n) for n in range(4)] + [message(STATUS_TOPIC, 9)]
    with uow() as w:
        w.repo.write(ChangeSet(outbox=messages))
        w.commit()
    with uow() as w:
        stored = {m.message_id: m.id for m in w.repo.unsent_outbox(100)}
        sent_long_ago = [
            stored[f"{DLQ_TOPIC}/0"],
            stored[f"{DLQ_TOPIC}/1"],
            stored[f"{STATUS_TOPIC}/9"],
        ]
        w.repo.mark_sent(sent_long_ago, NOW - KEEP - timedelta(seconds=1))
        w.repo.mark_sent([stored[f"{DLQ_TOPIC}/2"]], NOW - KEEP + timedelta(hours=1))
        w.commit()
    relay = OutboxRelay(uow, None, str, retention={DLQ_TOPIC: KEEP})  # type: ignore[arg-type]
    assert relay.purge_expired(NOW, chunk=1) == 2  # chunks: each in its own transaction
    assert relay.purge_expired(NOW) == 0
    with uow() as w:
        left = {m.message_id for m in w.repo.unsent_outbox(100)}
        assert left == {f"{DLQ_TOPIC}/3"}  # unsent: still needed by the relay
        assert w.repo.purge_sent(DLQ_TOPIC, NOW + KEEP, 100) == 1  # the recent one, later
        assert w.repo.purge_sent(STATUS_TOPIC, NOW + KEEP, 100) == 1  # when asked for


def test_a_relay_without_retention_deletes_nothing(uow: Callable[[], Any]) -> None:
    with uow() as w:
        w.repo.write(ChangeSet(outbox=[message(DLQ_TOPIC, 1)]))
        w.commit()
    with uow() as w:
        w.repo.mark_sent([m.id for m in w.repo.unsent_outbox(10)], NOW - timedelta(days=365))
        w.commit()
    assert OutboxRelay(uow, None, str).purge_expired(NOW) == 0  # type: ignore[arg-type]
