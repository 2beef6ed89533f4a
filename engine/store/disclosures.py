"""The disclosures table on the SQL store: append a chained record, list, verify.

Records are appended one at a time, each in its own transaction, by whoever is shown personal
data in clear (`dossier audit show --reveal-personal-data`). Two such appends at once must not
both chain onto the same head: SQLite takes its write lock at BEGIN (IMMEDIATE); PostgreSQL
takes a transaction-scoped advisory lock first. And the id is part of the hashed content,
chosen as max + 1 inside that lock, so even an append that got past the lock would collide
on the primary key rather than fork the chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, inspect, select, text

from engine import disclosure
from engine.audit import MISSING, Finding
from engine.disclosure import (
    DISCLOSURE_GENESIS,
    Disclosure,
    actor_problem,
    next_link,
    reason_problem,
)
from engine.store.tables import disclosures

_d = disclosures.c


def record_disclosure(
    db: Engine, actor: str, reason: str, dossier_code: str, now: datetime
) -> Disclosure:
    """Append one disclosure, committed when this returns; ValueError for an actor or reason
    that cannot be recorded (empty, too long, control characters)."""
    for problem in (actor_problem(actor), reason_problem(reason)):
        if problem is not None:
            raise ValueError(problem)
    reason = reason.strip()
    actor = actor.strip()
    with db.connect() as connection:
        connection.info["dossier_writes"] = True  # SQLite: BEGIN IMMEDIATE, one writer
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # An advisory lock, not LOCK TABLE: a role granted only INSERT and SELECT on
                # this append-only table may not take a self-conflicting table lock. Taken
                # before the head is read; READ COMMITTED then reads the head as committed.
                connection.execute(
                    text(
                        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.disclosures'))"
                    )
                )
            return _append(connection, actor, reason, dossier_code, now)


def _append(
    connection: Connection, actor: str, reason: str, dossier_code: str, now: datetime
) -> Disclosure:
    head = connection.execute(select(_d.id, _d.chain_hash).order_by(_d.id.desc()).limit(1)).first()
    id_, prev_hash = (1, DISCLOSURE_GENESIS) if head is None else (int(head[0]) + 1, head[1])
    chain_hash = next_link(prev_hash, id_, now, actor, reason, dossier_code)
    connection.execute(
        disclosures.insert().values(
            id=id_,
            disclosed_at=now,
            actor=actor,
            reason=reason,
            dossier_code=dossier_code,
            prev_hash=prev_hash,
            chain_hash=chain_hash,
        )
    )
    return Disclosure(id_, now, actor, reason, dossier_code, prev_hash, chain_hash)


def list_disclosures(
    db: Engine, dossier: str | None = None, since: datetime | None = None
) -> list[Disclosure]:
    """Disclosures in the order they were recorded, of one dossier and/or from an instant."""
    query = select(disclosures).order_by(_d.id)
    if dossier is not None:
        query = query.where(_d.dossier_code == dossier)
    if since is not None:
        query = query.where(_d.disclosed_at >= since)
    with db.connect() as connection:
        return [_disclosure(r) for r in connection.execute(query)]


def verify_disclosures(db: Engine) -> list[Finding]:
    """Findings over the whole chain of disclosures (engine.disclosure.verify_disclosures).

    The table gone entirely is a finding too, not an error: dropping it is the quickest way
    to hide every disclosure.
    """
    with db.connect() as connection:
        if not inspect(connection).has_table(disclosures.name):
            return [
                Finding(
                    "disclosures",
                    None,
                    MISSING,
                    "the table does not exist (dropped, or the database predates migration "
                    "0008: `dossier db upgrade`)",
                )
            ]
        rows = [_disclosure(r) for r in connection.execute(select(disclosures).order_by(_d.id))]
    return disclosure.verify_disclosures(rows)


def _disclosure(r: Any) -> Disclosure:
    return Disclosure(
        id=int(r.id),
        disclosed_at=r.disclosed_at,
        actor=r.actor,
        reason=r.reason,
        dossier_code=r.dossier_code,
        prev_hash=r.prev_hash,
        chain_hash=r.chain_hash,
    )
