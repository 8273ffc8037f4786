"""Autoscaling: the HPA's bounds, signals and pace."""

from __future__ import annotations

from inference.metrics import REQUESTS_WAITING
from tests.infra.conftest import Declared, declare


def metric(declared: Declared, kind: str, name: str) -> dict:
    for entry in declared.one("HorizontalPodAutoscaler")["spec"]["metrics"]:
        if entry["type"] != kind:
            continue
        source = entry[kind.lower()]
        if (source.get("name") or source["metric"]["name"]) == name:
            return source
    raise AssertionError(f"no {kind} metric {name}")


def test_hpa_scales_the_deployment(declared: Declared) -> None:
    target = declared.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": declared.one("Deployment")["metadata"]["name"],
    }


def test_hpa_bounds_from_config() -> None:
    spec = declare({"autoscaling": {"minReplicas": 3, "maxReplicas": 9}}).one("HorizontalPodAutoscaler")[
        "spec"
    ]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 9)


def test_hpa_on_cpu_utilization() -> None:
    source = metric(declare({"autoscaling": {"cpuUtilization": 55}}), "Resource", "cpu")
    assert source["target"] == {"type": "Utilization", "averageUtilization": 55}


def test_hpa_on_memory_utilization() -> None:
    source = metric(declare({"autoscaling": {"memoryUtilization": 65}}), "Resource", "memory")
    assert source["target"] == {"type": "Utilization", "averageUtilization": 65}


def test_hpa_on_the_servers_queue_from_the_catalog() -> None:
    source = metric(declare({"autoscaling": {"requestsWaitingPerPod": 6}}), "Pods", REQUESTS_WAITING.name)
    assert source["target"] == {"type": "AverageValue", "averageValue": "6"}


def test_fractional_queue_target_as_milli_quantity() -> None:
    source = metric(declare({"autoscaling": {"requestsWaitingPerPod": 2.5}}), "Pods", REQUESTS_WAITING.name)
    assert source["target"]["averageValue"] == "2500m"


def test_scale_up_behavior_from_config() -> None:
    policy = {"stabilizationWindowSeconds": 30, "pods": 3, "periodSeconds": 45}
    behavior = declare({"autoscaling": {"scaleUp": policy}}).one("HorizontalPodAutoscaler")["spec"][
        "behavior"
    ]
    assert behavior["scaleUp"] == {
        "stabilizationWindowSeconds": 30,
        "policies": [{"type": "Pods", "value": 3, "periodSeconds": 45}],
    }


def test_scale_down_behavior_from_config() -> None:
    policy = {"stabilizationWindowSeconds": 900, "pods": 1, "periodSeconds": 600}
    behavior = declare({"autoscaling": {"scaleDown": policy}}).one("HorizontalPodAutoscaler")["spec"][
        "behavior"
    ]
    assert behavior["scaleDown"] == {
        "stabilizationWindowSeconds": 900,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}],
    }


def test_no_hpa_when_autoscaling_off() -> None:
    assert declare({"autoscaling": {"enabled": False}}).all("HorizontalPodAutoscaler") == []
