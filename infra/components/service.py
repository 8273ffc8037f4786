"""How clients reach the server: a ClusterIP Service behind one public entry point, a Gateway API Gateway
and HTTPRoute (default) or an Ingress, suited to long token streams. Only the API (`/v1`) is routed from
outside; health and metrics stay inside the cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, Component, child_opts
from infra.components.workload import PORT_NAME
from infra.config import IngressConfig

SERVICE_PORT = 80
NGINX = "nginx.ingress.kubernetes.io"
GATEWAY_API = "gateway.networking.k8s.io/v1"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
# The OpenAI-compatible API; everything else the server answers (/health/*, /metrics) is internal.
PUBLIC_PATH_PREFIX = "/v1"
HTTP_LISTENER = "http"
HTTPS_LISTENER = "https"


@dataclass(frozen=True)
class ServiceArgs:
    app: App
    service_type: str  # without an ingress or gateway: how the Service is exposed
    service_annotations: Mapping[str, str] = field(default_factory=dict)
    ingress: IngressConfig | None = None  # None: no public entry point


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
    if ingress.session_affinity.enabled:
        # Consistent hashing on the session header: a session's turns reuse one replica's prefix cache.
        header = ingress.session_affinity.header.lower().replace("-", "_")
        annotations[f"{NGINX}/upstream-hash-by"] = f"$http_{header}"
    return annotations


def tls_secret(app: App, ingress: IngressConfig) -> str:
    return ingress.tls.secret_name or f"{app.name}-tls"


def gateway_spec(app: App, ingress: IngressConfig) -> dict[str, Any]:
    """An HTTP listener (ACME HTTP-01 challenges, and the redirect to HTTPS) and, with TLS, an HTTPS one
    terminating with the certificate cert-manager keeps in the TLS Secret."""
    same_namespace = {"namespaces": {"from": "Same"}}
    listeners: list[dict[str, Any]] = [{
        "name": HTTP_LISTENER, "protocol": "HTTP", "port": 80, "hostname": ingress.host,
        "allowedRoutes": same_namespace,
    }]
    if ingress.tls.enabled:
        listeners.append({
            "name": HTTPS_LISTENER, "protocol": "HTTPS", "port": 443, "hostname": ingress.host,
            "tls": {"mode": "Terminate", "certificateRefs": [
                {"kind": "Secret", "name": tls_secret(app, ingress)},
            ]},
            "allowedRoutes": same_namespace,
        })
    return {"gatewayClassName": ingress.gateway_class_name, "listeners": listeners}


def api_route_spec(app: App, ingress: IngressConfig) -> dict[str, Any]:
    listener = HTTPS_LISTENER if ingress.tls.enabled else HTTP_LISTENER
    return {
        "parentRefs": [{"name": app.name, "sectionName": listener}],
        "hostnames": [ingress.host],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": PUBLIC_PATH_PREFIX}}],
            "backendRefs": [{"name": app.name, "port": SERVICE_PORT}],
            # Streams of generated tokens stay open as long as generation runs.
            "timeouts": {"request": f"{ingress.proxy_timeout_seconds}s"},
        }],
    }


def redirect_route_spec(app: App, ingress: IngressConfig) -> dict[str, Any]:
    return {
        "parentRefs": [{"name": app.name, "sectionName": HTTP_LISTENER}],
        "hostnames": [ingress.host],
        "rules": [{"filters": [{
            "type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301},
        }]}],
    }


def session_affinity_spec(app: App, ingress: IngressConfig) -> dict[str, Any]:
    """Envoy Gateway's consistent hashing on the session header for the API route."""
    return {
        "targetRefs": [{"group": GATEWAY_API.split("/")[0], "kind": "HTTPRoute", "name": app.name}],
        "loadBalancer": {
            "type": "ConsistentHash",
            "consistentHash": {"type": "Header", "header": {"name": ingress.session_affinity.header}},
        },
    }


class ServingEndpoint(Component):
    def __init__(self, name: str, args: ServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:service:ServingEndpoint", name, opts)
        app, ingress = args.app, args.ingress
        # Behind a gateway or an ingress the Service is internal: one public entry point, with TLS.
        public_service = ingress is None
        self.service = k8s.core.v1.Service(
            f"{app.name}-service",
            metadata=app.metadata(
                app.name, annotations=dict(args.service_annotations) if public_service else {}
            ),
            spec=k8s.core.v1.ServiceSpecArgs(
                type=args.service_type if public_service else "ClusterIP",
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
        url = f"http://{app.name}.{app.namespace}.svc.cluster.local:{SERVICE_PORT}"
        if ingress is not None:
            if ingress.kind == "gateway":
                self._gateway(app, ingress)
            else:
                self._ingress(app, ingress)
            url = f"{'https' if ingress.tls.enabled else 'http'}://{ingress.host}"
        self.url: pulumi.Output[str] = pulumi.Output.from_input(url)
        self.register_outputs({"service": self.service_name, "url": self.url})

    def _custom(self, kind: str, api_version: str, spec: dict[str, Any], app: App,
                annotations: Mapping[str, str] | None = None, after: list[pulumi.Resource] | None = None,
                suffix: str = "") -> k8s.apiextensions.CustomResource:
        return k8s.apiextensions.CustomResource(
            f"{app.name}{suffix}-{kind.lower()}",
            api_version=api_version,
            kind=kind,
            metadata=app.metadata(f"{app.name}{suffix}", annotations=annotations),
            spec=spec,
            opts=child_opts(self, depends_on=[self.service, *(after or [])]),
        )

    def _gateway(self, app: App, ingress: IngressConfig) -> None:
        tls = ingress.tls
        annotations = {"cert-manager.io/cluster-issuer": tls.cluster_issuer} if tls.enabled else {}
        gateway = self._custom("Gateway", GATEWAY_API, gateway_spec(app, ingress), app, annotations)
        route = self._custom("HTTPRoute", GATEWAY_API, api_route_spec(app, ingress), app, after=[gateway])
        if ingress.tls.enabled:
            self._custom("HTTPRoute", GATEWAY_API, redirect_route_spec(app, ingress), app, after=[gateway],
                         suffix="-redirect")
        if ingress.session_affinity.enabled:
            self._custom("BackendTrafficPolicy", ENVOY_GATEWAY_API, session_affinity_spec(app, ingress), app,
                         after=[route])

    def _ingress(self, app: App, ingress: IngressConfig) -> None:
        host = ingress.host or ""
        tls = None
        if ingress.tls.enabled:
            tls = [k8s.networking.v1.IngressTLSArgs(hosts=[host], secret_name=tls_secret(app, ingress))]
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
                                    path=PUBLIC_PATH_PREFIX,
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
