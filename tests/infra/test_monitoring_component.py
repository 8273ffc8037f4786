"""The monitoring component under the mock runtime: operator objects or a plain scrape config, the
rules and the dashboard, all pointing at the objects the serving stack declares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.components.monitoring import DASHBOARD_LABEL, PROMETHEUS_CONFIG_KEY, monitored_service
from infra.components.naming import App
from infra.monitoring.dashboard import dashboard
from infra.monitoring.files import dump_yaml
from tests.infra.conftest import BASE_CONFIG, Declared, declare, merged
from tests.infra.prometheus_binaries import promtool

OPERATOR = "monitoring.coreos.com/v1"


def declare_monitored(monitoring: dict[str, Any] | None = None, **changes: Any) -> Declared:
    """The base stack with monitoring on, its section changed by `monitoring`."""
    return declare(merged({"monitoring": {"enabled": True, **(monitoring or {})}}, changes))


@pytest.fixture(scope="module")
def declared() -> Declared:
    return declare_monitored()


def _custom(declared: Declared, kind: str) -> list[dict]:
    return [o for o in declared.objects if o.get("apiVersion") == OPERATOR and o["kind"] == kind]


# Operator mode (the default)
def test_service_monitor_selects_the_service_and_names_its_port(declared: Declared) -> None:
    (monitor,) = _custom(declared, "ServiceMonitor")
    service = declared.one("Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= port_names


def test_prometheus_rule_spec_passespromtool(declared: Declared, tmp_path: Path) -> None:
    # kubernetes-validate has no schema for the operator's kinds; promtool checks what matters in
    # a PrometheusRule, its rule groups, exactly as Prometheus will load them.
    (rule,) = _custom(declared, "PrometheusRule")
    (tmp_path / "rules.yml").write_text(dump_yaml(rule["spec"]))
    result = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_labels_are_on_both_operator_objects() -> None:
    labels = {"release": "kube-prometheus-stack"}
    declared = declare_monitored({"operatorLabels": labels})
    objects = _custom(declared, "ServiceMonitor") + _custom(declared, "PrometheusRule")
    assert [labels.items() <= o["metadata"]["labels"].items() for o in objects] == [True, True]


def test_alert_thresholds_come_from_the_stack_config() -> None:
    threshold = 0.25
    declared = declare_monitored({"alerts": {"errorRate": threshold}})
    (rule,) = _custom(declared, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
    assert alerts["LLMServingHighErrorRate"]["expr"].endswith(f"> {threshold}")


def test_queue_alert_at_max_replicas_names_the_autoscaler(declared: Declared) -> None:
    (rule,) = _custom(declared, "PrometheusRule")
    hpa = declared.one("HorizontalPodAutoscaler")["metadata"]["name"]
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]
             if r.get("alert") == "LLMServingQueueGrowingAtMaxReplicas"]
    assert len(exprs) == 1 and f'horizontalpodautoscaler="{hpa}"' in exprs[0]


def test_without_autoscaling_there_is_no_queue_alert_at_max_replicas() -> None:
    (rule,) = _custom(declare_monitored(autoscaling={"enabled": False}), "PrometheusRule")
    names = {r.get("alert") for group in rule["spec"]["groups"] for r in group["rules"]}
    assert "LLMServingQueueGrowingAtMaxReplicas" not in names


# scrape-config mode
@pytest.fixture(scope="module")
def scrape_mode() -> Declared:
    return declare_monitored({"mode": "scrape-config"})


def _scrape_config_map(declared: Declared) -> dict:
    return next(o for o in declared.all("ConfigMap") if PROMETHEUS_CONFIG_KEY in o.get("data", {}))


def test_scrape_mode_declares_no_operator_objects(scrape_mode: Declared) -> None:
    assert _custom(scrape_mode, "ServiceMonitor") + _custom(scrape_mode, "PrometheusRule") == []


def test_scrape_config_lives_in_prometheus_namespace() -> None:
    declared = declare_monitored({"mode": "scrape-config"}, network={"prometheusNamespace": "observability"})
    assert _scrape_config_map(declared)["metadata"]["namespace"] == "observability"


def test_scrape_config_rules_passpromtool(scrape_mode: Declared, tmp_path: Path) -> None:
    config = yaml.safe_load(_scrape_config_map(scrape_mode)["data"][PROMETHEUS_CONFIG_KEY])
    for key in config["rule_files"]:
        (tmp_path / key).write_text(_scrape_config_map(scrape_mode)["data"][key])
    result = promtool("check", "rules", *config["rule_files"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool_but_for_discovery(scrape_mode: Declared, tmp_path: Path) -> None:
    # Debian's Prometheus is built without Kubernetes service discovery, so its promtool rejects the
    # `kubernetes_sd_configs` block; everything else (relabelling, intervals, rule files) it checks.
    data = _scrape_config_map(scrape_mode)["data"]
    config = yaml.safe_load(data[PROMETHEUS_CONFIG_KEY])
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
    (tmp_path / PROMETHEUS_CONFIG_KEY).write_text(dump_yaml(config))
    for key in config["rule_files"]:
        (tmp_path / key).write_text(data[key])
    result = promtool("check", "config", PROMETHEUS_CONFIG_KEY, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pod_discovery_keeps_the_server_pods_and_port(scrape_mode: Declared) -> None:
    config = yaml.safe_load(_scrape_config_map(scrape_mode)["data"][PROMETHEUS_CONFIG_KEY])
    (job,) = config["scrape_configs"]
    pod = scrape_mode.one("Deployment")["spec"]["template"]
    meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
            for k, v in pod["metadata"]["labels"].items()}
    meta["__meta_kubernetes_pod_phase"] = "Running"
    meta["__meta_kubernetes_pod_container_port_name"] = pod["spec"]["containers"][0]["ports"][0]["name"]
    keeps = [r for r in job["relabel_configs"] if r["action"] == "keep"]
    # Prometheus anchors relabel regexes at both ends.
    assert all(re.fullmatch(r["regex"], meta[r["source_labels"][0]]) for r in keeps)


def test_prometheus_may_discover_pods_in_the_app_namespace_only() -> None:
    declared = declare_monitored({"mode": "scrape-config", "prometheusServiceAccount": "prom"},
                                 network={"prometheusNamespace": "observability"})
    (binding,) = [b for b in declared.all("RoleBinding") if "prometheus" in b["metadata"]["name"]]
    role = declared.one("Role", binding["roleRef"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prom", "namespace": "observability"}]
    assert role["metadata"]["namespace"] == BASE_CONFIG["namespace"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


# Dashboard
def _dashboard_map(declared: Declared) -> dict:
    return next(o for o in declared.all("ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))


def test_dashboard_config_map_is_labelled_for_the_grafana_sidecar(declared: Declared) -> None:
    assert DASHBOARD_LABEL.items() <= _dashboard_map(declared)["metadata"]["labels"].items()


def test_dashboard_lives_in_the_app_namespace_by_default(declared: Declared) -> None:
    assert _dashboard_map(declared)["metadata"]["namespace"] == BASE_CONFIG["namespace"]


def test_dashboard_namespace_comes_from_the_config() -> None:
    declared = declare_monitored({"dashboardNamespace": "grafana"})
    assert _dashboard_map(declared)["metadata"]["namespace"] == "grafana"


def test_dashboard_holds_the_generated_dashboard(declared: Declared) -> None:
    (text,) = _dashboard_map(declared)["data"].values()
    service = declared.one("Service")["metadata"]
    app = App(service["name"], service["namespace"], version="")
    assert json.loads(text) == dashboard(monitored_service(app, autoscaled=True))


def test_monitoring_disabled_declares_none_of_it() -> None:
    declared = declare_monitored({"enabled": False})
    assert [o for o in declared.objects if o["metadata"]["labels"].get("app.kubernetes.io/component")
            == "monitoring"] == []
