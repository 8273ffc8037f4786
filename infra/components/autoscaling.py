"""Autoscaling: an autoscaling/v2 HPA on CPU, memory and the server's own queue length."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from inference.metrics import REQUESTS_WAITING
from infra.components.naming import App, Component, child_opts
from infra.config import AutoscalingConfig, ScalingPolicy


@dataclass(frozen=True)
class AutoscalerArgs:
    app: App
    scaling: AutoscalingConfig


def _utilization(resource: str, percent: int) -> k8s.autoscaling.v2.MetricSpecArgs:
    return k8s.autoscaling.v2.MetricSpecArgs(
        type="Resource",
        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
            name=resource,
            target=k8s.autoscaling.v2.MetricTargetArgs(type="Utilization", average_utilization=percent),
        ),
    )


# The server's own load signals the HPA scales on, served by a custom metrics adapter whose rules are
# generated from this tuple (infra.monitoring.adapter).
POD_METRICS = (REQUESTS_WAITING,)


def _queue_length(per_pod: float) -> k8s.autoscaling.v2.MetricSpecArgs:
    """The load signal that matters for an LLM server; served to the HPA by a custom metrics adapter."""
    return k8s.autoscaling.v2.MetricSpecArgs(
        type="Pods",
        pods=k8s.autoscaling.v2.PodsMetricSourceArgs(
            metric=k8s.autoscaling.v2.MetricIdentifierArgs(name=REQUESTS_WAITING.name),
            target=k8s.autoscaling.v2.MetricTargetArgs(type="AverageValue", average_value=_quantity(per_pod)),
        ),
    )


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def _rules(policy: ScalingPolicy) -> k8s.autoscaling.v2.HPAScalingRulesArgs:
    return k8s.autoscaling.v2.HPAScalingRulesArgs(
        stabilization_window_seconds=policy.stabilization_window_seconds,
        policies=[
            k8s.autoscaling.v2.HPAScalingPolicyArgs(
                type="Pods", value=policy.pods, period_seconds=policy.period_seconds
            )
        ],
    )


class Autoscaler(Component):
    def __init__(self, name: str, args: AutoscalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:autoscaling:Autoscaler", name, opts)
        app, scaling = args.app, args.scaling
        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{app.name}-horizontalpodautoscaler",
            metadata=app.metadata(app.name),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=app.name
                ),
                min_replicas=scaling.min_replicas,
                max_replicas=scaling.max_replicas,
                metrics=[
                    _utilization("cpu", scaling.cpu_utilization),
                    _utilization("memory", scaling.memory_utilization),
                    _queue_length(scaling.requests_waiting_per_pod),
                ],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_up=_rules(scaling.scale_up), scale_down=_rules(scaling.scale_down)
                ),
            ),
            opts=child_opts(self),
        )
        self.register_outputs({"hpa": self.hpa.metadata.name})
