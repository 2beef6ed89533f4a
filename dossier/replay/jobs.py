"""The replays a command runs: from a database's history or from the inbound topics, in this
process or in worker processes, with the same result either way."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from dossier.replay.kafka import replay_from_kafka_parallel
from dossier.replay.parallel import replay_from_db_parallel
from dossier.replay.serial import (
    REPLAY_GROUP,
    Progress,
    ReplayReport,
    replay_from_db_serially,
    replay_from_kafka_serially,
)
from dossier.settings import Settings


def replay_from_db(
    settings: Settings,
    source: Engine,
    target: Engine,
    *,
    batch_size: int = 20_000,
    group: str = REPLAY_GROUP,
    workers: int = 1,
    notice_scan_limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `target` from `source`'s history; `workers` > 1 folds shards of dossiers in
    that many processes (`dossier.replay.parallel`)."""
    if workers > 1:
        return replay_from_db_parallel(
            settings,
            source,
            target,
            workers=workers,
            batch_size=batch_size,
            group=group,
            notice_scan_limit=notice_scan_limit,
            progress=progress,
        )
    return replay_from_db_serially(
        settings,
        source,
        target,
        batch_size=batch_size,
        group=group,
        notice_scan_limit=notice_scan_limit,
        progress=progress,
    )


def replay_from_kafka(
    settings: Settings,
    target: Engine,
    *,
    since: datetime | None = None,
    batch_size: int = 5000,
    group: str = REPLAY_GROUP,
    workers: int = 1,
    notice_scan_limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `target` from the inbound topics; `workers` > 1 reads and folds the partitions
    in that many processes (`dossier.replay.kafka`)."""
    if workers > 1:
        return replay_from_kafka_parallel(
            settings,
            target,
            since=since,
            batch_size=batch_size,
            group=group,
            workers=workers,
            notice_scan_limit=notice_scan_limit,
            progress=progress,
        )
    return replay_from_kafka_serially(
        settings,
        target,
        since=since,
        batch_size=batch_size,
        group=group,
        notice_scan_limit=notice_scan_limit,
        progress=progress,
    )
