"""`dossier kafka …` and `dossier postgres …`: the local services the engine and its tests use."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import deploy
from dossier.settings import Settings

ACTIONS = ("up", "down", "status")


def register(subparsers: Any) -> None:
    kafka = subparsers.add_parser(
        "kafka", help="run a local single-node Kafka broker (KRaft) without Docker"
    )
    kafka.add_argument(
        "action",
        choices=ACTIONS,
        help="up: start it and create the contract topics; down: stop it; status: report",
    )
    kafka.set_defaults(func=run)

    postgres = subparsers.add_parser(
        "postgres", help="run a local PostgreSQL cluster on a loopback port (deploy/postgres.sh)"
    )
    postgres.add_argument(
        "action",
        choices=ACTIONS,
        help="up: start it, create role and database; down: stop it; status: report",
    )
    postgres.set_defaults(func=run)


def run_kafka(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here so `dossier postgres` and `dossier config` never load kafka-python.
    from dossier.kafka_clients import local_broker

    return local_broker(args.action, settings)


def run_postgres(settings: Settings, args: argparse.Namespace) -> int:
    code = subprocess.run(
        ["bash", str(postgres_script()), args.action],
        env={**os.environ, **postgres_env(settings)},
        check=False,
    ).returncode
    if code == 0 and args.action == "up":
        print(f"postgres: SQLAlchemy URL: {settings.postgres_url}")
        print("postgres: use it with DOSSIER_DATABASE_URL to run the engine on PostgreSQL")
    return code


def postgres_script() -> Path:
    # An editable install made before deploy/__init__.py existed imports `deploy` as a
    # namespace package, whose __file__ is None; __path__ names the directory either way.
    package_dir = Path(deploy.__file__).parent if deploy.__file__ else Path(deploy.__path__[0])
    return package_dir / "postgres.sh"


def postgres_env(settings: Settings) -> dict[str, str]:
    """The settings deploy/postgres.sh reads, so the script and the engine agree."""
    return {
        "DOSSIER_POSTGRES_PORT": str(settings.postgres_port),
        "DOSSIER_POSTGRES_DATA_DIR": str(settings.postgres_data_dir),
        "DOSSIER_POSTGRES_USER": settings.postgres_user,
        "DOSSIER_POSTGRES_PASSWORD": settings.postgres_password,
        "DOSSIER_POSTGRES_DB": settings.postgres_db,
    }


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch on the service: the `run(settings, args)` shape every command module has."""
    if args.command == "kafka":
        return run_kafka(settings, args)
    return run_postgres(settings, args)
