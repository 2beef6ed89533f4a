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
from dossier.settings import SettingError, Settings, default_state_dir
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


def engine_database_url(compose: dict[str, Any]) -> str:
    """The URL the engine's command builds, with the password it reads from the secrets
    volume in place of `$$(cat ...)`."""
    command = " ".join(service(compose, "engine")["command"])
    match = re.search(r'DOSSIER_DATABASE_URL="([^"]+)"', command)
    assert match, command
    return re.sub(r"\$\$\(cat (/run/[\w-]+/\w+)\)", "GENERATED", match.group(1))


def local_postgres(tmp_path: Path) -> Settings:
    """The defaults, with password files that exist (the URLs read them)."""
    from dataclasses import replace

    owner, engine = tmp_path / "owner.password", tmp_path / "engine.password"
    owner.write_text("0wner\n", encoding="utf-8")
    engine.write_text("3ngine\n", encoding="utf-8")
    return replace(DEFAULTS, postgres_password_file=owner, postgres_engine_password_file=engine)


def test_engine_database_is_the_compose_postgres(compose: dict[str, Any], tmp_path: Path) -> None:
    from sqlalchemy import make_url

    url = make_url(engine_database_url(compose))
    pg_env = env(service(compose, "postgres"))
    assert url.drivername == make_url(local_postgres(tmp_path).postgres_url).drivername
    assert (url.host, url.port) == ("postgres", 5432)
    # Least privilege: the engine logs in as its own role, the owner runs the migrations.
    assert url.username == DEFAULTS.postgres_engine_user != pg_env["POSTGRES_USER"]
    assert pg_env["POSTGRES_USER"] == DEFAULTS.postgres_user
    assert url.password == "GENERATED"
    engine = service(compose, "engine")
    assert "/run/engine-secrets/postgres_engine_password" in " ".join(engine["command"])
    assert engine["volumes"] == ["engine-secrets:/run/engine-secrets:ro"], "no owner password"
    assert pg_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert url.database == pg_env["POSTGRES_DB"] == DEFAULTS.postgres_db
    assert engine["entrypoint"] == ["/bin/sh", "-c"]
    assert " exec dossier run" in " ".join(engine["command"])
    migrate = service(compose, "migrate")
    assert " exec dossier db upgrade" in " ".join(migrate["command"])
    assert "DOSSIER_MIGRATION_DATABASE_URL=" in " ".join(migrate["command"])
    assert env(migrate)["DOSSIER_ENGINE_DB_ROLE"] == DEFAULTS.postgres_engine_user
    roles = "\n".join(service(compose, "postgres-roles")["command"])
    assert f"engine={DEFAULTS.postgres_engine_user}" in roles
    assert "NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT" in roles


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for entry in svc.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} beyond loopback"


def test_compose_has_no_fixed_passwords_and_no_anonymous_grafana(compose: dict[str, Any]) -> None:
    pg_env = env(service(compose, "postgres"))
    assert "POSTGRES_PASSWORD" not in pg_env, "a password in the file is no secret"
    assert pg_env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert "--auth-host=scram-sha-256" in pg_env["POSTGRES_INITDB_ARGS"]
    grafana = env(service(compose, "grafana"))
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    generator = "\n".join(service(compose, "secrets")["command"])
    for name in ("postgres_password", "grafana_admin_password", "postgres_engine_password"):
        assert name in generator
    for name in ("postgres", "grafana"):
        depends = service(compose, name)["depends_on"]
        assert depends["secrets"]["condition"] == "service_completed_successfully"
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    assert "dossier:dossier@" not in text


def test_engine_waits_for_topics_and_database(compose: dict[str, Any]) -> None:
    depends = service(compose, "engine")["depends_on"]
    assert depends["kafka-topics"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


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
    defaults = dict(re.findall(r'"\$\{(DOSSIER_POSTGRES_[A-Z_]+):-([^}]*)\}"', text))
    expected = {
        "DOSSIER_POSTGRES_PORT": str(DEFAULTS.postgres_port),
        "DOSSIER_POSTGRES_USER": DEFAULTS.postgres_user,
        "DOSSIER_POSTGRES_ENGINE_USER": DEFAULTS.postgres_engine_user,
        "DOSSIER_POSTGRES_DB": DEFAULTS.postgres_db,
    }
    for name, value in expected.items():
        assert defaults.get(name) == value, name
    # The data dir and password files are under the XDG state dir in both places; the CLI
    # passes them explicitly anyway.
    state = default_state_dir()
    for name, path in (
        ("DOSSIER_POSTGRES_DATA_DIR", DEFAULTS.postgres_data_dir),
        ("DOSSIER_POSTGRES_PASSWORD_FILE", DEFAULTS.postgres_password_file),
        ("DOSSIER_POSTGRES_ENGINE_PASSWORD_FILE", DEFAULTS.postgres_engine_password_file),
    ):
        relative = path.relative_to(state)
        assert defaults[name] == f"$STATE/{relative}", name
    assert 'STATE="${XDG_STATE_HOME:-$HOME/.local/state}/dossier-engine"' in text
    # No fixed password: generated into 0600 files on the first `up`.
    assert "DOSSIER_POSTGRES_PASSWORD:-" not in text
    assert "umask 077" in text and 'chmod 600 "$file"' in text
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


# --- deploy/kafka-principals.yaml: the contract's "Transport" ACLs ------------------------------


@pytest.fixture(scope="module")
def principals() -> Any:
    from deploy import local_kafka

    return local_kafka.load_principals(known_topics=ALL_TOPICS)


def writers(principals: Any, topic: str) -> set[str]:
    return {p.name for p in principals.principals.values() if topic in p.write}


def readers(principals: Any, topic: str) -> set[str]:
    return {p.name for p in principals.principals.values() if topic in p.read}


def test_principals_cover_every_system_role(principals: Any) -> None:
    roles = {"engine", "portal", "commune", "district", "province", "downstream", "operator"}
    assert roles <= set(principals.principals)
    assert principals.super_user not in principals.principals


def test_each_level_writes_only_its_own_topic(principals: Any) -> None:
    from engine.events import INBOUND_TOPICS

    for level in ("commune", "district", "province"):
        assert principals.principals[level].write == (f"dossier.{level}",)
        assert principals.principals[level].read == ()
    for sender in ("portal", "payment", "postal"):
        assert principals.principals[sender].write == ("dossier.submission",)
    # Only the engine reads what the systems send; only the simulator (demo, benchmarks)
    # stands in for several senders at once.
    for topic in INBOUND_TOPICS:
        assert readers(principals, topic) == {"engine"}
    assert set(principals.principals["simulator"].write) == set(INBOUND_TOPICS)


def test_engine_writes_the_outbound_topics_and_nobody_else_does(principals: Any) -> None:
    from engine.events import INBOUND_TOPICS, OUTBOUND_TOPICS

    engine = principals.principals["engine"]
    assert set(engine.read) == set(INBOUND_TOPICS)
    assert set(OUTBOUND_TOPICS) | {AUDIT_CHECKPOINT_TOPIC} == set(engine.write)
    for topic in (*OUTBOUND_TOPICS, AUDIT_CHECKPOINT_TOPIC):
        assert writers(principals, topic) == {"engine"}
    assert "{consumer_group}" in engine.groups


def test_dead_letters_are_for_operators_only(principals: Any) -> None:
    from engine.events import DLQ_TOPIC

    assert readers(principals, DLQ_TOPIC) == {"operator"}
    downstream = principals.principals["downstream"]
    assert set(downstream.read) == {"dossier.status", "dossier.fee-discount", "dossier.deadline"}
    assert downstream.write == ()
    assert [p.name for p in principals.principals.values() if p.admin] == ["operator"]


def test_acl_bindings_carry_the_prefix_and_the_engine_group(principals: Any) -> None:
    from deploy import local_kafka

    bindings = local_kafka.acl_bindings(principals, "hn.", "engine-hn")
    commune = [b for b in bindings if b.principal == "User:commune"]
    assert [(b.resource_type, b.name, b.pattern, b.operation) for b in commune] == [
        ("topic", "hn.dossier.commune", "literal", "write")
    ]
    engine_groups = [
        b for b in bindings if b.principal == "User:engine" and b.resource_type == "group"
    ]
    assert [(b.name, b.pattern, b.operation) for b in engine_groups] == [
        ("engine-hn", "literal", "read")
    ]
    admin = {b.name for b in bindings if b.operation == "create"}
    assert admin == {"hn.dossier."}
    assert not any(b.principal == f"User:{principals.super_user}" for b in bindings)


def test_principals_file_errors_are_clear(tmp_path: Path) -> None:
    from deploy import local_kafka

    bad = tmp_path / "p.yaml"
    bad.write_text("super_user: broker\nprincipals:\n  x:\n    write: [dossier.typo]\n")
    with pytest.raises(local_kafka.LocalKafkaError, match=r"not contract topics: dossier\.typo"):
        local_kafka.load_principals(bad, known_topics=ALL_TOPICS)
    bad.write_text("super_user: broker\nprincipals:\n  broker:\n    write: []\n")
    with pytest.raises(local_kafka.LocalKafkaError, match="super user"):
        local_kafka.load_principals(bad)


# --- client security settings and `dossier config` ---------------------------------------------


def test_client_options_add_tls_and_the_sasl_login_from_the_password_file(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from dossier import kafka_clients

    assert kafka_clients.client_options(DEFAULTS) == {
        "bootstrap_servers": DEFAULTS.kafka_bootstrap_servers.split(",")
    }
    assert kafka_clients.faust_credentials(DEFAULTS) is None
    password = tmp_path / "engine.password"
    password.write_text("s3cret\n")
    secure = replace(
        DEFAULTS,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="engine",
        kafka_sasl_password_file=password,
        kafka_ssl_cafile=tmp_path / "ca.pem",
    )
    options = kafka_clients.client_options(secure)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("engine", "s3cret")
    assert options["ssl_cafile"] == str(tmp_path / "ca.pem")
    with pytest.raises(kafka_clients.KafkaSecurityError, match="DOSSIER_KAFKA_SASL_USERNAME"):
        kafka_clients.client_options(replace(secure, kafka_sasl_username=""))
    with pytest.raises(kafka_clients.KafkaSecurityError, match="cannot read"):
        kafka_clients.client_options(replace(secure, kafka_sasl_password_file=tmp_path / "no"))


def test_settings_read_the_security_variables() -> None:
    settings = Settings.from_env(
        {
            "DOSSIER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DOSSIER_KAFKA_SASL_USERNAME": "portal",
            "DOSSIER_KAFKA_SASL_PASSWORD_FILE": "/run/portal.password",
            "DOSSIER_KAFKA_SSL_CAFILE": "/run/ca.pem",
        }
    )
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_password_file == Path("/run/portal.password")
    from dossier.settings import SettingError

    with pytest.raises(SettingError):
        Settings.from_env({"DOSSIER_KAFKA_SECURITY_PROTOCOL": "SSL"})


def test_config_masks_passwords() -> None:
    from dossier.commands.config import masked

    assert masked("DOSSIER_POSTGRES_PASSWORD", "dossier") == "********"
    url = "postgresql+psycopg://dossier:s3cret@127.0.0.1:55432/dossier"
    assert "s3cret" not in masked("DOSSIER_DATABASE_URL", url)
    assert masked("DOSSIER_DATABASE_URL", url).startswith("postgresql+psycopg://dossier:")
    assert masked("DOSSIER_KAFKA_SASL_PASSWORD_FILE", "/x/engine.password") == (
        "/x/engine.password"
    )


def test_local_postgres_requires_a_password_over_tcp_and_listens_on_loopback() -> None:
    text = services.postgres_script().read_text(encoding="utf-8")
    # SCRAM for every TCP connection; trust only on the Unix socket, which lives inside the
    # 0700 data directory (its owner is the only one who can reach it).
    assert "--auth-host=scram-sha-256" in text
    assert "--auth-local=trust" in text
    assert "unix_socket_directories='$DATA_DIR'" in text
    assert 'chmod 700 "$DATA_DIR"' in text
    assert "listen_addresses=127.0.0.1" in text


def test_local_postgres_urls_read_the_password_files(tmp_path: Path) -> None:
    from dataclasses import replace

    from sqlalchemy import make_url

    local = local_postgres(tmp_path)
    owner, engine = make_url(local.postgres_url), make_url(local.postgres_engine_url)
    assert (owner.username, owner.password, owner.host) == ("dossier", "0wner", "127.0.0.1")
    assert (engine.username, engine.password, engine.host) == (
        "dossier_engine",
        "3ngine",
        "127.0.0.1",
    )
    assert owner.port == engine.port == DEFAULTS.postgres_port
    missing = replace(local, postgres_password_file=tmp_path / "absent")
    with pytest.raises(SettingError, match="dossier postgres up"):
        _ = missing.postgres_url


def test_every_setting_survives_the_environment_a_child_process_gets() -> None:
    # dossier.tools.supervision.settings_env passes settings to `dossier run` as text: each
    # must parse back to its type (a float once came back as a str and broke the relay).
    from dossier.tools.supervision import settings_env

    assert Settings.from_env(settings_env(DEFAULTS)) == DEFAULTS
    with pytest.raises(SettingError, match="must be a number"):
        Settings.from_env({"DOSSIER_DEAD_LETTER_RETENTION_SECONDS": "a week"})


def test_the_engine_role_is_granted_when_migrations_log_in_as_another() -> None:
    owner = "postgresql+psycopg://dossier:x@127.0.0.1:55432/dossier"
    engine = "postgresql+psycopg://dossier_engine:y@127.0.0.1:55432/dossier"
    assert Settings(database_url=engine, migration_database_url=owner).engine_grantee() == (
        "dossier_engine"
    )
    assert Settings(database_url=owner).migration_url == owner
    assert Settings(database_url=owner).engine_grantee() is None  # one role for everything
    assert Settings(database_url=engine).engine_grantee(owner) == "dossier_engine"
    assert Settings(database_url="sqlite:///x.db").engine_grantee(owner) is None
    chosen = Settings(database_url=owner, engine_db_role="reader")
    assert chosen.engine_grantee() == "reader"
