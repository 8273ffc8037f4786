"""Keys of how traffic reaches the server and what the network lets through."""

from __future__ import annotations

from pydantic import Field

from infra.config.base import DnsLabel, NginxSize, Section


class TlsConfig(Section):
    enabled: bool = True
    cluster_issuer: str = Field("letsencrypt-prod", min_length=1, description="cert-manager ClusterIssuer.")
    secret_name: DnsLabel | None = Field(None, description="Certificate Secret; defaults to <name>-tls.")


class IngressConfig(Section):
    enabled: bool = True
    host: str | None = None
    class_name: str = "nginx"
    tls: TlsConfig = TlsConfig()
    # Streams of generated tokens stay open as long as generation runs.
    proxy_timeout_seconds: int = Field(3600, ge=30, le=86400)
    max_body_size: NginxSize = "10m"


class NetworkConfig(Section):
    ingress_controller_namespace: DnsLabel = "ingress-nginx"
    prometheus_namespace: DnsLabel = "monitoring"
