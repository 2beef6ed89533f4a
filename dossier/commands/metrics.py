"""`dossier metrics serve|show`: the database's metrics and indicators without an engine.

`dossier run` serves everything on its own endpoint; this is for when no engine runs (a
reporting replica, a stopped engine, a replayed database) or for a one-off look.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from dossier.settings import Settings

if TYPE_CHECKING:
    from dossier.monitoring import Monitoring
    from engine.indicators import LevelOf


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "metrics", help="serve or print the database's metrics and Decision 766 indicators"
    )
    actions = parser.add_subparsers(dest="metrics_action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve /metrics until interrupted")
    serve.add_argument("--host", default=None, help="address (default: DOSSIER_METRICS_HOST)")
    serve.add_argument(
        "--port", type=int, default=None, help="port (default: DOSSIER_METRICS_PORT; 0: any free)"
    )
    show = actions.add_parser("show", help="print one exposition (Prometheus text format)")
    for action in (serve, show):
        action.add_argument(
            "--window-days",
            type=int,
            default=None,
            help="days of the indicators' window, up to the engine clock (default: 30)",
        )
    serve.set_defaults(func=run_serve)
    show.set_defaults(func=run_show)


def level_resolver(settings: Settings) -> LevelOf:
    """Receiving levels from the catalogue; without one, dossiers keep their current level."""
    from engine.indicators import receiving_levels
    from engine.procedures import WorkflowError, load_catalogue

    try:
        return receiving_levels(load_catalogue(settings.workflows_dir))
    except WorkflowError as exc:
        print(
            f"dossier: the catalogue does not load ({len(exc.problems)} problems); indicators"
            " use the level each dossier is at",
            file=sys.stderr,
        )
        return lambda _procedure, _version: None


def build(settings: Settings, window_days: int | None) -> tuple[Monitoring, Any]:
    from dossier.monitoring import INDICATOR_WINDOW_DAYS, database_monitoring
    from engine.calendar import WorkingCalendar
    from engine.store.sql import create_db_engine

    db = create_db_engine(settings.database_url)
    monitoring = database_monitoring(
        db,
        WorkingCalendar.load(),
        level_resolver(settings),
        role="standalone",
        group=settings.consumer_group,
        window_days=window_days or INDICATOR_WINDOW_DAYS,
    )
    return monitoring, db


def run_show(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import generate_latest

    monitoring, db = build(settings, args.window_days)
    try:
        for refresher in monitoring.refreshers:
            refresher.refresh()
        sys.stdout.write(generate_latest(monitoring.registry).decode("utf-8"))
    finally:
        db.dispose()
    return 0


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    host = args.host or settings.metrics_host
    if args.port is None and not settings.metrics_port:
        print(
            "dossier metrics: DOSSIER_METRICS_PORT=0 disables metrics; pass --port", file=sys.stderr
        )
        return 2
    # An explicit --port 0 asks the system for a free port; the address is printed.
    port = settings.metrics_port if args.port is None else args.port
    monitoring, db = build(settings, args.window_days)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        bound_host, bound_port = monitoring.serve(host, port)
    except OSError as exc:
        print(f"dossier metrics: cannot serve on {host}:{port} ({exc})", file=sys.stderr)
        monitoring.close()
        db.dispose()
        return 2
    print(f"serving http://{bound_host}:{bound_port}/metrics", flush=True)
    try:
        stop.wait()
    finally:
        monitoring.close()
        db.dispose()
    return 0
