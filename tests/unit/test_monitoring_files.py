"""deploy/prometheus and deploy/grafana agree with the metrics the code exports.

The rules and the dashboard name metrics in PromQL strings that nothing compiles: a renamed
family would leave an alert that never fires and a panel that stays empty. Here every name
they use must be one the engine exports, and every alert must have unit tests that show it
firing and staying quiet (the tests themselves run under promtool in tests/integration).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from dossier import monitoring as m
from engine.calendar import WorkingCalendar

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
METRIC = re.compile(r"\b(dossier_[a-z0-9_]+|up)\b")


def exported_series_names() -> set[str]:
    """Series names of every family `dossier run` exports (families need no samples here)."""
    registry = CollectorRegistry()
    db = create_engine("sqlite://")  # never queried: families are described, not collected
    monitoring = m.database_monitoring(
        db, WorkingCalendar.load(), lambda _p, _v: None, role="test", registry=registry
    )
    m.EngineMetrics(registry, ["single-level"], errors=monitoring.errors)
    lag: m.Refreshed[dict[tuple[str, int], int]] = m.Refreshed(
        "lag", dict, min_interval=1, max_interval=1
    )
    registry.register(m.LagCollector(lag, ""))
    names: set[str] = {"up"}
    for collector in list(registry._collector_to_names):
        describe = getattr(collector, "describe", None)
        families = describe() if describe is not None else collector.collect()
        for family in families:
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
            elif family.type == "info":
                names.add(f"{family.name}_info")
            else:
                names.add(family.name)
    db.dispose()
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series_names()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def test_every_issue_alert_exists() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "DossierEngineDown",
        "DossierConsumerLagGrowing",
        "DossierDeadLetters",
        "DossierInputSetAside",
        "DossierOutboxBacklogGrowing",
        "DossierParkedInputsPilingUp",
        "DossierOnTimeRateBelowTarget",
        "DossiersOverdue",
    }


def test_alerts_use_only_exported_metrics(exported: set[str]) -> None:
    for rule in alert_rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']} uses {used - exported}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"never shown firing: {names - firing}"
    assert names <= quiet, f"never shown quiet: {names - quiet}"


def test_scrape_configs_load_the_rules_and_scrape_the_job_the_rules_expect() -> None:
    for name in ("prometheus.yml", "prometheus.local.yml"):
        config = load_yaml(PROMETHEUS / name)
        assert config["rule_files"] == ["alerts.yml"], name
        jobs = [job["job_name"] for job in config["scrape_configs"]]
        assert jobs == ["dossier-engine"], name
    assert 'up{job="dossier-engine"}' in next(
        r["expr"] for r in alert_rules() if r["alert"] == "DossierEngineDown"
    )


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (GRAFANA / "dashboards" / "dossier-engine.json").read_text(encoding="utf-8")
    )
    return data


def panel_targets(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target) for panel in dash["panels"] for target in panel.get("targets", [])
    ]


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    dash = dashboard()
    expressions = [(title, t["expr"]) for title, t in panel_targets(dash)]
    expressions += [(v["name"], v["definition"]) for v in dash["templating"]["list"]]
    assert len(expressions) > 30
    used: set[str] = set()
    for title, expr in expressions:
        names = set(METRIC.findall(expr))
        assert names <= exported, f"panel {title!r} uses {names - exported}"
        used |= names
    # Everything an operator is told to watch is on the dashboard.
    for family in (
        "dossier_inputs_total",
        "dossier_dead_letters_total",
        "dossier_consumer_lag_messages",
        "dossier_outbox_unsent_messages",
        "dossier_parked_inputs",
        "dossier_dossiers_open",
        "dossier_dossiers_overdue",
        "dossier_indicator_ratio",
        "dossier_indicator_seconds",
        "dossier_committed_to_published_seconds_bucket",
        "dossier_consumed_to_committed_seconds_bucket",
        "dossier_event_to_applied_seconds_bucket",
        "dossier_fee_discounts_vnd_total",
        "dossier_deadline_notices_total",
        "dossier_input_outcomes",
    ):
        assert family in used, family


def test_dashboard_reads_the_provisioned_datasource() -> None:
    sources = load_yaml(GRAFANA / "datasources" / "prometheus.yml")["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    uid = sources[0]["uid"]
    assert sources[0]["url"] == "http://prometheus:9090"  # the compose service
    dash = dashboard()
    for title, target in panel_targets(dash):
        assert target["datasource"] == {"type": "prometheus", "uid": uid}, title
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboards_are_provisioned_from_their_mounted_folder() -> None:
    providers = load_yaml(GRAFANA / "dashboards" / "dossier-engine.yml")["providers"]
    # docker-compose mounts deploy/grafana at /etc/grafana/provisioning.
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/provisioning/dashboards"]
