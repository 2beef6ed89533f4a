"""`dossier demo`: the main job. A month of a province's dossiers through the whole system.

Starts the local Kafka broker and the engine (`dossier run`, as a child process, on a fresh
SQLite database in this run's directory, or in a fresh schema of the PostgreSQL database that
DOSSIER_DATABASE_URL names), plays the province's agencies and portals with the deterministic
simulator on topics of its own (a fresh prefix, so runs never mix), waits until the engine has
taken every input and published every output, then prints the summary and writes an HTML
report. The simulated days before `--from` (`--warm-up-days`) fill the engine with work in
progress, so the reported month starts the way a real one does: with a backlog.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import secrets
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dossier.commands.simulate import (
    UsageError,
    WorkloadSpec,
    add_workload_arguments,
    build_workload,
    new_progress,
    spec_from_args,
    stop_on_interrupt,
    workload_meta,
    write_manifest,
)
from dossier.settings import Settings, default_state_dir

if TYPE_CHECKING:  # the report's modules load only when a run reaches its summary
    from dossier.tools.report.summary import Fates

# A quarter of the seed province's monthly dossiers: on this two-core machine the whole job
# stays well within five minutes even while other work competes for the cores (measured at
# 665 to 1,175 events/s), and every shape of the month is there.
DEFAULT_SCALE = 0.25
DEFAULT_WARM_UP_DAYS = 10
EXIT_CHECKS_FAILED = 1
EXIT_FAILED = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: a month of a province's work through Kafka and the engine, "
        "with a summary and an HTML report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--warm-up-days",
        type=int,
        default=DEFAULT_WARM_UP_DAYS,
        help=f"days simulated before --from and not reported (default {DEFAULT_WARM_UP_DAYS})",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where the database, logs, manifest and report go (default: a new directory "
        "under the state directory)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the engine (and its metrics endpoint) running after the report, until Ctrl-C",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="do not delete this run's Kafka topics"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for the engine, in seconds"
    )
    parser.add_argument(
        "--pace",
        choices=("stream", "causal"),
        default="stream",
        help="stream: publish everything in time order and let the engine order it across "
        "topics; causal: each agency acts only once the engine took the dossier's previous step",
    )
    parser.add_argument(
        "--plaintext",
        dest="secure",
        action="store_false",
        help="on the local PLAINTEXT broker, for a quick look; by default the run is on the "
        "local secure broker (`dossier kafka up --secure`: TLS, SASL/SCRAM, ACLs), the engine "
        "logged in as `engine`, the simulated systems as `simulator`, the run's topics and ACLs "
        "made, and removed after, by the broker's super user",
    )
    parser.add_argument("--secure", dest="secure", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(secure=True)
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------


@dataclass
class Phases:
    """Wall time per step, printed at the end and kept in the report."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def free_port(host: str, preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port: an engine already running
    on this machine keeps its metrics port, and this one gets another."""
    if preferred == 0:
        return 0
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    return 0


def isolated_database(settings: Settings, run_dir: Path, run_id: str) -> tuple[str, str, str]:
    """(URL, migration URL, description): a fresh schema in the configured PostgreSQL, else a
    fresh SQLite file in the run's directory, so a run never meets another run's dossiers.
    The schema is made by the owner (DOSSIER_MIGRATION_DATABASE_URL when set: the engine's
    role may create nothing), whose URL onto it the engine migrates with; '' when the same."""
    from sqlalchemy import make_url, text

    configured = make_url(settings.database_url)
    if settings.database_url != Settings().database_url and configured.get_backend_name() == (
        "postgresql"
    ):
        from engine.store.sql import create_db_engine

        schema = f"demo_{run_id.replace('-', '_')}"
        admin = create_db_engine(settings.migration_url)
        try:
            with admin.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            admin.dispose()
        options = {"options": f"-csearch_path={schema}"}
        url = configured.update_query_dict(options)
        migration = ""
        if settings.migration_database_url:
            owner = make_url(settings.migration_database_url).update_query_dict(options)
            migration = owner.render_as_string(hide_password=False)
        shown = url.render_as_string(hide_password=True)
        return (
            url.render_as_string(hide_password=False),
            migration,
            f"PostgreSQL schema {schema} ({shown})",
        )
    path = run_dir / "engine.db"
    return f"sqlite:///{path}", "", f"SQLite {path}"


def warmed_up(spec: WorkloadSpec, days: int) -> WorkloadSpec:
    """The same month, with `days` more of submissions before it, at the same daily rate."""
    if days <= 0:
        return spec
    reported = (spec.end - spec.start).days
    extra = round(spec.dossiers * days / max(1, reported))
    return replace(spec, start=spec.start - timedelta(days=days), dossiers=spec.dossiers + extra)


class EngineWatch:
    """The engine's committed input count, polled in the background for the progress bar."""

    def __init__(self, positions: Any, progress: Any, task: Any) -> None:
        self.positions = positions
        self.progress = progress
        self.task = task
        self.consumed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self) -> int:
        self.consumed = sum(self.positions().values())
        self.progress.update(self.task, completed=self.consumed)
        return self.consumed

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def scrape(url: str, target: Path) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            target.write_bytes(response.read())
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------


def run(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:
        spec = spec_from_args(args, default_scale=DEFAULT_SCALE)
    except UsageError as exc:
        print(f"dossier demo: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(settings, args, spec, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130


def _run(settings: Settings, args: argparse.Namespace, spec: WorkloadSpec, console: Any) -> int:
    from dossier import kafka_clients
    from dossier.audit_keys import keygen
    from dossier.tools.causal import DatabasePositions, publish_following, publish_stream
    from dossier.tools.report import html, load
    from dossier.tools.report.summary import hostile_checks, print_summary
    from dossier.tools.simulation import manifest
    from dossier.tools.supervision import EngineProcess, wait_caught_up
    from dossier.tools.workload import create_input_producer
    from engine import indicators as ind
    from engine.calendar import WorkingCalendar
    from engine.events import ALL_TOPICS
    from engine.procedures import load_catalogue

    phases = Phases()
    run_id = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    run_dir: Path = args.run_dir or default_state_dir() / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    database_url, migration_url, database_shown = isolated_database(settings, run_dir, run_id)
    metrics_port = free_port(settings.metrics_host, settings.metrics_port)
    # The engine signs its audit checkpoints with a key of this run (dossier audit keygen);
    # the closing verification checks them with its public half.
    signing_key = run_dir / "audit-signing.key"
    key_id = keygen(signing_key, force=True)
    demo = replace(
        settings,
        topic_prefix=f"demo-{run_id}.",
        consumer_group=f"demo-{run_id}",
        database_url=database_url,
        migration_database_url=migration_url,
        metrics_port=metrics_port,
        audit_signing_key_file=signing_key,
    )
    metrics_url = f"http://{settings.metrics_host}:{metrics_port}/metrics" if metrics_port else ""
    reported = spec
    spec = warmed_up(spec, args.warm_up_days)
    console.rule(f"[bold]dossier demo: {spec.profile.name}, run {run_id}")
    console.print(f"run directory: {run_dir}")

    publisher = admin = auditor = demo
    granted: list[Any] = []
    with phases("kafka"):
        console.print("[bold]1/5[/] local Kafka broker" + (" (secure)" if args.secure else ""))
        if kafka_clients.local_broker("up", settings, secure=args.secure) != 0:
            return EXIT_FAILED
        if args.secure:
            broker = kafka_clients.secure_broker_settings(settings)
            admin = kafka_clients.super_user_settings(broker, onto=demo)
            kafka_clients.ensure_contract_topics(admin)
            granted = kafka_clients.authorize(broker, demo)
            publisher = kafka_clients.principal_settings(broker, "simulator", onto=demo)
            # Operators read the checkpoint topic (deploy/kafka-principals.yaml).
            auditor = kafka_clients.principal_settings(broker, "operator", onto=demo)
            demo = kafka_clients.principal_settings(broker, "engine", onto=demo)
        else:
            kafka_clients.ensure_contract_topics(demo)
    topics = [demo.topic(t) for t in ALL_TOPICS]
    engine = EngineProcess(demo, run_dir / "engine.log")
    positions = DatabasePositions(demo.database_url, demo.consumer_group)
    try:
        console.print(f"[bold]2/5[/] engine on {database_shown}")
        engine.start()
        with phases("workload"):
            with console.status(
                f"[bold]3/5[/] simulating {reported.dossiers:,} dossiers from "
                f"{reported.start:%d %b} to {reported.end - timedelta(days=1):%d %b %Y} "
                f"(+{args.warm_up_days} days of warm-up, seed {spec.seed}) ..."
            ):
                workload = build_workload(spec, demo)
                messages = workload.messages()
            content = manifest(
                messages,
                **spec.meta(),
                **workload_meta(workload),
                warm_up_days=args.warm_up_days,
                reported_from=reported.start.date().isoformat(),
                reported_to=(reported.end - timedelta(days=1)).date().isoformat(),
                topic_prefix=demo.topic_prefix,
            )
            write_manifest(run_dir / "manifest.json", content)
        console.print(
            f"[bold]3/5[/] simulated {content['dossiers']:,} dossiers, "
            f"{len(messages):,} messages ({_expected_line(content)})"
        )
        with phases("publish and process"):
            console.print(
                "[bold]4/5[/] publishing; each agency acts once the engine has taken the "
                "dossier's previous step"
                if args.pace == "causal"
                else "[bold]4/5[/] publishing the month in time order, as fast as Kafka takes it"
            )
            progress = new_progress()
            engine_task = progress.add_task("engine", total=len(messages))
            watch = EngineWatch(positions, progress, engine_task)
            producer = create_input_producer(publisher)

            def engine_alive() -> None:
                if not engine.alive():
                    raise RuntimeError(f"the engine exited:\n{engine.log_tail()}")

            published_at = time.perf_counter()
            with progress, stop_on_interrupt() as stop:
                publish_task = progress.add_task("publishing", total=len(messages))
                watch.start()
                try:
                    if args.pace == "causal":
                        report = publish_following(
                            producer,
                            messages,
                            demo.topic,
                            positions,
                            stop=stop,
                            on_progress=lambda n: progress.advance(publish_task, n),
                            on_idle=engine_alive,
                        )
                    else:
                        report = publish_stream(
                            producer,
                            messages,
                            demo.topic,
                            stop=stop,
                            on_progress=lambda n: progress.advance(publish_task, n),
                        )
                finally:
                    producer.close()
                if report.stopped_early:
                    watch.stop()
                    console.print("[yellow]stopped: nothing more is published")
                    return 130
                while watch.poll() < len(messages) and not stop.is_set():
                    engine_alive()
                    if time.perf_counter() - published_at > args.timeout:
                        raise TimeoutError(f"the engine did not catch up in {args.timeout:.0f} s")
                    time.sleep(0.2)
                watch.stop()
            caught = wait_caught_up(demo, args.timeout, engine, poll_s=0.2)
            seconds = time.perf_counter() - published_at
        console.print(
            f"[bold]4/5[/] the engine took {caught.consumed:,} inputs in {seconds:.1f} s: "
            f"[bold]{caught.consumed / seconds:,.0f} events/s[/] "
            + (
                f" ({report.waits:,} actions waited for the engine to take the previous one)"
                if report.waits
                else ""
            )
        )
        if metrics_url:
            scrape(metrics_url, run_dir / "metrics.txt")
        with phases("audit"):
            audit_ok, audit_line = closing_audit(auditor, Path(f"{signing_key}.pub"))
        console.print(
            f"[bold]audit[/] {audit_line} (key {key_id})"
            if audit_ok
            else f"[red bold]audit[/] {audit_line}"
        )

        with phases("report"):
            catalogue = load_catalogue(demo.workflows_dir)
            calendar = WorkingCalendar.load()
            period = ind.Period(reported.start, reported.end)
            names = {a.code: a.name for a in spec.profile.agencies.info.values()}
            summary, data = load(
                demo.database_url,
                demo.consumer_group,
                catalogue,
                calendar,
                period,
                province=spec.profile.name,
                agency_names=names,
                manifest=content,
                seconds=seconds,
            )
            summary.timings = dict(phases.seconds)
            if content["hostile"]:
                summary.checks += hostile_checks(content, dead_letters_by_input(demo.database_url))
            details = {
                "run": run_id,
                "seed": str(spec.seed),
                "warm-up": f"{args.warm_up_days} days before {reported.start:%d %b}",
                "database": database_shown,
                "topics": f"{demo.topic_prefix}* on {demo.kafka_bootstrap_servers}",
                "engine log": str(run_dir / "engine.log"),
                **{f"time: {k}": f"{v:.1f} s" for k, v in phases.seconds.items()},
            }
            path = html.write(
                run_dir / "report.html",
                html.ReportContext(summary, data, calendar, catalogue, details),
            )
        _save_summary(run_dir, summary, run_id=run_id, database=database_shown)
        print_summary(console, summary)
        total = phases.total
        console.print(
            "timings: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in phases.seconds.items())
            + f"; total {total:.1f} s"
        )
        console.rule()
        console.print(f"[bold]report:[/]  {path}")
        console.print(f"[bold]run directory:[/] {run_dir} (manifest, summary.json, engine log)")
        if metrics_url:
            console.print(
                f"[bold]metrics:[/] {metrics_url} (served by the engine"
                + (
                    ", running until Ctrl-C)"
                    if args.keep_running
                    else f"; stopped now, last scrape in {run_dir / 'metrics.txt'})"
                )
            )
        failed = [c for c in summary.checks if not c.ok]
        if failed:
            console.print(
                f"[red bold]{len(failed)} accounting check(s) failed[/]: "
                + "; ".join(f"{c.name} {c.expected} != {c.actual}" for c in failed)
            )
        if args.keep_running:
            console.print("engine still running; Ctrl-C stops it")
            with stop_on_interrupt() as stop:
                while not stop.wait(1) and engine.alive():
                    pass
        return EXIT_CHECKS_FAILED if failed or not audit_ok else 0
    finally:
        engine.stop()
        positions.close()
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                kafka_clients.delete_topics(admin, topics)
        if granted:
            with contextlib.suppress(Exception):
                kafka_clients.revoke(admin, granted)


def closing_audit(settings: Settings, public_key: Path) -> tuple[bool, str]:
    """`dossier audit verify --public-key KEY --against-topic` on the run's database: every
    chain, every checkpoint's signature, and the checkpoints as published. (ok, one line)."""
    from dossier.audit_keys import public_keys, published_checkpoints
    from engine.store.audit import verify
    from engine.store.sql import create_db_engine

    db = create_db_engine(settings.database_url)
    try:
        result = verify(
            db,
            public_keys=public_keys([public_key]),
            published=lambda up_to: published_checkpoints(settings, up_to=up_to),
        )
    finally:
        db.dispose()
    line = (
        f"verify: {result.rows:,} history rows in {result.chains:,} chains;"
        f" {result.signed} of {result.checkpoints} checkpoints signed and verified,"
        f" {result.published} on the topic: {len(result.findings)} findings"
    )
    return result.ok, "; ".join([line, *(str(f) for f in result.findings[:5])])


def _expected_line(content: dict[str, Any]) -> str:
    expected = content["expected"]
    bad = sum(n for k, n in expected.items() if k not in ("valid", "duplicate"))
    hostile = sum(int(entry["count"]) for entry in content["hostile"].values())
    handovers = sum(int(n) for n in (content.get("handovers") or {}).values())
    migrations = sum(int(n) for n in (content.get("migrations") or {}).values())
    stranded = sum(int(n) for n in (content.get("stranded") or {}).values())
    return (
        f"{expected.get('duplicate', 0):,} duplicates, {bad:,} bad inputs, "
        f"{hostile:,} of them from hostile senders; {handovers:,} dossiers to be handed over, "
        f"{migrations:,} migrated, {stranded:,} stranded at a transfer to an ended agency"
    )


def dead_letters_by_input(database_url: str) -> dict[str, Counter[str]]:
    """The reasons the engine gave each input it dead-lettered, by the SHA-256 of the input's
    bytes (a dead letter carries them whole), for the accounting of the hostile inputs."""
    from dossier.tools.simulation import value_digest
    from engine.events import DLQ_TOPIC
    from engine.store.queries import outbox_messages
    from engine.store.sql import create_db_engine

    letters: dict[str, Counter[str]] = {}
    db = create_db_engine(database_url)
    try:
        with db.connect() as connection:
            for message in outbox_messages(connection, [DLQ_TOPIC]):
                data = json.loads(message.value)["data"]
                raw = base64.b64decode(data["original"]["value_base64"] or "")
                letters.setdefault(value_digest(raw), Counter())[str(data["reason"])] += 1
    finally:
        db.dispose()
    return letters


def _fates(fates: Fates) -> dict[str, int]:
    return {
        "dossiers": fates.dossiers,
        "finished": fates.finished,
        "returned": fates.returned,
        "resolved": fates.resolved,
        "closed": fates.closed,
        "open": fates.open,
    }


def _save_summary(run_dir: Path, summary: Any, *, run_id: str, database: str) -> None:
    """The summary's numbers as JSON, for scripts and the end-to-end test."""
    content = {
        "run": run_id,
        "database": database,
        "province": summary.province,
        "period": [summary.period.start.isoformat(), summary.period.end.isoformat()],
        "dossiers": summary.dossiers,
        "by_status": {str(code): count for code, _, count in summary.by_status},
        "indicators": {
            code: {"numerator": f.numerator, "denominator": f.denominator, "value": f.value}
            for code, f in summary.total.items()
        },
        "discounts": {
            "granted": summary.discounts_granted,
            "granted_vnd": summary.discount_vnd,
            "revoked": summary.discounts_revoked,
            "revoked_vnd": summary.revoked_vnd,
        },
        "dead_letters": dict(summary.dead_letters),
        "consumed": summary.consumed,
        "applied": summary.applied,
        # Contract 1.1, "Handover", over the whole run: by former → new level, what became of
        # the dossiers handed over; the workflow migrations by the versions' levels and what
        # became of the dossiers migrated; every history row (inputs applied + both).
        "handovers": dict(sorted(summary.handovers.items())),
        "handed_over": _fates(summary.handed_over),
        "migrations": dict(sorted(summary.migrations.items())),
        "migrated": _fates(summary.migrated),
        "history_rows": summary.history_rows,
        "duplicates": summary.duplicates,
        "parked": summary.parked,
        "seconds": summary.seconds,
        "events_per_second": summary.events_per_second,
        "timings": summary.timings,
        "checks": [
            {"name": c.name, "expected": c.expected, "actual": c.actual, "ok": c.ok}
            for c in summary.checks
        ],
    }
    (run_dir / "summary.json").write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
