"""The `dossier` console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from dossier.settings import SettingError, Settings

# Each module registers its subcommands; imported lazily so `dossier config` stays fast and
# a missing optional piece never breaks the others.
COMMAND_MODULES = (
    "dossier.commands.config",
    "dossier.commands.db",
    "dossier.commands.services",
    "dossier.commands.workflows",
    "dossier.commands.registry",
    "dossier.commands.run",
    "dossier.commands.metrics",
    "dossier.commands.kpi",
    "dossier.commands.simulate",
    "dossier.commands.demo",
    "dossier.commands.replay",
    "dossier.commands.audit",
    "dossier.commands.privacy",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dossier",
        description="Event-driven workflow engine for administrative-procedure dossiers.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


# Files and directories the engine and its commands create are their user's alone (0600,
# 0700): the database and its WAL, the state directories, password and key files, the demo's
# reports all hold personal data or secrets. A process-wide umask covers every one of them,
# including those that libraries (SQLite, faust, the Kafka broker started as a child) create.
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(PRIVATE_UMASK)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingError as exc:
        print(f"dossier: configuration error: {exc}", file=sys.stderr)
        return 2
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
