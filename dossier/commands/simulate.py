"""`dossier simulate`: play a province's agencies and portals against Kafka, deterministically.

The same `--seed` (and options) always gives the same messages, byte for byte: each is labelled
with the outcome the engine must reach ("valid", "duplicate" or a dead-letter reason), and the
manifest written at the end counts them by topic, so a run can be checked against the engine's
database afterwards. Publishing goes at `--rate` messages/s or as fast as the broker takes
them, with a progress bar; Ctrl-C stops cleanly (what was sent is flushed and counted).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from dossier.settings import Settings, default_state_dir
from dossier.tools.simulation import (
    HOSTILE_KINDS,
    HOSTILE_REASONS,
    Hostile,
    ProvinceProfile,
    SimulatedMessage,
    Workload,
    encode_jsonl,
    manifest,
)
from engine.calendar import VN_TZ

EXIT_INTERRUPTED = 130
DEFAULT_FROM = "2025-06-16"
DEFAULT_TO = "2025-07-15"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="publish a deterministic workload of a province's dossiers to Kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="messages per second (default: as fast as possible)",
    )
    parser.add_argument(
        "--manifest", type=Path, default=None, help="where to write the manifest JSON"
    )
    parser.add_argument(
        "--write",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="write the messages to a file (one JSON line each) instead of publishing",
    )
    parser.set_defaults(func=run)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="same seed, same messages (default 1)")
    parser.add_argument(
        "--from",
        dest="start",
        default=DEFAULT_FROM,
        help=f"first day of submissions, YYYY-MM-DD (default {DEFAULT_FROM})",
    )
    parser.add_argument(
        "--to",
        dest="end",
        default=DEFAULT_TO,
        help=f"last day of submissions, inclusive (default {DEFAULT_TO}, spanning 1 July 2025)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dossiers", type=int, default=None, help="number of dossiers submitted")
    size.add_argument(
        "--scale",
        type=float,
        default=None,
        help="share of the province's real volume (default 1: its monthly dossiers, pro rata)",
    )
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.005,
        help="inputs followed by a bad one (malformed, schema, unknown procedure, ...)",
    )
    parser.add_argument(
        "--duplicate-share", type=float, default=0.01, help="inputs sent twice (default 0.01)"
    )
    parser.add_argument(
        "--reorder-share",
        type=float,
        default=0.02,
        help="a dossier's actions on different topics arriving swapped (default 0.02)",
    )
    parser.add_argument(
        "--hostile",
        action="append",
        default=[],
        metavar="KIND=SHARE",
        help="how often a hostile sender (contract 1.1) strikes: the share of the inputs a kind "
        "can be made from that get one; 'all=SHARE' sets every kind; repeatable. Kinds (and "
        "the dead-letter reason each must get): "
        + ", ".join(f"{k} ({r})" for k, r in HOSTILE_REASONS.items())
        + ". Default: each a small multiple of --bad-share",
    )
    parser.add_argument(
        "--play-to-end",
        action="store_true",
        help="play every dossier to its end, even after --to (default: stop the clock at --to)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="province profile YAML (default: Thái Nguyên)"
    )


# ---------------------------------------------------------------------------------------------
# Building the workload
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSpec:
    seed: int
    start: datetime
    end: datetime  # exclusive: the first instant after --to
    dossiers: int
    bad_share: float
    duplicate_share: float
    reorder_share: float
    play_to_end: bool
    profile: ProvinceProfile
    hostile: Hostile = field(default_factory=Hostile)

    def meta(self) -> dict[str, Any]:
        return {
            "province": self.profile.name,
            "seed": self.seed,
            "from": self.start.date().isoformat(),
            "to": (self.end - timedelta(days=1)).date().isoformat(),
            "requested_dossiers": self.dossiers,
            "bad_share": self.bad_share,
            "duplicate_share": self.duplicate_share,
            "reorder_share": self.reorder_share,
            "hostile_shares": self.hostile.as_dict(),
            "played_to_end": self.play_to_end,
        }


class UsageError(ValueError):
    pass


def spec_from_args(args: argparse.Namespace, default_scale: float = 1.0) -> WorkloadSpec:
    try:
        first, last = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError as exc:
        raise UsageError(f"--from/--to must be dates (YYYY-MM-DD): {exc}") from None
    if last < first:
        raise UsageError(f"--to {last} is before --from {first}")
    for name in ("bad_share", "duplicate_share", "reorder_share"):
        value = getattr(args, name)
        if not 0 <= value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    hostile = hostile_from_args(args.hostile, args.bad_share)
    profile = ProvinceProfile.load(args.profile)
    start = datetime.combine(first, datetime.min.time(), VN_TZ)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), VN_TZ)
    if args.dossiers is not None:
        if args.dossiers < 1:
            raise UsageError("--dossiers must be at least 1")
        dossiers = args.dossiers
    else:
        scale = default_scale if args.scale is None else args.scale
        if scale <= 0:
            raise UsageError("--scale must be positive")
        days = (end - start).days
        dossiers = max(1, round(profile.monthly_total * days / 30 * scale))
    return WorkloadSpec(
        seed=args.seed,
        start=start,
        end=end,
        dossiers=dossiers,
        bad_share=args.bad_share,
        duplicate_share=args.duplicate_share,
        reorder_share=args.reorder_share,
        play_to_end=args.play_to_end,
        profile=profile,
        hostile=hostile,
    )


def hostile_from_args(items: Sequence[str], bad_share: float) -> Hostile:
    """The defaults (relative to --bad-share), then each --hostile KIND=SHARE in order."""
    hostile = Hostile.relative_to(bad_share)
    for item in items:
        kind, equals, raw = item.partition("=")
        kind = kind.strip()
        if not equals or (kind != "all" and kind not in HOSTILE_REASONS):
            raise UsageError(
                f"--hostile takes KIND=SHARE with KIND 'all' or one of {', '.join(HOSTILE_KINDS)}; "
                f"got {item!r}"
            )
        try:
            share = float(raw)
        except ValueError:
            raise UsageError(f"--hostile {item!r}: the share must be a number") from None
        if not 0 <= share < 1:
            raise UsageError(f"--hostile {item!r}: the share must be in [0, 1)")
        for one in HOSTILE_KINDS if kind == "all" else (kind,):
            hostile = hostile.with_share(one, share)
    return hostile


def build_messages(spec: WorkloadSpec, settings: Settings) -> list[SimulatedMessage]:
    return build_workload(spec, settings).messages()


def build_workload(spec: WorkloadSpec, settings: Settings) -> Workload:
    """The spec's workload; its `messages()`, then what it expects of the engine beyond them
    (`expected_handovers`, `stranded_dossiers`, `expected_migrations`: `workload_meta`)."""
    from engine.calendar import WorkingCalendar
    from engine.procedures import load_catalogue

    catalogue = load_catalogue(settings.workflows_dir)
    return Workload(
        catalogue,
        WorkingCalendar.load(),
        seed=spec.seed,
        start=spec.start,
        end=spec.end,
        dossiers=spec.dossiers,
        shares=None,
        duplicate_share=spec.duplicate_share,
        bad_share=spec.bad_share,
        reorder_share=spec.reorder_share,
        hostile=spec.hostile,
        profile=spec.profile,
        until=None if spec.play_to_end else spec.end,
    )


def workload_meta(workload: Workload) -> dict[str, Any]:
    """What a played workload expects beyond its messages, as `manifest`'s keywords."""
    return {
        "handovers": workload.expected_handovers(),
        "stranded": workload.stranded_dossiers(),
        "migrations": workload.expected_migrations(),
    }


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------


@contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (or SIGTERM) instead of an exception in the middle of a send."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclass
class Published:
    sent: int
    seconds: float
    stopped_early: bool


def publish_with_progress(
    settings: Settings,
    messages: Sequence[SimulatedMessage],
    *,
    rate: float | None,
    stop: threading.Event,
    progress: Any | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Published:
    """Send every message to its deployed topic; a rich Progress shows how far it got."""
    from dossier.tools.workload import create_input_producer, publish

    own = progress is None
    if progress is None:
        progress = new_progress()
    task = progress.add_task("publishing", total=len(messages))

    def advance(n: int) -> None:
        progress.advance(task, n)
        if on_tick is not None:
            on_tick()

    producer = create_input_producer(settings)
    try:
        if own:
            progress.start()
        report = publish(
            producer, messages, settings.topic, rate=rate, stop=stop, on_progress=advance
        )
    finally:
        producer.close()
        if own:
            progress.stop()
    return Published(report.sent, report.seconds, report.stopped_early)


def new_progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def ensure_topics(settings: Settings) -> str | None:
    """Create the contract topics (with the prefix) where missing; None or what went wrong."""
    from dossier import kafka_clients

    try:
        kafka_clients.ensure_contract_topics(settings)
    except Exception as exc:  # kafka-python raises many types; all mean "cannot create"
        return f"cannot create the topics on {settings.kafka_bootstrap_servers}: {exc}"
    return None


def write_manifest(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------


def run(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        spec = spec_from_args(args)
    except UsageError as exc:
        print(f"dossier simulate: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with console.status(f"generating {spec.dossiers:,} dossiers (seed {spec.seed}) ..."):
        workload = build_workload(spec, settings)
        messages = workload.messages()
    console.print(
        f"generated {len(messages):,} messages for {spec.dossiers:,} dossiers "
        f"in {time.perf_counter() - started:.1f} s"
    )
    meta = spec.meta() | {"topic_prefix": settings.topic_prefix} | workload_meta(workload)
    if args.write is not None:
        out = sys.stdout.buffer if str(args.write) == "-" else args.write.open("wb")
        try:
            for line in encode_jsonl(messages):
                out.write(line)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        content = manifest(messages, **meta)
        target = args.manifest or Path(f"{args.write}.manifest.json")
        if str(args.write) != "-":
            write_manifest(target, content)
            console.print(f"messages: {args.write}\nmanifest: {target}")
        return 0

    problem = ensure_topics(settings)
    if problem is not None:
        print(f"dossier simulate: {problem}", file=sys.stderr)
        return 1
    with stop_on_interrupt() as stop:
        published = publish_with_progress(settings, messages, rate=args.rate, stop=stop)
    sent = messages[: published.sent]
    content = manifest(sent, **meta) | {
        "generated_messages": len(messages),
        "stopped_early": published.stopped_early,
    }
    target = args.manifest or default_manifest_path(settings, spec.seed)
    write_manifest(target, content)
    rate = published.sent / published.seconds if published.seconds > 0 else 0.0
    console.print(
        f"{'stopped: ' if published.stopped_early else ''}sent {published.sent:,} of "
        f"{len(messages):,} messages to {settings.kafka_bootstrap_servers} "
        f"(prefix {settings.topic_prefix or 'none'!r}) in {published.seconds:.1f} s, "
        f"{rate:,.0f}/s"
    )
    console.print(f"manifest: {target}")
    return EXIT_INTERRUPTED if published.stopped_early else 0


def default_manifest_path(settings: Settings, seed: int) -> Path:
    prefix = settings.topic_prefix.rstrip(".") or "default"
    return default_state_dir() / "simulations" / f"{prefix}-seed{seed}.manifest.json"
