"""`dossier kafka …` and `dossier postgres …`: the local services the engine and its tests use."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
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
        choices=(*ACTIONS, "client-config"),
        help="up: start it and create the contract topics; down: stop it; status: report; "
        "client-config PRINCIPAL: a principal's client settings on the secure broker",
    )
    kafka.add_argument(
        "principal",
        nargs="?",
        help="with client-config: a principal of deploy/kafka-principals.yaml (engine, portal, "
        "commune, district, province, downstream, operator, ...)",
    )
    kafka.add_argument(
        "--secure",
        action="store_true",
        help="the secure broker: SASL_SSL (SCRAM-SHA-512) only, ACLs from "
        "deploy/kafka-principals.yaml; at the default address and data dir it runs beside the "
        "plaintext one (127.0.0.1:9094, controller 9095, state dir kafka-secure)",
    )
    kafka.add_argument(
        "--env",
        action="store_true",
        help="with client-config: print DOSSIER_KAFKA_* settings (export lines) rather than "
        "kafka-python's keyword arguments (JSON)",
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

    if args.action == "client-config":
        if not args.principal:
            print("dossier kafka client-config: name a principal", file=sys.stderr)
            return 2
        return client_config(settings, args.principal, as_env=args.env)
    if args.principal:
        print(f"dossier kafka {args.action}: takes no principal", file=sys.stderr)
        return 2
    return local_broker(args.action, settings, secure=args.secure)


def client_config(settings: Settings, principal: str, as_env: bool) -> int:
    """A principal's settings for the local secure broker: its password's file, never the
    password, so the output can go into a log or a ticket."""
    from deploy import local_kafka
    from dossier import kafka_clients

    broker = kafka_clients.secure_broker_settings(settings)
    try:
        if as_env:
            values = kafka_clients.client_env(broker, principal)
            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items()))
        else:
            print(json.dumps(kafka_clients.client_config(broker, principal), indent=2))
    except (kafka_clients.KafkaSecurityError, local_kafka.LocalKafkaError) as exc:
        print(f"dossier kafka client-config: {exc}", file=sys.stderr)
        return 1
    password_file = local_kafka.layout(broker).password_file(principal)
    if not password_file.is_file():
        print(
            f"dossier kafka client-config: {password_file} does not exist yet: "
            "run `dossier kafka up --secure` first",
            file=sys.stderr,
        )
        return 1
    return 0


def run_postgres(settings: Settings, args: argparse.Namespace) -> int:
    code = subprocess.run(
        ["bash", str(postgres_script()), args.action],
        env={**os.environ, **postgres_env(settings)},
        check=False,
    ).returncode
    if code == 0 and args.action == "up":
        from dossier.commands.config import masked

        # Two roles (least privilege): the engine's may append to history, never change it;
        # the owner's runs the migrations, which grant the engine's its privileges.
        engine = masked("DOSSIER_DATABASE_URL", settings.postgres_engine_url)
        owner = masked("DOSSIER_MIGRATION_DATABASE_URL", settings.postgres_url)
        print(f"postgres: the engine's role: DOSSIER_DATABASE_URL={engine}")
        print(f"postgres: the owner (migrations): DOSSIER_MIGRATION_DATABASE_URL={owner}")
        print(
            f"postgres: passwords in {settings.postgres_engine_password_file} and"
            f" {settings.postgres_password_file}"
        )
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
        "DOSSIER_POSTGRES_PASSWORD_FILE": str(settings.postgres_password_file),
        "DOSSIER_POSTGRES_ENGINE_USER": settings.postgres_engine_user,
        "DOSSIER_POSTGRES_ENGINE_PASSWORD_FILE": str(settings.postgres_engine_password_file),
        "DOSSIER_POSTGRES_DB": settings.postgres_db,
    }


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch on the service: the `run(settings, args)` shape every command module has."""
    if args.command == "kafka":
        return run_kafka(settings, args)
    return run_postgres(settings, args)
