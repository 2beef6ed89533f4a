"""Subcommands of `dossier`. Each module exposes `register(subparsers)`."""
