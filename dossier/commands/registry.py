"""`dossier registry check|show`: the agencies and senders the engine trusts (contract 1.1)."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

from dossier.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "registry", help="agencies and senders: who may say what on the inbound topics"
    )
    actions = parser.add_subparsers(dest="registry_action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="validate the shipped file and DOSSIER_REGISTRY_FILES (exit 1 on problems)"
    )
    check.set_defaults(func=run)
    show = actions.add_parser(
        "show", help="agencies by level and window, senders and what they may send"
    )
    show.add_argument("--level", choices=("commune", "district", "province"))
    show.add_argument("--on", help="only agencies that may act on this local date (YYYY-MM-DD)")
    show.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.composition import load_registry_of
    from engine.registry import RegistryError, registry_files

    files = registry_files(settings.registry_files)
    try:
        registry = load_registry_of(settings)
    except RegistryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"dossier registry: {len(exc.problems)} problems in {', '.join(map(str, files))}",
            file=sys.stderr,
        )
        return 1
    if args.registry_action == "check":
        levels = {
            level: len(registry.by_level(level)) for level in ("commune", "district", "province")
        }
        signing = sum(1 for a in registry.agencies() if a.public_keys) + sum(
            1 for s in registry.senders() if s.public_keys
        )
        print(
            f"registry ok: {len(registry.agencies())} agencies "
            f"({', '.join(f'{n} {level}' for level, n in levels.items())}), "
            f"{len(registry.senders())} senders, {signing} of them signing; "
            f"from {', '.join(map(str, files))}"
        )
        return 0
    try:
        on = date.fromisoformat(args.on) if args.on else None
    except ValueError:
        print(f"dossier registry: --on {args.on!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    out: list[str] = []
    for level in ("commune", "district", "province"):
        if args.level and level != args.level:
            continue
        agencies = [a for a in registry.by_level(level) if on is None or a.acts_on(on)]
        out.append(f"{level} ({len(agencies)})")
        for a in agencies:
            line = f"  {a.code}  {a.name}  [{a.window}]"
            if a.successor:
                line += f" -> {a.successor}"
            if a.parent:
                line += f"  parent {a.parent}"
            if a.sources != (f"urn:vn:agency:{a.code}",):
                line += f"  sources {', '.join(a.sources)}"
            if a.public_keys:
                line += f"  signs with {', '.join(k.id for k in a.public_keys)}"
            out.append(line)
            if a.successor_basis:
                out.append(f"      successor: {a.successor_basis}")
    if not args.level:
        senders = registry.senders()
        out.append(f"senders on dossier.submission ({len(senders)})")
        for s in senders:
            targets = "any agency" if s.agencies is None else _codes(sorted(s.agencies))
            keys = f"; signs with {', '.join(k.id for k in s.public_keys)}" if s.public_keys else ""
            out.append(f"  {s.source}  {s.name}")
            out.append(f"      may send {', '.join(sorted(s.types))} to {targets}{keys}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _codes(codes: list[str], shown: int = 6) -> str:
    if len(codes) <= shown:
        return ", ".join(codes)
    return f"{', '.join(codes[:shown])} and {len(codes) - shown} more"
