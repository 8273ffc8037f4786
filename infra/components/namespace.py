"""The app's namespace: Pod Security Admission `restricted`, and a quota and defaults for its pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, Component, child_opts
from infra.config import LimitRangeConfig, QuotaConfig

# The oldest Kubernetes version we support: pinning the policy version keeps the rules stable when
# the cluster is upgraded and the `latest` policy tightens.
PSA_VERSION = "v1.29"


def pod_security_labels(level: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = level
        labels[f"pod-security.kubernetes.io/{mode}-version"] = PSA_VERSION
    return labels


@dataclass(frozen=True)
class NamespaceArgs:
    app: App
    quota: QuotaConfig
    limit_range: LimitRangeConfig
    gpu_resource_name: str
    # Labels the cloud's identity webhook needs on the namespace (e.g. ACK RRSA injection).
    extra_labels: Mapping[str, str] = field(default_factory=dict)


class Namespace(Component):
    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:namespace:Namespace", name, opts)
        app = args.app
        self.namespace = k8s.core.v1.Namespace(
            f"{app.namespace}-namespace",
            metadata=app.metadata(
                app.namespace,
                "namespace",
                namespaced=False,
                labels={**args.extra_labels, **pod_security_labels("restricted")},
            ),
            opts=child_opts(self),
        )
        after_namespace = child_opts(self, depends_on=[self.namespace])
        if args.quota.enabled:
            quota = args.quota
            k8s.core.v1.ResourceQuota(
                f"{app.name}-resourcequota",
                metadata=app.metadata(app.name, "namespace"),
                spec=k8s.core.v1.ResourceQuotaSpecArgs(
                    hard={
                        "requests.cpu": quota.requests_cpu,
                        "requests.memory": quota.requests_memory,
                        "limits.cpu": quota.limits_cpu,
                        "limits.memory": quota.limits_memory,
                        f"requests.{args.gpu_resource_name}": str(quota.gpus),
                        "pods": str(quota.pods),
                        "requests.storage": quota.storage,
                    }
                ),
                opts=after_namespace,
            )
        limits = args.limit_range
        k8s.core.v1.LimitRange(
            f"{app.name}-limitrange",
            metadata=app.metadata(app.name, "namespace"),
            spec=k8s.core.v1.LimitRangeSpecArgs(
                limits=[
                    k8s.core.v1.LimitRangeItemArgs(
                        type="Container",
                        default={"cpu": limits.default_cpu, "memory": limits.default_memory},
                        default_request={
                            "cpu": limits.default_request_cpu,
                            "memory": limits.default_request_memory,
                        },
                    )
                ]
            ),
            opts=after_namespace,
        )
        self.name = self.namespace.metadata.name
        self.register_outputs({"name": self.name})
