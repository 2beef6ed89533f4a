"""`dossier run`: consume the inbound topics, apply, commit, publish; until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from dossier.gc_tuning import tune_for_batches
from dossier.logs import configure_logging
from dossier.settings import Settings

if TYPE_CHECKING:
    from dossier.composition import Runtime
    from dossier.monitoring import Monitoring

log = logging.getLogger("dossier.run")

EXIT_UNREACHABLE = 2
# Not started: stored dossiers are pinned to workflow versions the catalogue does not have.
EXIT_CATALOGUE_INCOMPLETE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the engine (consumer, outbox relay, metrics)")
    parser.set_defaults(func=run)


def check_kafka(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """None if the broker answers and the inbound topics exist; otherwise what is wrong."""
    from kafka.errors import KafkaError

    from dossier import kafka_clients
    from engine.events import INBOUND_TOPICS

    try:
        with kafka_clients.admin(
            settings,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="dossier-engine-check",
        ) as admin:
            existing = set(admin.list_topics())
    except (KafkaError, OSError) as exc:
        return f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({exc})"
    missing = [settings.topic(t) for t in INBOUND_TOPICS if settings.topic(t) not in existing]
    if missing:
        return f"inbound topics missing on {settings.kafka_bootstrap_servers}: {', '.join(missing)}"
    return None


def check_database(settings: Settings) -> str | None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from engine.store.sql import create_db_engine

    db = create_db_engine(settings.database_url)
    try:
        with db.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        where = db.url.render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc
        return f"database {where} is unreachable ({type(cause).__name__}: {cause})"
    finally:
        db.dispose()
    return None


def run(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(settings.log_level, settings.log_format)
    for problem in (check_database(settings), check_kafka(settings)):
        if problem is not None:
            print(f"dossier run: {problem}", file=sys.stderr)
            return EXIT_UNREACHABLE

    import faust

    from consumers.faust_app import build_app
    from dossier.audit_keys import AuditKeyError
    from dossier.composition import MigrationRefused, Runtime, consumer_config
    from engine.procedures import WorkflowError
    from engine.registry import RegistryError
    from engine.store.grants import GrantError
    from engine.store.privacy import PrivacyKeyError

    try:
        runtime = Runtime.create(settings)
    except (WorkflowError, RegistryError) as exc:
        # Every problem with its file and path, not a traceback: the data is the operator's.
        print(f"dossier run: {exc}", file=sys.stderr)
        return EXIT_CATALOGUE_INCOMPLETE
    except (AuditKeyError, PrivacyKeyError) as exc:
        # A signing key set but unusable: refuse to start rather than write unsigned evidence;
        # a privacy secret that does not open the stored keys: rather than seal under another.
        print(f"dossier run: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (MigrationRefused, GrantError) as exc:
        # The engine's role may not migrate, nor be given privileges it would have to own.
        print(f"dossier run: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    missing = runtime.missing_versions()
    if missing:
        runtime.close()
        print(catalogue_incomplete(missing, settings), file=sys.stderr)
        return EXIT_CATALOGUE_INCOMPLETE
    monitoring = None
    if settings.metrics_port:
        from dossier import kafka_clients
        from dossier.monitoring import engine_monitoring

        monitoring = engine_monitoring(runtime, functools.partial(kafka_clients.consumer, settings))
        try:
            host, port = monitoring.serve(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            # An engine nobody can watch is not started: the operator asked for the endpoint.
            print(
                f"dossier run: cannot serve metrics on"
                f" {settings.metrics_host}:{settings.metrics_port} ({exc})",
                file=sys.stderr,
            )
            monitoring.close()
            runtime.close()
            return EXIT_UNREACHABLE
        log.info("metrics on http://%s:%d/metrics", host, port)
    runtime.warm_up()
    tune_for_batches(settings.gc_young_threshold)
    relay = _start_relay(settings, runtime, monitoring)
    app = build_app(consumer_config(settings), runtime.committer)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    log.info(
        "engine consuming %s as group %s; database %s",
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        runtime.db.url.render_as_string(hide_password=True),
    )
    exit_code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        exit_code = int(exc.code or 0)
    finally:
        relay.stop()
        if monitoring is not None:
            monitoring.close()
        runtime.close()
        log.info("engine stopped")
    return exit_code


def catalogue_incomplete(missing: list[tuple[str, int, int]], settings: Settings) -> str:
    lines = [
        f"dossier run: the catalogue in {settings.workflows_dir or 'the shipped workflows'} lacks"
        f" {len(missing)} workflow version(s) that stored dossiers are pinned to; restore them"
        " (or migrate the dossiers) before starting:"
    ]
    lines += [f"  {code} v{version}: {count} dossier(s)" for code, version, count in missing]
    return "\n".join(lines)


class _Relay(Protocol):
    def stop(self, timeout_s: float = 60.0) -> None: ...


def _start_relay(settings: Settings, runtime: Runtime, monitoring: Monitoring | None) -> _Relay:
    """The outbox relay, in a child process (the default) or in a thread of this one."""
    if settings.relay_mode == "process":
        from dossier.composition import relay_for_child
        from producers.relay_process import RelayProcess

        child = RelayProcess(
            functools.partial(relay_for_child, settings),
            monitoring.published_rows if monitoring is not None else None,
        )
        runtime.outbox_wake = child
        child.start()
        log.info("outbox relay in process %s", child.pid)
        return child
    return _RelayThread(settings, runtime, monitoring)


class _RelayThread:
    def __init__(self, settings: Settings, runtime: Runtime, monitoring: Monitoring | None) -> None:
        from dossier.composition import build_relay

        self._wake = threading.Event()
        runtime.outbox_wake = self._wake
        self._job = build_relay(
            settings,
            runtime.db,
            on_published=monitoring.published if monitoring is not None else None,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._job.run,
            args=(self._stop, self._wake),
            name="outbox-relay",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        self._job.close()
