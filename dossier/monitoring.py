"""Prometheus metrics of the engine and the Decision 766 indicators.

Three kinds of source, each read the cheapest way it can be:

- **Events the process sees** (inputs, dead letters, transitions, notices, discounts, latencies,
  published outputs) are counters and histograms fed by `Runtime.batch_listeners` and the
  outbox relay's `on_published` hook. They restart from 0 with the process, as counters may.
- **State that lives in the database** (open and overdue dossiers, outbox backlog, parked
  inputs, the engine clock) is read at scrape time by `DatabaseState`: a few aggregate queries
  over indexes, cached for a few seconds, so a restart shows the true figures at once and a
  scrape's cost does not follow the number of dossiers stored.
- **Slower figures** (consumer lag, which asks Kafka; the indicators, which read every dossier
  of their window) are computed by a background thread (`Refreshed`); scrapes read the last
  result and never wait for Kafka or a long query.

Labels are bounded: topics, partitions, outcomes, reasons, procedure groups, status codes,
levels and agency codes. Never a dossier code, a person or free text (Decree 13/2023).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine as DbEngine

from engine import indicators as ind
from engine.application.ports import OutboxMessage
from engine.application.service import BatchResult, RawInput
from engine.calendar import WorkingCalendar
from engine.events import INBOUND_TOPICS, OUTBOUND_TOPICS
from engine.registry import LEVELS
from engine.store import queries
from schemas.codec import DeadLetterReason

log = logging.getLogger(__name__)

# `_created` series double the exposition and tell nothing a counter reset does not.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

OUTCOMES = ("applied", "duplicate", "parked", "dead_lettered")
DEAD_LETTER_REASONS = tuple(reason.value for reason in DeadLetterReason)
NOTICE_KINDS = ("deadline-warning", "overdue")
STATUS_CODES = tuple(range(1, 11))
# Status codes whose clock is not running: waiting for the applicant (5), and resolved (9:
# the agency's work is done, only the return is left). Final codes are not open at all.
CLOCK_STOPPED_CODES = (5, 9)
ERROR_SOURCES = ("database", "kafka", "indicators", "listener")

# Wall-clock buckets (seconds). Event time → applied spans clock skew up to a late producer;
# a replay of old events lands in +Inf, which is the truth in wall-clock terms.
EVENT_TO_APPLIED_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600,
)  # fmt: skip
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

INDICATOR_WINDOW_DAYS = 30
STATE_CACHE_SECONDS = 5.0
LAG_INTERVAL_SECONDS = 5.0
INDICATORS_MIN_INTERVAL_SECONDS = 5.0
INDICATORS_MAX_INTERVAL_SECONDS = 60.0


def new_registry(*, process: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def register_build_info(registry: CollectorRegistry, role: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("dossier-engine")
    except PackageNotFoundError:  # running from a source tree that was never installed
        release = "unknown"
    Info("dossier_build", "Build of the running dossier-engine.", registry=registry).info(
        {"version": release, "python": platform.python_version(), "role": role}
    )


def errors_counter(registry: CollectorRegistry) -> Counter:
    counter = Counter(
        "dossier_metrics_errors",
        "Failures to compute a metric, by what failed; those series are stale until it works.",
        ["source"],
        registry=registry,
    )
    for source in ERROR_SOURCES:
        counter.labels(source)
    return counter


# ---------------------------------------------------------------------------------------------
# Events the process sees
# ---------------------------------------------------------------------------------------------


class CommitMarks:
    """When each outbox row was committed, to time commit → publish without a column for it.

    After every batch the listener records (highest outbox id, monotonic time); the relay
    publishes rows in id order, so a published row's commit time is that of the first mark
    covering its id. Rows the relay publishes before their mark is recorded (a race of a few
    milliseconds) wait in `_early` and count as published at once. Rows another engine process
    committed are covered by this one's next mark; `_early` is bounded in case none comes.
    """

    EARLY_LIMIT = 10_000

    def __init__(self, baseline_id: int = 0) -> None:
        self._ids: deque[int] = deque()
        self._times: deque[float] = deque()
        self._floor = baseline_id  # rows up to here were committed before this process
        self._early: list[int] = []
        self._lock = threading.Lock()

    def committed(self, max_id: int, at: float) -> list[float]:
        """Record a commit; latencies of rows already published that it covers."""
        with self._lock:
            if max_id <= self._floor or (self._ids and max_id <= self._ids[-1]):
                return []
            self._ids.append(max_id)
            self._times.append(at)
            covered = [i for i in self._early if i <= max_id]
            self._early = [i for i in self._early if i > max_id]
            return [0.0] * len(covered)

    def published(self, ids: Iterable[int], at: float) -> list[float]:
        with self._lock:
            latencies: list[float] = []
            for row_id in sorted(ids):
                if row_id <= self._floor:
                    continue
                # Marks wholly below this id are fully published: rows go out in id order.
                while self._ids and self._ids[0] < row_id:
                    self._floor = self._ids.popleft()
                    self._times.popleft()
                if self._ids:
                    latencies.append(max(0.0, at - self._times[0]))
                else:
                    self._early.append(row_id)
            del self._early[: -self.EARLY_LIMIT]
            return latencies


class EngineMetrics:
    """Counters and histograms of committed batches and published outputs."""

    def __init__(
        self,
        registry: CollectorRegistry,
        groups: Iterable[str],
        *,
        errors: Counter | None = None,
        max_outbox_id: Callable[[], int] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._max_outbox_id = max_outbox_id
        self._errors = errors or errors_counter(registry)
        self.marks = CommitMarks(max_outbox_id() if max_outbox_id is not None else 0)
        r = registry
        self.inputs = Counter(
            "dossier_inputs",
            "Consumed inputs by contract topic and what became of them.",
            ["topic", "outcome"],
            registry=r,
        )
        self.redelivered = Counter(
            "dossier_inputs_redelivered",
            "Inputs delivered again at a position already committed (after a crash or"
            " rebalance), skipped.",
            registry=r,
        )
        self.reprocessed = Counter(
            "dossier_batches_reprocessed",
            "Batches computed ahead (write-behind) whose staged writes could not be committed,"
            " processed again the plain way: conflicts with another engine process, database"
            " errors.",
            registry=r,
        )
        self.unparked = Counter(
            "dossier_inputs_unparked",
            "Parked inputs that became applicable (or definitely not) after their dossier moved.",
            registry=r,
        )
        self.dead_letters = Counter(
            "dossier_dead_letters",
            "Inputs dead-lettered, by the contract's reason.",
            ["reason"],
            registry=r,
        )
        self.transitions = Counter(
            "dossier_transitions",
            "State changes applied, by procedure group and the status code reached.",
            ["group", "status_code"],
            registry=r,
        )
        self.notices = Counter(
            "dossier_deadline_notices",
            "Deadline notices emitted: deadline-warning (one working day left) and overdue.",
            ["kind"],
            registry=r,
        )
        self.handovers = Counter(
            "dossier_handovers",
            "Dossiers handed to an ended agency's successor (contract 1.1, Handover), by the"
            " level of the agency that ended and of its successor.",
            ["from_level", "to_level"],
            registry=r,
        )
        self.migrations = Counter(
            "dossier_workflow_migrations",
            "Open dossiers moved to another workflow version by a migration plan"
            " (workflows/migrations), by procedure group.",
            ["group"],
            registry=r,
        )
        self.discounts = Counter(
            "dossier_fee_discounts_granted",
            "Online fee discounts granted, by procedure group.",
            ["group"],
            registry=r,
        )
        self.discount_vnd = Counter(
            "dossier_fee_discounts_vnd",
            "Fee amounts waived by the discounts granted, in VND, by procedure group.",
            ["group"],
            registry=r,
        )
        self.published_outputs = Counter(
            "dossier_outputs_published",
            "Outputs the relay published and the broker acknowledged, by contract topic.",
            ["topic"],
            registry=r,
        )
        self.event_to_applied = Histogram(
            "dossier_event_to_applied_seconds",
            "Wall-clock time from an applied input's event time to its commit. Business time"
            " of replayed or late events makes this large: read it for live traffic only.",
            buckets=EVENT_TO_APPLIED_BUCKETS,
            registry=r,
        )
        self.consumed_to_committed = Histogram(
            "dossier_consumed_to_committed_seconds",
            "Wall-clock time from a consumed batch reaching the engine to its commit, per batch.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.committed_to_published = Histogram(
            "dossier_committed_to_published_seconds",
            "Wall-clock time from an output's commit to the broker's acknowledgement, per output.",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dossier_batch_inputs",
            "Inputs per committed batch (batches with no input are not counted).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        # Every known series exists from the start at 0, so that rate() and increase() see
        # the first event of a kind, and the exposition's size is fixed by the catalogue.
        for topic in INBOUND_TOPICS:
            for outcome in OUTCOMES:
                self.inputs.labels(topic, outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for kind in NOTICE_KINDS:
            self.notices.labels(kind)
        for former in LEVELS:
            for new in LEVELS:
                self.handovers.labels(former, new)
        for group in sorted(set(groups)):
            self.migrations.labels(group)
            self.discounts.labels(group)
            self.discount_vnd.labels(group)
            for code in STATUS_CODES:
                self.transitions.labels(group, str(code))
        for topic in OUTBOUND_TOPICS:
            self.published_outputs.labels(topic)

    def batch_committed(
        self, inputs: Sequence[RawInput], result: BatchResult, elapsed: float
    ) -> None:
        """The `Runtime.batch_listeners` callback. Never raises: the batch is committed
        already, and an exception here would make the consumer retry it."""
        try:
            self._count(inputs, result, elapsed)
        except Exception:
            log.exception("metrics listener failed")
            self._errors.labels("listener").inc()

    def _count(self, inputs: Sequence[RawInput], result: BatchResult, elapsed: float) -> None:
        for (topic, outcome), n in result.outcomes.items():
            self.inputs.labels(topic, outcome).inc(n)
        for reason, n in result.dead_letters.items():
            self.dead_letters.labels(reason).inc(n)
        for (group, code), n in result.transitions.items():
            self.transitions.labels(group, str(code)).inc(n)
        for kind, n in result.notices.items():
            self.notices.labels(kind).inc(n)
        for (former, new), n in result.handovers.items():
            self.handovers.labels(former, new).inc(n)
        for group, n in result.migrations.items():
            self.migrations.labels(group).inc(n)
        for group, n in result.discounts_granted.items():
            self.discounts.labels(group).inc(n)
        for group, vnd in result.discount_vnd.items():
            self.discount_vnd.labels(group).inc(vnd)
        if result.redelivered:
            self.redelivered.inc(result.redelivered)
        if result.unparked:
            self.unparked.inc(result.unparked)
        if result.reprocessed:
            self.reprocessed.inc()
        if inputs:
            self.batch_size.observe(len(inputs))
            self.consumed_to_committed.observe(elapsed)
        now = self._wall_clock()
        for event_time in result.applied_event_times:
            self.event_to_applied.observe(max(0.0, (now - event_time).total_seconds()))
        if self._max_outbox_id is not None and (
            result.applied_event_times
            or result.dead_letters
            or result.notices
            or result.handovers
            or result.migrations
        ):
            committed_at = self._monotonic()
            for latency in self.marks.committed(self._max_outbox_id(), committed_at):
                self.committed_to_published.observe(latency)

    def published(self, messages: Sequence[OutboxMessage]) -> None:
        """The outbox relay's `on_published` hook. Never raises, as above."""
        self.published_rows([(m.id, m.topic) for m in messages])

    def published_rows(
        self, rows: Sequence[tuple[int | None, str]], at: float | None = None
    ) -> None:
        """(outbox id, contract topic) of published rows, acknowledged at monotonic time `at`
        (now if None): what a relay in another process reports. Never raises, as above."""
        try:
            at = self._monotonic() if at is None else at
            for _, topic in rows:
                self.published_outputs.labels(topic).inc()
            ids = [row_id for row_id, _ in rows if row_id is not None]
            for latency in self.marks.published(ids, at):
                self.committed_to_published.observe(latency)
        except Exception:
            log.exception("metrics relay hook failed")
            self._errors.labels("listener").inc()


def max_outbox_id_reader(db: DbEngine) -> Callable[[], int]:
    def read() -> int:
        with db.connect() as connection:
            return queries.last_outbox_id(connection)

    return read


# ---------------------------------------------------------------------------------------------
# State in the database, read at scrape time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateSnapshot:
    open: dict[tuple[int, str], int]  # (status code, level) -> dossiers not final
    overdue: dict[tuple[int, str], int]  # of those, past their appointment with the clock running
    outbox_unsent: int
    parked: int
    clock: datetime | None
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome)


def read_state(db: DbEngine, group: str | None = None) -> StateSnapshot:
    """A few aggregate queries in one snapshot; the open dossiers are counted from an index."""
    with db.connect() as connection:
        clock = queries.business_clock(connection)
        open_: dict[tuple[int, str], int] = {}
        late: dict[tuple[int, str], int] = {}
        for key, (count, overdue) in queries.open_dossiers(connection, clock).items():
            open_[key] = count
            late[key] = 0 if key[0] in CLOCK_STOPPED_CODES else overdue
        unsent = queries.outbox_backlog(connection)
        parked = queries.parked_count(connection)
        outcomes = queries.outcome_counts(connection, group) if group is not None else {}
    return StateSnapshot(open_, late, unsent, parked, clock, outcomes)


class DatabaseState(Collector):
    """Gauges of what the database holds now, cached for `ttl` seconds between scrapes."""

    def __init__(
        self,
        db: DbEngine,
        *,
        group: str | None = None,
        ttl: float = STATE_CACHE_SECONDS,
        errors: Counter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._group = group
        self._ttl = ttl
        self._errors = errors
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: StateSnapshot | None = None
        self._cached_at = float("-inf")
        # A (status, level) once seen stays, at 0 when empty, rather than vanishing: a gauge
        # that disappears reads as "unknown", not as "none".
        self._seen: set[tuple[int, str]] = set()

    def snapshot(self) -> StateSnapshot | None:
        with self._lock:
            now = self._monotonic()
            if self._cached is None or now - self._cached_at >= self._ttl:
                try:
                    self._cached = read_state(self._db, self._group)
                    self._cached_at = now
                    self._seen.update(self._cached.open)
                except Exception as exc:
                    # Every scrape retries: a traceback each time would drown the log.
                    log.warning("reading the engine state for metrics failed: %s", exc)
                    log.debug("details", exc_info=True)
                    if self._errors is not None:
                        self._errors.labels("database").inc()
                    self._cached = None
            return self._cached

    def series(self) -> list[tuple[int, str]]:
        with self._lock:  # scrapes run in parallel threads
            return sorted(self._seen)

    def describe(self) -> Iterator[Metric]:
        # Described without querying, so registering this never touches the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is None:
            return
        yield from self._families(snapshot, self.series())

    def _families(
        self, s: StateSnapshot | None = None, series: Iterable[tuple[int, str]] = ()
    ) -> Iterator[Metric]:
        open_family = GaugeMetricFamily(
            "dossier_dossiers_open",
            "Dossiers not in a final state, by status code and the level now handling them.",
            labels=["status_code", "level"],
        )
        overdue_family = GaugeMetricFamily(
            "dossier_dossiers_overdue",
            "Open dossiers past their appointment by the engine clock, clock not stopped"
            " (neither waiting for supplementation nor resolved), by status code and level.",
            labels=["status_code", "level"],
        )
        unsent = GaugeMetricFamily(
            "dossier_outbox_unsent_messages", "Committed outputs not yet acknowledged by Kafka."
        )
        parked = GaugeMetricFamily(
            "dossier_parked_inputs", "Inputs waiting for their dossier to reach a state they fit."
        )
        clock = GaugeMetricFamily(
            "dossier_engine_clock_timestamp_seconds",
            "The engine clock (latest business time applied, or wall time in wall-clock mode).",
        )
        outcomes = GaugeMetricFamily(
            "dossier_input_outcomes",
            "Inputs the consumer group ever consumed, by contract topic and final outcome,"
            " committed with the positions: exact across restarts; a parked input applied or"
            " dead-lettered later has moved out of parked.",
            labels=["topic", "outcome"],
        )
        if s is not None:
            for key in series:
                labels = [str(key[0]), key[1]]
                open_family.add_metric(labels, s.open.get(key, 0))
                overdue_family.add_metric(labels, s.overdue.get(key, 0))
            unsent.add_metric([], s.outbox_unsent)
            parked.add_metric([], s.parked)
            if s.clock is not None:
                clock.add_metric([], s.clock.timestamp())
            if self._group is not None:
                for topic in INBOUND_TOPICS:
                    for outcome in OUTCOMES:
                        count = s.outcomes.get((topic, outcome), 0)
                        outcomes.add_metric([topic, outcome], count)
        yield from (open_family, overdue_family, unsent, parked, clock, outcomes)


# ---------------------------------------------------------------------------------------------
# Slower figures, refreshed in the background
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


class Refreshed(Generic[T]):
    """A value recomputed by a daemon thread; readers get the latest and never wait.

    It is recomputed after `poke()` (a committed batch) or every `max_interval` seconds, but
    never sooner than `min_interval` after the last start, nor sooner than 20 times the last
    computation took: however large the database grows, this costs at most 5% of one core.
    """

    def __init__(
        self,
        name: str,
        compute: Callable[[], T],
        *,
        min_interval: float,
        max_interval: float,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._compute = compute
        self._min_interval = min_interval
        self._max_interval = max(max_interval, min_interval)
        self._on_error = on_error
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.value: T | None = None
        self.computed_at: float | None = None  # wall time of the last success
        self.last_duration: float | None = None

    def refresh(self) -> T | None:
        started = time.perf_counter()
        try:
            self.value = self._compute()
            self.computed_at = time.time()
        except Exception as exc:
            log.warning("refreshing %s metrics failed: %s", self.name, exc)
            log.debug("details", exc_info=True)
            if self._on_error is not None:
                self._on_error()
        self.last_duration = time.perf_counter() - started
        return self.value

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"metrics-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            pause = max(self._min_interval, 20 * (self.last_duration or 0.0))
            if self._stop.wait(pause):
                return
            self._wake.wait(max(0.0, self._max_interval - pause))
            self._wake.clear()


# --- consumer lag ------------------------------------------------------------------------------


class KafkaOffsets:
    """Log start and end offsets of the inbound topics; one consumer, owned by one thread."""

    def __init__(
        self,
        make_consumer: Callable[..., Any],
        topics: Sequence[str],
        timeout_s: float = 5.0,
    ):
        self._make_consumer = make_consumer  # dossier.kafka_clients.consumer, settings bound
        self._topics = list(topics)
        self._timeout_ms = int(timeout_s * 1000)
        self._consumer: Any = None

    def __call__(self) -> dict[tuple[str, int], tuple[int, int]]:
        from kafka import TopicPartition

        if self._consumer is None:
            self._consumer = self._make_consumer(
                client_id="dossier-engine-metrics",
                request_timeout_ms=max(self._timeout_ms, 1000),
            )
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in self._topics
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            starts = self._consumer.beginning_offsets(partitions, timeout_ms=self._timeout_ms)
            ends = self._consumer.end_offsets(partitions, timeout_ms=self._timeout_ms)
        except Exception:
            self.close()  # a fresh client next time, rather than one in an unknown state
            raise
        return {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in partitions}

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def consumer_lag(
    offsets: dict[tuple[str, int], tuple[int, int]], positions: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Messages on each partition not yet committed by the engine's database.

    The database's positions, not the broker's committed offsets, say what was processed
    (they commit with the state). A partition never consumed counts from its log start, which
    is where the engine would begin.
    """
    return {
        slot: max(0, end - max(positions.get(slot, 0), start))
        for slot, (start, end) in offsets.items()
    }


def lag_computer(
    db: DbEngine,
    group: str,
    offsets: Callable[[], dict[tuple[str, int], tuple[int, int]]],
) -> Callable[[], dict[tuple[str, int], int]]:
    def compute() -> dict[tuple[str, int], int]:
        ends = offsets()
        with db.connect() as connection:
            positions = queries.positions(connection, group)
        return consumer_lag(ends, positions)

    return compute


class LagCollector(Collector):
    def __init__(self, lag: Refreshed[dict[tuple[str, int], int]], topic_prefix: str) -> None:
        self._lag = lag
        self._prefix = topic_prefix

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "dossier_consumer_lag_messages",
            "Messages on an inbound partition beyond the position the engine committed.",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted((self._lag.value or {}).items()):
            family.add_metric([topic.removeprefix(self._prefix), str(partition)], lag)
        yield family


# --- indicators --------------------------------------------------------------------------------


def indicator_computer(
    db: DbEngine,
    calendar: WorkingCalendar,
    level_of: ind.LevelOf,
    window_days: int = INDICATOR_WINDOW_DAYS,
) -> Callable[[], ind.Report | None]:
    def compute() -> ind.Report | None:
        with db.connect() as connection:
            clock = queries.business_clock(connection)
            if clock is None:  # nothing applied yet: no period to speak of
                return None
            period = ind.Period.trailing(clock, window_days)
            return queries.indicator_report(connection, period, calendar, level_of)

    return compute


class IndicatorCollector(Collector):
    """The Decision 766 figures of the trailing window, one series per (indicator, agency,
    level) with a non-zero denominator: N/A is an absent series, not 0."""

    def __init__(self, report: Refreshed[ind.Report | None], window_days: int) -> None:
        self._report = report
        self._window_days = window_days

    def collect(self) -> Iterator[Metric]:
        labels = ["indicator", "agency", "level"]
        ratio = GaugeMetricFamily(
            "dossier_indicator_ratio",
            f"Decision 766 rate indicators (0-1) over the {self._window_days} days up to the"
            " engine clock, by receiving agency and its level.",
            labels=labels,
        )
        seconds = GaugeMetricFamily(
            "dossier_indicator_seconds",
            "Decision 766 time indicators in working seconds (8-hour days), pauses for"
            " supplementation excluded, same window and labels.",
            labels=labels,
        )
        denominators = GaugeMetricFamily(
            "dossier_indicator_dossiers",
            "Dossiers each indicator is computed over (its denominator), same window and labels.",
            labels=labels,
        )
        window = GaugeMetricFamily(
            "dossier_indicator_window_seconds", "Length of the indicators' trailing window."
        )
        window.add_metric([], self._window_days * 86400)
        end = GaugeMetricFamily(
            "dossier_indicator_window_end_timestamp_seconds",
            "End of the indicators' window: the engine clock when they were computed.",
        )
        computed = GaugeMetricFamily(
            "dossier_indicator_computed_timestamp_seconds",
            "Wall time the indicators were last computed.",
        )
        report = self._report.value
        if report is not None:
            end.add_metric([], report.period.end.timestamp())
            for group in report.agencies:
                for figure in group.figures.values():
                    value = figure.value
                    if value is None:
                        continue
                    series = [figure.indicator.key, group.agency, group.level]
                    target = ratio if figure.indicator.unit == "ratio" else seconds
                    target.add_metric(series, value)
                    denominators.add_metric(series, figure.denominator)
        if self._report.computed_at is not None:
            computed.add_metric([], self._report.computed_at)
        yield from (ratio, seconds, denominators, window, end, computed)


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------


@dataclass
class Monitoring:
    """A registry with its background refreshers and, once served, its HTTP server."""

    registry: CollectorRegistry
    errors: Counter
    refreshers: list[Refreshed[Any]]
    engine_metrics: EngineMetrics | None = None
    server: Any = None
    closers: tuple[Callable[[], None], ...] = ()

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start refreshing and serving /metrics; the address actually bound."""
        for refresher in self.refreshers:
            refresher.start()
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def batch_committed(
        self, inputs: Sequence[RawInput], result: BatchResult, elapsed: float
    ) -> None:
        if self.engine_metrics is not None:
            self.engine_metrics.batch_committed(inputs, result, elapsed)
        for refresher in self.refreshers:
            refresher.poke()

    def published(self, messages: list[OutboxMessage]) -> None:
        if self.engine_metrics is not None:
            self.engine_metrics.published(messages)

    def published_rows(self, rows: Sequence[tuple[int | None, str]], at: float) -> None:
        if self.engine_metrics is not None:
            self.engine_metrics.published_rows(rows, at)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for refresher in self.refreshers:
            refresher.stop()
        for close in self.closers:
            try:
                close()
            except Exception:  # shutting down: nothing left to protect
                log.debug("closing a metrics resource failed", exc_info=True)


def database_monitoring(
    db: DbEngine,
    calendar: WorkingCalendar,
    level_of: ind.LevelOf,
    *,
    role: str,
    group: str | None = None,
    window_days: int = INDICATOR_WINDOW_DAYS,
    registry: CollectorRegistry | None = None,
) -> Monitoring:
    """What can be known from the database alone: `dossier metrics serve`, and part of `run`.

    `group` is the engine's consumer group, whose input outcomes the database counts."""
    registry = registry if registry is not None else new_registry()
    register_build_info(registry, role)
    errors = errors_counter(registry)
    registry.register(DatabaseState(db, group=group, errors=errors))
    report: Refreshed[ind.Report | None] = Refreshed(
        "indicators",
        indicator_computer(db, calendar, level_of, window_days),
        min_interval=INDICATORS_MIN_INTERVAL_SECONDS,
        max_interval=INDICATORS_MAX_INTERVAL_SECONDS,
        on_error=errors.labels("indicators").inc,
    )
    registry.register(IndicatorCollector(report, window_days))
    return Monitoring(registry, errors, [report])


def engine_monitoring(runtime: Any, make_consumer: Callable[..., Any]) -> Monitoring:
    """Everything `dossier run` exports; `runtime` is a `dossier.composition.Runtime`,
    `make_consumer` builds the Kafka consumer that reads the inbound topics' offsets."""
    settings = runtime.settings
    engine = runtime.decider
    monitoring = database_monitoring(
        runtime.db,
        engine.calendar,
        ind.receiving_levels(engine.catalogue),
        role="engine",
        group=settings.consumer_group,
    )
    errors = monitoring.errors
    groups = {v.group for v in engine.catalogue.all_versions()}
    monitoring.engine_metrics = EngineMetrics(
        monitoring.registry,
        groups,
        errors=errors,
        max_outbox_id=max_outbox_id_reader(runtime.db),
    )
    offsets = KafkaOffsets(make_consumer, [settings.topic(t) for t in INBOUND_TOPICS])
    lag: Refreshed[dict[tuple[str, int], int]] = Refreshed(
        "consumer-lag",
        lag_computer(runtime.db, settings.consumer_group, offsets),
        min_interval=LAG_INTERVAL_SECONDS,
        max_interval=LAG_INTERVAL_SECONDS,
        on_error=errors.labels("kafka").inc,
    )
    monitoring.registry.register(LagCollector(lag, settings.topic_prefix))
    monitoring.refreshers.append(lag)
    monitoring.closers = (*monitoring.closers, offsets.close)
    runtime.batch_listeners.append(monitoring.batch_committed)
    return monitoring


__all__ = [
    "CommitMarks",
    "DatabaseState",
    "EngineMetrics",
    "IndicatorCollector",
    "LagCollector",
    "Monitoring",
    "Refreshed",
    "consumer_lag",
    "database_monitoring",
    "engine_monitoring",
    "new_registry",
    "read_state",
]
