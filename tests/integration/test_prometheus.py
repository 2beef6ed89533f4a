"""deploy/prometheus checked by the real tools, and a real Prometheus scraping a real engine.

Prometheus and promtool come from Debian's `prometheus` package (.ci/run installs it). Without
them these tests are skipped, or fail under CI=true, like the other services' tests.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from dossier.settings import Settings
from dossier.tools.supervision import EngineProcess, wait_caught_up
from tests.fixtures import events as ev
from tests.integration.conftest import in_ci, isolated_run

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
COMMUNE = ev.COMMUNE_AGENCY


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package `prometheus`; .ci/run installs it)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return tool("prometheus")


def run_tool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60
    )
    return result


# --- promtool on the files ---------------------------------------------------------------------


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_check_config(promtool: str, config: str) -> None:
    result = run_tool(promtool, "check", "config", str(PROMETHEUS_DIR / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = run_tool(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = run_tool(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- a real Prometheus scraping a real engine --------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def engine_settings(settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    database = f"sqlite:///{tmp_path / 'engine.db'}"
    with isolated_run(
        settings, database, tmp_path, "metrics", metrics_host="127.0.0.1", metrics_port=free_port()
    ) as isolated:
        yield isolated


@pytest.fixture
def send(engine_settings: Settings) -> Iterator[Callable[[str, Any], None]]:
    producer = KafkaProducer(
        bootstrap_servers=engine_settings.kafka_bootstrap_servers.split(","), acks="all"
    )

    def send_one(topic: str, event: Any, key: bytes | None = None) -> None:
        value = event if isinstance(event, bytes) else ev.to_bytes(event)
        if key is None and isinstance(event, dict):
            key = str(event["subject"]).encode()
        producer.send(engine_settings.topic(topic), key=key, value=value).get(timeout=30)

    yield send_one
    producer.close()


class Prometheus:
    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text("utf-8"))
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_DIR / rule) for rule in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that selects at most one series; None when it selects none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} selects {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def eventually(self, expr: str, expected: float | None, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen == expected or (
                seen is not None and expected is not None and abs(seen - expected) < 1e-9
            ):
                return
            time.sleep(0.5)
        raise AssertionError(f"{expr} = {seen}, expected {expected}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture
def engine(engine_settings: Settings, tmp_path: Path) -> Iterator[EngineProcess]:
    with EngineProcess(engine_settings, tmp_path / "engine.log") as process:
        yield process


@pytest.fixture
def prometheus(
    prometheus_binary: str, engine_settings: Settings, engine: EngineProcess, tmp_path: Path
) -> Iterator[Prometheus]:
    target = f"{engine_settings.metrics_host}:{engine_settings.metrics_port}"
    server = Prometheus(prometheus_binary, target, tmp_path / "prometheus")
    yield server
    server.stop()


def scrape(settings: Settings) -> bytes:
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def birth_registration(code: str, day: str, resolved: str, returned: str) -> list[tuple[str, Any]]:
    return [
        (
            "dossier.submission",
            ev.submitted(
                procedure="1.001193",
                dossier=code,
                channel=1,
                digitised=code.endswith("2"),
                time=f"{day}T08:00:00+07:00",
            ),
        ),
        (
            "dossier.commune",
            ev.received(
                dossier=code, time=f"{day}T{'09' if code.endswith('1') else '10'}:00:00+07:00"
            ),
        ),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T11:00:00+07:00")),
        ("dossier.commune", ev.resolved(dossier=code, time=resolved)),
        ("dossier.commune", ev.result_returned(dossier=code, time=returned)),
    ]


def test_prometheus_sees_counters_and_indicators_move(
    engine_settings: Settings,
    engine: EngineProcess,
    prometheus: Prometheus,
    send: Callable[..., None],
    promtool: str,
) -> None:
    agency = f'agency="{COMMUNE}", level="commune"'
    p = prometheus
    # Scraped once before anything happens: the series exist at 0 (they are initialised at
    # start), so increase() and the dead-letter alert see the first dead letter.
    p.eventually('dossier_dead_letters_total{reason="malformed"}', 0)
    # Phase 1: a birth registration finished on time (received Mon 09:00, due Tue 09:00,
    # resolved Mon 14:00 after 3 working hours), and one malformed input.
    birth = f"{COMMUNE}-250303-0001"
    for topic, event in birth_registration(
        birth, "2025-03-03", "2025-03-03T14:00:00+07:00", "2025-03-03T15:00:00+07:00"
    ):
        send(topic, event)
    send("dossier.commune", b"{not json", key=birth.encode())
    wait_caught_up(engine_settings, 90, engine)

    # The endpoint passes Prometheus's own linter, histograms and all.
    exposition = scrape(engine_settings)
    assert b"dossier_consumed_to_committed_seconds_bucket" in exposition
    lint = run_tool(promtool, "check", "metrics", stdin=exposition)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), (
        lint.stdout + lint.stderr
    )
    assert birth.encode() not in exposition

    # An input consumed before its predecessor (another topic) is parked, then applied: the
    # counter keeps its first fate, the database's outcome counts its final one.
    p.eventually('sum(dossier_inputs_total{outcome=~"applied|parked"})', 5)
    p.eventually('sum(dossier_input_outcomes{outcome="applied"})', 5)
    p.eventually('sum(dossier_input_outcomes{outcome="parked"})', 0)
    p.eventually('dossier_input_outcomes{topic="dossier.commune", outcome="dead_lettered"}', 1)
    p.eventually("sum(dossier_transitions_total)", 5)
    p.eventually('dossier_inputs_total{topic="dossier.commune", outcome="dead_lettered"}', 1)
    p.eventually('dossier_dead_letters_total{reason="malformed"}', 1)
    p.eventually('dossier_transitions_total{group="single-level", status_code="10"}', 1)
    p.eventually('dossier_outputs_published_total{topic="dossier.status"}', 5)
    p.eventually('dossier_outputs_published_total{topic="dossier.dlq"}', 1)
    for histogram in ("consumed_to_committed", "committed_to_published", "event_to_applied"):
        p.eventually(f"count(dossier_{histogram}_seconds_count > 0)", 1)
    p.eventually(f'dossier_indicator_ratio{{indicator="2.1_on_time", {agency}}}', 1)
    p.eventually(f'dossier_indicator_ratio{{indicator="3.3_online", {agency}}}', 0)
    p.eventually(
        f'dossier_indicator_seconds{{indicator="2.2_processing_time", {agency}}}', 3 * 3600
    )
    p.eventually("sum(dossier_consumer_lag_messages)", 0)
    p.eventually('dossier_build_info{role="engine"}', 1)
    p.eventually('count(ALERTS{alertname="DossierDeadLetters", reason="malformed"})', 1)
    assert p.value(f'dossier_indicator_ratio{{indicator="3.6_online_payment", {agency}}}') is None

    # Phase 2: a second birth registration resolved a day late (received Mon 10:00, due
    # Tue 10:00, resolved Wed 09:00 after 15 working hours), and a residence registration
    # submitted online, received and still open, with its 50% online fee discount.
    late = f"{COMMUNE}-250303-0002"
    residence = f"{COMMUNE}-250305-0001"
    script = birth_registration(
        late, "2025-03-03", "2025-03-05T09:00:00+07:00", "2025-03-05T10:00:00+07:00"
    )
    script += [
        (
            "dossier.submission",
            ev.submitted(procedure="1.004222", dossier=residence, time="2025-03-05T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=residence, time="2025-03-05T09:00:00+07:00")),
    ]
    for topic, event in script:
        send(topic, event)
    wait_caught_up(engine_settings, 90, engine)

    p.eventually('sum(dossier_inputs_total{outcome=~"applied|parked"})', 12)
    p.eventually('sum(dossier_input_outcomes{outcome="applied"})', 12)
    p.eventually("sum(dossier_transitions_total)", 12)
    p.eventually(f'dossier_indicator_ratio{{indicator="2.1_on_time", {agency}}}', 0.5)
    p.eventually(f'dossier_indicator_dossiers{{indicator="2.1_on_time", {agency}}}', 2)
    p.eventually(f'dossier_indicator_ratio{{indicator="5.4_satisfaction", {agency}}}', 0.5)
    p.eventually(f'dossier_indicator_ratio{{indicator="3.3_online", {agency}}}', 1 / 3)
    p.eventually(f'dossier_indicator_ratio{{indicator="4.2_digitised", {agency}}}', 2 / 3)
    p.eventually(
        f'dossier_indicator_seconds{{indicator="2.2_processing_time", {agency}}}',
        (3 + 15) * 3600 / 2,
    )
    p.eventually('dossier_dossiers_open{status_code="2", level="commune"}', 1)
    p.eventually('dossier_fee_discounts_vnd_total{group="single-level"}', 10_000)
    p.eventually('dossier_fee_discounts_granted_total{group="single-level"}', 1)
    p.eventually("dossier_outbox_unsent_messages", 0)
    p.eventually("dossier_parked_inputs", 0)
    p.eventually("sum(dossier_consumer_lag_messages)", 0)
