"""Service and Ingress: how clients reach the server, with streams that stay open."""

from __future__ import annotations

import pytest

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


def test_service_type_and_annotations_from_target_without_an_entry_point() -> None:
    target = gpu_target()
    service = declare({"ingress": {"enabled": False}}, target=target).one("Service")
    assert service["spec"]["type"] == target.service_type
    assert service["metadata"]["annotations"] == dict(target.service_annotations)


@pytest.mark.parametrize("kind", ["ingress", "gateway"])
def test_service_behind_an_entry_point_is_cluster_ip_without_load_balancer(kind: str) -> None:
    service = declare({"ingress": {"kind": kind}}, target=gpu_target()).one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert "annotations" not in service["metadata"]


def test_ingress_tls_from_cert_manager_issuer(declared: Declared) -> None:
    ingress = declared.one("Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "test-issuer"
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == ["llm.test.example"]
    assert tls["secretName"]


def _reachable(prefix_paths: list[str], path: str) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefix_paths)


def test_ingress_routes_only_the_api_to_the_service(declared: Declared) -> None:
    (rule,) = declared.one("Ingress")["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {p["pathType"] for p in paths} == {"Prefix"}
    assert {p["backend"]["service"]["name"] for p in paths} == {declared.one("Service")["metadata"]["name"]}
    prefixes = [p["path"] for p in paths]
    assert _reachable(prefixes, "/v1/chat/completions")
    assert not [p for p in ("/metrics", "/health/ready", "/health/live", "/") if _reachable(prefixes, p)]


def test_gateway_routes_only_the_api_to_the_service() -> None:
    declared = declare({"ingress": {"kind": "gateway"}})
    route = declared.one("HTTPRoute", "llm-serving")["spec"]
    matches = [m["path"] for rule in route["rules"] for m in rule["matches"]]
    assert {m["type"] for m in matches} == {"PathPrefix"}
    prefixes = [m["value"] for m in matches]
    assert _reachable(prefixes, "/v1/completions")
    assert not [p for p in ("/metrics", "/health/ready", "/") if _reachable(prefixes, p)]
    backends = [b["name"] for rule in route["rules"] for b in rule["backendRefs"]]
    assert backends == [declared.one("Service")["metadata"]["name"]]


def test_gateway_terminates_tls_with_the_issuers_certificate() -> None:
    declared = declare({"ingress": {"kind": "gateway", "gatewayClassName": "edge"}})
    gateway = declared.one("Gateway")
    assert gateway["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "test-issuer"
    assert gateway["spec"]["gatewayClassName"] == "edge"
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    assert listeners["https"]["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "llm-serving-tls"}]
    assert {listener["hostname"] for listener in listeners.values()} == {"llm.test.example"}
    # The API route is served over HTTPS only; plain HTTP redirects (and answers ACME challenges).
    assert declared.one("HTTPRoute", "llm-serving")["spec"]["parentRefs"][0]["sectionName"] == "https"
    redirect = declared.one("HTTPRoute", "llm-serving-redirect")["spec"]
    assert redirect["rules"][0]["filters"][0]["requestRedirect"]["scheme"] == "https"


def test_session_affinity_hashes_the_session_header_in_both_kinds() -> None:
    affinity = {"sessionAffinity": {"enabled": True, "header": "x-user-id"}}
    policy = declare({"ingress": {"kind": "gateway", **affinity}}).one("BackendTrafficPolicy")["spec"]
    assert policy["loadBalancer"]["consistentHash"] == {"type": "Header", "header": {"name": "x-user-id"}}
    assert policy["targetRefs"][0]["name"] == "llm-serving"
    annotations = declare({"ingress": affinity}).one("Ingress")["metadata"]["annotations"]
    assert annotations[f"{NGINX}/upstream-hash-by"] == "$http_x_user_id"


def test_no_session_affinity_by_default(declared: Declared) -> None:
    assert f"{NGINX}/upstream-hash-by" not in declared.one("Ingress")["metadata"]["annotations"]
    assert declare({"ingress": {"kind": "gateway"}}).all("BackendTrafficPolicy") == []


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
