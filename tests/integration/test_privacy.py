"""Personal data is sealed under a key per person before it is stored, and `privacy forget`
destroys that key: afterwards no byte of the database (history, parked inputs, outbox, ledger,
dead letters) holds the person's identity number or name in clear, `audit verify` still finds
nothing, and the history still replays to the same states, due dates and statuses."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_db
from dossier.replay.serial import compare
from dossier.settings import Settings
from engine.application.ports import Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import DLQ_TOPIC
from engine.procedures import load_catalogue
from engine.registry import SIGNATURE_HEADER, load_registry
from engine.registry import registry_files as registry_files_of
from engine.store import queries
from engine.store.audit import verify, write_checkpoint
from engine.store.erasure import forget
from engine.store.migrate import upgrade
from engine.store.privacy import (
    ERASED,
    PersonalDataVault,
    PrivacySecret,
    is_token,
    sealed_bytes_key_id,
)
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec, encode_outbound
from schemas.personal_data import personal_paths
from tests.fixtures import events as ev
from tests.integration.test_engine_e2e import land_certificate

SECRET = base64.b64encode(b"test privacy secret, 32 bytes!!!").decode()
ERASED_PERSON = {
    "kind": "citizen",
    "id_number": "079212345678",
    "name": "Tran Thi Bimat",
    "address": "So 7 ngo Kin, phuong Bimat",
    "so_dien_thoai": "0912999888",
}
KEPT_PERSON = {"kind": "citizen", "id_number": "001090055555", "name": "Le Van Conlai"}
ERASED_CODE = f"{ev.COMMUNE_AGENCY}-250630-0007"
KEPT_CODE = f"{ev.COMMUNE_AGENCY}-250630-0008"
# Clear-text forms that must be gone from every byte once the person is forgotten.
NEEDLES = [
    ERASED_PERSON["id_number"],
    ERASED_PERSON["name"],
    "Bimat",
    ERASED_PERSON["so_dien_thoai"],
]


# TEST ONLY: the national portal signs its inputs here, so the signed bytes kept beside each
# history row (with the person's name in them) are part of what an erasure must reach.
PORTAL_KEY = Ed25519PrivateKey.from_private_bytes(b"privacy test portal key, unreal!")


def signing_registry(directory: Path) -> Path:
    public = PORTAL_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    path = directory / "signing-portal.yaml"
    path.write_text(
        "# TEST ONLY: the national portal with a made-up signing key.\n"
        "senders:\n"
        f'  - {{source: "{ev.PORTAL_SOURCE}", name: "Cổng (test)", types: [submitted,'
        ' supplement-provided, payment-completed, withdrawal-requested], agencies: "*",'
        f' public_keys: [{{id: p1, ed25519: "{base64.b64encode(public).decode()}"}}]}}\n',
        encoding="utf-8",
    )
    return path


def registry_files(directory: Path) -> str:
    return f"{ev.REGISTRY_FILE}:{signing_registry(directory)}"


def vault(replaying: bool = False) -> PersonalDataVault:
    return PersonalDataVault(PrivacySecret.from_text(SECRET), personal_paths, replaying=replaying)


def processor(directory: Path) -> BatchProcessor:
    registry = load_registry(registry_files_of(registry_files(directory)))
    return BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load(), registry),
        ContractCodec(),
        ServiceConfig("urn:test:engine", "live", timedelta(days=7)),
        verifier=registry,
    )


def script(code: str, applicant: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    items = land_certificate(code, "2025-06-30", "district", ev.DISTRICT_AGENCY)
    _, first = items[0]
    first["data"]["applicant"] = dict(applicant)
    # A free field in Vietnamese on a level input: personal by name, sealed too.
    items[1][1]["data"]["ghi_chu"] = {"Họ tên người nộp": applicant["name"]}
    return items


def as_raw(items: list[tuple[str, dict[str, Any]]], start: int = 0) -> list[RawInput]:
    raws: list[RawInput] = []
    for i, (topic, event) in enumerate(items):
        value = ev.to_bytes(event)
        headers: tuple[tuple[str, bytes], ...] = ()
        if event["source"] == ev.PORTAL_SOURCE:
            signature = base64.b64encode(PORTAL_KEY.sign(value)).decode()
            headers = ((SIGNATURE_HEADER, f"p1:{signature}".encode()),)
        raws.append(
            RawInput(
                topic, Position(topic, 0, start + i), event["subject"].encode(), value, headers
            )
        )
    return raws


@dataclass
class Live:
    db: Engine
    dump: Callable[[], bytes]


def run_live(db: Engine, directory: Path) -> None:
    upgrade(db)
    engine = processor(directory)
    erased, kept = script(ERASED_CODE, ERASED_PERSON), script(KEPT_CODE, KEPT_PERSON)
    # The erased person's submission, resent with other content under the same id: a
    # `conflict` dead letter whose bytes (their name included) go to the outbox.
    conflicting = dict(erased[0][1])
    conflicting["data"] = {**conflicting["data"], "channel": 1}
    # A payment that arrives before its request: parked, after the dossier is known.
    early_payment = erased[5]
    early_payment[1]["data"]["ho_ten"] = ERASED_PERSON["name"]
    first_part = [*erased[:4], early_payment, *kept]
    uow = lambda: SqlUnitOfWork(db, writes=True, vault=vault())  # noqa: E731
    engine.process(uow(), as_raw(first_part))
    with SqlUnitOfWork(db) as reader:
        assert reader.repo.parked_count() == 1
    write_checkpoint(db, "urn:test:engine", encode_outbound)
    engine.process(uow(), as_raw([("dossier.submission", conflicting)], start=100))
    # The relay sent the dead letter (the topic keeps it; the database copy may go).
    with SqlUnitOfWork(db, writes=True) as w:
        dead = [m for m in w.repo.unsent_outbox(10_000) if m.topic == DLQ_TOPIC]
        assert dead and any(
            ERASED_PERSON["name"].encode()
            in base64.b64decode(orjson.loads(m.value)["data"]["original"]["value_base64"])
            for m in dead
        )
        w.repo.mark_sent([m.id for m in dead if m.id is not None], datetime.now(UTC))
        w.commit()
    # The rest of the erased person's dossier; the parked payment applies after its request.
    engine.process(uow(), as_raw([erased[4], *erased[6:]], start=200))
    write_checkpoint(db, "urn:test:engine", encode_outbound)


def sqlite_bytes(path: Path) -> Callable[[], bytes]:
    def dump() -> bytes:
        return b"".join(
            p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
        )

    return dump


def postgres_rows(db: Engine) -> Callable[[], bytes]:
    """Every stored value of every table of the schema, bytea columns as their bytes."""

    def dump() -> bytes:
        out: list[bytes] = []
        with db.connect() as connection:
            for table in sa.inspect(connection).get_table_names():
                for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                    for value in row:
                        if isinstance(value, bytes | memoryview):
                            out.append(bytes(value))
                        else:
                            out.append(orjson.dumps(value, default=str))
                            out.append(str(value).encode())
        return b"\n".join(out)

    return dump


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    if request.param == "sqlite":
        path = tmp_path / "live.db"
        db = create_db_engine(f"sqlite:///{path}")
        run_live(db, tmp_path)
        yield Live(db, sqlite_bytes(path))
    else:
        url = request.getfixturevalue("pg_schema")
        db = create_db_engine(url)
        run_live(db, tmp_path)
        yield Live(db, postgres_rows(db))
    db.dispose()


def holds(dump: bytes, needle: str) -> bool:
    escaped = orjson.dumps(needle)[1:-1]
    ascii_escaped = needle.encode("ascii", "backslashreplace")
    return any(form in dump for form in (needle.encode(), escaped, ascii_escaped))


def test_history_and_parked_inputs_never_hold_personal_data_in_clear(live: Live) -> None:
    with live.db.connect() as connection:
        rows = queries.dossier_history(connection, ERASED_CODE)
        parked = connection.execute(sa.text("SELECT value FROM parked_inputs")).all()
    # The portal's signed bytes are kept beside the row, sealed whole: they hold the name.
    assert rows[0].signature is not None and rows[0].signed_value is not None
    assert sealed_bytes_key_id(rows[0].signed_value) is not None
    submitted = rows[0].envelope["data"]["applicant"]
    assert all(is_token(submitted[k]) for k in ("id_number", "name", "address", "so_dien_thoai"))
    assert submitted["kind"] == "citizen"  # not personal: the decider reads it
    received = rows[1].envelope["data"]["ghi_chu"]
    assert is_token(received["Họ tên người nộp"])
    for (value,) in parked:  # the early payment waited sealed
        assert ERASED_PERSON["name"].encode() not in bytes(value)
    # Only the dead letter's copy in the outbox held them before the erasure.
    with live.db.connect() as connection:
        for table, column in (("history", "envelope"), ("parked_inputs", "value")):
            for (value,) in connection.execute(sa.text(f"SELECT {column} FROM {table}")):
                blob = value if isinstance(value, bytes) else orjson.dumps(value)
                assert not any(holds(bytes(blob), n) for n in NEEDLES)


def test_forget_leaves_no_byte_of_the_person_and_history_still_verifies_and_replays(
    live: Live, tmp_path: Path
) -> None:
    with live.db.connect() as connection:
        dead_letters = [
            orjson.loads(value)["data"]["original"]["value_base64"].encode()
            for (value,) in connection.execute(
                sa.text("SELECT value FROM outbox WHERE topic = :t"), {"t": DLQ_TOPIC}
            )
        ]
    # The conflicting submission's bytes (the name in them), base64 in the dead letter.
    assert dead_letters and all(d in live.dump() for d in dead_letters)
    erasure = forget(live.db, vault(), ERASED_PERSON["id_number"])
    assert erasure.key_id is not None
    assert erasure.dossiers == [ERASED_CODE]
    assert erasure.sent_dead_letters_deleted >= 1
    assert erasure.clear_rows == 0

    after = live.dump()
    for needle in NEEDLES:
        assert not holds(after, needle), needle
    for dead_letter in dead_letters:  # not even in a free page of the file
        assert dead_letter not in after
    with live.db.connect() as connection:
        dead = connection.execute(
            sa.text("SELECT count(*) FROM outbox WHERE topic = :t"), {"t": DLQ_TOPIC}
        ).scalar_one()
    assert dead == 0

    # The evidence is intact: every hash was over ciphertext.
    assert verify(live.db).findings == []

    # The erased person's values no longer open; the other person's still do.
    with live.db.connect() as connection:
        erased = queries.dossier_history(connection, ERASED_CODE)[0]
        kept = queries.dossier_history(connection, KEPT_CODE)[0]
        v = vault()
        keys = v.keys_for(connection, v.key_ids_in([erased.envelope, kept.envelope]))
    assert v.open_data(ERASED_CODE, erased.envelope["data"], keys)["applicant"]["name"] == ERASED
    assert v.open_data(KEPT_CODE, kept.envelope["data"], keys)["applicant"] == KEPT_PERSON

    # A second erasure of the same number finds nothing more to do.
    again = forget(live.db, vault(), ERASED_PERSON["id_number"])
    assert again.key_id is None and again.clear_rows == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_of_erased_history_rebuilds_every_state(
    live: Live, tmp_path: Path, workers: int
) -> None:
    forget(live.db, vault(), ERASED_PERSON["id_number"])
    rebuilt = create_db_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    settings = replace(
        Settings.from_env(), privacy_key=SECRET, registry_files=registry_files(tmp_path)
    )
    replay_from_db(settings, live.db, rebuilt, workers=workers)
    result = compare(rebuilt, live.db)
    assert result.differences == [] and result.matching == 2
    rebuilt.dispose()


def test_a_sender_cannot_claim_another_persons_key(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'hostile.db'}")
    run_live(db, tmp_path)
    with db.connect() as connection:
        kept = queries.dossier_history(connection, KEPT_CODE)[0]
    stolen = kept.envelope["data"]["applicant"]["name"]
    assert is_token(stolen)
    hostile_code = f"{ev.COMMUNE_AGENCY}-250630-0099"
    # The victim's token pasted into another dossier's submission, as its name and number.
    items = script(hostile_code, {"kind": "citizen", "id_number": "001090066666", "name": "x"})
    items[0][1]["data"]["applicant"]["name"] = stolen
    items[0][1]["data"]["applicant"]["so_cccd"] = stolen
    processor(tmp_path).process(
        SqlUnitOfWork(db, writes=True, vault=vault()), as_raw(items[:1], 300)
    )
    with db.connect() as connection:
        hostile = queries.dossier_history(connection, hostile_code)[0]
        v = vault()
        keys = v.keys_for(connection, v.key_ids_in([hostile.envelope]))
        owners = {
            code: key_id
            for code, key_id in connection.execute(
                sa.text("SELECT dossier_code, key_id FROM dossier_persons")
            )
        }
    # Sealed again, under the hostile dossier's own key: it opens to the pasted token, which
    # is not the victim's name.
    opened = v.open_data(hostile_code, hostile.envelope["data"], keys)["applicant"]
    assert opened["name"] == stolen and opened["so_cccd"] == stolen
    assert owners[hostile_code] != owners[KEPT_CODE]
    # And a token moved to another field or dossier does not open there.
    with db.connect() as connection:
        keys = v.keys_for(connection, v.key_ids_in([kept.envelope]))
    assert (
        v.open_data(hostile_code, {"applicant": {"name": stolen}}, keys)["applicant"]["name"]
        == ERASED
    )
    db.dispose()


def test_a_wrong_privacy_secret_is_refused_before_any_batch(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    run_live(db, tmp_path)
    other = PersonalDataVault(PrivacySecret.from_bytes(secrets.token_bytes(32)), personal_paths)
    with db.connect() as connection, pytest.raises(ValueError, match="does not open"):
        other.check(connection)
    db.dispose()


def test_audit_show_masks_reveals_on_record_and_shows_erasure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shown.db"
    db = create_db_engine(f"sqlite:///{path}")
    run_live(db, tmp_path)
    url = f"sqlite:///{path}"
    monkeypatch.setenv("DOSSIER_PRIVACY_KEY", SECRET)
    monkeypatch.setenv("DOSSIER_REGISTRY_FILES", registry_files(tmp_path))
    name, phone = ERASED_PERSON["name"], ERASED_PERSON["so_dien_thoai"]

    assert cli(["audit", "show", ERASED_CODE, "--url", url, "--format", "json"]) == 0
    shown = capsys.readouterr().out
    assert name not in shown and phone not in shown and "pd1:" not in shown
    assert "signed p1, checks" not in shown  # json: the note says it
    assert '"signature_checks": true' in shown  # opened to check, never shown

    reveal = ["--reveal-personal-data", "--reason", "citizen's own request #42"]
    assert cli(["audit", "show", ERASED_CODE, "--url", url, *reveal]) == 0
    revealed = capsys.readouterr().out
    assert name in revealed and phone in revealed

    forget(db, vault(), ERASED_PERSON["id_number"])
    assert cli(["audit", "show", ERASED_CODE, "--url", url, *reveal]) == 0
    after = capsys.readouterr().out
    assert name not in after and ERASED in after
    assert "its bytes were erased with the person's data" in after
    assert cli(["audit", "disclosures", "--url", url]) == 0
    assert capsys.readouterr().out.count(ERASED_CODE) == 2

    # Without the privacy secret nothing sealed opens, and nothing fails.
    monkeypatch.delenv("DOSSIER_PRIVACY_KEY")
    monkeypatch.setenv("DOSSIER_PRIVACY_KEY_FILE", str(tmp_path / "absent.key"))
    assert cli(["audit", "show", KEPT_CODE, "--url", url, *reveal]) == 0
    unopened = capsys.readouterr().out
    assert KEPT_PERSON["name"] not in unopened and "[sealed: no privacy key]" in unopened
    db.dispose()
