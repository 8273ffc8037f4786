"""Prometheus rule groups: the body of a rule file and of a PrometheusRule's spec."""

from __future__ import annotations

from infra.config import AlertThresholds
from infra.monitoring.alerts import alert_rules
from infra.monitoring.recording import recording_rules
from infra.monitoring.service import MonitoredService


def rule_groups(service: MonitoredService, thresholds: AlertThresholds) -> list[dict[str, object]]:
    return [
        {"name": f"{service.job}.recording", "rules": [r.as_rule() for r in recording_rules(service)]},
        {"name": f"{service.job}.alerts", "rules": [r.as_rule() for r in alert_rules(service, thresholds)]},
    ]


def rule_file(service: MonitoredService, thresholds: AlertThresholds) -> dict[str, object]:
    """A Prometheus rule file (`rule_files:`), as `promtool check rules` reads it."""
    return {"groups": rule_groups(service, thresholds)}
