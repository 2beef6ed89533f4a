"""`dossier audit keygen | anchor`, and what `dossier audit verify` checks beyond the
database: the checkpoints' signatures (`--public-key`), their published copies
(`--against-topic`) and an auditor's anchor (`--anchor`). Registered by dossier.commands.audit.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from dossier.settings import Settings

if TYPE_CHECKING:
    from engine.audit import PublishedCheckpoints
    from engine.signing import Signer


def register(actions: Any, verify: argparse.ArgumentParser) -> None:
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="FILE",
        help="public key (FILE.pub of `audit keygen`) to check every checkpoint's signature"
        " with; repeat it for every key the engine signed with over time (rotation)",
    )
    verify.add_argument(
        "--against-topic",
        action="store_true",
        help="also read dossier.audit-checkpoint whole and hold the database's checkpoints and"
        " chains against what was published (names the dossier of a rewritten chain)",
    )
    verify.add_argument(
        "--anchor",
        type=Path,
        metavar="FILE",
        help="a file of `audit anchor`: the database must still hold that checkpoint as is",
    )
    verify.add_argument(
        "--topic-timeout",
        type=float,
        default=30.0,
        help="seconds without a record from the broker before reading the topic fails",
    )

    keygen = actions.add_parser(
        "keygen", help="a new Ed25519 key to sign checkpoints: FILE (0600) and FILE.pub"
    )
    keygen.add_argument("--out", type=Path, required=True, help="private key file to write")
    keygen.add_argument("--force", action="store_true", help="replace an existing FILE")
    keygen.set_defaults(func=run_keygen)

    anchor = actions.add_parser(
        "anchor", help="write the latest signed checkpoint to a small file an auditor keeps"
    )
    anchor.add_argument("--out", type=Path, required=True, help="anchor file to write (0600)")
    anchor.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    anchor.set_defaults(func=run_anchor)


def run_keygen(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.audit_keys import AuditKeyError, keygen

    try:
        kid = keygen(args.out, force=args.force)
    except (AuditKeyError, OSError) as exc:
        print(f"dossier audit keygen: {exc}", file=sys.stderr)
        return 2
    print(f"key id {kid}: private key {args.out} (0600), public key {args.out}.pub")
    print(f"sign with: DOSSIER_AUDIT_SIGNING_KEY_FILE={args.out}")
    print(f"verify with: dossier audit verify --public-key {args.out}.pub")
    return 0


def run_anchor(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.audit_keys import write_anchor
    from engine.store.audit import latest_signed_checkpoint
    from engine.store.sql import create_db_engine

    db = create_db_engine(args.url or settings.database_url)
    try:
        checkpoint = latest_signed_checkpoint(db)
    finally:
        db.dispose()
    if checkpoint is None:
        print("dossier audit anchor: no signed checkpoint yet", file=sys.stderr)
        return 1
    try:
        write_anchor(args.out, checkpoint.header)
    except OSError as exc:
        print(f"dossier audit anchor: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(
        f"anchored checkpoint {checkpoint.id} (root {checkpoint.root}, key {checkpoint.key_id},"
        f" {checkpoint.rows} rows in {checkpoint.chains} chains) in {args.out}"
    )
    return 0


def signer(settings: Settings) -> Signer | None:
    """The signer `audit checkpoint` writes with: the engine's own key, from the settings."""
    from dossier.audit_keys import signer_of

    return signer_of(settings)


def run_verify(settings: Settings, db: Engine, args: argparse.Namespace) -> bool:
    """Run `audit verify` and print its result; True when there is nothing to report.
    ValueError (AuditKeyError included) for a key or anchor file that cannot be used."""
    from dossier.audit_keys import (
        public_key_paths,
        public_keys,
        published_checkpoints,
        read_anchor,
    )
    from engine.store.audit import NAME_DOSSIERS, verify

    keys = public_keys(public_key_paths(args.public_key)) if args.public_key else None
    anchor = read_anchor(args.anchor) if args.anchor is not None else None
    read: list[PublishedCheckpoints] = []

    def read_topic(up_to: int) -> PublishedCheckpoints:
        # Called by verify once it has read the database's checkpoints (see there why).
        read.append(
            published_checkpoints(settings, stall_timeout_s=args.topic_timeout, up_to=up_to)
        )
        return read[0]

    since = _instant(args.since)
    result = verify(
        db,
        since=since,
        public_keys=keys,
        published=read_topic if args.against_topic else None,
        anchor=anchor,
    )
    published = read[0] if read else None
    against = f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint yet"
    print(
        f"verified {result.rows} rows in {result.chains} chains against {against}: "
        f"{len(result.findings)} findings"
    )
    if keys is not None:
        print(
            f"  signatures: {result.signed} of {result.checkpoints} checkpoints verified"
            f" with {len(keys)} public key(s)"
        )
    elif result.checkpoints:
        print("  signatures not checked: give --public-key FILE")
    if published is not None:
        print(
            f"  {settings.topic('dossier.audit-checkpoint')}: {published.messages} messages,"
            f" {result.published} checkpoints, heads of {len(published.heads)} dossiers"
        )
    if anchor is not None:
        print(f"  anchor: checkpoint {anchor.id} (root {anchor.root})")
    for finding in result.findings[: args.show]:
        print(f"  {finding}")
    if len(result.findings) > args.show:
        print(f"  ... and {len(result.findings) - args.show} more (--show N)")
    if published is None and any(NAME_DOSSIERS in f.detail for f in result.findings):
        print("  run again with --against-topic to name the dossiers whose history was rewritten")
    return result.ok


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r}: give an offset (RFC 3339)")
    return value
