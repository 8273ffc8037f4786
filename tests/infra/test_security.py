"""Security: default-deny networking with narrow allows, and least-privilege RBAC."""

from __future__ import annotations

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


def test_dns_allowed_to_kube_system(declared: Declared) -> None:
    dns = [r for r in server_policy(declared)["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"]]
    assert len(dns) == 1
    assert namespaces(dns[0]["to"]) == {"kube-system"}
    assert {"port": 53, "protocol": "TCP"} in dns[0]["ports"]


def test_no_other_egress_without_model_download(declared: Declared) -> None:
    assert len(server_policy(declared)["egress"]) == 1


def test_model_download_allowed_to_the_buckets_addresses() -> None:
    target = gpu_target()
    egress = server_policy(declare(target=target, sync_from_bucket=True))["egress"]
    download = [r for r in egress if {"port": 443, "protocol": "TCP"} in r["ports"]]
    assert [p["ipBlock"]["cidr"] for p in download[0]["to"]] == list(target.model_sync.egress_cidrs)


def test_model_download_to_unknown_addresses_opens_only_https() -> None:
    base = gpu_target()
    target = gpu_target(model_sync=type(base.model_sync)(image=base.model_sync.image, command=["sync"]))
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
