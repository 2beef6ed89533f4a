"""Erasing a person (`dossier privacy forget`): their data key goes, and with it every sealed
value of theirs; the database's copies of dead letters about their dossiers that the relay has
already sent go too (the dead-letter topic keeps the bytes, as the contract requires).

History is append-only and is not touched: the hashes over the ciphertext still verify, and
every state, due date and status still replays. What cannot be erased this way is said, not
hidden: a row stored before sealing began (migration 0008) holds its values in clear, and an
unsent dead letter is still needed by the relay; both are counted in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, text

from engine.events import DLQ_TOPIC
from engine.store.privacy import PersonalDataVault
from engine.store.tables import outbox

_CHUNK = 400


@dataclass(frozen=True, slots=True)
class Erasure:
    key_id: str | None  # None: no key for that number (never seen, or already forgotten)
    dossiers: Sequence[str]
    sent_dead_letters_deleted: int
    unsent_dead_letters: int  # still to be sent by the relay; deleted by a later `forget`
    clear_rows: int  # rows anywhere that still hold the number in clear (stored before sealing)


def forget(db: Engine, vault: PersonalDataVault, id_number: str) -> Erasure:
    with db.connect() as connection:
        connection.info["dossier_writes"] = True  # SQLite: BEGIN IMMEDIATE, one writer
        with connection.begin():
            report = vault.forget(connection, id_number)
            deleted = unsent = 0
            o = outbox.c
            codes = list(report.dossiers)
            for start in range(0, len(codes), _CHUNK):
                keys = [code.encode() for code in codes[start : start + _CHUNK]]
                of_theirs = (o.topic == DLQ_TOPIC, o.key.in_(keys))
                deleted += connection.execute(
                    delete(outbox).where(*of_theirs, o.sent_at.is_not(None))
                ).rowcount
                unsent += int(
                    connection.scalar(select(func.count()).select_from(outbox).where(*of_theirs))
                    or 0
                )
            clear = _rows_holding(connection, id_number)
    if db.dialect.name == "sqlite":
        # With secure_delete the freed pages are zeroed; a checkpoint moves them out of the
        # write-ahead log into the file and empties the log.
        raw = db.raw_connection()  # outside any transaction, which a checkpoint needs
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()
    return Erasure(report.key_id, report.dossiers, deleted, unsent, clear)


def _rows_holding(connection: Connection, id_number: str) -> int:
    """Rows of history, parked inputs and the outbox whose stored bytes contain the number in
    clear: a scan, acceptable for an act as rare as an erasure."""
    number = id_number.strip()
    postgresql = connection.dialect.name == "postgresql"
    total = 0
    for table, column, binary in (
        ("history", "envelope", False),
        ("history", "signed_value", True),
        ("parked_inputs", "value", True),
        ("outbox", "value", True),
    ):
        if postgresql:
            found = f"position(:n in {column}{'' if binary else '::text'}) > 0"
        else:
            found = f"instr({column}, :n) > 0"
        needle: str | bytes = number.encode() if binary else number
        total += int(
            connection.scalar(text(f"SELECT count(*) FROM {table} WHERE {found}"), {"n": needle})
            or 0
        )
    return total
