"""`dossier audit`: a dossier's trail (`show`), and the tamper evidence of the history
(`checkpoint`, `verify`)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from datetime import datetime
from typing import Any

from dossier.settings import Settings

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
        help="show applicants' identity numbers, names and addresses (logged)",
    )
    show.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    show.set_defaults(func=run)

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

            written = write_checkpoint(db, settings.engine_source, encode_outbound)
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
            from engine.store.audit import verify

            result = verify(db, since=_instant(args.since))
            against = (
                f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint yet"
            )
            print(
                f"verified {result.rows} rows in {result.chains} chains against {against}: "
                f"{len(result.findings)} findings"
            )
            for finding in result.findings[: args.show]:
                print(f"  {finding}")
            return 0 if result.ok else 1
        from dossier.audit_trail import load_trail, render

        if args.reveal_personal_data:
            # Who looked, at which dossier: never what they saw.
            log.warning(
                "personal data revealed: dossier %s, by OS user %s",
                args.dossier_code,
                getpass.getuser(),
            )
        trail = load_trail(db, args.dossier_code, as_of=_instant(args.as_of), settings=settings)
        if trail is None:
            print(f"dossier audit: no history for {args.dossier_code}", file=sys.stderr)
            return 1
        sys.stdout.write(render(trail, args.format, reveal=args.reveal_personal_data))
        return 0
    except ValueError as exc:
        print(f"dossier audit: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
