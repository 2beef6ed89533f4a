"""The `dossier` console script."""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: Sequence[str] | None = None) -> int:
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
