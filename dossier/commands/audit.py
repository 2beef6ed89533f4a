"""`dossier audit`: a dossier's trail (`show`), and the tamper evidence of the history
(`checkpoint`, `verify`); personal data shown in clear only on record (`disclosures`)."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dossier.commands import audit_signing
from dossier.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger("dossier.audit")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="dossier trails and tamper evidence of history")
    actions = parser.add_subparsers(dest="audit_action", required=True, metavar="ACTION")

    show = actions.add_parser("show", help="the timeline of one dossier, from its history")
    show.add_argument("dossier_code")
    show.add_argument("--as-of", help="only what was recorded by this instant (RFC 3339)")
    show.add_argument("--format", choices=("text", "json", "csv", "html"), default="text")
    show.add_argument(
        "--reveal-personal-data",
        action="store_true",
        help="show applicants' identity numbers, names and addresses (needs --reason; "
        "recorded in the disclosures table before anything is shown)",
    )
    show.add_argument(
        "--reason",
        help="why personal data is revealed: one line, recorded with who and when",
    )
    show.add_argument(
        "--actor", help="who asks, recorded beside the OS user (e.g. a name or staff number)"
    )
    show.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    show.set_defaults(func=run)

    disclosures = actions.add_parser(
        "disclosures", help="who had personal data shown in clear, when, why, which dossier"
    )
    disclosures.add_argument("--dossier", help="only disclosures of this dossier")
    disclosures.add_argument("--since", help="only disclosures from this instant (RFC 3339)")
    disclosures.add_argument("--format", choices=("text", "json"), default="text")
    disclosures.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    disclosures.set_defaults(func=run)

    checkpoint = actions.add_parser(
        "checkpoint", help="record and publish (via the outbox) a root over all history chains"
    )
    checkpoint.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    checkpoint.set_defaults(func=run)

    verify = actions.add_parser(
        "verify", help="recompute every chain and hold it against the latest checkpoint"
    )
    verify.add_argument("--since", help="only chains that grew since this instant (RFC 3339)")
    verify.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    verify.add_argument("--show", type=int, default=50, help="findings to print")
    verify.set_defaults(func=run)
    # Signed checkpoints: verify's --public-key, --against-topic, --anchor; keygen, anchor.
    audit_signing.register(actions, verify)


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r}: give an offset (RFC 3339)")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    from engine.store.sql import create_db_engine

    db = create_db_engine(args.url or settings.database_url)
    try:
        if args.audit_action == "checkpoint":
            from engine.store.audit import latest_checkpoint, write_checkpoint
            from schemas.codec import encode_outbound

            written = write_checkpoint(
                db,
                settings.engine_source,
                encode_outbound,
                signer=audit_signing.signer(settings),
            )
            checkpoint = written or latest_checkpoint(db)
            if checkpoint is None:
                print("no history yet: nothing to checkpoint")
                return 0
            state = "written" if written is not None else "unchanged since"
            print(
                f"checkpoint {checkpoint.id} {state}: root {checkpoint.root}, "
                f"{checkpoint.rows} rows in {checkpoint.chains} chains "
                f"({checkpoint.heads} heads moved)"
            )
            return 0
        if args.audit_action == "verify":
            ok = audit_signing.run_verify(settings, db, args)
            disclosed_ok = _verify_disclosures(db, args.show)
            return 0 if ok and disclosed_ok else 1
        if args.audit_action == "disclosures":
            return _list_disclosures(db, args)
        from dossier.audit_trail import load_trail, render

        actor = _revealer(args)
        trail = load_trail(
            db,
            args.dossier_code,
            as_of=_instant(args.as_of),
            settings=settings,
            reveal=actor is not None,
        )
        if trail is None:
            print(f"dossier audit: no history for {args.dossier_code}", file=sys.stderr)
            return 1
        # Recorded before anything is written out: a reveal that is not on record never shows.
        if actor is not None and not _record(db, actor, args):
            return 1
        sys.stdout.write(render(trail, args.format, reveal=args.reveal_personal_data))
        return 0
    except ValueError as exc:
        print(f"dossier audit: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()


def _os_user() -> str:
    """The login of the process's real uid. Not getpass.getuser(), which believes $USER or
    $LOGNAME first: anyone can set those to someone else's name for one command."""
    try:
        import pwd
    except ImportError:  # Windows: no uids
        return getpass.getuser()
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid {os.getuid()}"


def _revealer(args: argparse.Namespace) -> str | None:
    """Who is to be recorded as shown personal data in clear (None: it stays masked).
    ValueError, before anything is read or recorded, when the reveal cannot go ahead."""
    from engine.disclosure import actor_problem, reason_problem

    if not args.reveal_personal_data:
        if args.reason is not None or args.actor is not None:
            raise ValueError("--reason and --actor go with --reveal-personal-data")
        return None
    if args.reason is None:
        raise ValueError(
            "--reveal-personal-data needs --reason: why personal data is shown, recorded "
            "with who, when and which dossier (`dossier audit disclosures` lists them)"
        )
    problem = reason_problem(args.reason)
    if problem is not None:
        raise ValueError(f"--reason refused: {problem}")
    user = _os_user()
    if args.actor is None:
        return user
    actor = f"{args.actor.strip()} (os user {user})"
    problem = actor_problem(actor)
    if problem is not None:
        raise ValueError(f"--actor refused: {problem}")
    return actor


def _record(db: Engine, actor: str, args: argparse.Namespace) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    from engine.store.disclosures import record_disclosure

    try:
        disclosure = record_disclosure(db, actor, args.reason, args.dossier_code, datetime.now(UTC))
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        print(
            f"dossier audit: the disclosure could not be recorded, so nothing is shown: {cause}",
            file=sys.stderr,
        )
        return False
    # Who looked, at which dossier, and the record's place in the chain: never what they saw,
    # nor the reason (free text). The id and hash, kept outside the database, are what shows
    # the newest records deleted, which the chain alone cannot.
    log.warning(
        "personal data revealed: dossier %s, by %s; disclosure %d recorded (chain %s)",
        disclosure.dossier_code,
        disclosure.actor,
        disclosure.id,
        disclosure.chain_hash,
    )
    return True


def _verify_disclosures(db: Engine, show: int) -> bool:
    from engine.store.disclosures import verify_disclosures

    findings = verify_disclosures(db)
    print(f"verified the disclosures chain: {len(findings)} findings")
    for finding in findings[:show]:
        print(f"  {finding}")
    return not findings


def _list_disclosures(db: Engine, args: argparse.Namespace) -> int:
    from engine.store.disclosures import list_disclosures

    found = list_disclosures(db, dossier=args.dossier, since=_instant(args.since))
    if args.format == "json":
        document = [
            {
                "id": d.id,
                "disclosed_at": d.disclosed_at.isoformat(),
                "actor": d.actor,
                "reason": d.reason,
                "dossier_code": d.dossier_code,
                "chain_hash": d.chain_hash,
            }
            for d in found
        ]
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return 0
    for d in found:
        # The table may have been written around the CLI's checks: never let a stored value
        # move the terminal's cursor or colours.
        print(
            f"{d.id:>5}  {d.disclosed_at.isoformat(timespec='seconds')}  "
            f"dossier {_printable(d.dossier_code)}  by {_printable(d.actor)}  "
            f"reason: {_printable(d.reason)}"
        )
    if not found:
        print("no disclosures", file=sys.stderr)
    return 0


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
