"""deploy/ files agree with the code: ports, topics, versions, commands.

No Docker is needed: the compose file, Dockerfile and scripts are parsed and compared with
`Settings()` defaults, the contract topics and pyproject.toml, so a change on one side that
is not made on the other fails here instead of in someone's deployment.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dossier.commands import services
from dossier.settings import Settings
from engine.events import ALL_TOPICS, AUDIT_CHECKPOINT_TOPIC

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTS = Settings()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services_ = compose["services"]
    assert name in services_, f"compose has no service {name!r}"
    result: dict[str, Any] = services_[name]
    return result


def env(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def published(svc: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a service's short-syntax port mappings."""
    mapping: dict[int, int] = {}
    for entry in svc.get("ports", []):
        parts = str(entry).split(":")
        host, container = parts[-2], parts[-1]
        mapping[int(container.split("/")[0])] = int(host)
    return mapping


def image_tag(svc: dict[str, Any]) -> tuple[str, str]:
    name, _, tag = str(svc["image"]).rpartition(":")
    return name, tag


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_declares_the_whole_stack(compose: dict[str, Any]) -> None:
    for name in ("kafka", "kafka-topics", "postgres", "engine", "prometheus", "grafana"):
        service(compose, name)


def test_kafka_image_is_the_pinned_3_9_version(compose: dict[str, Any]) -> None:
    for name in ("kafka", "kafka-topics"):
        image, tag = image_tag(service(compose, name))
        assert image == "apache/kafka"
        assert tag == DEFAULTS.kafka_version, "compose and the local broker must run one version"
    assert DEFAULTS.kafka_version.startswith("3.9."), "Kafka 4 drops protocols aiokafka sends"


def test_kafka_is_kraft_and_reachable_on_the_default_bootstrap_port(
    compose: dict[str, Any],
) -> None:
    kafka = service(compose, "kafka")
    settings_env = env(kafka)
    assert "controller" in settings_env["KAFKA_PROCESS_ROLES"]
    assert "broker" in settings_env["KAFKA_PROCESS_ROLES"]
    assert settings_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    _, default_port = DEFAULTS.kafka_listen
    advertised = dict(
        item.split("://", 1) for item in settings_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    listeners = dict(item.split("://", 1) for item in settings_env["KAFKA_LISTENERS"].split(","))
    # The host reaches the broker at the default bootstrap address through the published port.
    external_port = host_port(listeners["EXTERNAL"])[1]
    assert published(kafka)[external_port] == default_port
    assert host_port(advertised["EXTERNAL"]) == DEFAULTS.kafka_listen
    # Containers reach it at kafka:<default port>.
    assert host_port(advertised["PLAINTEXT"]) == ("kafka", default_port)


def test_kafka_topics_job_creates_every_contract_topic(compose: dict[str, Any]) -> None:
    script = "\n".join(service(compose, "kafka-topics")["command"])
    created = set(re.findall(r"\bdossier\.[a-z-]+", script))
    assert created == set(ALL_TOPICS)
    # Audit checkpoints stay totally ordered on one partition; the rest get the default count.
    assert re.search(rf"create {re.escape(AUDIT_CHECKPOINT_TOPIC)} 1\s", script + "\n")
    assert f'create "$$topic" {DEFAULTS.topic_partitions}' in script
    loop = script[script.index("for topic in") : script.index("done")]
    assert AUDIT_CHECKPOINT_TOPIC not in loop


def test_engine_env_and_ports_agree_with_settings(compose: dict[str, Any]) -> None:
    engine = service(compose, "engine")
    engine_env = env(engine)
    known = {f_env for f_env, *_ in DEFAULTS.described()}
    unknown = set(engine_env) - known
    assert not unknown, f"compose sets variables no setting reads: {sorted(unknown)}"

    assert int(engine_env["DOSSIER_METRICS_PORT"]) == DEFAULTS.metrics_port
    assert published(engine)[DEFAULTS.metrics_port] == DEFAULTS.metrics_port
    assert engine_env["DOSSIER_METRICS_HOST"] == "0.0.0.0", "loopback cannot be scraped"

    bootstrap = engine_env["DOSSIER_KAFKA_BOOTSTRAP_SERVERS"]
    assert host_port(bootstrap) == ("kafka", DEFAULTS.kafka_listen[1])


def test_engine_database_is_the_compose_postgres(compose: dict[str, Any]) -> None:
    from sqlalchemy import make_url

    url = make_url(env(service(compose, "engine"))["DOSSIER_DATABASE_URL"])
    pg_env = env(service(compose, "postgres"))
    assert url.drivername == make_url(DEFAULTS.postgres_url).drivername
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == pg_env["POSTGRES_USER"] == DEFAULTS.postgres_user
    assert url.password == pg_env["POSTGRES_PASSWORD"] == DEFAULTS.postgres_password
    assert url.database == pg_env["POSTGRES_DB"] == DEFAULTS.postgres_db


def test_engine_waits_for_topics_and_database(compose: dict[str, Any]) -> None:
    depends = service(compose, "engine")["depends_on"]
    assert depends["kafka-topics"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"


def test_postgres_is_15_on_the_default_host_port(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    image, tag = image_tag(postgres)
    assert (image, tag.split(".")[0]) == ("postgres", "15")
    assert published(postgres)[5432] == DEFAULTS.postgres_port


def test_engine_is_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    build = service(compose, "engine")["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_prometheus_scrapes_the_engine_metrics_port(compose: dict[str, Any]) -> None:
    prometheus = service(compose, "prometheus")
    assert published(prometheus)[9090] == 9090
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_path = (DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).resolve()
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    # The rule files the config names sit beside it in the container.
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for rule_file in config.get("rule_files", []):
        mounted = mounts[f"/etc/prometheus/{rule_file}"]
        assert (DEPLOY / mounted).resolve() == DEPLOY / "prometheus" / rule_file
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"engine:{DEFAULTS.metrics_port}" in targets


def test_grafana_mounts_the_provisioning_directory(compose: dict[str, Any]) -> None:
    grafana = service(compose, "grafana")
    assert published(grafana)[3000] == 3000
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve() == DEPLOY / "grafana"


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_base_image_satisfies_requires_python(pyproject: dict[str, Any]) -> None:
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert froms == ["python:3.11-slim"]
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    image_python = froms[0].split(":")[1].split("-")[0]
    assert tuple(map(int, image_python.split("."))) >= tuple(map(int, minimum.split(".")))


def test_dockerfile_cmd_runs_the_console_script(pyproject: dict[str, Any]) -> None:
    cmds = [args for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    assert cmds, "no CMD"
    cmd = json.loads(cmds[-1])  # exec form, so signals reach the engine, not a shell
    assert cmd == ["dossier", "run"]
    assert cmd[0] in pyproject["project"]["scripts"]


def test_dockerfile_installs_every_package(pyproject: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    copied: set[str] = set()
    for instruction, args in instructions:
        if instruction == "COPY":
            *sources, _ = shlex.split(args)
            copied.update(s.rstrip("/") for s in sources)
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    missing = packages - copied
    assert not missing, f"the image would lack packages: {sorted(missing)}"
    assert "pyproject.toml" in copied
    if "readme" in pyproject["project"]:
        assert pyproject["project"]["readme"] in copied, "setuptools needs the readme to build"
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs)


def test_dockerfile_exposes_metrics_beyond_loopback() -> None:
    instructions = dockerfile_instructions()
    exposed = {args for instruction, args in instructions if instruction == "EXPOSE"}
    assert str(DEFAULTS.metrics_port) in exposed
    env_text = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert f"DOSSIER_METRICS_PORT={DEFAULTS.metrics_port}" in env_text
    assert "DOSSIER_METRICS_HOST=0.0.0.0" in env_text


# --- deploy/postgres.sh and .ci/run ------------------------------------------------------------


def test_postgres_script_defaults_match_settings() -> None:
    script = services.postgres_script()
    assert script == DEPLOY / "postgres.sh"
    text = script.read_text(encoding="utf-8")
    defaults = dict(re.findall(r'"\$\{(DOSSIER_POSTGRES_[A-Z]+):-([^}]*)\}"', text))
    expected = {
        "DOSSIER_POSTGRES_PORT": str(DEFAULTS.postgres_port),
        "DOSSIER_POSTGRES_USER": DEFAULTS.postgres_user,
        "DOSSIER_POSTGRES_PASSWORD": DEFAULTS.postgres_password,
        "DOSSIER_POSTGRES_DB": DEFAULTS.postgres_db,
    }
    for name, value in expected.items():
        assert defaults.get(name) == value, name
    # The data dir default is XDG-derived in both places; the CLI passes it explicitly anyway.
    assert "DOSSIER_POSTGRES_DATA_DIR" in text
    read_by_script = set(re.findall(r"DOSSIER_POSTGRES_[A-Z_]+", text))
    assert set(services.postgres_env(DEFAULTS)) <= read_by_script
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text


def test_ci_script_runs_checks_and_tests() -> None:
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    for pattern in (
        r"ruff\"? check \.",
        r"bin/mypy\b",
        r"bin/python\"? -m pytest",
        r"deploy/postgres\.sh up",
        r"dossier\"? kafka up",
        r"trap \w+ EXIT",
        r"export CI=true",
    ):
        assert re.search(pattern, text), pattern
    # Exit status 5 is "no tests collected": a green run that tested nothing must fail.
    assert re.search(r"-eq 5", text)
