"""Contract 1.1, "Poison", at the runtime level: a batch in which one input makes processing fail
with a non-infrastructure exception (in the engine, or only when the batch is written) is not
retried for ever and does not end the process: that input is dead-lettered `internal-error` with
its bytes, every other input of the batch is applied, and the runtime goes on with the next
batch. Against a real database (a SQLite file, and PostgreSQL when deploy/ started it).

Also the start-up check: `dossier run` refuses a database whose dossiers are pinned to workflow
versions the catalogue no longer has (exit 2, naming each version and how many dossiers it holds).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dossier.composition import Runtime
from dossier.settings import Settings
from dossier.tools.supervision import settings_env
from engine.application.commit import COMMIT_ATTEMPTS
from engine.application.ports import ChangeSet, Position
from engine.application.service import BatchResult, RawInput
from engine.decider import Decider
from engine.dossier import Applied, Decision, Dossier, evolve
from engine.events import InboundEvent
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.fixtures import events as ev
from tests.integration.conftest import isolated_run

AGENCY = ev.COMMUNE_AGENCY
SUBMISSION = "dossier.submission"
COMMUNE = "dossier.commune"
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_schema")
    return url


@pytest.fixture
def runtime(settings: Settings, database_url: str) -> Iterator[Runtime]:
    local = replace(
        settings,
        database_url=database_url,
        metrics_port=0,
        topic_prefix="",
        consumer_group="poison-isolation",
    )
    created = Runtime.create(local)
    yield created
    created.close()


class Feed:
    """RawInputs with increasing offsets per topic (partition 0), keyed by their subject."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def __call__(self, topic: str, event: dict[str, Any]) -> RawInput:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        key = str(event["subject"]).encode()
        return RawInput(topic, Position(topic, 0, offset), key, ev.to_bytes(event))


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()` on a daemon thread: a batch retried for ever fails the test instead of hanging
    it (and the interpreter's exit)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(
            f"the batch was still being processed after {seconds:.0f} s (retried for ever?)"
        )
    if "error" in box:
        raise AssertionError(
            f"Runtime.process raised {type(box['error']).__name__}: {box['error']}"
        ) from box["error"]
    result: T = box["result"]
    return result


class RaisingEngine(Decider):
    """The runtime's engine, except that applying one event id raises."""

    def __init__(self, inner: Decider, poison_id: str) -> None:
        super().__init__(inner.catalogue, inner.calendar)
        self.poison_id = poison_id
        self.calls = 0

    def apply(self, dossier: Dossier | None, event: InboundEvent) -> Decision:
        if event.id == self.poison_id:
            self.calls += 1
            raise TypeError("engine bug triggered by this input")
        return super().apply(dossier, event)


class UnstorableEngine(Decider):
    """Decides one event id like the real engine, outputs included, but hands back a dossier the
    store cannot write: the batch fails only when it is flushed, not while it is applied."""

    def __init__(self, inner: Decider, poison_id: str, how: str) -> None:
        super().__init__(inner.catalogue, inner.calendar)
        self.poison_id = poison_id
        self.how = how
        self.calls = 0

    def apply(self, dossier: Dossier | None, event: InboundEvent) -> Decision:
        decision = super().apply(dossier, event)
        if event.id != self.poison_id or not isinstance(decision, Applied):
            return decision
        self.calls += 1
        if self.how == "integer-overflow":  # no database integer column holds 2^70
            bad = evolve(decision.dossier, channel=2**70)
        else:  # the snapshot cannot be written as JSON
            bad = evolve(decision.dossier, outcome=object())
        return Applied(bad, decision.outputs, decision.previous_state)


def batch_with_poison(feed: Feed, poison_id: str) -> list[RawInput]:
    """Three dossiers submitted and received; the second dossier's submission is the poison."""
    inputs: list[RawInput] = []
    for n in (1, 2, 3):
        code = f"{AGENCY}-250303-{n:04d}"
        inputs.append(
            feed(
                SUBMISSION,
                ev.submitted(
                    procedure="1.001193",
                    dossier=code,
                    time=f"2025-03-03T08:0{n}:00+07:00",
                    id=poison_id if n == 2 else None,
                ),
            )
        )
    for n in (1, 2, 3):
        code = f"{AGENCY}-250303-{n:04d}"
        inputs.append(feed(COMMUNE, ev.received(dossier=code, time=f"2025-03-03T09:0{n}:00+07:00")))
    return inputs


def outbox(runtime: Runtime) -> list[Any]:
    with SqlUnitOfWork(runtime.db) as uow:
        return uow.repo.unsent_outbox(100_000)


def statuses(runtime: Runtime, code: str) -> list[int]:
    return [
        json.loads(m.value)["data"]["status_code"]
        for m in outbox(runtime)
        if m.topic == "dossier.status" and json.loads(m.value)["subject"] == code
    ]


def letters(runtime: Runtime) -> list[dict[str, Any]]:
    return [json.loads(m.value)["data"] for m in outbox(runtime) if m.topic == "dossier.dlq"]


def check_isolated(
    runtime: Runtime, inputs: list[RawInput], result: BatchResult, poison: RawInput, error: str
) -> None:
    assert sum(result.outcomes.values()) == len(inputs), result.outcomes
    [letter] = letters(runtime)
    assert letter["reason"] == "internal-error", letter["detail"]
    assert error in letter["detail"]
    assert base64.b64decode(letter["original"]["value_base64"]) == poison.value
    assert letter["original"]["offset"] == poison.position.offset
    assert statuses(runtime, f"{AGENCY}-250303-0001") == [1, 2]
    assert statuses(runtime, f"{AGENCY}-250303-0003") == [1, 2]
    poisoned = f"{AGENCY}-250303-0002"
    assert statuses(runtime, poisoned) == []
    with SqlUnitOfWork(runtime.db) as uow:
        assert poisoned not in uow.repo.load_dossiers([poisoned])
        # Its reception waits for a submission that was set aside; the rest is committed.
        assert [p.dossier_code for p in uow.repo.parked_for([poisoned])] == [poisoned]
        assert uow.repo.load_positions(runtime.settings.consumer_group) == {
            (SUBMISSION, 0): 3,
            (COMMUNE, 0): 3,
        }
        assert uow.repo.get_clock() is not None


def check_goes_on(runtime: Runtime, feed: Feed) -> None:
    """The next batch, with a legitimate dossier, applies as usual."""
    code = f"{AGENCY}-250304-0001"
    inputs = [
        feed(
            SUBMISSION,
            ev.submitted(procedure="1.001193", dossier=code, time="2025-03-04T08:00:00+07:00"),
        ),
        feed(COMMUNE, ev.received(dossier=code, time="2025-03-04T09:00:00+07:00")),
    ]
    result = within(60, lambda: runtime.process(inputs, failures_allowed=COMMIT_ATTEMPTS - 1))
    assert result.count("applied") == 2
    assert statuses(runtime, code) == [1, 2]


def test_an_input_the_engine_raises_on_is_dead_lettered_and_the_batch_goes_on(
    runtime: Runtime,
) -> None:
    feed = Feed()
    inputs = batch_with_poison(feed, "poison-apply")
    engine = RaisingEngine(runtime.decider, "poison-apply")
    runtime.processor.decider = engine
    result = within(120, lambda: runtime.process(inputs, failures_allowed=COMMIT_ATTEMPTS - 1))
    check_isolated(runtime, inputs, result, inputs[1], "TypeError")
    assert 1 <= engine.calls <= 10
    check_goes_on(runtime, feed)


@pytest.mark.parametrize("how", ["integer-overflow", "unserialisable-snapshot"])
def test_an_input_whose_batch_fails_only_when_written_is_found_and_set_aside(
    runtime: Runtime, how: str
) -> None:
    """The failure shows only at the flush, for the whole batch: the runtime must find the input
    it follows (by halving the batch) instead of retrying the batch or ending the process."""
    feed = Feed()
    inputs = batch_with_poison(feed, "poison-flush")
    engine = UnstorableEngine(runtime.decider, "poison-flush", how)
    runtime.processor.decider = engine
    started = time.monotonic()
    result = within(120, lambda: runtime.process(inputs, failures_allowed=COMMIT_ATTEMPTS - 1))
    check_isolated(runtime, inputs, result, inputs[1], "")
    [letter] = letters(runtime)
    assert re.search(r"\w+(Error|Exception)\b", letter["detail"]), letter["detail"]
    # Found by halving: a handful of tries, not one per retry for ever (nor the pauses of
    # retries meant for a database that restarts).
    assert 2 <= engine.calls <= 2 * len(inputs)
    assert time.monotonic() - started < 30
    check_goes_on(runtime, feed)


# --------------------------------------------------------------------------- start-up


def test_dossier_run_refuses_dossiers_pinned_to_versions_the_catalogue_lacks(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'pinned.db'}"
    with isolated_run(settings, url, tmp_path, "pinned") as isolated:
        prepared = Runtime.create(isolated)
        try:
            feed = Feed()
            pinned = {f"{AGENCY}-250303-{n:04d}": "1.001193" for n in (1, 2, 3)}
            pinned[f"{AGENCY}-250303-0004"] = "1.004222"
            kept = f"{AGENCY}-250303-0005"
            inputs = [
                feed(
                    SUBMISSION,
                    ev.submitted(
                        procedure=procedure, dossier=code, time="2025-03-03T08:00:00+07:00"
                    ),
                )
                for code, procedure in [*pinned.items(), (kept, "1.001193")]
            ]
            assert prepared.process(inputs).count("applied") == 5
            versions = {"1.001193": 99, "1.004222": 98}
            with SqlUnitOfWork(prepared.db, writes=True) as uow:
                stored = uow.repo.load_dossiers(pinned)
                changed = [
                    replace(
                        s,
                        dossier=evolve(s.dossier, workflow_version=versions[s.dossier.procedure]),
                    )
                    for s in stored.values()
                ]
                uow.repo.write(ChangeSet(dossiers=changed))
                uow.commit()
        finally:
            prepared.close()

        dossier_cli = Path(sys.executable).with_name("dossier")
        env = {**os.environ, **settings_env(isolated)}
        completed = subprocess.run(
            [str(dossier_cli), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output

    def names(procedure: str, version: int, count: int) -> bool:
        pattern = rf"{re.escape(procedure)}\D*(?<!\d){version}(?!\d)\D*(?<!\d){count}(?!\d)"
        return any(re.search(pattern, line) for line in output.splitlines())

    assert names("1.001193", 99, 3), output
    assert names("1.004222", 98, 1), output
    # Nothing was consumed: the engine did not start.
    db = create_db_engine(url)
    try:
        with SqlUnitOfWork(db) as uow:
            assert uow.repo.load_positions(isolated.consumer_group) == {(SUBMISSION, 0): 5}
    finally:
        db.dispose()
