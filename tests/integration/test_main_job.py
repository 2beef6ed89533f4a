"""The main job, small: `dossier demo` through real Kafka and the engine process.

Its summary must agree with the engine's database (read here with plain SQL, not with the
report's code) and with what the simulator produced (its manifest, and the dead letters that
really reached Kafka). Each run has its own topic prefix, consumer group and database.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dossier import kafka_clients
from dossier.cli import main
from dossier.settings import Settings
from dossier.tools.simulation import HOSTILE_KINDS, HOSTILE_REASONS, value_digest
from dossier.tools.workload import read_topic
from engine.calendar import VN_TZ
from engine.decider import HANDED_OVER_TYPE
from engine.events import ALL_TOPICS
from engine.history import ENGINE_TOPIC
from engine.procedures import MIGRATED_TYPE, load_catalogue
from engine.store.sql import consumer_positions, create_db_engine, dossiers, history, outbox

CUTOVER = datetime(2025, 7, 1, tzinfo=VN_TZ)  # the districts' handover (contract 1.1)

DEMO = [
    "demo",
    "--seed",
    "5",
    "--from",
    "2025-06-25",
    "--to",
    "2025-07-04",
    "--warm-up-days",
    "3",
    "--dossiers",
    "250",
    "--bad-share",
    "0.03",
    "--duplicate-share",
    "0.03",
    "--reorder-share",
    "0.1",
    # Enough of every hostile sender's kind to see each one in a run this small.
    *("--hostile", "poison-string=0.05"),
    *("--hostile", "duplicate-key=0.01"),
    *("--hostile", "wrong-key=0.01"),
    *("--hostile", "implausible-time=0.01"),
    *("--hostile", "oversized-string=0.03"),
    *("--hostile", "forged-fee=0.2"),
    *("--hostile", "wrong-payment=0.2"),
    *("--hostile", "conflicting-copy=0.3"),
    "--keep-topics",
    "--timeout",
    "300",
    # These runs read the topics back with the plaintext login; test_main_job_secure below is
    # the job as `dossier demo` runs it by default, on the secure broker.
    "--plaintext",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str
) -> str:
    if request.param == "postgresql":
        # Least privilege: the engine runs as its own role; the owner makes the run's schema
        # and migrates it, granting the engine's role its privileges.
        monkeypatch.setenv("DOSSIER_DATABASE_URL", request.getfixturevalue("postgres_engine_url"))
        monkeypatch.setenv(
            "DOSSIER_MIGRATION_DATABASE_URL", request.getfixturevalue("postgres_url")
        )
    else:
        monkeypatch.delenv("DOSSIER_DATABASE_URL", raising=False)
        monkeypatch.delenv("DOSSIER_MIGRATION_DATABASE_URL", raising=False)
    return str(request.param)


@pytest.fixture
def demo_run(backend: str, settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Run the job; yield its summary, manifest and where its data is; clean up after."""
    run_dir = tmp_path / "run"
    code = main([*DEMO, "--run-dir", str(run_dir)])
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    prefix = manifest["topic_prefix"]
    schema = f"demo_{summary['run'].replace('-', '_')}"
    if backend == "sqlite":
        url = f"sqlite:///{run_dir / 'engine.db'}"
    else:
        url = (
            sa.make_url(settings.postgres_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    try:
        yield {
            "code": code,
            "summary": summary,
            "manifest": manifest,
            "url": url,
            "run_dir": run_dir,
        }
    finally:
        isolated = replace(settings, topic_prefix=prefix)
        with contextlib.suppress(Exception):
            kafka_clients.delete_topics(isolated, [isolated.topic(t) for t in ALL_TOPICS])
        if backend == "postgresql":
            admin = sa.create_engine(settings.postgres_url)
            with admin.begin() as connection:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()


def database_facts(url: str, group: str, start: datetime, end: datetime) -> dict[str, Any]:
    db = create_db_engine(url)
    d = dossiers.c
    try:
        with db.connect() as connection:
            in_period = sa.and_(d.submitted_at >= start, d.submitted_at < end)
            by_status: dict[int, int] = dict(
                connection.execute(
                    sa.select(d.status_code, sa.func.count())
                    .where(in_period)
                    .group_by(d.status_code)
                ).all()
            )
            letters: Counter[str] = Counter()
            for (value,) in connection.execute(
                sa.select(outbox.c.value).where(outbox.c.topic == "dossier.dlq")
            ):
                letters[json.loads(bytes(value))["data"]["reason"]] += 1
            finished = connection.execute(
                sa.select(d.due_at, d.finished_at).where(
                    d.finished_at >= start, d.finished_at < end
                )
            ).all()
            received = connection.execute(
                sa.select(d.channel).where(d.received_at >= start, d.received_at < end)
            ).all()
            h = history.c
            handovers: Counter[str] = Counter()
            handed_over: set[str] = set()
            migrations: Counter[str] = Counter()
            migrated: set[str] = set()
            versions = {(v.code, v.version): v.levels for v in load_catalogue().all_versions()}
            for code, type_, envelope in connection.execute(
                sa.select(h.dossier_code, h.type, h.envelope).where(h.topic == ENGINE_TOPIC)
            ):
                data = (json.loads(envelope) if isinstance(envelope, str) else envelope)["data"]
                if type_ == HANDED_OVER_TYPE:
                    handovers[f"{data['level']} → {data['to_level']}"] += 1
                    handed_over.add(code)
                else:
                    assert type_ == MIGRATED_TYPE, type_
                    source = versions[(data["procedure"], data["from_version"])]
                    target = versions[(data["procedure"], data["to_version"])]
                    migrations[f"{'/'.join(source)} → {'/'.join(target)}"] += 1
                    migrated.add(code)
            status_of = dict(connection.execute(sa.select(d.code, d.status_code)).all())
            statuses = Counter(status_of[code] for code in handed_over)
            migrated_statuses = Counter(status_of[code] for code in migrated)
            after_cutover = connection.execute(
                sa.select(h.dossier_code, h.topic).where(
                    h.event_time >= CUTOVER, h.topic != ENGINE_TOPIC
                )
            ).all()
            return {
                "by_status": {str(k): v for k, v in by_status.items()},
                "dead_letters": dict(letters),
                # Inputs applied: the history without the engine's own entries (handovers and
                # migrations).
                "applied": connection.scalar(
                    sa.select(sa.func.count())
                    .select_from(history)
                    .where(history.c.topic != ENGINE_TOPIC)
                ),
                "handovers": sum(handovers.values()),
                "handovers_by_level": dict(handovers),
                "handed_over_statuses": statuses,
                "migrations": sum(migrations.values()),
                "migrations_by_levels": dict(migrations),
                "migrated_statuses": migrated_statuses,
                "history_rows": connection.scalar(sa.select(sa.func.count()).select_from(history)),
                # Inputs applied after the cutover: from a district (none may be), and from the
                # successor's level on the dossiers handed over to it.
                "district_after_cutover": sum(
                    1 for _, topic in after_cutover if topic.endswith("dossier.district")
                ),
                "handed_over_continued": len(
                    {
                        code
                        for code, topic in after_cutover
                        if code in handed_over
                        and topic.endswith(("dossier.province", "dossier.commune"))
                    }
                ),
                "consumed": connection.scalar(
                    sa.select(sa.func.sum(consumer_positions.c.next_offset)).where(
                        consumer_positions.c.group_id == group
                    )
                ),
                "dossiers": connection.scalar(sa.select(sa.func.count()).select_from(dossiers)),
                "on_time": (
                    sum(1 for due, done in finished if due is None or done <= due),
                    len(finished),
                ),
                "online": (sum(1 for (channel,) in received if channel == 2), len(received)),
            }
    finally:
        db.dispose()


def test_main_job_summary_agrees_with_the_database_and_with_what_was_produced(
    demo_run: dict[str, Any], settings: Settings
) -> None:
    summary, manifest = demo_run["summary"], demo_run["manifest"]
    assert demo_run["code"] == 0, summary["checks"]
    assert [c for c in summary["checks"] if not c["ok"]] == []

    start, end = (datetime.fromisoformat(t) for t in summary["period"])
    prefix = manifest["topic_prefix"]
    facts = database_facts(demo_run["url"], prefix.rstrip("."), start, end)

    # The summary says what the database says.
    assert summary["by_status"] == facts["by_status"]
    assert summary["dossiers"] == sum(facts["by_status"].values())
    assert summary["dead_letters"] == facts["dead_letters"]
    assert summary["applied"] == facts["applied"]
    assert summary["consumed"] == facts["consumed"]
    on_time, online = summary["indicators"]["2.1"], summary["indicators"]["3.3"]
    assert (on_time["numerator"], on_time["denominator"]) == facts["on_time"]
    assert (online["numerator"], online["denominator"]) == facts["online"]

    # ... and what was produced: every valid input applied, every duplicate recognised,
    # every bad input dead-lettered with the reason it was made for.
    expected = manifest["expected"]
    bad = {reason: n for reason, n in expected.items() if reason not in ("valid", "duplicate")}
    assert set(bad) >= {"malformed", "schema"}
    assert facts["consumed"] == manifest["messages"]
    assert facts["applied"] == expected["valid"]
    # The month crosses 2025-07-01: the districts' open dossiers pass to their successors, and
    # the DD.GCN.LD v1 dossiers open then move to version 2 (workflows/migrations/), exactly
    # those the simulator expected, and the summary says so; the history holds the inputs
    # applied, the handovers and the migrations, nothing else; no district acts after 30 June,
    # and the successor goes on with the dossiers it took over.
    assert facts["handovers"] > 0
    assert summary["handovers"] == facts["handovers_by_level"] == manifest["handovers"]
    assert facts["migrations"] > 0
    assert summary["migrations"] == facts["migrations_by_levels"] == manifest["migrations"]
    assert summary["history_rows"] == facts["history_rows"]
    assert facts["history_rows"] == facts["applied"] + facts["handovers"] + facts["migrations"]
    assert facts["history_rows"] == expected["valid"] + sum(manifest["handovers"].values()) + sum(
        manifest["migrations"].values()
    )
    for kind in ("handed_over", "migrated"):
        statuses = facts[f"{kind}_statuses"]
        fates = summary[kind]
        assert fates["dossiers"] == sum(statuses.values())
        assert (fates["returned"], fates["resolved"]) == (statuses[10], statuses[9])
        assert fates["finished"] == statuses[9] + statuses[10]
    assert summary["handed_over"]["dossiers"] == facts["handovers"]
    assert summary["migrated"]["dossiers"] == facts["migrations"]
    assert facts["district_after_cutover"] == 0
    assert facts["handed_over_continued"] > 0
    lines = {c["name"]: c for c in summary["checks"]}
    handed = [line for name, line in lines.items() if name.startswith("handovers: ")]
    # To the province department, and to a district's commune for a procedure moved down.
    assert {name for name in lines if name.startswith("handovers: ")} == {
        "handovers: district → province",
        "handovers: district → commune",
    }
    assert all(line["actual"] == line["expected"] for line in handed)
    assert sum(line["actual"] for line in handed) == facts["handovers"]
    migrated = [line for name, line in lines.items() if name.startswith("migrations: ")]
    assert len(migrated) == len(manifest["migrations"])
    assert all(line["actual"] == line["expected"] for line in migrated)
    assert sum(line["actual"] for line in migrated) == facts["migrations"]
    history_line = lines["history rows: inputs applied + handovers + migrations"]
    assert history_line["actual"] == facts["history_rows"]
    assert facts["dossiers"] == manifest["dossiers"]
    assert summary["duplicates"] == expected["duplicate"]
    assert facts["dead_letters"] == bad

    # The dead letters really went out on Kafka, once each, with those reasons.
    records = read_topic(
        settings,
        f"{prefix}dossier.dlq",
        timeout_s=30,
        expect=sum(bad.values()),
    )
    assert Counter(json.loads(r.value)["data"]["reason"] for r in records) == Counter(bad)

    # Each hostile sender's input, found by its bytes among them, with the reason the contract
    # gives its kind: not merely the right totals by reason.
    letters: dict[str, Counter[str]] = {}
    for record in records:
        data = json.loads(record.value)["data"]
        original = base64.b64decode(data["original"]["value_base64"])
        letters.setdefault(value_digest(original), Counter())[data["reason"]] += 1
    hostile = manifest["hostile"]
    assert set(hostile) == set(HOSTILE_KINDS)
    lines = {c["name"]: c for c in summary["checks"]}
    for kind, entry in hostile.items():
        reason = HOSTILE_REASONS[kind]
        assert entry["reason"] == reason
        assert [letters.get(digest) for digest in entry["sha256"]] == [
            Counter({reason: 1})
        ] * entry["count"], kind
        line = lines[f"hostile {kind}: {reason}"]
        assert line["expected"] == line["actual"] == entry["count"]

    # What the job wrote (database, report, summary, logs) is for its user alone (issue 18).
    run_dir: Path = demo_run["run_dir"]
    assert run_dir.stat().st_mode & 0o077 == 0
    written = list(run_dir.rglob("*"))
    assert any(p.suffix == ".html" for p in written)
    assert [p for p in written if p.stat().st_mode & 0o077] == []


def test_main_job_on_the_secure_broker_closes_its_accounting(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str
) -> None:
    """The main job as it runs by default: TLS and SASL/SCRAM, one principal per role, ACLs.
    Its own checks (every input's outcome and reason, the hostile senders' bytes) must all
    pass; the plaintext runs above look at the topics themselves."""
    monkeypatch.delenv("DOSSIER_DATABASE_URL", raising=False)
    run_dir = tmp_path / "run"
    secure = [arg for arg in DEMO if arg not in ("--plaintext", "--keep-topics")]
    code = main([*secure, "--run-dir", str(run_dir)])
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    failed = [check for check in summary["checks"] if not check["ok"]]
    assert code == 0 and not failed, failed
    assert summary["checks"], "the summary has no accounting"
