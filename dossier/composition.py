"""The composition root: settings in, the engine's parts built, wired and handed out.

Every adapter, client and service is built here and only when a command asks for it, never at
import time; the layers below take what they need as arguments (docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine as DbEngine

from consumers.faust_app import ConsumerConfig
from dossier import kafka_clients
from dossier.settings import ClockMode, Settings
from engine.application.commit import BatchCommitter
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import INBOUND_TOPICS, contract_topic
from engine.procedures import load_catalogue
from engine.registry import Registry, load_registry, registry_files
from engine.store.failures import is_infrastructure_failure
from engine.store.migrate import upgrade
from engine.store.privacy import (
    PersonalDataVault,
    PrivacyKeyError,
    PrivacySecret,
    new_secret_text,
)
from engine.store.queries import pinned_versions
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec, encode_outbound

if TYPE_CHECKING:
    from engine.application.ports import OutboxMessage
    from engine.signing import Signer
    from producers.relay import RelayJob, Waker

log = logging.getLogger(__name__)


def load_registry_of(settings: Settings) -> Registry:
    """The registry of agencies and senders (contract 1.1): the shipped province file, then
    `DOSSIER_REGISTRY_FILES`; `engine.registry.RegistryError` names every problem."""
    return load_registry(registry_files(settings.registry_files))


def load_privacy_secret(settings: Settings, *, create: bool = False) -> PrivacySecret:
    """The privacy master secret: `DOSSIER_PRIVACY_KEY`, else the key file, which `create`
    makes (0600, in a 0700 directory) when it does not exist yet: the engine's first start."""
    if settings.privacy_key:
        return PrivacySecret.from_text(settings.privacy_key)
    path = settings.privacy_key_file
    if not path.exists():
        if not create:
            raise PrivacyKeyError(
                f"no privacy key at {path} (DOSSIER_PRIVACY_KEY_FILE): personal data cannot be"
                " opened without the key it was sealed under"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written whole beside it, then linked into place: several processes starting at once
        # agree on one secret, and none reads a half-written file.
        # A name no other writer uses: a link shares the file, so a draft truncated by another
        # writer after the link would empty the secret itself.
        draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}.draft")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(new_secret_text() + "\n")
        try:
            os.link(draft, path)
            log.warning(
                "privacy: created a new master secret at %s; back it up apart from the database",
                path,
            )
        except FileExistsError:
            pass  # another process made it first: that one is the secret
        finally:
            draft.unlink()
    return PrivacySecret.from_text(path.read_text())


def build_vault(
    settings: Settings, *, replaying: bool = False, create: bool = False
) -> PersonalDataVault:
    """What seals personal data on its way into the store, with the contract's declaration of
    which fields hold it."""
    from schemas.personal_data import personal_paths

    return PersonalDataVault(
        load_privacy_secret(settings, create=create), personal_paths, replaying=replaying
    )


def checkpoint_signer(settings: Settings) -> Signer | None:
    """The engine's audit checkpoint signer from the settings, said once in the log (a
    warning when there is none); `dossier.audit_keys.AuditKeyError` for a key set but unusable."""
    from dossier.audit_keys import signer_of, warn_if_unsigned

    signer = signer_of(settings)
    warn_if_unsigned(signer)
    return signer


class MigrationRefused(RuntimeError):
    """The schema is behind and the role at hand may not migrate it (the engine's own)."""


def migrate_database(settings: Settings, db: DbEngine | None = None) -> None:
    """Bring the database to the newest schema as its owner (DOSSIER_MIGRATION_DATABASE_URL,
    else DOSSIER_DATABASE_URL itself, through `db` when given) and give the engine's role its
    privileges (Settings.engine_grantee; engine.store.grants). At head this changes nothing,
    so the engine's own role, which may only read `alembic_version`, gets through it."""
    from sqlalchemy.exc import ProgrammingError

    grantee = settings.engine_grantee()
    target: str | DbEngine = settings.migration_url
    if db is not None and settings.migration_url == settings.database_url:
        target = db
    try:
        upgrade(target, grant_to=grantee)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise MigrationRefused(
            f"the schema needs migrating and this role may not ({exc.orig}): run"
            " `dossier db upgrade` as the owner, or set DOSSIER_MIGRATION_DATABASE_URL"
        ) from exc


def build_decider(settings: Settings) -> Decider:
    """The decider with the catalogue, the working calendar and the registry of agencies and
    senders: the same for the engine and every replay of its inputs."""
    return Decider(
        load_catalogue(settings.workflows_dir), WorkingCalendar.load(), load_registry_of(settings)
    )


def build_processor(
    settings: Settings,
    decider: Decider,
    consumer_group: str,
    *,
    clock_mode: ClockMode | None = None,
    notice_scan_limit: int | None = None,
) -> BatchProcessor:
    """The service layer with the contract's codec, as the engine and its replays run it."""
    config = ServiceConfig(
        engine_source=settings.engine_source,
        consumer_group=consumer_group,
        parked_ttl=timedelta(seconds=settings.parked_ttl_seconds),
        clock_mode=clock_mode or settings.clock_mode,
    )
    if notice_scan_limit is not None:
        config = replace(config, notice_scan_limit=notice_scan_limit)
    return BatchProcessor(
        decider,
        ContractCodec(settings.max_message_bytes),
        config,
        # Contract 1.1, "Signed inputs": the decider's registry checks the signatures.
        verifier=decider.registry,
    )


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        broker_url=kafka_clients.faust_broker_url(settings),
        consumer_group=settings.consumer_group,
        topics={settings.topic(name): name for name in INBOUND_TOPICS},
        datadir=settings.kafka_data_dir.parent / "faust" / settings.consumer_group,
        batch_size=settings.batch_size,
        batch_timeout_ms=settings.batch_timeout_ms,
        ordering_max_idle_ms=settings.ordering_max_idle_ms,
        clock_mode=settings.clock_mode,
        parked_sweep_seconds=settings.parked_sweep_seconds,
        stream_buffer_bytes=settings.stream_buffer_bytes,
        credentials=kafka_clients.faust_credentials(settings),
    )


@dataclass
class Runtime:
    """The running engine's parts: its database, decider, service layer and batch committer."""

    settings: Settings
    db: DbEngine
    decider: Decider
    processor: BatchProcessor
    committer: BatchCommitter = field(init=False)
    # Set after every commit; a relay in another process passes its own (multiprocessing) one.
    outbox_wake: Waker = field(default_factory=threading.Event)
    # Audit checkpoints (engine.store.audit): the first after the first batch, then at most
    # one per interval; the interval bounds how much history a truncation could hide.
    checkpoint_interval_s: float = 60.0
    _last_checkpoint: float | None = None
    # Signs each checkpoint (engine.signing); None writes them unsigned (dossier.audit_keys).
    signer: Signer | None = None
    # Seals personal data before it is stored (engine.store.privacy); built from the settings
    # when not handed in, so that no runtime writes history in clear.
    vault: PersonalDataVault | None = None

    def __post_init__(self) -> None:
        if self.vault is None:
            self.vault = build_vault(self.settings, create=True)
        mode = self.settings.batch_pipeline
        self.committer = BatchCommitter(
            self.processor,
            self.uow,
            self.writing_uow,
            write_behind=mode == "write-behind"
            or (mode == "auto" and self.db.dialect.name != "sqlite"),
            is_transient=is_infrastructure_failure,
            consumer_group=self.settings.consumer_group,
            after_commit=self._after_commit,
        )

    @classmethod
    def create(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        decider = build_decider(settings)
        db = create_db_engine(settings.database_url)
        if migrate:
            migrate_database(settings, db)
        vault = build_vault(settings, create=True)
        with db.connect() as connection:
            vault.check(connection)  # a wrong secret stops here, not in the first batch
        return cls(
            settings,
            db,
            decider,
            build_processor(settings, decider, settings.consumer_group),
            vault=vault,
            signer=checkpoint_signer(settings),
        )

    def missing_versions(self) -> list[tuple[str, int, int]]:
        """(procedure, version, dossiers) for every workflow version that stored dossiers are
        pinned to and the catalogue no longer has: their inputs could not be decided."""
        catalogue = self.decider.catalogue
        return sorted(
            (code, version, count)
            for (code, version), count in pinned_versions(self.db).items()
            if catalogue.get(code, version) is None
        )

    def uow(self, *, writes: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, writes=writes, vault=self.vault)

    def writing_uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, writes=True, vault=self.vault)

    def contract_topic(self, kafka_topic: str) -> str:
        return contract_topic(kafka_topic, self.settings.topic_prefix)

    # The committer's, for commands and tests that drive batches by hand.
    def process(
        self,
        inputs: Sequence[RawInput],
        attempts: int = 5,
        clock_ceiling: datetime | None = None,
        failures_allowed: int = 0,
    ) -> BatchResult:
        return self.committer.process(inputs, attempts, clock_ceiling, failures_allowed)

    def submit(
        self, inputs: Sequence[RawInput], clock_ceiling: datetime | None = None
    ) -> Future[BatchResult]:
        return self.committer.submit(inputs, clock_ceiling)

    @property
    def batch_listeners(self) -> list[Callable[[Sequence[RawInput], BatchResult, float], None]]:
        return self.committer.listeners

    def warm_up(self) -> None:
        self.committer.warm_up()

    def close(self) -> None:
        self.committer.close()  # the batch in flight commits first
        self.db.dispose()

    def _after_commit(self) -> None:
        self.outbox_wake.set()
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        last = self._last_checkpoint
        if last is not None and now - last < self.checkpoint_interval_s:
            return
        self._last_checkpoint = now
        from engine.store.audit import write_checkpoint

        try:
            written = write_checkpoint(
                self.db, self.settings.engine_source, encode_outbound, signer=self.signer
            )
            if written is not None:
                self.outbox_wake.set()
        except Exception:
            # A missed checkpoint delays evidence; it must not stop the engine.
            log.exception("audit checkpoint failed; retrying at the next interval")


def build_relay(
    settings: Settings,
    db: DbEngine,
    *,
    topic_name: Callable[[str], str] | None = None,
    on_published: Callable[[list[OutboxMessage]], None] | None = None,
    client_id: str = "dossier-engine-relay",
    lease: bool = True,
    warm: bool = True,
) -> RelayJob:
    """The outbox relay: a producer, the outbox of `db`, and (for the engine) the lease that
    lets one of several engine processes publish. The one place a relay is wired."""
    from dossier import kafka_clients
    from engine.events import DLQ_TOPIC, OUTBOUND_TOPICS
    from engine.store.sql import RelayLease
    from producers.relay import OutboxRelay, RelayJob

    name = topic_name or settings.topic
    producer = kafka_clients.producer(
        settings, max_request_size=8 * 1024 * 1024, client_id=client_id
    )
    if warm:  # the output topics' metadata now, not inside the first batch's publication
        for topic in OUTBOUND_TOPICS:
            producer.partitions_for(name(topic))
    relay = OutboxRelay(
        lambda: SqlUnitOfWork(db, writes=True),
        producer,
        name,
        on_published=on_published,
        retention={DLQ_TOPIC: timedelta(seconds=settings.dead_letter_retention_s)},
    )
    return RelayJob(relay, RelayLease(db) if lease else None, [lambda: producer.close(timeout=10)])


def relay_for_child(
    settings: Settings, on_published: Callable[[list[OutboxMessage]], None]
) -> RelayJob:
    """The relay child's own relay (producers.relay_process), with its own database pool and
    logging: pickled by reference into the spawned process with `settings` bound."""
    from dossier.logs import configure_logging
    from producers.relay import RelayJob

    configure_logging(settings.log_level, settings.log_format)
    db = create_db_engine(settings.database_url)
    job = build_relay(settings, db, on_published=on_published)
    return RelayJob(job.relay, job.lease, [job.close, db.dispose])
