"""`dossier privacy forget`: erase a person's personal data by destroying the key it is sealed
under (engine.store.privacy, engine.store.erasure)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dossier.settings import Settings

log = logging.getLogger("dossier.privacy")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("privacy", help="erase a person's personal data")
    actions = parser.add_subparsers(dest="privacy_action", required=True, metavar="ACTION")
    forget = actions.add_parser(
        "forget",
        help="destroy the key of the person with this identity number: their personal data in"
        " history, parked inputs and sent dead letters becomes unreadable or is deleted",
    )
    forget.add_argument(
        "id_number",
        help="the person's identity number, or '-' to read it from standard input (a number on"
        " the command line is visible to other users in the process list)",
    )
    forget.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    forget.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.composition import build_vault
    from engine.store.erasure import forget
    from engine.store.privacy import PrivacyKeyError
    from engine.store.sql import create_db_engine

    number = sys.stdin.readline() if args.id_number == "-" else args.id_number
    number = number.strip()
    if not number or len(number) > 64:
        print("dossier privacy: give an identity number of 1 to 64 characters", file=sys.stderr)
        return 2
    try:
        vault = build_vault(settings)
    except PrivacyKeyError as exc:
        print(f"dossier privacy: {exc}", file=sys.stderr)
        return 2
    db = create_db_engine(args.url or settings.database_url)
    try:
        erasure = forget(db, vault, number)
    finally:
        db.dispose()
    if erasure.key_id is None:
        print("no personal data key for that identity number: never seen, or already forgotten")
    else:
        # The key id and the dossier codes, never the number: this line may reach a log.
        log.warning("privacy: key %s destroyed; %d dossiers", erasure.key_id, len(erasure.dossiers))
        print(
            f"key {erasure.key_id} destroyed: the personal data of {len(erasure.dossiers)} "
            f"dossiers is unreadable ({', '.join(erasure.dossiers[:10])}"
            f"{', ...' if len(erasure.dossiers) > 10 else ''}); "
            f"{erasure.sent_dead_letters_deleted} sent dead letters deleted"
        )
    if erasure.unsent_dead_letters:
        print(
            f"{erasure.unsent_dead_letters} dead letters about these dossiers are not sent yet:"
            " run this again once the relay has sent them"
        )
    if erasure.clear_rows:
        print(
            f"{erasure.clear_rows} stored rows still hold that number in clear (history"
            " recorded before personal data was sealed is append-only; parked inputs of a"
            " dossier not yet known; dead letters not yet sent)"
        )
        return 3
    return 0 if erasure.key_id is not None else 1
