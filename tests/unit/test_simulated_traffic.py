"""The simulator's province stays legitimate under contract 1.1's rules: played through the
service layer with the registry (and the simulator's test keys), across the 2025-07-01 cutover,
every input ends as the simulator labelled it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from dossier.tools.generate_catalogue import SIMULATION_REGISTRY
from dossier.tools.simulation import Hostile, ProvinceProfile, SimulatedMessage, Workload
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import VN_TZ, WorkingCalendar
from engine.decider import Decider
from engine.history import Position
from engine.procedures import load_catalogue
from engine.registry import default_registry_file, load_registry
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec

CATALOGUE = load_catalogue()
CALENDAR = WorkingCalendar.load()
START = datetime(2025, 6, 24, tzinfo=VN_TZ)
END = datetime(2025, 7, 5, tzinfo=VN_TZ)


def played(
    messages: list[SimulatedMessage], processor: BatchProcessor
) -> tuple[Counter[str], Counter[str]]:
    """Each input's final outcome (applied, duplicate, parked, or its dead letter's reason), and
    the handovers the engine made by former → new level."""
    store = InMemoryStore()
    offsets: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    handovers: Counter[str] = Counter()
    for start in range(0, len(messages), 400):
        raws = []
        for m in messages[start : start + 400]:
            raws.append(
                RawInput(m.topic, Position(m.topic, 0, offsets[m.topic]), m.key, m.value, m.headers)
            )
            offsets[m.topic] += 1
        result = processor.process(InMemoryUnitOfWork(store), raws)
        for (_, outcome), n in result.settled.items():
            if outcome != "dead_lettered":
                outcomes[outcome] += n
        outcomes.update({f"dlq:{reason}": n for reason, n in result.dead_letters.items()})
        handovers.update({f"{a} → {b}": n for (a, b), n in result.handovers.items()})
    return outcomes, handovers


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(
        CATALOGUE,
        CALENDAR,
        seed=5,
        start=START,
        end=END,
        dossiers=300,
        duplicate_share=0.03,
        bad_share=0.03,
        reorder_share=0.1,
        hostile=Hostile.relative_to(0.03).with_share("forged-fee", 0.2),
        profile=ProvinceProfile.load(),
        until=END,
    )


@pytest.fixture(scope="module")
def messages(workload: Workload) -> list[SimulatedMessage]:
    return workload.messages()


@pytest.mark.parametrize("signed", [False, True], ids=["shipped registry", "with test keys"])
def test_every_simulated_input_ends_as_labelled(
    workload: Workload, messages: list[SimulatedMessage], signed: bool
) -> None:
    files = [default_registry_file(), *([SIMULATION_REGISTRY] if signed else [])]
    registry = load_registry(files)
    processor = BatchProcessor(
        Decider(CATALOGUE, CALENDAR, registry),
        ContractCodec(),
        ServiceConfig("urn:test", "test", timedelta(days=7)),
        verifier=registry if signed else None,
    )
    expected = Counter(m.expected for m in messages)
    outcomes, handovers = played(messages, processor)
    assert outcomes["parked"] == 0, outcomes
    assert outcomes["applied"] == expected.pop("valid")
    assert outcomes["duplicate"] == expected.pop("duplicate")
    letters = {k.removeprefix("dlq:"): n for k, n in outcomes.items() if k.startswith("dlq:")}
    assert letters == dict(expected)
    # The province's work crosses the cutover: district work before it, none after; the
    # districts' open dossiers handed over to their successor, exactly those the simulator
    # expected, whose inputs from the successor all applied (above).
    district = [m for m in messages if m.topic == "dossier.district" and m.expected == "valid"]
    assert district and all(
        m.time.astimezone(VN_TZ).date().isoformat() <= "2025-06-30" for m in district
    )
    assert handovers == workload.expected_handovers() != {}
    if signed:
        assert sum(1 for m in messages if m.headers) > 100
