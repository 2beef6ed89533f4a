"""`dossier config`: the effective settings, where each comes from, and what it means."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dossier.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="print the effective settings")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    rows = list(settings.described())
    if args.json:
        print(json.dumps({env: value for env, value, _, _ in rows}, indent=2))
        return 0
    width = max(len(env) for env, *_ in rows)
    for env, value, default, doc in rows:
        marker = " " if value == default else "*"
        print(f"{marker} {env:<{width}} = {value}")
        print(f"  {'':<{width}}   {doc}")
    print("\n(* set from the environment)")
    return 0
