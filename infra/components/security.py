"""Network and API access: default-deny NetworkPolicies with the few allows the server needs, and RBAC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, Component, child_opts
from infra.components.pod_access import bind_role
from infra.config import SERVER_PORT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
ANYWHERE = "0.0.0.0/0"
# NodeLocal DNSCache's link-local address: pods of clusters that run it resolve there, not in kube-system.
NODE_LOCAL_DNS = "169.254.20.10/32"
# cert-manager labels the pods that answer ACME HTTP-01 challenges, and they listen on this port.
ACME_SOLVER_LABEL = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089


@dataclass(frozen=True)
class SecurityArgs:
    app: App
    ingress_controller_namespace: str
    prometheus_namespace: str
    # None: no model download; empty: anywhere on 443 (the bucket's addresses are not known up front)
    model_download_cidrs: Sequence[str] | None
    node_local_dns: bool = True
    # The gateway (or ingress controller) reaches cert-manager's HTTP-01 solver pods in this namespace.
    acme_http01: bool = False


def _from_namespace(namespace: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: namespace})
    )


def _port(port: int, protocol: str = "TCP") -> k8s.networking.v1.NetworkPolicyPortArgs:
    return k8s.networking.v1.NetworkPolicyPortArgs(port=port, protocol=protocol)


class Security(Component):
    def __init__(self, name: str, args: SecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:security:Security", name, opts)
        app = args.app
        k8s.networking.v1.NetworkPolicy(
            f"{app.name}-default-deny-networkpolicy",
            metadata=app.metadata(f"{app.name}-default-deny", "security"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(), policy_types=["Ingress", "Egress"]
            ),
            opts=child_opts(self),
        )
        k8s.networking.v1.NetworkPolicy(
            f"{app.name}-networkpolicy",
            metadata=app.metadata(app.name, "security"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector()),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[
                            _from_namespace(args.ingress_controller_namespace),
                            _from_namespace(args.prometheus_namespace),
                        ],
                        ports=[_port(SERVER_PORT)],
                    )
                ],
                egress=self._egress(args),
            ),
            opts=child_opts(self),
        )
        if args.acme_http01:
            self._acme_solver(app, args.ingress_controller_namespace)
        self._rbac(app)
        self.register_outputs({})

    def _acme_solver(self, app: App, gateway_namespace: str) -> None:
        """The default deny would drop the certificate authority's challenge requests, which the gateway
        forwards to the solver pod cert-manager starts in this namespace."""
        k8s.networking.v1.NetworkPolicy(
            f"{app.name}-acme-solver-networkpolicy",
            metadata=app.metadata(f"{app.name}-acme-solver", "security"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=ACME_SOLVER_LABEL),
                policy_types=["Ingress"],
                ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    from_=[_from_namespace(gateway_namespace)], ports=[_port(ACME_SOLVER_PORT)],
                )],
            ),
            opts=child_opts(self),
        )

    @staticmethod
    def _egress(args: SecurityArgs) -> list[k8s.networking.v1.NetworkPolicyEgressRuleArgs]:
        dns_servers = [_from_namespace("kube-system")]
        if args.node_local_dns:
            dns_servers.append(k8s.networking.v1.NetworkPolicyPeerArgs(
                ip_block=k8s.networking.v1.IPBlockArgs(cidr=NODE_LOCAL_DNS)
            ))
        rules = [
            k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                to=dns_servers, ports=[_port(53, "UDP"), _port(53, "TCP")]
            )
        ]
        if args.model_download_cidrs is not None:
            cidrs = list(args.model_download_cidrs) or [ANYWHERE]
            rules.append(
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[
                        k8s.networking.v1.NetworkPolicyPeerArgs(
                            ip_block=k8s.networking.v1.IPBlockArgs(cidr=c)
                        )
                        for c in cidrs
                    ],
                    ports=[_port(443)],
                )
            )
        return rules

    def _rbac(self, app: App) -> None:
        """The server's identity may read its own settings and nothing else."""
        bind_role(
            self, app, app.name, "security",
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=[""], resources=["configmaps"], resource_names=[app.settings_config_map],
                verbs=["get"],
            ),
            app.service_account, app.namespace,
        )
