"""Service and Ingress: how clients reach the server, with streams that stay open."""

from __future__ import annotations

from tests.infra.conftest import Declared, declare, gpu_target

NGINX = "nginx.ingress.kubernetes.io"


def test_cluster_ip_service_on_local(declared: Declared) -> None:
    assert declared.one("Service")["spec"]["type"] == "ClusterIP"


def test_service_routes_to_the_server_port(declared: Declared) -> None:
    (port,) = declared.one("Service")["spec"]["ports"]
    server_port = declared.server["ports"][0]
    assert port["targetPort"] == server_port["name"]


def test_service_selects_the_deployments_pods(declared: Declared) -> None:
    selector = declared.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert declared.one("Service")["spec"]["selector"] == selector


def test_service_type_and_annotations_from_target() -> None:
    target = gpu_target()
    service = declare(target=target).one("Service")
    assert service["spec"]["type"] == target.service_type
    assert service["metadata"]["annotations"] == dict(target.service_annotations)


def test_ingress_tls_from_cert_manager_issuer(declared: Declared) -> None:
    ingress = declared.one("Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "test-issuer"
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == ["llm.test.example"]
    assert tls["secretName"]


def test_ingress_routes_everything_to_the_service(declared: Declared) -> None:
    (rule,) = declared.one("Ingress")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"]["name"] == declared.one("Service")["metadata"]["name"]


def test_ingress_never_rewrites_paths(declared: Declared) -> None:
    assert f"{NGINX}/rewrite-target" not in declared.one("Ingress")["metadata"]["annotations"]


def test_ingress_does_not_buffer_streams(declared: Declared) -> None:
    annotations = declared.one("Ingress")["metadata"]["annotations"]
    assert annotations[f"{NGINX}/proxy-buffering"] == "off"


def test_ingress_timeouts_from_config() -> None:
    annotations = declare({"ingress": {"proxyTimeoutSeconds": 1800}}).one("Ingress")["metadata"][
        "annotations"
    ]
    assert annotations[f"{NGINX}/proxy-read-timeout"] == "1800"
    assert annotations[f"{NGINX}/proxy-send-timeout"] == "1800"


def test_ingress_body_limit_from_config() -> None:
    annotations = declare({"ingress": {"maxBodySize": "4m"}}).one("Ingress")["metadata"]["annotations"]
    assert annotations[f"{NGINX}/proxy-body-size"] == "4m"


def test_ingress_class_from_config() -> None:
    assert (
        declare({"ingress": {"className": "public"}}).one("Ingress")["spec"]["ingressClassName"] == "public"
    )


def test_ingress_without_tls_has_no_issuer() -> None:
    ingress = declare({"ingress": {"tls": {"enabled": False}}}).one("Ingress")
    assert "tls" not in ingress["spec"]
    assert "cert-manager.io/cluster-issuer" not in ingress["metadata"]["annotations"]


def test_no_ingress_when_disabled() -> None:
    assert declare({"ingress": {"enabled": False}}).all("Ingress") == []


def test_outputs_namespace_service_and_url(declared: Declared) -> None:
    assert declared.outputs == {
        "namespace": declared.one("Namespace")["metadata"]["name"],
        "service": declared.one("Service")["metadata"]["name"],
        "url": "https://llm.test.example",
    }


def test_url_is_the_cluster_address_without_ingress() -> None:
    outputs = declare({"ingress": {"enabled": False}}).outputs
    assert outputs["url"] == f"http://{outputs['service']}.{outputs['namespace']}.svc.cluster.local:80"
