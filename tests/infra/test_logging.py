"""The logging agent under the mock runtime: its own namespace, read-only node logs, and the [OUTPUT]
the cloud target's log sink asks for."""

from __future__ import annotations

from typing import Any

import pytest

from infra.clouds import common
from infra.clouds.base import CloudTarget, LogSink
from infra.components.logging import MAIN_CONFIG, OUTPUT_CONFIG, output_config, section
from infra.config import load_stack_config
from infra.program import build_observability, build_serving_stack
from infra.render import run_program
from tests.infra.conftest import API_KEY, BASE_CONFIG, Declared, declare, gpu_target, merged, runtime_config

LOGGING_ON = {"logging": {"enabled": True}}


@pytest.fixture(scope="module")
def declared() -> Declared:
    """The base stack (local target: Elasticsearch) with the logging agent on."""
    return declare(LOGGING_ON)


def declare_on(target: CloudTarget) -> Declared:
    """The stack with logging on, built on `target` rather than the config's cloud."""
    values, secret_keys = runtime_config(merged(BASE_CONFIG, LOGGING_ON), {"apiKey": API_KEY})

    def program() -> None:
        build_observability(build_serving_stack(load_stack_config(), target))

    return Declared(run_program(program, "test", values, secret_keys), {})


def _agent_objects(declared: Declared, kind: str) -> list[dict[str, Any]]:
    component = "app.kubernetes.io/component"
    return [o for o in declared.all(kind) if o["metadata"]["labels"][component] == "logging"]


def _entries(config_section: str) -> dict[str, str]:
    """The key-value lines of one fluent-bit section."""
    lines = config_section.splitlines()[1:]
    return dict(line.split(maxsplit=1) for line in lines if line.strip())


def _daemon_set(declared: Declared) -> dict[str, Any]:
    (daemon_set,) = declared.all("DaemonSet")
    return daemon_set


def _config_map(declared: Declared) -> dict[str, Any]:
    (config_map,) = _agent_objects(declared, "ConfigMap")
    return config_map


def test_logging_disabled_declares_no_agent() -> None:
    assert declare({"logging": {"enabled": False}}).all("DaemonSet") == []


def test_agent_runs_in_its_own_privileged_namespace(declared: Declared) -> None:
    namespace = _daemon_set(declared)["metadata"]["namespace"]
    (agent_namespace,) = [n for n in declared.all("Namespace") if n["metadata"]["name"] == namespace]
    assert namespace != BASE_CONFIG["namespace"]
    assert agent_namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_app_namespace_stays_restricted(declared: Declared) -> None:
    app_namespace = declared.one("Namespace", BASE_CONFIG["namespace"])
    assert app_namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def load_stack_config_for(changes: dict[str, Any]) -> Any:
    values, secret_keys = runtime_config(merged(BASE_CONFIG, changes), {"apiKey": API_KEY})
    loaded: list[Any] = []
    run_program(lambda: loaded.append(load_stack_config()), "test", values, secret_keys)
    return loaded[0]


def test_agent_identity_is_the_one_cloud_trust_policies_name(declared: Declared) -> None:
    config = load_stack_config_for(LOGGING_ON)
    pod = _daemon_set(declared)["spec"]["template"]["spec"]
    assert (_daemon_set(declared)["metadata"]["namespace"], pod["serviceAccountName"]) == (
        common.log_agent_namespace(config), common.log_agent_service_account(config))


def test_agent_tails_only_the_server_container_of_the_app_namespace(declared: Declared) -> None:
    config = _config_map(declared)["data"][MAIN_CONFIG]
    server = declared.server["name"]
    assert f"Path              /var/log/containers/*_{BASE_CONFIG['namespace']}_{server}-*.log" in config


def test_node_logs_are_mounted_read_only(declared: Declared) -> None:
    (container,) = _daemon_set(declared)["spec"]["template"]["spec"]["containers"]
    (logs,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/log"]
    assert logs["readOnly"] is True


def test_agent_drops_every_capability_and_writes_no_root_filesystem(declared: Declared) -> None:
    (container,) = _daemon_set(declared)["spec"]["template"]["spec"]["containers"]
    context = container["securityContext"]
    assert (context["capabilities"]["drop"], context["readOnlyRootFilesystem"],
            context["allowPrivilegeEscalation"]) == (["ALL"], True, False)


def test_agent_may_read_pods_of_the_app_namespace_only(declared: Declared) -> None:
    (role,) = _agent_objects(declared, "Role")
    assert role["metadata"]["namespace"] == BASE_CONFIG["namespace"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert _agent_objects(declared, "ClusterRole") == []


def test_local_target_ships_to_the_configured_elasticsearch() -> None:
    es = {"host": "es.example.internal", "port": 9201, "index": "llm-logs"}
    declared = declare(merged(LOGGING_ON, {"logging": {"elasticsearch": es}}))
    entries = _entries(_config_map(declared)["data"][OUTPUT_CONFIG])
    assert {key: entries[key] for key in ("Name", "Host", "Port", "Index")} == {
        "Name": "es", "Host": es["host"], "Port": str(es["port"]), "Index": es["index"]}


def test_agent_runs_on_the_nodes_the_server_runs_on() -> None:
    declared = declare_on(gpu_target())
    server_pod = declared.pod_spec
    agent_pod = _daemon_set(declared)["spec"]["template"]["spec"]
    assert (agent_pod["nodeSelector"], agent_pod["tolerations"]) == (
        server_pod["nodeSelector"], server_pod["tolerations"])


def test_sink_identity_annotations_go_on_the_agent_service_account() -> None:
    annotations = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/log-writer"}
    sink = LogSink(kind="cloudwatch", outputs={"Name": "cloudwatch_logs"},
                   service_account_annotations=annotations)
    declared = declare_on(gpu_target(log_sink=sink))
    (account,) = _agent_objects(declared, "ServiceAccount")
    assert account["metadata"]["annotations"] == annotations


def test_credentials_of_the_sink_stay_out_of_config_maps() -> None:
    password = "sasl-password-0123"
    sink = LogSink(kind="sls", outputs={"Name": "kafka", "Brokers": "broker.example:10011"},
                   secret_outputs={"rdkafka.sasl.password": password})
    declared = declare_on(gpu_target(log_sink=sink))
    assert all(password not in str(c["data"]) for c in declared.all("ConfigMap"))
    (secret,) = _agent_objects(declared, "Secret")
    assert password in secret["stringData"][OUTPUT_CONFIG]


def test_agent_config_directory_projects_the_output_secret() -> None:
    sink = LogSink(kind="cls", outputs={"Name": "kafka"}, secret_outputs={"rdkafka.sasl.password": "p"})
    declared = declare_on(gpu_target(log_sink=sink))
    (secret,) = _agent_objects(declared, "Secret")
    volumes = _daemon_set(declared)["spec"]["template"]["spec"]["volumes"]
    (config,) = [v for v in volumes if v["name"] == "config"]
    assert {"secret": {"name": secret["metadata"]["name"]}} in config["projected"]["sources"]


def test_sink_without_a_plugin_name_is_refused() -> None:
    with pytest.raises(ValueError, match="names no fluent-bit output plugin"):
        output_config("loki", {"Host": "loki"})


def test_config_values_cannot_inject_sections() -> None:
    with pytest.raises(ValueError, match="line break"):
        section("OUTPUT", {"Host": "es\n[OUTPUT]\n    Name stdout"})
