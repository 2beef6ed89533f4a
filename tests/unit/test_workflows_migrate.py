"""`dossier workflows migrate --plan FILE --dry-run` on a real SQLite database: what a plan
would move and refuse among the open dossiers, and the exit codes a script can stop on."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dossier.cli import main as cli_main
from dossier.tools.simulation import ProvinceProfile, Workload
from engine.application.ports import ChangeSet, Position, StoredDossier
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import VN_TZ, WorkingCalendar
from engine.decider import Decider
from engine.dossier import Dossier
from engine.procedures import default_workflows_dir, load_catalogue
from engine.registry import load_registry, registry_files
from engine.store import queries
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from engine.store.tables import dossiers
from schemas.codec import ContractCodec
from tests.store_contract import make_dossier

REFERENCE_PLAN = default_workflows_dir() / "migrations" / "reference.yaml"
BEFORE_CUTOVER = datetime(2025, 6, 30, 9, 0, tzinfo=UTC)  # 16:00 in Hà Nội, 30 June
AFTER_CUTOVER = datetime(2025, 6, 30, 17, 0, tzinfo=UTC)  # 00:00 in Hà Nội, 1 July
AGENCY = "000.00.19.H56"
STATES = {  # state: (status code, level) of DD.GCN.LD v1
    "verifying": (4, "commune"),
    "upper_processing": (4, "district"),
    "upper_resolved": (9, "district"),
    "returned": (10, "commune"),
}


def land_dossier(number: int, state: str, *, version: int = 1, final: bool = False) -> Dossier:
    status, level = STATES[state]
    return make_dossier(
        f"{AGENCY}-250601-{number:04d}",
        procedure="DD.GCN.LD",
        workflow_version=version,
        group="inter-level",
        state=state,
        status_code=status,
        level="province" if version == 2 and level == "district" else level,
        final=final,
        fees={"LP-GCN": 100000},
        discounts={},
    )


VERIFYING = [land_dossier(n, "verifying") for n in (1, 2)]
UPPER = [land_dossier(3, "upper_processing")]
RESOLVED = [land_dossier(n, "upper_resolved") for n in range(10, 22)]  # 12: ten shown
CLOSED = land_dossier(30, "returned", final=True)
ON_V2 = land_dossier(40, "upper_processing", version=2)


def write_database(url: str, clock: datetime | None) -> None:
    db = create_db_engine(url)
    try:
        upgrade(db)
        everything = [*VERIFYING, *UPPER, *RESOLVED, CLOSED, ON_V2]
        with SqlUnitOfWork(db) as uow:
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 0, None) for d in everything]))
            if clock is not None:
                uow.repo.write(ChangeSet(clock=clock))
            uow.commit()
    finally:
        db.dispose()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    write_database(url, BEFORE_CUTOVER)
    monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
    return url


def plan_file(tmp_path: Path, *, leave_out: str = "", **replace: str) -> Path:
    """The reference plan of DD.GCN.LD, less one state's line, with fields replaced."""
    text = REFERENCE_PLAN.read_text(encoding="utf-8")
    if leave_out:
        line = f"      {leave_out}: {leave_out}\n"
        assert line in text
        text = text.replace(line, "")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def migrate(*args: str) -> int:
    return cli_main(["workflows", "migrate", *args])


def test_a_plan_that_maps_every_open_state_moves_them_all(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate("--plan", str(REFERENCE_PLAN), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "DD.GCN.LD v1 -> v2, effective 2025-07-01 (cutover 2025-07-01T00:00:00+07:00)" in out
    assert "would move 15 open dossier(s):" in out
    assert "    verifying -> verifying: 2\n" in out
    assert "    upper_processing -> upper_processing: 1\n" in out
    assert "    upper_resolved -> upper_resolved: 12\n" in out
    assert "would refuse none" in out
    # The closed dossier is not counted, the one on version 2 only mentioned.
    assert CLOSED.code not in out
    assert "(1 open dossier(s) already on version 2)" in out
    assert out.rstrip().endswith(
        "total: 15 open dossier(s) would move, 0 would be refused, by 1 plan(s)"
    )


def test_dossiers_in_a_state_the_plan_leaves_out_are_refused_and_named(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_file(tmp_path, leave_out="upper_resolved")
    assert migrate("--plan", str(plan), "--dry-run") == 1
    out = capsys.readouterr().out
    assert "would move 3 open dossier(s):" in out
    assert "upper_resolved -> upper_resolved" not in out
    assert (
        "would refuse 12 open dossier(s) in states the plan does not map: they would stay "
        "whole on version 1" in out
    )
    shown = ", ".join(d.code for d in RESOLVED[:10])
    assert f"    upper_resolved: 12: {shown} … and 2 more\n" in out
    assert RESOLVED[10].code not in out and RESOLVED[11].code not in out
    assert "total: 3 open dossier(s) would move, 12 would be refused, by 1 plan(s)" in out
    # Codes and states only: nothing of the applicant.
    assert "citizen" not in out


def test_the_business_clock_against_the_cutover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, clock, said in [
        ("none", None, "the database has no business clock yet"),
        ("before", BEFORE_CUTOVER, "(2025-06-30T16:00:00+07:00): it has not passed the cutover"),
        ("after", AFTER_CUTOVER, "(2025-07-01T00:00:00+07:00): it has passed the cutover"),
    ]:
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        write_database(url, clock)
        monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
        assert migrate("--plan", str(REFERENCE_PLAN), "--dry-run") == 0
        out = capsys.readouterr().out
        assert said in out, out
        if clock is not None:
            assert "the engine applies this plan by the business clock" in out


def test_the_clock_of_each_partition_against_the_cutover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine moves a dossier by its own partition's clock: the dry run says how many
    partitions have passed the cutover, and where the slowest stands."""
    url = f"sqlite:///{tmp_path / 'partitions.db'}"
    db = create_db_engine(url)
    try:
        upgrade(db)
        stored = [
            StoredDossier(replace(d, last_event_at=at), 0, None, partition=p)
            for d, at, p in [
                (VERIFYING[0], AFTER_CUTOVER, 0),
                (VERIFYING[1], BEFORE_CUTOVER, 1),
                (UPPER[0], AFTER_CUTOVER, 2),
            ]
        ]
        with SqlUnitOfWork(db) as uow:
            uow.repo.write(ChangeSet(dossiers=stored, clock=AFTER_CUTOVER))
            uow.commit()
    finally:
        db.dispose()
    monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
    assert migrate("--plan", str(REFERENCE_PLAN), "--dry-run") == 0
    out = capsys.readouterr().out
    assert (
        "by each partition's business clock: 2 of 3 partition(s) have passed the cutover "
        "(the slowest is at 2025-06-30T16:00:00+07:00)"
    ) in out, out


def test_without_dry_run_nothing_changes_and_it_says_how_plans_apply(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = create_db_engine(database)
    try:
        with db.connect() as connection:
            before = connection.execute(select(dossiers).order_by(dossiers.c.code)).all()
        assert migrate("--plan", str(REFERENCE_PLAN)) == 2
        err = capsys.readouterr().err
        assert "workflows/migrations/" in err and "business time" in err and "--dry-run" in err
        with db.connect() as connection:
            assert connection.execute(select(dossiers).order_by(dossiers.c.code)).all() == before
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("replace", "field", "message"),
    [
        (
            {"      verifying: verifying\n": "      verifying: nowhere\n"},
            "plans[0].states.verifying",
            "no state 'nowhere' in version 2",
        ),
        (
            {"      verifying: verifying\n": "      nowhere: verifying\n"},
            "plans[0].states.nowhere",
            "no state 'nowhere' in version 1",
        ),
        ({"to_version: 2": "to_version: 3"}, "plans[0].to_version", "has no version 3"),
        (
            {"levels: {district: province}": "levels: {district: county}"},
            "plans[0].levels.district",
            "'county' is not a level of version 2",
        ),
    ],
)
def test_an_invalid_plan_names_its_file_and_field(
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    replace: dict[str, str],
    field: str,
    message: str,
) -> None:
    plan = plan_file(tmp_path, **replace)
    assert migrate("--plan", str(plan), "--dry-run") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: {plan}: {field}: " in captured.err and message in captured.err, captured.err


def test_a_missing_plan_file_is_invalid(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert migrate("--plan", str(missing), "--dry-run") == 2
    assert f"error: {missing}: cannot read YAML" in capsys.readouterr().err


def test_two_plans_for_one_version_in_the_file_are_invalid(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = REFERENCE_PLAN.read_text(encoding="utf-8")
    plans = text[text.index("  - procedure:") :]
    plan = tmp_path / "twice.yaml"
    plan.write_text(text + plans, encoding="utf-8")
    assert migrate("--plan", str(plan), "--dry-run") == 2
    assert "a second plan for version 1" in capsys.readouterr().err


def test_a_plan_file_may_be_written_by_hand(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "small.yaml"
    plan.write_text(
        textwrap.dedent(
            """\
            plans:
              - procedure: DD.GCN.LD
                from_version: 1
                to_version: 2
                effective: 2025-07-01
                basis: "illustrative"
                states: {verifying: verifying}
                levels: {district: province}
            """
        ),
        encoding="utf-8",
    )
    assert migrate("--plan", str(plan), "--dry-run") == 1
    out = capsys.readouterr().out
    assert "would move 2 open dossier(s):" in out
    assert f"    upper_processing: 1: {UPPER[0].code}\n" in out
    assert "total: 2 open dossier(s) would move, 13 would be refused" in out


def test_the_dry_run_predicts_exactly_what_the_engine_then_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A simulated fortnight of the province across 1 July, in time order: applied up to the
    cutover, the dry run of the shipped plans counts per plan what would move; the rest applied,
    the engine's migration entries are exactly those, plan by plan."""
    catalogue = load_catalogue()
    messages = Workload(
        catalogue,
        WorkingCalendar.load(),
        seed=619,
        start=datetime(2025, 6, 23, tzinfo=VN_TZ),
        end=datetime(2025, 7, 4, tzinfo=VN_TZ),
        dossiers=600,
        profile=ProvinceProfile.load(),
        signing_keys={},
    ).messages()
    cutover = datetime(2025, 7, 1, tzinfo=VN_TZ)
    url = f"sqlite:///{tmp_path / 'month.db'}"
    db = create_db_engine(url)
    upgrade(db)
    registry = load_registry(registry_files())
    processor = BatchProcessor(
        Decider(catalogue, WorkingCalendar.load(), registry),
        ContractCodec(),
        ServiceConfig("urn:test:engine", "dry-run", parked_ttl=timedelta(days=7)),
    )
    inputs = [
        RawInput(m.topic, Position(m.topic, 0, offset), m.key, m.value)
        for offset, m in enumerate(messages)
    ]
    before = [raw for raw, m in zip(inputs, messages, strict=True) if m.time < cutover]
    after = inputs[len(before) :]
    assert before and after and all(m.time >= cutover for m in messages[len(before) :])
    for chunk in (before[i : i + 500] for i in range(0, len(before), 500)):
        processor.process(SqlUnitOfWork(db, writes=True), chunk)

    monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
    predicted: Counter[str] = Counter()
    for plans in ("thai-nguyen.yaml", "reference.yaml"):
        assert migrate("--plan", str(REFERENCE_PLAN.parent / plans), "--dry-run") == 0
        procedure = ""
        for line in capsys.readouterr().out.splitlines():
            if " v1 -> v2, effective " in line:
                procedure = line.split()[0]
            elif line.startswith("  would move "):
                predicted[procedure] += int(line.split()[2])
    assert sum(predicted.values()) > 20

    for chunk in (after[i : i + 500] for i in range(0, len(after), 500)):
        processor.process(SqlUnitOfWork(db, writes=True), chunk)
    with db.connect() as connection:
        made = Counter(m.procedure for m in queries.migrations(connection))
    db.dispose()
    assert made == +predicted
