"""Replay from the inbound topics on every core: the partitions split over N worker processes,
each reading its own partitions with its own consumer and folding the dossiers they carry over
the in-memory store, in lock step with the parent; the shards are then merged into the target.
The folding, the lock step and the merge are `dossier.replay.parallel`'s (read its docstring
first); this module adds what reading Kafka needs.

**Why partitions are shards.** The contract co-partitions the inbound topics (docs/CONTRACT.md,
"Partitioning": every input keyed by its dossier code, the same partition count on the four
topics, the default murmur2 partitioner), so all inputs of one dossier are in partition *p* of
each topic. Worker *k* of *N* reads partition *p* of every topic for each *p* with
*p* mod *N* = *k*, from the start offsets to the end offsets the parent took once at the start
(`inbound_offsets`, `--since` included), so all workers read one snapshot. Parallelism is
therefore bounded by the partition count, and balanced only when *N* divides it.

**The serial order.** `merged()` pops, among the partitions' next records, the one with the
least key (event time, topic, partition, offset), a record without a readable time counting as
`EARLIEST`. A partition is not in time order, so that order is not a sort by key. It is a sort
by *(the greatest key so far in the record's partition, offset)*: of records *a_i* and *b_j* of
two partitions, *a_i* goes first if and only if max(*a_0..a_i*) < max(*b_0..b_j*). (If the
maximum of *b*'s prefix is *b_k*, *k* <= *j*, then while *a*'s head is one of *a_0..a_i* it is
less than *b_k*, which therefore cannot be popped, nor *b_j* after it, before *a_i*; the converse
is symmetric, and two prefix maxima of different partitions are different records.) That key
depends only on the record's own partition, so each worker computes it for its records
(`merge_keys`), and merging a subset of the partitions gives the full merge restricted to that
subset (tests/unit/test_replay_kafka.py checks both against `merged()` with hypothesis).

**The batches.** The serial replay cuts the merged stream every `batch_size` inputs. Each worker
sends its keys, in its own merged order and tagged with its number (plain ints: cheap to send);
the parent sorts them all (timsort merges the N runs) and sends back, for each place in the
serial order, the number of the worker whose input it is (a byte each). Every worker thus knows
each of its inputs' place in the serial order (its rank, from 1, as a history id is on the db
path) and batch, and from there the lock step is the db path's: per batch the parent works out
the clock and the notice scan cut, every worker folds its share of the batch (an empty one
too), and the ranks give the merged rows the serial order. An input that fails to decode has no
dossier; the worker of its partition dead-letters it, before the batch handles any input and at
the clock the batch starts with, as the serial batch does, and its dead letter is ordered in the
outbox by rank among the batch's others (`PHASE_DECODE`). Consumer positions are kept per
partition by the worker that reads it, as the serial replay keeps them, and merged in the order
the serial replay first wrote them.

**When producers did not co-partition.** Co-partitioning is the producers' promise, not
something a replay can enforce. Each worker reports the dossier codes its decoded inputs name
(with a partition) and digests of their (source, id) keys, the other thing the engine looks up
across dossiers (a second use of an id is a conflict). If any code or key shows up in two
workers, the parallel result could differ from the serial one, so it is discarded (nothing has
reached the target yet) and the partitions are replayed serially, from the same offsets, with a
warning in the report naming a dossier: the serial replay is right for any keying, and the
operator asked for a rebuilt database, not for an audit of the producers; what is lost is
the parallel run's time. A difference in partition counts between the topics is caught before
reading, with the same fallback.

Reading: every record of a worker's partitions is held until the batch that applies it, as the
serial replay holds all of them; events are decoded batch by batch, just before the batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from multiprocessing.connection import Connection as Pipe
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine

from consumers.ordering import event_time
from dossier.composition import load_registry_of
from dossier.replay.parallel import (
    Decoded,
    Fold,
    Prepared,
    ShardResult,
    add_results,
    attach_limit,
    coordinate,
    fold_batches,
    merge_shards,
    receive,
    run_worker,
    scan_limit,
    start_workers,
    write_shard,
)
from dossier.replay.serial import (
    EARLIEST,
    REPLAY_GROUP,
    PartitionOffsets,
    Progress,
    ReplayReport,
    inbound_offsets,
    prepare_target,
    read_partitions,
    replay_kafka_serial,
)
from dossier.settings import Settings
from engine.application.ports import Position
from engine.application.service import RawInput
from engine.events import INBOUND_TOPICS, DeadLetterReason, InputRejected
from schemas.codec import ContractCodec

log = logging.getLogger(__name__)

_MICROSECOND = timedelta(microseconds=1)
# A time a day before `EARLIEST` (an offset east of UTC) still gives a non-negative field.
_DAY_US = 86_400 * 1_000_000
_TAG_BITS = 8  # the worker's number in the low bits of the keys it sends
_MAX_WORKERS = 1 << _TAG_BITS


def order_key(at: datetime | None, topic_rank: int, partition: int, offset: int) -> int:
    """`merged()`'s heap key (event time or `EARLIEST`, topic, partition, offset) as one int,
    ordered the same way: `topic_rank` is the topic's place among the topics' sorted names."""
    micros = ((at or EARLIEST) - EARLIEST) // _MICROSECOND + _DAY_US  # by instant, as `<`
    return (((micros << 8 | topic_rank) << 32 | partition) << 64) | offset


def merge_keys(records: Sequence[Any], topic_rank: int, partition: int) -> list[int]:
    """The serial-order key of each record of one partition, in offset order: the greatest
    `order_key` so far in the partition, then the record's offset (see the module docstring).
    Records of all partitions sorted by these keys are in `merged()`'s order."""
    keys: list[int] = []
    greatest = -1
    for record in records:
        key = order_key(event_time(record.value), topic_rank, partition, record.offset)
        greatest = max(greatest, key)
        keys.append(greatest << 64 | record.offset)
    return keys


def serial_owners(keys: Iterable[Sequence[int]]) -> bytes:
    """For each place in the serial order, the worker whose input it is, from every worker's
    tagged keys in its own order."""
    mask = _MAX_WORKERS - 1
    return bytes(key & mask for key in sorted(chain.from_iterable(keys)))


def partition_count_problem(offsets: PartitionOffsets) -> str | None:
    """Why the topics cannot be co-partitioned, or None: they must have as many partitions."""
    counts = Counter(topic for topic, _ in offsets)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{topic}: {n}" for topic, n in sorted(counts.items()))
        return f"the inbound topics have different partition counts ({listed})"
    return None


def _digest(source: str, event_id: str) -> int:
    text = f"{source}\x00{event_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaShardJob:
    settings: Settings
    shard: int
    shards: int
    offsets: PartitionOffsets  # this worker's partitions of every topic
    contract: dict[str, str]  # topic as consumed -> contract topic
    topic_rank: dict[str, int]
    batch_size: int
    group: str
    notice_scan_limit: int | None
    scratch: str  # the worker's SQLite file


@dataclass(frozen=True)
class KafkaShardResult(ShardResult):
    codes: dict[str, int]  # dossier code -> a partition an input for it came from
    event_keys: set[int]  # digests of the (source, id) of every event decoded


def run_kafka_shard(job: KafkaShardJob, pipe: Pipe) -> None:
    """A worker process's entry point."""
    run_worker(_fold_kafka_shard, job, pipe)


def _fold_kafka_shard(job: KafkaShardJob, pipe: Pipe) -> KafkaShardResult:
    records = read_partitions(
        job.settings, job.offsets, client_id=f"dossier-replay-{job.shard}-of-{job.shards}"
    )
    keyed: list[tuple[int, RawInput]] = []
    for (topic, partition), items in records.items():
        contract = job.contract[topic]
        keys = merge_keys(items, job.topic_rank[topic], partition)
        keyed.extend(
            (
                key,
                RawInput(
                    contract_topic=contract,
                    position=Position(topic, partition, r.offset),
                    key=r.key,
                    value=r.value,
                    headers=tuple(r.headers or ()),
                ),
            )
            for key, r in zip(keys, items, strict=True)
        )
    records.clear()
    keyed.sort(key=itemgetter(0))
    pipe.send(("read", [key << _TAG_BITS | job.shard for key, _ in keyed]))
    # Loaded while the other workers finish reading and the parent orders the keys.
    fold = Fold.create(
        job.settings,
        job.group,
        job.notice_scan_limit,
        source="kafka",
        positions=True,
        reuse_by_value=False,
    )
    owners: bytes = pipe.recv()
    ranks = [rank for rank, owner in enumerate(owners, 1) if owner == job.shard]
    if len(ranks) != len(keyed):  # pragma: no cover - a protocol bug
        raise RuntimeError(f"{len(ranks)} ranks for {len(keyed)} inputs")
    pending = deque(zip(ranks, (raw for _, raw in keyed), strict=True))
    del keyed, ranks
    codes: dict[str, int] = {}
    event_keys: set[int] = set()
    batches = -(-len(owners) // job.batch_size)
    shares = _shares(pending, batches, job.batch_size, job.settings, codes, event_keys)
    fold_batches(fold, pipe, shares)
    write_shard(Path(job.scratch), fold.store, fold.tracker)
    return KafkaShardResult(fold.report.inputs, fold.report.outcomes, codes, event_keys)


def _shares(
    pending: deque[tuple[int, RawInput]],
    batches: int,
    batch_size: int,
    settings: Settings,
    codes: dict[str, int],
    event_keys: set[int],
) -> Iterator[list[Prepared]]:
    """This worker's inputs of each serial batch, decoded (the parent needs the share's latest
    event time before the batch); what they name is noted for the co-partitioning check."""
    decoder = ContractCodec(settings.max_message_bytes)
    # The serial batch refuses a bad signature while decoding, before any input is handled:
    # refused here too, the worker's order tracker files its dead letter in that phase.
    verifier = load_registry_of(settings)
    for index in range(batches):
        end = (index + 1) * batch_size  # the last rank of the batch
        share: list[Prepared] = []
        while pending and pending[0][0] <= end:
            rank, raw = pending.popleft()  # released once folded: memory goes down as we go
            decoded: Decoded
            try:
                decoded = decoder.decode(raw.value, raw.contract_topic, key=raw.key)
            except InputRejected as rejection:
                decoded = rejection
            else:
                check = verifier.check_signature(decoded, raw.value, raw.headers)
                if check.refused is not None:
                    decoded = InputRejected(DeadLetterReason.UNAUTHENTICATED, check.refused)
                else:
                    codes.setdefault(decoded.subject, raw.position.partition or 0)
                    event_keys.add(_digest(decoded.source, decoded.id))
            share.append((rank, raw, decoded))
        yield share


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


def replay_from_kafka_parallel(
    settings: Settings,
    target: Engine,
    *,
    since: datetime | None = None,
    batch_size: int = 5000,
    group: str = REPLAY_GROUP,
    workers: int | None = None,
    notice_scan_limit: int | None = None,
    scratch_dir: Path | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """`replay_from_kafka` in `workers` processes (default: one per core); same result. Runs
    serially, with a warning in the report, when the topics turn out not to be co-partitioned
    by dossier code."""
    prepare_target(target)
    started = time.perf_counter()
    offsets = inbound_offsets(settings, since)
    partitions = {p for _, p in offsets}
    wanted = workers or os.cpu_count() or 1
    shards = min(wanted, len(partitions), attach_limit(), _MAX_WORKERS)
    problem = partition_count_problem(offsets)
    serial = dict(
        batch_size=batch_size, group=group, notice_scan_limit=notice_scan_limit, progress=progress
    )
    if problem is not None or shards <= 1:
        return _serially(settings, target, offsets, started, problem, **serial)
    topic_rank = {topic: n for n, topic in enumerate(sorted({t for t, _ in offsets}))}
    contract = {settings.topic(t): t for t in INBOUND_TOPICS}
    limit = scan_limit(notice_scan_limit)
    with tempfile.TemporaryDirectory(prefix="dossier-replay-", dir=scratch_dir) as scratch:
        paths = [Path(scratch) / f"shard-{k}.db" for k in range(shards)]
        jobs = [
            KafkaShardJob(
                settings,
                k,
                shards,
                {slot: span for slot, span in offsets.items() if slot[1] % shards == k},
                contract,
                topic_rank,
                batch_size,
                group,
                notice_scan_limit,
                str(path),
            )
            for k, path in enumerate(paths)
        ]
        with start_workers(run_kafka_shard, jobs) as (pipes, processes):
            keys = [
                receive(pipe, process, "read")
                for pipe, process in zip(pipes, processes, strict=True)
            ]
            read = time.perf_counter()
            owners = serial_owners(keys)
            del keys
            for pipe in pipes:
                pipe.send(owners)
            batches = -(-len(owners) // batch_size)
            results, clock = coordinate(pipes, processes, batches, limit, progress)
            folded = time.perf_counter()
        shared = shared_between_workers(cast(list[KafkaShardResult], results))
        if shared is not None:
            return _serially(settings, target, offsets, started, shared, **serial)
        report = ReplayReport("kafka", batches=batches, workers=shards)
        add_results(report, results)
        merge_shards(target, paths, clock, progress)
    report.seconds = time.perf_counter() - started
    log.info(
        "replayed %d inputs from Kafka in %d workers (%s inputs each): started and read in"
        " %.1f s, folded in %.1f s, merged in %.1f s",
        report.inputs,
        shards,
        "/".join(str(r.inputs) for r in results),
        read - started,
        folded - read,
        started + report.seconds - folded,
    )
    return report


def shared_between_workers(results: Sequence[KafkaShardResult]) -> str | None:
    """What two workers' inputs have in common (a dossier, an event id), or None."""
    seen: dict[str, tuple[int, int]] = {}
    for k, result in enumerate(results):
        for code, partition in result.codes.items():
            first = seen.setdefault(code, (k, partition))
            if first[0] != k:
                return f"dossier {code} has inputs in partition {first[1]} and in {partition}"
    distinct = set[int]().union(*(r.event_keys for r in results))
    if len(distinct) < sum(len(r.event_keys) for r in results):
        return "one event (source, id) is carried by partitions read by different workers"
    return None


def _serially(
    settings: Settings,
    target: Engine,
    offsets: PartitionOffsets,
    started: float,
    problem: str | None,
    **options: Any,
) -> ReplayReport:
    warning = None
    if problem is not None:
        warning = (
            f"the inbound topics are not co-partitioned by dossier code ({problem}; see"
            " docs/CONTRACT.md, Partitioning): replayed serially"
        )
        log.warning(warning)
    report = replay_kafka_serial(settings, target, offsets, **options)
    if warning is not None:
        report.warnings.append(warning)
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "KafkaShardJob",
    "KafkaShardResult",
    "merge_keys",
    "order_key",
    "partition_count_problem",
    "replay_from_kafka_parallel",
    "serial_owners",
    "shared_between_workers",
]
