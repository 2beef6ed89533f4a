"""`dossier workflows check|show|import|migrate`: validate the catalogue, print a procedure or
its diagram, build procedure definitions from a province's procedure list (CSV), and show what
a migration plan would do to the database's open dossiers (`migrate --dry-run`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dossier.settings import Settings
from engine.calendar import CalendarDataError, WorkingCalendar
from engine.machine import CompiledWorkflow
from engine.procedures import STATUS_LABELS, Catalogue, WorkflowError, load_catalogue

if TYPE_CHECKING:
    from engine.procedures import MigrationPlan

# Refused dossiers' codes shown per state; an operator needs examples, not the whole list.
SHOWN_CODES = 10


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("workflows", help="check and show procedure definitions")
    commands = parser.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")
    check = commands.add_parser("check", help="load and validate every definition")
    check.add_argument("--dir", type=str, default=None, help="definitions directory")
    check.set_defaults(func=run_check)
    show = commands.add_parser("show", help="print one procedure's versions")
    show.add_argument("code", help="procedure code, e.g. DD.GCN.LD")
    show.add_argument("--version", type=int, default=None, help="only this version")
    show.add_argument("--mermaid", action="store_true", help="print a Mermaid state diagram")
    show.add_argument("--dir", type=str, default=None, help="definitions directory")
    show.set_defaults(func=run_show)
    imp = commands.add_parser(
        "import",
        help="build procedure definitions from a province's procedure list (CSV)",
        description=(
            "Each CSV row is one version of a procedure, instantiated from a workflow template; "
            "the result is one YAML file, <OUT>/<csv name>.yaml. Codes already defined in "
            "another file of the catalogue are skipped. A version that ends the day before "
            "the next starts, from the same template, gets a migration plan in "
            "<OUT>/../migrations/<csv name>.yaml. Columns: see "
            "dossier/tools/catalogue_import.py."
        ),
    )
    imp.add_argument("csv", metavar="FILE.csv", help="the procedure list")
    imp.add_argument(
        "--out", default=None, help="directory of the YAML file (default: <dir>/procedures)"
    )
    imp.add_argument(
        "--dir", default=None, help="definitions directory with templates/ (default: shipped)"
    )
    imp.set_defaults(func=run_import)
    migrate = commands.add_parser(
        "migrate",
        help="what a migration plan would do to the open dossiers (--dry-run; changes nothing)",
        description=(
            "Validates FILE's plans against the catalogue and counts the database's open "
            "dossiers each would move (old state -> new state) and refuse (a state the plan "
            "does not map: the dossier stays whole on its version). Plans are installed under "
            "workflows/migrations/ and applied by the engine at business time; this command "
            "never changes anything. Exit 0: nothing refused; 1: some dossiers would be "
            "refused; 2: an invalid plan or no --dry-run."
        ),
    )
    migrate.add_argument("--plan", required=True, metavar="FILE", help="a migration plan file")
    migrate.add_argument(
        "--dry-run", action="store_true", help="count what the plan would move and refuse"
    )
    migrate.add_argument("--dir", default=None, help="definitions directory")
    migrate.set_defaults(func=run_migrate)


def _load(settings: Settings, directory: str | None) -> Catalogue:
    from pathlib import Path

    root = Path(directory) if directory else settings.workflows_dir
    return load_catalogue(root)


def run_check(settings: Settings, args: argparse.Namespace) -> int:
    try:
        catalogue = _load(settings, args.dir)
        WorkingCalendar.load()  # the official-days file is part of the definitions
    except WorkflowError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    except CalendarDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    procedures = catalogue.codes()
    print(f"ok: {len(procedures)} procedures, {len(catalogue)} versions")
    return 0


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from dossier.tools.catalogue_import import CatalogueImportError, import_catalogue
    from engine.procedures import default_workflows_dir

    root = Path(args.dir) if args.dir else (settings.workflows_dir or default_workflows_dir())
    out = Path(args.out) if args.out else None
    try:
        result = import_catalogue(Path(args.csv), root, out)
    except CatalogueImportError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; nothing written", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"ok: {len(result.procedures)} procedures, {result.version_count} versions "
        f"written to {result.output}"
    )
    print(f"ok: {len(result.plans)} migration plan(s) written to {result.plans_output}")
    for draft in result.plans:
        if draft.left_out:
            print(
                f"note: {draft.code} v{draft.from_version} -> v{draft.to_version} leaves out "
                f"{', '.join(draft.left_out)}: those dossiers would be refused"
            )
    for no_plan in result.no_plans:
        print(
            f"note: {no_plan.code} v{no_plan.from_version} -> v{no_plan.to_version}: no plan, "
            f"{no_plan.reason}"
        )
    if result.skipped:
        where = sorted(set(result.skipped.values()))
        print(
            f"skipped {len(result.skipped)} code(s) already defined in {', '.join(where)}: "
            f"{', '.join(sorted(result.skipped))}"
        )
    return 0


def run_show(settings: Settings, args: argparse.Namespace) -> int:
    try:
        catalogue = _load(settings, args.dir)
    except WorkflowError as exc:
        print(f"error: the catalogue is invalid:\n{exc}", file=sys.stderr)
        return 1
    versions = [
        v
        for v in catalogue.versions(args.code)
        if args.version is None or v.version == args.version
    ]
    if not versions:
        print(f"error: no procedure {args.code!r} (version {args.version})", file=sys.stderr)
        return 1
    from engine.decider import GUARDS

    for version in versions:
        if args.mermaid:
            print(CompiledWorkflow(version, GUARDS).mermaid())
            continue
        until = version.effective_to or "open end"
        print(f"{version.code} v{version.version}: {version.name}")
        print(f"  in force {version.effective_from} .. {until}; from {version.source_file}")
        print(
            f"  levels {' -> '.join(version.levels)}; receives at {version.receiving_level}, "
            f"returns at {version.returning_level}; template {version.template or '-'}"
        )
        deadline = version.deadline
        split = ", ".join(f"{k} {v}" for k, v in deadline.per_level.items())
        print(
            f"  deadline {deadline.working_days} working days"
            f"{f' ({split})' if split else ''}; supplementation: {deadline.supplementation}"
        )
        for fee in version.fees.values():
            print(f"  fee {fee.code}: {fee.amount:,} VND {fee.name}")
        for rule in version.discounts:
            size = f"{rule.percent}%" if rule.percent is not None else f"{rule.amount:,} VND"
            window = f"{rule.valid_from or '...'} .. {rule.valid_to or '...'}"
            print(
                f"  discount {rule.id}: {size} off {rule.fee_code}, channels "
                f"{sorted(rule.channels)}{', full online' if rule.full_online else ''}, "
                f"submitted {window}; {rule.legal_basis}"
            )
        print("  states:")
        for state in version.states.values():
            label = STATUS_LABELS[state.status_code][0]
            final = " (final)" if state.final else ""
            print(
                f"    {state.name:<22} {state.status_code:>2} {label}"
                f" @ {state.level or 'unchanged'}{final}"
            )
        print("  transitions:")
        for t in version.transitions:
            origin = t.level or "submission"
            when = "".join(f" [{k}={v}]" for k, v in t.when.items())
            guards = f" guards {', '.join(t.guards)}" if t.guards else ""
            print(
                f"    {t.event:<22} from {origin:<10} {'|'.join(t.sources)} -> "
                f"{t.dest or '(stays)'}{when}{guards}"
            )
    return 0


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.procedures import Problem, check_unique_plans, load_migration_plans
    from engine.store import queries
    from engine.store.sql import create_db_engine

    if not args.dry_run:
        print(
            "dossier workflows migrate: nothing changed. A plan is installed under "
            "workflows/migrations/ and applied by the engine at business time (from its "
            "cutover, by the business clock); use --dry-run to see what it would move and "
            "refuse.",
            file=sys.stderr,
        )
        return 2
    try:
        catalogue = _load(settings, args.dir)
    except WorkflowError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("the catalogue is invalid: no plan can be checked against it", file=sys.stderr)
        return 2
    problems: list[Problem] = []
    plans = load_migration_plans(Path(args.plan), catalogue, problems)
    check_unique_plans(plans, problems)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problem(s) in {args.plan}: nothing counted", file=sys.stderr)
        return 2
    db = create_db_engine(settings.database_url)
    try:
        with db.connect() as connection:
            found = queries.open_by_version_state(connection, {p.procedure for p in plans})
            clock = queries.business_clock(connection)
            clocks = queries.partition_clocks(connection)
    finally:
        db.dispose()
    lines, refused = dry_run_report(plans, found, clock, clocks)
    print("\n".join(lines))
    return 1 if refused else 0


def dry_run_report(
    plans: Sequence[MigrationPlan],
    found: Mapping[tuple[str, int, str], Sequence[str]],
    clock: datetime | None,
    partition_clocks: Mapping[int, datetime] | None = None,
) -> tuple[list[str], int]:
    """What each plan would do to the open dossiers `found` (by procedure, version, state):
    the lines to print, and how many dossiers it would refuse. Only dossier codes and states
    are printed: never an applicant's data."""
    lines: list[str] = []
    total_moved = total_refused = 0
    for plan in plans:
        moved: dict[tuple[str, str], int] = {}
        refused: dict[str, Sequence[str]] = {}
        already = 0
        for (procedure, version, state), codes in sorted(found.items()):
            if procedure != plan.procedure:
                continue
            if version == plan.to_version:
                already += len(codes)
            elif version == plan.from_version:
                if plan.maps(state):
                    moved[(state, plan.states[state])] = len(codes)
                else:
                    refused[state] = codes
        moving = sum(moved.values())
        refusing = sum(len(codes) for codes in refused.values())
        total_moved += moving
        total_refused += refusing
        lines.append(
            f"{plan.procedure} v{plan.from_version} -> v{plan.to_version}, effective "
            f"{plan.effective.isoformat()} (cutover {plan.cutover.isoformat()})"
        )
        if clock is None:
            lines.append("  the database has no business clock yet: the engine has applied nothing")
        elif partition_clocks:
            # The engine moves a dossier by the clock of its own partition: say how many have
            # passed the cutover, and where the slowest one stands.
            past = sum(1 for at in partition_clocks.values() if at >= plan.cutover)
            slowest = min(partition_clocks.values()).astimezone(plan.cutover.tzinfo)
            lines.append(
                f"  the engine applies this plan by each partition's business clock: "
                f"{past} of {len(partition_clocks)} partition(s) have passed the cutover "
                f"(the slowest is at {slowest.isoformat()})"
            )
        else:
            passed = "has passed" if clock >= plan.cutover else "has not passed"
            lines.append(
                f"  the engine applies this plan by the business clock "
                f"({clock.astimezone(plan.cutover.tzinfo).isoformat()}): it {passed} the cutover"
            )
        lines.append(f"  would move {moving} open dossier(s)" + (":" if moved else ""))
        lines += [f"    {old} -> {new}: {count}" for (old, new), count in moved.items()]
        if refused:
            lines.append(
                f"  would refuse {refusing} open dossier(s) in states the plan does not map: "
                f"they would stay whole on version {plan.from_version}"
            )
            for state, codes in refused.items():
                shown = ", ".join(codes[:SHOWN_CODES])
                more = f" … and {len(codes) - SHOWN_CODES} more" if len(codes) > SHOWN_CODES else ""
                lines.append(f"    {state}: {len(codes)}: {shown}{more}")
        else:
            lines.append("  would refuse none")
        if already:
            lines.append(f"  ({already} open dossier(s) already on version {plan.to_version})")
    lines.append(
        f"total: {total_moved} open dossier(s) would move, {total_refused} would be refused, "
        f"by {len(plans)} plan(s)"
    )
    return lines, total_refused
