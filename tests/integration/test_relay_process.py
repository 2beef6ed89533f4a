"""The outbox relay's child process against real Kafka: it publishes what is committed, is
restarted when it dies, and dies with the engine when the engine is killed."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dossier.composition import relay_for_child
from dossier.settings import Settings
from dossier.tools.workload import read_topic
from engine.application.ports import ChangeSet, OutboxMessage
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from producers.relay_process import RelayProcess
from tests.integration.conftest import isolated_run

ROOT = Path(__file__).resolve().parents[2]


def _add_outputs(url: str, first: int, count: int) -> None:
    db = create_db_engine(url)
    now = datetime.now(UTC)
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(
            ChangeSet(
                outbox=[
                    OutboxMessage(
                        "dossier.status", b"D-%d" % i, b'{"n": %d}' % i, f"status/{i}", now
                    )
                    for i in range(first, first + count)
                ]
            )
        )
        uow.commit()
    db.dispose()


def _until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped by its parent, which is gone too.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_child_publishes_reports_and_is_restarted_when_it_dies(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(create_db_engine(url))
    reported: list[tuple[int | None, str]] = []

    def on_published(rows: Sequence[tuple[int | None, str]], at: float) -> None:
        assert at <= time.monotonic()  # the child's clock is this one's: one monotonic clock
        reported.extend(rows)

    with isolated_run(settings, url, tmp_path, "relayproc") as run:
        relay = RelayProcess(functools.partial(relay_for_child, run), on_published)
        relay.start()
        try:
            _add_outputs(url, 0, 50)
            relay.set()
            _until(lambda: len(reported) == 50)
            first_pid = relay.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            _until(lambda: relay.restarts == 1 and relay.pid != first_pid)
            _add_outputs(url, 50, 25)
            relay.set()
            _until(lambda: len(reported) == 75)
        finally:
            relay.stop()
        assert sorted(i for i, _ in reported) == list(range(1, 76))
        assert {topic for _, topic in reported} == {"dossier.status"}
        records = read_topic(run, run.topic("dossier.status"), expect=75)
        assert sorted(r.key for r in records) == sorted(b"D-%d" % i for i in range(75))


CHILD = """
import sys, time
from dataclasses import replace
from functools import partial
from dossier.composition import relay_for_child
from dossier.settings import Settings
from producers.relay_process import RelayProcess
settings = replace(Settings.from_env(), database_url=sys.argv[1])
relay = RelayProcess(partial(relay_for_child, settings))
relay.start()
print(relay.pid, flush=True)
time.sleep(120)
"""


def test_child_dies_when_the_engine_is_killed(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(create_db_engine(url))
    engine = subprocess.Popen(
        [sys.executable, "-c", CHILD, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert engine.stdout is not None
        child_pid = int(engine.stdout.readline())
        assert _alive(child_pid)
        engine.kill()  # SIGKILL: the engine cannot tell its child anything
        engine.wait(10)
        _until(lambda: not _alive(child_pid), timeout_s=10)
    finally:
        if engine.poll() is None:
            engine.kill()


def test_of_two_engines_one_relay_publishes_and_the_other_takes_over(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(create_db_engine(url))
    reported: dict[str, list[int | None]] = {"a": [], "b": []}

    def reporter(name: str) -> Callable[[Sequence[tuple[int | None, str]], float], None]:
        return lambda rows, _: reported[name].extend(i for i, _ in rows)

    with isolated_run(settings, url, tmp_path, "relaylease") as run:
        assemble = functools.partial(relay_for_child, run)
        a, b = RelayProcess(assemble, reporter("a")), RelayProcess(assemble, reporter("b"))
        a.start()
        b.start()
        try:
            _add_outputs(url, 0, 40)
            a.set()
            b.set()
            _until(lambda: len(reported["a"]) + len(reported["b"]) == 40)
            leader = "a" if reported["a"] else "b"
            assert not reported["b" if leader == "a" else "a"]  # the other stood by
            (a if leader == "a" else b).stop()  # the leader's engine stops: its lease goes
            _add_outputs(url, 40, 10)
            a.set()
            b.set()
            _until(lambda: len(reported["a"]) + len(reported["b"]) == 50)
        finally:
            a.stop()
            b.stop()
        assert sorted(reported["a"] + reported["b"]) == list(range(1, 51))
        records = read_topic(run, run.topic("dossier.status"), expect=50)
        assert len(records) == 50
