"""Reveal is an act, recorded (issue #18, part 4): `audit show --reveal-personal-data` needs a
reason and appends who/when/why/which dossier to the chained `disclosures` table before
anything is shown; `audit disclosures` lists them; `audit verify` finds a record edited or
removed in SQL. On SQLite and PostgreSQL, with two recorders at once keeping one chain."""

from __future__ import annotations

import json
import logging
import os
import pwd
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from dossier.cli import main as cli
from engine.audit import CHANGED, DELETED, MISSING, REORDERED
from engine.disclosure import DISCLOSURE_GENESIS
from engine.store.disclosures import list_disclosures, record_disclosure, verify_disclosures
from engine.store.migrate import upgrade
from engine.store.sql import create_db_engine
from engine.store.tables import disclosures
from tests.fixtures import events as ev
from tests.integration.test_audit_trail import CODE, live_db

T0 = datetime(2025, 7, 1, 1, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'disclosures.db'}"
    pg: str = request.getfixturevalue("pg_schema")
    return pg


@pytest.fixture
def db(url: str) -> Iterator[Engine]:
    engine = create_db_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def writable(db: Engine) -> None:
    """Take away whatever keeps the table append-only (migration 0009's triggers), as someone
    with the database's owner role could: what is left to find them is the chain."""
    with db.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE disclosures DISABLE TRIGGER USER"))
        else:
            names = connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
                {"t": "disclosures"},
            ).scalars()
            for name in list(names):
                connection.execute(text(f'DROP TRIGGER IF EXISTS "{name}"'))


def record_three(db: Engine) -> None:
    for i, code in enumerate(["A-1", "B-2", "A-1"], start=1):
        record_disclosure(db, f"officer{i}", f"request {i}", code, T0 + timedelta(hours=i))


# --- the store ---------------------------------------------------------------------------------


def test_record_list_and_verify(db: Engine) -> None:
    assert list_disclosures(db) == [] and verify_disclosures(db) == []
    record_three(db)
    rows = list_disclosures(db)
    assert [(d.id, d.actor, d.reason, d.dossier_code) for d in rows] == [
        (1, "officer1", "request 1", "A-1"),
        (2, "officer2", "request 2", "B-2"),
        (3, "officer3", "request 3", "A-1"),
    ]
    assert rows[0].disclosed_at == T0 + timedelta(hours=1)
    assert rows[0].prev_hash == DISCLOSURE_GENESIS
    assert [d.prev_hash for d in rows[1:]] == [d.chain_hash for d in rows[:-1]]
    assert [d.id for d in list_disclosures(db, dossier="A-1")] == [1, 3]
    assert [d.id for d in list_disclosures(db, since=T0 + timedelta(hours=2))] == [2, 3]
    assert list_disclosures(db, dossier="B-2", since=T0 + timedelta(hours=3)) == []
    assert verify_disclosures(db) == []


def test_the_store_refuses_what_the_cli_would(db: Engine) -> None:
    with pytest.raises(ValueError, match="control character"):
        record_disclosure(db, "officer", "one\ntwo", "A-1", T0)
    with pytest.raises(ValueError, match="empty"):
        record_disclosure(db, " ", "why", "A-1", T0)
    assert list_disclosures(db) == []


@pytest.mark.parametrize(
    "tamper, finding",
    [
        ("UPDATE disclosures SET reason = 'routine' WHERE id = 2", ("disclosure 2", CHANGED)),
        ("DELETE FROM disclosures WHERE id = 2", ("disclosure 3", DELETED)),
        ("DELETE FROM disclosures WHERE id = 1", ("disclosure 2", DELETED)),
        ("UPDATE disclosures SET id = 4 - id WHERE id IN (1, 3)", ("disclosure 1", REORDERED)),
    ],
)
def test_tampering_in_sql_is_found(db: Engine, tamper: str, finding: tuple[str, str]) -> None:
    record_three(db)
    writable(db)
    with db.begin() as connection:
        if "id = 4 - id" in tamper:  # two steps: the primary key holds at every statement
            connection.execute(text("UPDATE disclosures SET id = id + 10 WHERE id IN (1, 3)"))
            tamper = "UPDATE disclosures SET id = 14 - id WHERE id IN (11, 13)"
        connection.execute(text(tamper))
    findings = verify_disclosures(db)
    assert (findings[0].dossier_code, findings[0].kind) == finding
    assert "dossier " in findings[0].detail


def test_a_dropped_table_is_a_finding(db: Engine) -> None:
    record_three(db)
    with db.begin() as connection:
        connection.execute(text("DROP TABLE disclosures"))
    (finding,) = verify_disclosures(db)
    assert (finding.dossier_code, finding.kind) == ("disclosures", MISSING)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_recorders_at_once_keep_one_chain(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'race.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_schema")
    )
    setup = create_db_engine(url)
    upgrade(setup)
    setup.dispose()
    each = 25
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def recorder(name: str) -> None:
        engine = create_db_engine(url)  # its own pool, as a second process would have
        try:
            start.wait()
            for i in range(each):
                record_disclosure(engine, name, f"reason {i}", f"D-{i}", datetime.now(UTC))
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=recorder, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    db = create_db_engine(url)
    try:
        rows = list_disclosures(db)
        assert [d.id for d in rows] == list(range(1, 2 * each + 1))
        assert {d.actor for d in rows} == {"left", "right"}
        # One chain: every record links to the one before it, none shares a predecessor.
        assert [d.prev_hash for d in rows] == [DISCLOSURE_GENESIS] + [
            d.chain_hash for d in rows[:-1]
        ]
        assert verify_disclosures(db) == []
    finally:
        db.dispose()


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def trail_url(tmp_path: Path) -> str:
    live_db(tmp_path / "live.db").dispose()
    return f"sqlite:///{tmp_path / 'live.db'}"


def count(url: str) -> int:
    db = create_db_engine(url)
    try:
        with db.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(disclosures)) or 0)
    finally:
        db.dispose()


def show(url: str, *extra: str) -> int:
    return cli(["audit", "show", CODE, "--url", url, *extra])


def test_reveal_without_a_reason_is_refused_and_records_nothing(
    trail_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert show(trail_url, "--reveal-personal-data") == 2
    out, err = capsys.readouterr()
    assert out == "" and "--reveal-personal-data needs --reason" in err
    assert count(trail_url) == 0
    assert show(trail_url, "--reason", "curious") == 2  # a reason for nothing revealed
    assert "go with --reveal-personal-data" in capsys.readouterr().err


def test_reveal_with_a_reason_records_one_disclosure_before_showing(
    trail_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The OS user is the real uid's login, not what the environment claims.
    for variable in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "somebody-else")
    login = pwd.getpwuid(os.getuid()).pw_name
    name = ev.CITIZEN["name"]
    reason = "Thanh tra tỉnh yêu cầu, công văn 12/TTr"
    before = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="dossier.audit"):
        assert (
            show(trail_url, "--reveal-personal-data", "--reason", reason, "--actor", "alice") == 0
        )
    after = datetime.now(UTC)
    assert name in capsys.readouterr().out
    db = create_db_engine(trail_url)
    try:
        (d,) = list_disclosures(db)
    finally:
        db.dispose()
    assert (d.actor, d.reason, d.dossier_code) == (f"alice (os user {login})", reason, CODE)
    assert before <= d.disclosed_at <= after
    (record,) = [r for r in caplog.records if "revealed" in r.getMessage()]
    message = record.getMessage()
    assert CODE in message and f"disclosure {d.id}" in message and d.chain_hash in message
    assert name not in message and reason not in message

    assert cli(["audit", "disclosures", "--url", trail_url]) == 0
    listed = capsys.readouterr().out
    assert f"dossier {CODE}" in listed and reason in listed and "alice (os user" in listed
    assert cli(["audit", "disclosures", "--url", trail_url, "--format", "json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert (item["id"], item["reason"], item["dossier_code"]) == (1, reason, CODE)
    assert cli(["audit", "disclosures", "--url", trail_url, "--dossier", "other"]) == 0
    assert capsys.readouterr().out == ""
    later = (after + timedelta(seconds=1)).isoformat()
    assert cli(["audit", "disclosures", "--url", trail_url, "--since", later]) == 0
    assert capsys.readouterr().out == ""
    assert cli(["audit", "disclosures", "--url", trail_url, "--since", "2025-01-01"]) == 2
    assert "give an offset" in capsys.readouterr().err


def test_a_masked_show_records_nothing(trail_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert show(trail_url) == 0
    assert ev.CITIZEN["name"] not in capsys.readouterr().out
    assert count(trail_url) == 0


@pytest.mark.parametrize(
    "reason, said",
    [
        ("first line\nsecond line", "control character (U+000A"),
        ("red \x1b[31m", "control character (U+001B"),
        ("nul \x00", "control character (U+0000"),
        ("   ", "empty"),
        ("x" * 10_000_000, "10000000 characters long"),
    ],
)
def test_a_hostile_reason_is_refused(
    trail_url: str, capsys: pytest.CaptureFixture[str], reason: str, said: str
) -> None:
    assert show(trail_url, "--reveal-personal-data", "--reason", reason) == 2
    out, err = capsys.readouterr()
    assert out == "" and said in err and len(err) < 300
    assert count(trail_url) == 0


def test_a_hostile_actor_is_refused(trail_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert show(trail_url, "--reveal-personal-data", "--reason", "r", "--actor", "a\rb") == 2
    assert "--actor refused" in capsys.readouterr().err
    assert count(trail_url) == 0


def test_nothing_is_revealed_when_the_disclosure_cannot_be_recorded(
    trail_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = create_db_engine(trail_url)
    with db.begin() as connection:
        connection.execute(text("DROP TABLE disclosures"))
    db.dispose()
    assert show(trail_url, "--reveal-personal-data", "--reason", "audit") == 1
    out, err = capsys.readouterr()
    assert ev.CITIZEN["name"] not in out and out == ""
    assert "could not be recorded, so nothing is shown" in err


def test_verify_finds_a_deleted_disclosure(
    db: Engine, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record_three(db)
    assert cli(["audit", "verify", "--url", url]) == 0
    assert "verified the disclosures chain: 0 findings" in capsys.readouterr().out
    writable(db)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM disclosures WHERE id = 2"))
    assert cli(["audit", "verify", "--url", url]) == 1
    out = capsys.readouterr().out
    assert "verified the disclosures chain: 1 findings" in out
    assert "disclosure 3: deleted: dossier A-1: disclosure 2 missing before it" in out


def test_the_listing_never_lets_a_stored_value_drive_the_terminal(
    db: Engine, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with db.begin() as connection:  # written around the checks, straight in SQL
        connection.execute(
            disclosures.insert().values(
                id=1,
                disclosed_at=T0,
                actor="mallory",
                reason="x\x1b[2J\nforged line",
                dossier_code="A-1",
                prev_hash="",
                chain_hash="",
            )
        )
    assert cli(["audit", "disclosures", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 1 and "\\x1b[2J\\nforged line" in out
