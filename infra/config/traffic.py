"""Keys of how traffic reaches the server and what the network lets through."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.config.base import DnsLabel, NginxSize, Section

# Where each kind of entry point runs its proxies, for the NetworkPolicy that admits them.
GATEWAY_NAMESPACE = "envoy-gateway-system"
INGRESS_NAMESPACE = "ingress-nginx"


class TlsConfig(Section):
    enabled: bool = True
    cluster_issuer: str = Field("letsencrypt-prod", min_length=1, description="cert-manager ClusterIssuer.")
    secret_name: DnsLabel | None = Field(None, description="Certificate Secret; defaults to <name>-tls.")


class SessionAffinity(Section):
    """Requests of one session go to the same replica, where its prefix is already cached."""

    enabled: bool = False
    header: str = Field(
        "x-session-id", pattern=r"^[A-Za-z0-9-]+$",
        description="Request header whose value is hashed to pick the replica (consistent hashing).",
    )


class IngressConfig(Section):
    enabled: bool = True
    kind: Literal["gateway", "ingress"] = Field(
        "gateway",
        description="gateway: a Gateway API Gateway + HTTPRoute (Envoy Gateway); ingress: an Ingress for "
        "an ingress controller of the cluster (className).",
    )
    host: str | None = None
    class_name: str = Field("nginx", description="kind ingress: the IngressClass.")
    gateway_class_name: DnsLabel = Field("envoy-gateway", description="kind gateway: the GatewayClass.")
    tls: TlsConfig = TlsConfig()
    # Streams of generated tokens stay open as long as generation runs.
    proxy_timeout_seconds: int = Field(3600, ge=30, le=86400)
    max_body_size: NginxSize = "10m"
    session_affinity: SessionAffinity = SessionAffinity()


class NetworkConfig(Section):
    ingress_controller_namespace: DnsLabel | None = Field(
        None,
        description=f"Namespace of the gateway's or ingress controller's proxies; none: {GATEWAY_NAMESPACE} "
        f"(kind gateway) or {INGRESS_NAMESPACE} (kind ingress).",
    )
    prometheus_namespace: DnsLabel = Field(
        "monitoring", description="Namespace of Prometheus and of the monitoring stack the platform installs."
    )
    node_local_dns: bool = Field(
        True, description="Allow DNS to NodeLocal DNSCache (169.254.20.10) besides kube-system."
    )
