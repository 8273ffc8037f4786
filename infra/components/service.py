"""How clients reach the server: a Service, and an Ingress suited to long token streams."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, child_opts
from infra.components.workload import PORT_NAME
from infra.config import IngressConfig

SERVICE_PORT = 80
NGINX = "nginx.ingress.kubernetes.io"


@dataclass(frozen=True)
class ServiceArgs:
    app: App
    service_type: str
    service_annotations: Mapping[str, str] = field(default_factory=dict)
    ingress: IngressConfig | None = None  # None: no Ingress


def ingress_annotations(ingress: IngressConfig) -> dict[str, str]:
    timeout = str(ingress.proxy_timeout_seconds)
    annotations = {
        # Server-sent events: each token must reach the client when it is made, not when a buffer fills.
        f"{NGINX}/proxy-buffering": "off",
        f"{NGINX}/proxy-request-buffering": "off",
        f"{NGINX}/proxy-read-timeout": timeout,
        f"{NGINX}/proxy-send-timeout": timeout,
        f"{NGINX}/proxy-body-size": ingress.max_body_size,
    }
    if ingress.tls.enabled:
        annotations["cert-manager.io/cluster-issuer"] = ingress.tls.cluster_issuer
        annotations[f"{NGINX}/ssl-redirect"] = "true"
    return annotations


class ServingEndpoint(pulumi.ComponentResource):
    def __init__(self, name: str, args: ServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:service:ServingEndpoint", name, None, opts)
        app = args.app
        self.service = k8s.core.v1.Service(
            f"{app.name}-service",
            metadata=app.metadata(app.name, annotations=args.service_annotations),
            spec=k8s.core.v1.ServiceSpecArgs(
                type=args.service_type,
                selector=app.selector(),
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name=PORT_NAME, port=SERVICE_PORT, target_port=PORT_NAME, protocol="TCP"
                    )
                ],
            ),
            opts=child_opts(self),
        )
        self.service_name = self.service.metadata.name
        in_cluster_url = f"http://{app.name}.{app.namespace}.svc.cluster.local:{SERVICE_PORT}"
        url = in_cluster_url if args.ingress is None else self._ingress(app, args.ingress)
        self.url: pulumi.Output[str] = pulumi.Output.from_input(url)
        self.register_outputs({"service": self.service_name, "url": self.url})

    def _ingress(self, app: App, ingress: IngressConfig) -> str:
        host = ingress.host or ""
        tls = None
        if ingress.tls.enabled:
            tls = [
                k8s.networking.v1.IngressTLSArgs(
                    hosts=[host], secret_name=ingress.tls.secret_name or f"{app.name}-tls"
                )
            ]
        k8s.networking.v1.Ingress(
            f"{app.name}-ingress",
            metadata=app.metadata(app.name, annotations=ingress_annotations(ingress)),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name=ingress.class_name,
                tls=tls,
                rules=[
                    k8s.networking.v1.IngressRuleArgs(
                        host=host,
                        http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                            paths=[
                                k8s.networking.v1.HTTPIngressPathArgs(
                                    path="/",
                                    path_type="Prefix",
                                    backend=k8s.networking.v1.IngressBackendArgs(
                                        service=k8s.networking.v1.IngressServiceBackendArgs(
                                            name=app.name,
                                            port=k8s.networking.v1.ServiceBackendPortArgs(name=PORT_NAME),
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
            opts=child_opts(self, depends_on=[self.service]),
        )
        return f"{'https' if ingress.tls.enabled else 'http'}://{host}"
