"""`dossier config`: the effective settings, where each comes from, and what it means."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from dossier.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="print the effective settings")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


# A setting whose variable ends so holds a secret itself (a password, a private key); a
# password or key file's path is no secret.
SECRET_SUFFIXES = ("_PASSWORD", "_SECRET", "_TOKEN", "_KEY")
MASK = "********"
# scheme://user:password@host: a database URL carries its password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<tail>@)", re.I)


def masked(env: str, value: str) -> str:
    """What `dossier config` may print of a setting: passwords never."""
    if env.endswith(SECRET_SUFFIXES):
        return MASK if value else ""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", value)


def run(settings: Settings, args: argparse.Namespace) -> int:
    rows = list(settings.described())
    if args.json:
        print(json.dumps({env: masked(env, value) for env, value, _, _ in rows}, indent=2))
        return 0
    width = max(len(env) for env, *_ in rows)
    for env, value, default, doc in rows:
        marker = " " if value == default else "*"
        print(f"{marker} {env:<{width}} = {masked(env, value)}")
        print(f"  {'':<{width}}   {doc}")
    print("\n(* set from the environment)")
    return 0
