"""Every PromQL expression in the generated rules and dashboard names only series the server exports
(the metric catalog), series recorded by our own rules, or a short list of external series."""

from __future__ import annotations

import re

import pytest

from inference import metrics
from infra.config import AlertThresholds
from infra.monitoring import alerts
from infra.monitoring.dashboard import dashboard
from infra.monitoring.recording import recording_rules
from infra.monitoring.rules import rule_groups
from infra.monitoring.service import MonitoredService
from tests.infra.promql_names import series_names

# With an autoscaler, so that every alert and panel is generated.
SERVICE = MonitoredService(job="llm", namespace="serving", deployment="llm", autoscaler="llm")
# Series from outside the server, each with the reason it cannot be in the catalog:
EXTERNAL_SERIES = {
    # kube-state-metrics: replica counts and HPA limits are the cluster's facts, not the server's.
    alerts.KSM_HPA_CURRENT_REPLICAS,
    alerts.KSM_HPA_MAX_REPLICAS,
    alerts.KSM_DEPLOYMENT_AVAILABLE,
    # Prometheus' own scrape health: the server cannot report that it is unreachable.
    alerts.SCRAPE_UP,
}
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$")


def _rule_exprs() -> list[str]:
    groups = rule_groups(SERVICE, AlertThresholds())
    return [rule["expr"] for group in groups for rule in group["rules"]]  # type: ignore[index]


def _dashboard_exprs() -> list[str]:
    model = dashboard(SERVICE)
    exprs = [target["expr"] for panel in model["panels"] for target in panel["targets"]]  # type: ignore[index]
    for variable in model["templating"]["list"]:  # type: ignore[index]
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable
            exprs.append(match["selector"])
    return exprs


ALL_EXPRS = _rule_exprs() + _dashboard_exprs()
RECORDED = {rule.record for rule in recording_rules(SERVICE)}


@pytest.mark.parametrize("expr", ALL_EXPRS)
def test_query_names_only_catalog_recorded_or_allowed_external_series(expr: str) -> None:
    unknown = series_names(expr) - metrics.series_names() - RECORDED - EXTERNAL_SERIES
    assert not unknown, f"{expr!r} names series nothing exports: {sorted(unknown)}"


def test_seed_alert_on_unexported_gpu_metrics_would_be_caught() -> None:
    seed_expr = "nvidia_gpu_memory_used_bytes / nvidia_gpu_memory_total_bytes > 0.9"
    assert series_names(seed_expr) - metrics.series_names() - RECORDED - EXTERNAL_SERIES


def test_every_allowed_external_series_is_used() -> None:
    used = set().union(*map(series_names, ALL_EXPRS))
    assert EXTERNAL_SERIES - used == set()


def test_recording_rules_read_only_series_recorded_before_them() -> None:
    defined: set[str] = set()
    for rule in recording_rules(SERVICE):
        assert series_names(rule.expr) & RECORDED <= defined, rule.record
        defined.add(rule.record)


def test_every_recorded_series_is_read_by_an_alert_or_a_panel() -> None:
    alert_exprs = [rule.expr for rule in alerts.alert_rules(SERVICE, AlertThresholds())]
    used = set().union(*map(series_names, alert_exprs + _dashboard_exprs()))
    recorded_internally = set().union(*(series_names(rule.expr) for rule in recording_rules(SERVICE)))
    assert RECORDED - used - recorded_internally == set()
