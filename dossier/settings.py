"""Every knob of dossier-engine, declared once: environment variable, type, default, doc.

In the manner of faust's settings: a setting is a dataclass field whose metadata names its
environment variable and documents it. `Settings.from_env()` is the only place the process
environment is read; nothing reads `os.environ` at import time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints
from urllib.parse import quote, unquote, urlsplit


def _home_dir(xdg_var: str, fallback: str) -> Path:
    base = os.environ.get(xdg_var) or str(Path.home() / fallback)
    return Path(base) / "dossier-engine"


def default_cache_dir() -> Path:
    """Downloaded artefacts (Kafka jars): outside the repository, reusable across clones."""
    return _home_dir("XDG_CACHE_HOME", ".cache")


def default_state_dir() -> Path:
    """Data of the local services and the embedded database."""
    return _home_dir("XDG_STATE_HOME", ".local/state")


def setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


def setting_factory(env: str, factory: Any, doc: str) -> Any:
    return field(default_factory=factory, metadata={"env": env, "doc": doc})


ClockMode = Literal["business", "wall"]
LogFormat = Literal["text", "json"]
RelayMode = Literal["process", "thread"]
BatchPipeline = Literal["auto", "write-behind", "serial"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]


@dataclass(frozen=True)
class Settings:
    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = setting(
        "DOSSIER_KAFKA_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092",
        "Kafka bootstrap servers (comma-separated host:port); the local broker listens here.",
    )
    topic_prefix: str = setting(
        "DOSSIER_TOPIC_PREFIX",
        "",
        "Prefix added to every contract topic name, e.g. 'thai-nguyen.'.",
    )
    topic_partitions: int = setting(
        "DOSSIER_TOPIC_PARTITIONS", 6, "Partitions per contract topic when the project creates it."
    )
    consumer_group: str = setting(
        "DOSSIER_CONSUMER_GROUP", "dossier-engine", "Kafka consumer group of the engine."
    )
    # --- Kafka client security (dossier.kafka_clients.client_options) -----------------------
    kafka_security_protocol: KafkaSecurityProtocol = setting(
        "DOSSIER_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "'PLAINTEXT' or 'SASL_SSL' (TLS, SASL/SCRAM login): how every Kafka client of this"
        " process connects. `dossier kafka client-config PRINCIPAL --env` prints the settings"
        " for a principal of the local secure broker.",
    )
    kafka_sasl_mechanism: SaslMechanism = setting(
        "DOSSIER_KAFKA_SASL_MECHANISM",
        "SCRAM-SHA-512",
        "SASL mechanism with SASL_SSL.",
    )
    kafka_sasl_username: str = setting(
        "DOSSIER_KAFKA_SASL_USERNAME", "", "SASL user (Kafka principal) with SASL_SSL."
    )
    kafka_sasl_password_file: Path | None = setting(
        "DOSSIER_KAFKA_SASL_PASSWORD_FILE",
        None,
        "File holding that user's password (read when a client is built; never printed).",
    )
    kafka_ssl_cafile: Path | None = setting(
        "DOSSIER_KAFKA_SSL_CAFILE",
        None,
        "PEM file of the CA(s) the broker's certificate must chain to; empty means the"
        " system's trust store.",
    )
    # --- Local Kafka broker started by deploy/ -----------------------------------------------
    kafka_version: str = setting(
        "DOSSIER_KAFKA_VERSION",
        "3.9.2",
        "Apache Kafka version fetched from Maven Central for the local broker (3.9.x: see README).",
    )
    kafka_controller_port: int = setting(
        "DOSSIER_KAFKA_CONTROLLER_PORT",
        9093,
        "Loopback port of the local broker's KRaft controller listener.",
    )
    kafka_data_dir: Path = setting_factory(
        "DOSSIER_KAFKA_DATA_DIR",
        lambda: default_state_dir() / "kafka",
        "Log directory, logs, PID file and config of the local Kafka broker.",
    )
    kafka_heap: str = setting(
        "DOSSIER_KAFKA_HEAP", "-Xms256m -Xmx1g", "JVM heap options of the local Kafka broker."
    )
    cache_dir: Path = setting_factory(
        "DOSSIER_CACHE_DIR",
        default_cache_dir,
        "Cache of downloaded artefacts (Kafka jars), outside the repository.",
    )
    maven_repo_local: Path | None = setting(
        "DOSSIER_MAVEN_REPO_LOCAL",
        None,
        "Maven local repository used to fetch the Kafka jars; empty means Maven's own (~/.m2).",
    )
    # --- Database ----------------------------------------------------------------------------
    database_url: str = setting_factory(
        "DOSSIER_DATABASE_URL",
        lambda: f"sqlite:///{default_state_dir() / 'dossier.db'}",
        "SQLAlchemy URL of the engine's database; SQLite is the embedded default. On PostgreSQL"
        " it should log in as the engine's role, which may not change or delete history"
        " (`engine.store.grants`), with DOSSIER_MIGRATION_DATABASE_URL naming the owner.",
    )
    migration_database_url: str = setting(
        "DOSSIER_MIGRATION_DATABASE_URL",
        "",
        "SQLAlchemy URL that migrations run with (`dossier db upgrade`, and `dossier run`,"
        " `dossier demo` and replays at start): the same database as DOSSIER_DATABASE_URL, on"
        " PostgreSQL logged in as the role that owns the schema. Empty: DOSSIER_DATABASE_URL"
        " (SQLite, or one role for everything).",
    )
    engine_db_role: str = setting(
        "DOSSIER_ENGINE_DB_ROLE",
        "",
        "PostgreSQL role that every migration grants the engine's privileges to (and no more):"
        " SELECT and INSERT on the evidence (history, audit checkpoints, disclosures), SELECT,"
        " INSERT, UPDATE and DELETE on the working tables. Empty: DOSSIER_DATABASE_URL's user,"
        " when it is not the migration URL's; nobody when they are the same.",
    )
    postgres_port: int = setting(
        "DOSSIER_POSTGRES_PORT",
        55432,
        "Loopback port of the PostgreSQL cluster started by deploy/.",
    )
    postgres_data_dir: Path = setting_factory(
        "DOSSIER_POSTGRES_DATA_DIR",
        lambda: default_state_dir() / "postgres",
        "Data directory of the PostgreSQL cluster started by deploy/.",
    )
    postgres_user: str = setting(
        "DOSSIER_POSTGRES_USER",
        "dossier",
        "Owner role created by deploy/postgres.sh: owns the database and its schema and runs"
        " the migrations (Settings.postgres_url).",
    )
    postgres_password_file: Path = setting_factory(
        "DOSSIER_POSTGRES_PASSWORD_FILE",
        lambda: default_state_dir() / "postgres-secrets" / "owner.password",
        "File holding the owner role's password, generated (mode 0600) by the first"
        " `dossier postgres up`; never printed.",
    )
    postgres_engine_user: str = setting(
        "DOSSIER_POSTGRES_ENGINE_USER",
        "dossier_engine",
        "The engine's role created by deploy/postgres.sh: INSERT and SELECT on history, no"
        " UPDATE, DELETE, TRUNCATE or DDL (Settings.postgres_engine_url).",
    )
    postgres_engine_password_file: Path = setting_factory(
        "DOSSIER_POSTGRES_ENGINE_PASSWORD_FILE",
        lambda: default_state_dir() / "postgres-secrets" / "engine.password",
        "File holding the engine role's password, generated (mode 0600) by the first"
        " `dossier postgres up`; never printed.",
    )
    postgres_db: str = setting(
        "DOSSIER_POSTGRES_DB", "dossier", "Database created by deploy/postgres.sh."
    )
    # --- Personal data (engine.store.privacy) -------------------------------------------------
    privacy_key_file: Path = setting_factory(
        "DOSSIER_PRIVACY_KEY_FILE",
        lambda: default_state_dir() / "privacy.key",
        "File holding the privacy master secret (base64 of 32 random bytes) that wraps every"
        " person's data key; never stored in the database. The engine creates it (mode 0600)"
        " on first start when it does not exist; losing it makes all sealed personal data"
        " unreadable, so back it up apart from the database.",
    )
    privacy_key: str = setting(
        "DOSSIER_PRIVACY_KEY",
        "",
        "The privacy master secret itself (base64), instead of DOSSIER_PRIVACY_KEY_FILE.",
    )
    dead_letter_retention_s: float = setting(
        "DOSSIER_DEAD_LETTER_RETENTION_SECONDS",
        7 * 24 * 3600.0,
        "How long the database keeps its copy of a dead letter after the relay sent it to the"
        " dead-letter topic: a dead letter carries the input's bytes, personal data included,"
        " and the topic is its record. Other sent outputs carry no personal data and are kept.",
    )
    # --- Engine ------------------------------------------------------------------------------
    engine_source: str = setting(
        "DOSSIER_ENGINE_SOURCE",
        "urn:vn:dossier-engine",
        "CloudEvents 'source' of every event the engine emits.",
    )
    workflows_dir: Path | None = setting(
        "DOSSIER_WORKFLOWS_DIR",
        None,
        "Directory of procedure definitions; empty means the catalogue shipped in workflows/.",
    )
    registry_files: str = setting(
        "DOSSIER_REGISTRY_FILES",
        "",
        "Registry files of agencies and senders (contract 1.1) read after the shipped"
        " workflows/provinces/thai-nguyen.yaml and thai-nguyen-bac-kan.yaml, separated by ':';"
        " a later file adds entries and"
        " replaces an entry of the same code or source.",
    )
    batch_size: int = setting(
        "DOSSIER_BATCH_SIZE", 2000, "Most inputs applied and committed in one transaction."
    )
    batch_timeout_ms: int = setting(
        "DOSSIER_BATCH_TIMEOUT_MS", 50, "Longest wait to fill a batch before committing it."
    )
    ordering_max_idle_ms: int = setting(
        "DOSSIER_ORDERING_MAX_IDLE_MS",
        1000,
        "Longest wait for a silent inbound topic before inputs of other topics go ahead of it.",
    )
    batch_pipeline: BatchPipeline = setting(
        "DOSSIER_BATCH_PIPELINE",
        "auto",
        "'write-behind': a batch is computed while the one before commits"
        " (engine.application.pipeline); 'serial': each batch is committed before the next is"
        " computed; 'auto': write-behind on PostgreSQL (a server to wait for), serial on SQLite"
        " (measured faster there).",
    )
    gc_young_threshold: int = setting(
        "DOSSIER_GC_YOUNG_THRESHOLD",
        50_000,
        "Allocations between two collections of the garbage collector's youngest generation"
        " (Python's default: 700), and what was loaded at start-up is frozen out of every"
        " collection. A batch allocates hundreds of thousands of short-lived objects; with the"
        " default most of the engine's time went to collections that freed nothing"
        " (bench/engine_apply.py). 0 keeps Python's defaults.",
    )
    stream_buffer_bytes: int = setting(
        "DOSSIER_STREAM_BUFFER_BYTES",
        64 * 1024 * 1024,
        "Most key and value bytes of fetched records waiting in the consumer's buffer; with the"
        " count bound (16 batches), fetching pauses when either is reached.",
    )
    max_message_bytes: int = setting(
        "DOSSIER_MAX_MESSAGE_BYTES",
        1024 * 1024,
        "Inputs larger than this are dead-lettered as malformed (oversized).",
    )
    parked_ttl_seconds: int = setting(
        "DOSSIER_PARKED_TTL_SECONDS",
        7 * 24 * 3600,
        "How long (real time) an input may stay parked before it goes to the DLQ, parked-expired.",
    )
    parked_sweep_seconds: int = setting(
        "DOSSIER_PARKED_SWEEP_SECONDS",
        5,
        "How often (real time) the engine dead-letters parked inputs whose time-to-live ran out"
        " when no input arrives (a night, a weekend); batches of inputs do it too.",
    )
    clock_mode: ClockMode = setting(
        "DOSSIER_CLOCK_MODE",
        "business",
        "'business': the latest time of an applied input drives deadlines (replayable); 'wall':"
        " real time.",
    )
    relay_mode: RelayMode = setting(
        "DOSSIER_RELAY_MODE",
        "process",
        "'process': the outbox relay runs in a child process, on the other core, off the"
        " engine's interpreter lock; 'thread': in a thread of the engine process.",
    )
    # --- Audit (engine.store.audit, dossier.audit_keys) --------------------------------------
    audit_signing_key_file: Path | None = setting(
        "DOSSIER_AUDIT_SIGNING_KEY_FILE",
        None,
        "PEM (PKCS8) Ed25519 private key the engine signs its audit checkpoints with (`dossier"
        " audit keygen --out FILE` makes one, mode 0600); never stored in the database. With"
        " neither this nor DOSSIER_AUDIT_SIGNING_KEY, checkpoints are written unsigned and the"
        " engine says so once at start.",
    )
    audit_signing_key: str = setting(
        "DOSSIER_AUDIT_SIGNING_KEY",
        "",
        "The same private key as text, when no file is given: its PEM, or its 32 raw bytes in"
        " base64 (one line). `dossier config` masks it.",
    )
    # --- Operations --------------------------------------------------------------------------
    metrics_host: str = setting(
        "DOSSIER_METRICS_HOST", "127.0.0.1", "Address of the Prometheus /metrics endpoint."
    )
    metrics_port: int = setting(
        "DOSSIER_METRICS_PORT", 9108, "Port of the Prometheus /metrics endpoint (0: disabled)."
    )
    log_format: LogFormat = setting("DOSSIER_LOG_FORMAT", "text", "'text' or 'json' log lines.")
    log_level: str = setting("DOSSIER_LOG_LEVEL", "INFO", "Python logging level.")

    # -----------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; unset variables keep their defaults."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.metadata["env"], hints[f.name], raw)
        return cls(**values)

    def topic(self, name: str) -> str:
        """The deployed name of a contract topic, e.g. topic('dossier.status')."""
        return f"{self.topic_prefix}{name}"

    @property
    def kafka_listen(self) -> tuple[str, int]:
        """Host and port the local broker listens on: the first bootstrap server."""
        first = self.kafka_bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def postgres_url(self) -> str:
        """SQLAlchemy URL of the database that deploy/postgres.sh creates, as its owner (for
        migrations, schemas of tests and demos). The password is read from its file now."""
        return self._local_postgres_url(self.postgres_user, self.postgres_password_file)

    @property
    def postgres_engine_url(self) -> str:
        """The same database as the engine's role: what DOSSIER_DATABASE_URL should be."""
        return self._local_postgres_url(
            self.postgres_engine_user, self.postgres_engine_password_file
        )

    def _local_postgres_url(self, user: str, password_file: Path) -> str:
        password = quote(read_secret(password_file, "run `dossier postgres up` first"), safe="")
        return (
            f"postgresql+psycopg://{quote(user, safe='')}:{password}"
            f"@127.0.0.1:{self.postgres_port}/{self.postgres_db}"
        )

    @property
    def migration_url(self) -> str:
        """The URL migrations run with: DOSSIER_MIGRATION_DATABASE_URL, else the engine's."""
        return self.migration_database_url or self.database_url

    def engine_grantee(self, migration_url: str | None = None) -> str | None:
        """The role migrations grant the engine's privileges to (PostgreSQL only): the
        configured one, else DOSSIER_DATABASE_URL's user when migrations log in as another."""
        if self.engine_db_role:
            return self.engine_db_role
        owner = urlsplit(migration_url or self.migration_url)
        engine = urlsplit(self.database_url)
        if not engine.scheme.startswith("postgresql") or not engine.username:
            return None
        if owner.username == engine.username:
            return None
        return unquote(engine.username)

    def described(self) -> Iterator[tuple[str, str, str, str]]:
        """(environment variable, effective value, default, doc) for every setting."""
        defaults = Settings()
        for f in dataclasses.fields(self):
            yield (
                f.metadata["env"],
                _render(getattr(self, f.name)),
                _render(getattr(defaults, f.name)),
                f.metadata["doc"],
            )


class SettingError(ValueError):
    pass


def read_secret(path: Path, hint: str) -> str:
    """The secret a file holds (a password), without its final newline; a missing file is a
    SettingError that says what makes it (`hint`)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SettingError(f"{path} does not exist: {hint}") from None


def _parse(name: str, env: str, hint: Any, raw: str) -> Any:
    allowed = get_args(hint)
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingError(f"{env}={raw!r}: {name} must be an integer") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingError(f"{env}={raw!r}: {name} must be a number") from None
    if hint is Path:
        return Path(raw).expanduser()
    if hint == (Path | None):
        return Path(raw).expanduser() if raw else None
    if allowed and all(isinstance(a, str) for a in allowed):
        if raw not in allowed:
            raise SettingError(f"{env}={raw!r}: {name} must be one of {', '.join(allowed)}")
        return raw
    return raw


def _render(value: Any) -> str:
    return "" if value is None else str(value)
