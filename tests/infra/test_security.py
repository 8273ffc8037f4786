"""Security: default-deny networking with narrow allows, and least-privilege RBAC."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from infra.config import SERVER_PORT
from tests.infra.conftest import Declared, declare, gpu_target

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def server_policy(declared: Declared) -> dict[str, Any]:
    return declared.one("NetworkPolicy", "llm-serving")["spec"]


def namespaces(peers: list[dict[str, Any]]) -> set[str]:
    return {p["namespaceSelector"]["matchLabels"][NAMESPACE_LABEL] for p in peers}


def test_default_deny_for_every_pod(declared: Declared) -> None:
    spec = declared.one("NetworkPolicy", "llm-serving-default-deny")["spec"]
    assert spec == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_server_policy_selects_the_server_pods(declared: Declared) -> None:
    selector = declared.one("Deployment")["spec"]["selector"]
    assert server_policy(declared)["podSelector"] == selector


def test_ingress_controller_and_prometheus_may_connect() -> None:
    declared = declare({"network": {"ingressControllerNamespace": "edge", "prometheusNamespace": "metrics"}})
    (rule,) = server_policy(declared)["ingress"]
    assert namespaces(rule["from"]) == {"edge", "metrics"}
    assert rule["ports"] == [{"port": SERVER_PORT, "protocol": "TCP"}]


def _dns_rule(declared: Declared) -> dict[str, Any]:
    (dns,) = [r for r in server_policy(declared)["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"]]
    assert {"port": 53, "protocol": "TCP"} in dns["ports"]
    return dns


def test_dns_allowed_to_kube_system(declared: Declared) -> None:
    assert namespaces([p for p in _dns_rule(declared)["to"] if "namespaceSelector" in p]) == {"kube-system"}


def test_dns_allowed_to_node_local_dns_cache(declared: Declared) -> None:
    blocks = [p["ipBlock"]["cidr"] for p in _dns_rule(declared)["to"] if "ipBlock" in p]
    assert blocks == ["169.254.20.10/32"]
    off = declare({"network": {"nodeLocalDns": False}})
    assert [p for p in _dns_rule(off)["to"] if "ipBlock" in p] == []


def test_acme_http01_solver_admitted_from_the_gateway_namespace() -> None:
    declared = declare({"ingress": {"kind": "gateway"}})
    spec = declared.one("NetworkPolicy", "llm-serving-acme-solver")["spec"]
    assert spec["podSelector"]["matchLabels"] == {"acme.cert-manager.io/http01-solver": "true"}
    (rule,) = spec["ingress"]
    assert namespaces(rule["from"]) == {"envoy-gateway-system"}
    assert rule["ports"] == [{"port": 8089, "protocol": "TCP"}]
    without_tls = declare({"ingress": {"tls": {"enabled": False}}}).all("NetworkPolicy")
    assert "llm-serving-acme-solver" not in [p["metadata"]["name"] for p in without_tls]


def test_no_other_egress_without_model_download(declared: Declared) -> None:
    assert len(server_policy(declared)["egress"]) == 1


def test_model_download_allowed_to_the_buckets_addresses() -> None:
    target = gpu_target()
    egress = server_policy(declare(target=target, sync_from_bucket=True))["egress"]
    download = [r for r in egress if {"port": 443, "protocol": "TCP"} in r["ports"]]
    assert [p["ipBlock"]["cidr"] for p in download[0]["to"]] == list(target.model_sync.egress_cidrs)


def test_model_download_to_unknown_addresses_opens_only_https() -> None:
    base = gpu_target()
    target = gpu_target(model_sync=replace(base.model_sync, egress_cidrs=()))
    egress = server_policy(declare(target=target, sync_from_bucket=True))["egress"]
    (download,) = [r for r in egress if r["to"][0].get("ipBlock")]
    assert download["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert download["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


def test_role_reads_only_the_apps_settings(declared: Declared) -> None:
    (rule,) = declared.one("Role")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["get"],
        "resourceNames": [declared.one("ConfigMap")["metadata"]["name"]],
    }


def test_role_bound_to_the_service_account(declared: Declared) -> None:
    binding = declared.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": declared.one("Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": declared.one("ServiceAccount")["metadata"]["name"],
            "namespace": declared.one("Namespace")["metadata"]["name"],
        }
    ]
