"""What a Prometheus scrape of the engine costs, with 1,000 and with 100,000 dossiers stored.

    python bench/metrics_scrape.py [--dossiers 1000,100000] [--scrapes 50] [--all-open]

For each size, a fresh SQLite database is filled through the repository (40 agencies at two
levels, received over the 120 days before the engine clock, 10% still open unless
`--all-open`), and the registry `dossier run` serves is built on it: engine counters and
histograms (fed a few batches), the database gauges, the indicators and a consumer lag of 24
partitions (offsets given, no Kafka needed). Then it measures

- a cold scrape: `generate_latest` with the database cache expired, so it includes the
  aggregate queries (open and overdue dossiers, outbox, parked, clock);
- a warm scrape: within the cache's 5 seconds;
- an HTTP scrape: GET /metrics from the prometheus-client server, cold;
- the exposition's size and series count;
- the indicators' refresh, which runs in a background thread and never in a scrape, but reads
  every dossier of the 30-day window, so it is the one figure that follows the dossiers.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dossier import monitoring as m
from engine import indicators as ind
from engine.application.ports import ChangeSet, Position, StoredDossier
from engine.application.service import BatchResult, RawInput
from engine.calendar import WorkingCalendar
from engine.dossier import Dossier
from engine.events import INBOUND_TOPICS
from engine.procedures import load_catalogue
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine

CLOCK = datetime(2025, 6, 30, 10, 0, tzinfo=UTC)
COMMUNES = [f"000.00.{n:02d}.H56" for n in range(30, 60)]
PROVINCE = [f"000.00.{n:02d}.H56" for n in range(10)]
OPEN_CODES = (1, 2, 4, 5, 6, 9)


def dossiers(first: int, count: int, all_open: bool, rng: random.Random) -> list[Dossier]:
    made: list[Dossier] = []
    for n in range(first, first + count):
        province = n % 4 == 0
        agency = rng.choice(PROVINCE if province else COMMUNES)
        received = CLOCK - timedelta(seconds=rng.uniform(0, 120 * 86400))
        due = received + timedelta(days=rng.choice((1, 7, 30)))
        open_ = all_open or rng.random() < 0.1
        finished = None if open_ else received + timedelta(hours=rng.uniform(1, 400))
        status = rng.choice(OPEN_CODES) if open_ else 10
        made.append(
            Dossier(
                code=f"{agency}-{received:%y%m%d}-{n:06d}",
                procedure="1.004222" if not province else "P.BENCH",
                workflow_version=1,
                group="single-level",
                state="returned" if not open_ else "processing",
                status_code=status,
                level="province" if province else "commune",
                agency=agency,
                receiving_agency=agency,
                channel=rng.choice((1, 2, 2, 3)),
                full_online=rng.random() < 0.5,
                vneid_authenticated=rng.random() < 0.7,
                digitised=rng.random() < 0.9,
                applicant_kind="citizen",
                submitted_at=received - timedelta(minutes=30),
                last_event_at=finished or received,
                received_at=received,
                due_at=due,
                finished_at=finished,
                final=not open_,
                paid_online=rng.choice((None, True, False)),
                paused_seconds=rng.choice((0, 0, 0, 3600 * 8)),
            )
        )
    return made


def fill(url: str, count: int, all_open: bool) -> Any:
    db = create_db_engine(url)
    upgrade(db)
    rng = random.Random(20251127)
    batch = 5000
    for start in range(0, count, batch):
        chunk = dossiers(start, min(batch, count - start), all_open, rng)
        with SqlUnitOfWork(db) as uow:
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 0, None) for d in chunk]))
            uow.commit()
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(clock=CLOCK))
        uow.commit()
    return db


def registry_of(db: Any) -> tuple[m.Monitoring, m.DatabaseState]:
    catalogue = load_catalogue()
    monitoring = m.database_monitoring(
        db,
        WorkingCalendar.load(),
        ind.receiving_levels(catalogue),
        role="bench",
        group="dossier-engine",
    )
    state = next(
        c for c in monitoring.registry._collector_to_names if isinstance(c, m.DatabaseState)
    )
    engine_metrics = m.EngineMetrics(
        monitoring.registry,
        {v.group for v in catalogue.all_versions()},
        errors=monitoring.errors,
    )
    result = BatchResult(
        outcomes=Counter(
            {("dossier.commune", "applied"): 400, ("dossier.submission", "parked"): 3}
        ),
        dead_letters=Counter({"schema": 1}),
        transitions=Counter({("single-level", 4): 300, ("inter-level", 9): 100}),
        applied_event_times=[CLOCK] * 400,
    )
    inputs = [RawInput("dossier.commune", Position("t", 0, i), None, b"") for i in range(403)]
    for _ in range(20):
        engine_metrics.batch_committed(inputs, result, 0.02)
    offsets = {
        (topic, p): (0, 1000) for topic in INBOUND_TOPICS for p in range(6)
    }  # what KafkaOffsets would return for 4 topics of 6 partitions
    lag: m.Refreshed[dict[tuple[str, int], int]] = m.Refreshed(
        "lag", lambda: m.consumer_lag(offsets, {}), min_interval=5, max_interval=5
    )
    lag.refresh()
    monitoring.registry.register(m.LagCollector(lag, ""))
    return monitoring, state


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def expire(state: m.DatabaseState) -> None:
    state._cached_at = float("-inf")


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (
        f"median {statistics.median(times):6.2f} ms   p95 {p95:6.2f} ms   max {ordered[-1]:6.2f} ms"
    )


def measure(count: int, scrapes: int, all_open: bool, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    db = fill(f"sqlite:///{workdir / f'bench-{count}.db'}", count, all_open)
    filled = time.perf_counter() - started
    monitoring, state = registry_of(db)
    report = monitoring.refreshers[0]
    refresh_ms = timed(report.refresh, 5)
    registry = monitoring.registry

    def cold() -> bytes:
        expire(state)
        return generate_latest(registry)

    body = cold()
    cold_ms = timed(cold, scrapes)
    warm_ms = timed(lambda: generate_latest(registry), scrapes)
    host, port = monitoring.serve("127.0.0.1", 0)
    for refresher in monitoring.refreshers:
        refresher.stop()  # measure the scrape alone, not a concurrent refresh

    def http() -> bytes:
        expire(state)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            data: bytes = response.read()
            return data

    http_ms = timed(http, scrapes)
    monitoring.close()
    db.dispose()
    series = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    return {
        "count": count,
        "filled_s": filled,
        "cold": cold_ms,
        "warm": warm_ms,
        "http": http_ms,
        "bytes": len(body),
        "series": series,
        "refresh": refresh_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dossiers", default="1000,100000", help="comma-separated sizes")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--all-open", action="store_true", help="no dossier final (worst case)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.dossiers.split(",")]
    mix = "all open" if args.all_open else "10% open"
    print(f"SQLite, {mix}, {args.scrapes} scrapes each; median / p95 / max")
    results = []
    with tempfile.TemporaryDirectory(prefix="dossier-bench-") as tmp:
        for count in sizes:
            r = measure(count, args.scrapes, args.all_open, Path(tmp))
            results.append(r)
            print(f"\n{count:,} dossiers (stored in {r['filled_s']:.1f} s)")
            print(f"  scrape, cache expired (queries included)  {summary(r['cold'])}")
            print(f"  scrape, cached                            {summary(r['warm'])}")
            print(f"  HTTP GET /metrics, cache expired          {summary(r['http'])}")
            size = f"{r['bytes']:,} bytes, {r['series']:,} series"
            print(f"  exposition                                {size}")
            print(f"  indicators refresh (background thread)    {summary(r['refresh'])}")
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(
            f"\n{large['count']:,} vs {small['count']:,} dossiers: cold scrape x"
            f"{statistics.median(large['cold']) / statistics.median(small['cold']):.2f},"
            f" exposition {large['bytes'] - small['bytes']:+,} bytes"
            f" ({large['series'] - small['series']:+d} series)"
        )
    worst = max(max(r["http"]) for r in results)
    print(f"\nslowest HTTP scrape: {worst:.1f} ms (budget 50 ms): {'OK' if worst < 50 else 'OVER'}")
    return 0 if worst < 50 else 1


if __name__ == "__main__":
    sys.exit(main())
