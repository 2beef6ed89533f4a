"""`dossier replay`: rebuild a fresh database from Kafka or from a database's history, and
`dossier replay --verify`: prove the rebuilt one matches the live one."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any

from dossier.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="rebuild a fresh database from the inbound topics or stored history; --verify it",
    )
    parser.add_argument("--source", choices=("kafka", "db"), help="where the inputs come from")
    parser.add_argument(
        "--since", help="kafka: start at this instant (RFC 3339; Kafka record timestamps)"
    )
    parser.add_argument(
        "--from", dest="source_url", help="db: the database to read history from (default: live)"
    )
    parser.add_argument("--into", required=True, help="SQLAlchemy URL of the rebuilt database")
    parser.add_argument(
        "--publish-prefix",
        help="also publish the rebuilt outputs to topics with this prefix (never the live ones)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="inputs per transaction")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes folding shards of dossiers (default: one per core; 1: serial); kafka:"
        " each reads its share of the partitions, at most one worker per partition",
    )
    parser.add_argument(
        "--group", default=None, help="consumer group name recorded in the rebuilt DB"
    )
    parser.add_argument(
        "--verify", action="store_true", help="compare --into with --against instead of replaying"
    )
    parser.add_argument("--against", help="the live database for --verify (default: live)")
    parser.add_argument("--show", type=int, default=20, help="--verify: differences to print")
    parser.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.gc_tuning import tune_for_batches
    from dossier.replay.jobs import replay_from_db, replay_from_kafka
    from dossier.replay.serial import REPLAY_GROUP, ProgressLine, compare
    from engine.store.sql import create_db_engine

    tune_for_batches(settings.gc_young_threshold)
    into = create_db_engine(args.into)
    try:
        if args.verify:
            live = create_db_engine(args.against or settings.database_url)
            try:
                result = compare(into, live, limit=args.show)
            finally:
                live.dispose()
            print(
                f"dossiers: live {result.live}, rebuilt {result.rebuilt}, matching "
                f"{result.matching}, differing {result.differing}"
            )
            for line in result.differences:
                print(f"  {line}")
            return 0 if result.ok else 1
        group = args.group or REPLAY_GROUP
        if args.source == "kafka":
            since = datetime.fromisoformat(args.since) if args.since else None
            if since is not None and since.tzinfo is None:
                print("dossier replay: --since needs an offset (RFC 3339)", file=sys.stderr)
                return 2
            report = replay_from_kafka(
                settings,
                into,
                since=since,
                batch_size=args.batch_size or 5000,
                group=group,
                workers=args.workers or os.cpu_count() or 1,
                progress=ProgressLine(sys.stderr),
            )
        elif args.source == "db":
            source = create_db_engine(args.source_url or settings.database_url)
            try:
                report = replay_from_db(
                    settings,
                    source,
                    into,
                    batch_size=args.batch_size or 20_000,
                    group=group,
                    workers=args.workers or os.cpu_count() or 1,
                    progress=ProgressLine(sys.stderr),
                )
            finally:
                source.dispose()
        else:
            print("dossier replay: --source kafka|db (or --verify)", file=sys.stderr)
            return 2
        for warning in report.warnings:
            print(f"dossier replay: warning: {warning}", file=sys.stderr)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
        print(
            f"replayed {report.inputs} inputs from {report.source} in {report.seconds:.1f} s "
            f"({report.rate:,.0f}/s, {report.batches} batches, {report.workers} "
            f"worker{'' if report.workers == 1 else 's'}): "
            f"{outcomes}"
        )
        if args.publish_prefix:
            published = publish_outbox(settings, into, args.publish_prefix)
            print(f"published {published} outputs to {args.publish_prefix}dossier.*")
        return 0
    except ValueError as exc:
        print(f"dossier replay: {exc}", file=sys.stderr)
        return 2
    finally:
        into.dispose()


def publish_outbox(settings: Settings, db: Any, prefix: str) -> int:
    """Relay the rebuilt outbox to scratch topics `<prefix><contract topic>`."""
    from dossier.composition import build_relay

    if not prefix or prefix == settings.topic_prefix:
        raise ValueError("--publish-prefix must differ from the live topic prefix")
    job = build_relay(
        settings,
        db,
        topic_name=lambda t: f"{prefix}{t}",
        client_id="dossier-replay",
        lease=False,
        warm=False,
    )
    try:
        return job.drain()
    finally:
        job.close()
