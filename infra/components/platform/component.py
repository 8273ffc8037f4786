"""The Platform component: each add-on a Helm release from the one chart table, with typed values and
explicit `depends_on`, so that nothing is applied before what it needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.charts import CHARTS
from infra.clouds.base import ChartRelease, CloudPlatform
from infra.components.naming import Component, child_opts
from infra.components.platform import values
from infra.config import PROJECT

GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
ENVOY_API = "gateway.envoyproxy.io/v1alpha1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
CERT_MANAGER_API = "cert-manager.io/v1"


@dataclass(frozen=True)
class IssuerArgs:
    name: str
    email: str
    server: str
    solver: Mapping[str, Any]  # the ACME HTTP-01 solver: through the Gateway or the Ingress class


@dataclass(frozen=True)
class PlatformArgs:
    installs: frozenset[str]  # add-ons of infra.config.platform.Addon to install
    cloud: CloudPlatform
    gateway_class: str
    issuer: IssuerArgs | None  # None: no ClusterIssuer (cert-manager not installed, or no TLS)
    monitoring: values.MonitoringStack
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: Sequence[Mapping[str, str]] = ()
    chart_values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the stack's overrides


@dataclass
class PlatformReady:
    """What each part of the serving stack waits for; empty lists where the platform installs nothing."""

    gateway: list[pulumi.Resource] = field(default_factory=list)  # Gateway, HTTPRoute, Ingress
    monitoring: list[pulumi.Resource] = field(default_factory=list)  # ServiceMonitor, PrometheusRule
    workload: list[pulumi.Resource] = field(default_factory=list)  # the Deployment (GPU device plugin)
    autoscaling: list[pulumi.Resource] = field(default_factory=list)  # the HPA's metric sources


def merged_values(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's own rule: maps merge key by key, anything else in `overrides` replaces."""
    result = dict(base)
    for key, value in overrides.items():
        both_maps = isinstance(value, Mapping) and isinstance(result.get(key), Mapping)
        result[key] = merged_values(result[key], value) if both_maps else value
    return result


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": PROJECT,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
    }


class Platform(Component):
    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:platform:Platform", name, opts)
        self._name = name
        self._overrides = args.chart_values
        self.ready = PlatformReady()
        # The cloud's own controllers first: the load balancer controller's webhook admits Services and pods.
        first = [self._release(r) for r in args.cloud.releases if r.before_others]
        self._traffic(args, first)
        self._observability(args, first)
        if "device_plugin" in args.installs and args.cloud.needs_device_plugin:
            self.ready.workload.append(self._release(ChartRelease(
                "nvidia-device-plugin", values.device_plugin(args.gpu_node_selector, args.gpu_tolerations)
            ), first))
        # The cloud's other controllers (its node autoscaler) run before pods wait for nodes.
        later = [r for r in args.cloud.releases if not r.before_others]
        self.ready.workload.extend(self._release(r, first) for r in later)
        self.register_outputs({})

    def _traffic(self, args: PlatformArgs, first: list[k8s.helm.v3.Release]) -> None:
        """The gateway, then cert-manager (it watches Gateway API objects only if their CRDs exist when it
        starts), then the issuer."""
        if "gateway" in args.installs:
            self.ready.gateway.extend(self._gateway(args, first))
        if "cert_manager" in args.installs:
            cert_manager = self._release(
                ChartRelease("cert-manager", values.cert_manager(gateway_api="gateway" in args.installs)),
                [*first, *self.ready.gateway],
            )
            self.ready.gateway.append(cert_manager)
            if args.issuer is not None:
                self.ready.gateway.append(self._cluster_issuer(args.issuer, cert_manager))

    def _observability(self, args: PlatformArgs, first: list[k8s.helm.v3.Release]) -> None:
        """The operator's CRDs, then Prometheus and Grafana, then the adapter reading that Prometheus; the
        monitoring charts go where the stack says Prometheus runs (network.prometheusNamespace)."""
        if "prometheus" in args.installs:
            monitoring = args.monitoring
            crds = self._release(ChartRelease("prometheus-operator-crds", {}), first, monitoring.namespace)
            after_crds: list[pulumi.Resource] = [crds]
            if monitoring.grafana and monitoring.full and monitoring.grafana_admin_password is not None:
                after_crds.append(self._grafana_admin(monitoring, crds))
                monitoring = replace(monitoring, grafana_admin_secret=values.GRAFANA_ADMIN_SECRET)
            stack = self._release(
                ChartRelease("kube-prometheus-stack", values.kube_prometheus_stack(monitoring)), after_crds,
                monitoring.namespace,
            )
            self.ready.monitoring.extend([crds, stack])
            if "metrics_adapter" in args.installs:
                self.ready.autoscaling.append(self._release(
                    ChartRelease("prometheus-adapter", values.prometheus_adapter(monitoring)), [stack],
                    monitoring.namespace,
                ))
        if "metrics_server" in args.installs:
            self.ready.autoscaling.append(self._release(ChartRelease("metrics-server", {}), first))

    def _release(
        self, release: ChartRelease, depends_on: Sequence[pulumi.Resource] = (), namespace: str | None = None
    ) -> k8s.helm.v3.Release:
        chart = CHARTS[release.chart]
        return k8s.helm.v3.Release(
            f"{self._name}-{release.chart}",
            name=release.chart,
            chart=chart.chart,
            version=chart.version,
            namespace=namespace or chart.namespace,
            create_namespace=True,
            repository_opts=(
                k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository) if chart.repository else None
            ),
            values=merged_values(release.values, self._overrides.get(release.chart, {})),
            # Wait for the release's workloads to be ready, and roll back a failed upgrade.
            atomic=True,
            timeout=900,
            opts=child_opts(self, depends_on=list(depends_on)),
        )

    def _grafana_admin(
        self, monitoring: values.MonitoringStack, namespace_ready: pulumi.Resource
    ) -> pulumi.Resource:
        """Grafana's admin credentials in a Secret of the monitoring namespace (which the CRDs' release
        creates), so that the chart's values, and the plan, never hold the password."""
        assert monitoring.grafana_admin_password is not None
        return k8s.core.v1.Secret(
            f"{self._name}-grafana-admin",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=values.GRAFANA_ADMIN_SECRET, namespace=monitoring.namespace, labels=_labels("monitoring")
            ),
            type="Opaque",
            string_data={
                values.GRAFANA_USER_KEY: "admin",
                values.GRAFANA_PASSWORD_KEY: pulumi.Output.secret(monitoring.grafana_admin_password),
            },
            opts=child_opts(self, depends_on=[namespace_ready]),
        )

    def _gateway(self, args: PlatformArgs, first: list[k8s.helm.v3.Release]) -> list[pulumi.Resource]:
        """Envoy Gateway, and the GatewayClass whose proxies' Service carries the cloud's load balancer."""
        release = self._release(ChartRelease("envoy-gateway", {}), first)
        namespace = CHARTS["envoy-gateway"].namespace
        proxy = k8s.apiextensions.CustomResource(
            f"{self._name}-envoyproxy",
            api_version=ENVOY_API,
            kind="EnvoyProxy",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.gateway_class, namespace=namespace, labels=_labels("gateway")
            ),
            spec=values.envoy_proxy(args.cloud.load_balancer_annotations),
            opts=child_opts(self, depends_on=[release]),
        )
        gateway_class = k8s.apiextensions.CustomResource(
            f"{self._name}-gatewayclass",
            api_version=GATEWAY_API,
            kind="GatewayClass",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.gateway_class, labels=_labels("gateway")),
            spec={
                "controllerName": GATEWAY_CONTROLLER,
                "parametersRef": {
                    "group": ENVOY_API.split("/")[0], "kind": "EnvoyProxy",
                    "name": args.gateway_class, "namespace": namespace,
                },
            },
            opts=child_opts(self, depends_on=[proxy]),
        )
        return [release, proxy, gateway_class]

    def _cluster_issuer(self, issuer: IssuerArgs, cert_manager: pulumi.Resource) -> pulumi.Resource:
        return k8s.apiextensions.CustomResource(
            f"{self._name}-clusterissuer",
            api_version=CERT_MANAGER_API,
            kind="ClusterIssuer",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=issuer.name, labels=_labels("tls")),
            spec={
                "acme": {
                    "email": issuer.email,
                    "server": issuer.server,
                    "privateKeySecretRef": {"name": f"{issuer.name}-account-key"},
                    "solvers": [dict(issuer.solver)],
                }
            },
            opts=child_opts(self, depends_on=[cert_manager]),
        )
