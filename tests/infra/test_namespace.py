"""Namespace component: Pod Security Admission, quota and container defaults."""

from __future__ import annotations

from tests.infra.conftest import BASE_CONFIG, Declared, declare, gpu_target


def test_namespace_enforces_audits_and_warns_restricted(declared: Declared) -> None:
    labels = declared.one("Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_pod_security_version_pinned(declared: Declared) -> None:
    labels = declared.one("Namespace")["metadata"]["labels"]
    versions = {labels[f"pod-security.kubernetes.io/{mode}-version"] for mode in ("enforce", "audit", "warn")}
    assert len(versions) == 1
    assert versions.pop().startswith("v1.")


def test_namespace_named_from_config(declared: Declared) -> None:
    assert declared.one("Namespace")["metadata"]["name"] == BASE_CONFIG["namespace"]


def test_every_namespaced_object_lives_in_the_namespace(declared: Declared) -> None:
    namespaced = [o for o in declared.objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {BASE_CONFIG["namespace"]}


def test_quota_hard_limits_from_config() -> None:
    quota = {
        "requestsCpu": "30",
        "requestsMemory": "60Gi",
        "limitsCpu": "40",
        "limitsMemory": "80Gi",
        "gpus": 3,
        "pods": 12,
        "storage": "300Gi",
    }
    hard = declare({"quota": quota}).one("ResourceQuota")["spec"]["hard"]
    assert hard == {
        "requests.cpu": quota["requestsCpu"],
        "requests.memory": quota["requestsMemory"],
        "limits.cpu": quota["limitsCpu"],
        "limits.memory": quota["limitsMemory"],
        "requests.nvidia.com/gpu": str(quota["gpus"]),
        "pods": str(quota["pods"]),
        "requests.storage": quota["storage"],
    }


def test_quota_can_be_turned_off() -> None:
    assert declare({"quota": {"enabled": False}}).all("ResourceQuota") == []


def test_limit_range_defaults_from_config() -> None:
    limits = {
        "defaultCpu": "300m",
        "defaultMemory": "300Mi",
        "defaultRequestCpu": "30m",
        "defaultRequestMemory": "30Mi",
    }
    item = declare({"limitRange": limits}).one("LimitRange")["spec"]["limits"][0]
    assert item["type"] == "Container"
    assert item["default"] == {"cpu": limits["defaultCpu"], "memory": limits["defaultMemory"]}
    assert item["defaultRequest"] == {
        "cpu": limits["defaultRequestCpu"],
        "memory": limits["defaultRequestMemory"],
    }


def test_every_object_has_standard_labels(declared: Declared) -> None:
    for obj in declared.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "llm-serving", obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "pulumi", obj["kind"]
        assert labels["app.kubernetes.io/version"] == BASE_CONFIG["image"].rsplit(":", 1)[1], obj["kind"]


def test_namespace_carries_the_targets_labels() -> None:
    target = gpu_target(namespace_labels={"identity.example.com/injection": "on"})
    labels = declare(target=target).one("Namespace")["metadata"]["labels"]
    assert labels["identity.example.com/injection"] == "on"


def test_target_labels_cannot_weaken_pod_security() -> None:
    target = gpu_target(namespace_labels={"pod-security.kubernetes.io/enforce": "privileged"})
    labels = declare(target=target).one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
