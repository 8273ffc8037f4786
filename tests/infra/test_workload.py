"""Inference workload: settings, API key, identity, the Deployment's pod and its disruption budget."""

from __future__ import annotations

from typing import Any

import pytest

from inference.config import ServerConfig, env_name
from infra.components.pod_security import RUN_AS_USER
from infra.config import SERVER_PORT, ConfigError
from tests.infra.conftest import API_KEY, BASE_CONFIG, Declared, declare, gpu_target

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def all_containers(declared: Declared) -> list[dict[str, Any]]:
    return declared.pod_spec["containers"] + declared.pod_spec.get("initContainers", [])


# Settings
def test_server_settings_become_their_environment_variables() -> None:
    data = declare({"server": {"maxNumSeqs": 7, "quantization": "int8"}}).one("ConfigMap")["data"]
    assert data[env_name("max_num_seqs")] == "7"
    assert data[env_name("quantization")] == "int8"


def test_torch_threads_leave_one_cpu_of_the_limit_to_the_http_server() -> None:
    changes = {"resources": {"limits": {"cpu": "6", "memory": "4Gi"}}}
    assert declare(changes).one("ConfigMap")["data"][env_name("torch_threads")] == "5"


def test_torch_threads_at_least_one_under_a_fractional_limit() -> None:
    changes = {"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1500m", "memory": "4Gi"}}}
    assert declare(changes).one("ConfigMap")["data"][env_name("torch_threads")] == "1"


def test_configured_torch_threads_win_over_the_cpu_limit() -> None:
    data = declare({"server": {"torchThreads": 3}}).one("ConfigMap")["data"]
    assert data[env_name("torch_threads")] == "3"


def test_gpus_per_pod_shard_the_model_over_them() -> None:
    data = declare({"gpu": {"count": 4}}, target=gpu_target()).one("ConfigMap")["data"]
    assert data["LLM_SERVING_TENSOR_PARALLEL_SIZE"] == "4"
    assert "LLM_SERVING_TENSOR_PARALLEL_SIZE" not in declare({"gpu": {"count": 1}}).one("ConfigMap")["data"]


def test_prefix_caching_switch_reaches_the_server() -> None:
    data = declare({"server": {"enablePrefixCaching": False}}).one("ConfigMap")["data"]
    assert data["LLM_SERVING_ENABLE_PREFIX_CACHING"] == "false"


def test_shared_memory_must_fit_under_the_memory_limit() -> None:
    with pytest.raises(ConfigError, match=r"llm-serving:resources\.shmSize"):
        declare({"resources": {"shmSize": "4Gi"}})


def test_every_server_variable_is_a_server_config_field(declared: Declared) -> None:
    names = {env_name(field) for field in ServerConfig.model_fields}
    data = declared.one("ConfigMap")["data"]
    assert {k for k in data if k.startswith("LLM_SERVING_")} <= names


def test_server_listens_on_all_interfaces_of_the_pod(declared: Declared) -> None:
    data = declared.one("ConfigMap")["data"]
    assert data[env_name("host")] == "0.0.0.0"
    assert data[env_name("port")] == str(SERVER_PORT)


def test_server_reads_settings_from_the_config_map(declared: Declared) -> None:
    config_map = declared.one("ConfigMap")["metadata"]["name"]
    assert declared.server["envFrom"] == [{"configMapRef": {"name": config_map}}]


def test_changed_settings_roll_the_pods() -> None:
    def settings_hash(declared: Declared) -> str:
        return declared.one("Deployment")["spec"]["template"]["metadata"]["annotations"][
            "llm-serving/settings-sha256"
        ]

    assert settings_hash(declare()) != settings_hash(declare({"server": {"maxNumSeqs": 3}}))


# API key
def test_api_key_secret_holds_the_key(declared: Declared) -> None:
    assert list(declared.one("Secret")["stringData"].values()) == [API_KEY]


def test_api_key_stays_a_pulumi_secret(declared: Declared) -> None:
    (inputs,) = declared.raw_inputs("Secret")
    assert inputs["stringData"]["4dabf18193072939515e22adb298388d"] == SECRET_SIG


def test_api_key_mounted_as_the_file_the_server_reads(declared: Declared) -> None:
    secret = declared.one("Secret")
    (key_name,) = secret["stringData"]
    volume = next(v for v in declared.pod_spec["volumes"] if v.get("secret"))
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in declared.server["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    key_file = declared.one("ConfigMap")["data"][env_name("api_key_file")]
    assert key_file == f"{mount['mountPath']}/{key_name}"


def test_api_key_never_in_the_environment(declared: Declared) -> None:
    assert API_KEY not in str(declared.one("ConfigMap"))
    assert "env" not in declared.server


# Identity
def test_service_account_token_not_mounted(declared: Declared) -> None:
    assert declared.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert declared.pod_spec["automountServiceAccountToken"] is False


def test_pods_run_as_the_apps_service_account(declared: Declared) -> None:
    assert declared.pod_spec["serviceAccountName"] == declared.one("ServiceAccount")["metadata"]["name"]


# Resources and placement
def test_gpus_requested_and_limited() -> None:
    resources = declare({"gpu": {"count": 2}}).server["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "2"


def test_cpu_only_requests_no_gpu(declared: Declared) -> None:
    resources = declared.server["resources"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "nvidia.com/gpu" not in resources["limits"]


def test_cpu_and_memory_from_config(declared: Declared) -> None:
    resources = declared.server["resources"]
    assert resources["requests"] == BASE_CONFIG["resources"]["requests"]
    assert resources["limits"] == BASE_CONFIG["resources"]["limits"]


def test_node_selector_and_tolerations_from_target() -> None:
    target = gpu_target()
    pod = declare({"gpu": {"count": 1}}, target=target).pod_spec
    assert pod["nodeSelector"] == dict(target.node_selector)
    assert pod["tolerations"] == [dict(t) for t in target.tolerations]


def test_gpu_type_selects_the_gpu_product() -> None:
    pod = declare({"gpu": {"count": 1, "type": "NVIDIA-L4"}}, target=gpu_target()).pod_spec
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L4"


def test_pods_spread_across_zones_and_nodes(declared: Declared) -> None:
    keys = {c["topologyKey"] for c in declared.pod_spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


# Health
def test_startup_probe_covers_the_model_load_time() -> None:
    load_seconds = 1234
    probe = declare({"model": {"loadTimeoutSeconds": load_seconds}}).server["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= load_seconds


def test_liveness_on_live_endpoint(declared: Declared) -> None:
    assert declared.server["livenessProbe"]["httpGet"]["path"] == "/health/live"


def test_readiness_on_ready_endpoint(declared: Declared) -> None:
    assert declared.server["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_probes_have_no_fixed_initial_delay(declared: Declared) -> None:
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "initialDelaySeconds" not in declared.server[probe]


# Security context
@pytest.mark.parametrize(
    "field, value",
    [
        ("allowPrivilegeEscalation", False),
        ("readOnlyRootFilesystem", True),
        ("runAsNonRoot", True),
        ("privileged", False),
    ],
)
def test_every_container_restricted(field: str, value: bool) -> None:
    for container in all_containers(declare(target=gpu_target(), sync_from_bucket=True)):
        assert container["securityContext"][field] is value, container["name"]


def test_every_container_drops_all_capabilities() -> None:
    for container in all_containers(declare(target=gpu_target(), sync_from_bucket=True)):
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, container["name"]


def test_pod_runs_as_high_uid_with_runtime_default_seccomp(declared: Declared) -> None:
    context = declared.pod_spec["securityContext"]
    assert context["runAsUser"] > 10000
    assert context["runAsUser"] == RUN_AS_USER
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_writable_empty_dirs_for_tmp_and_cache(declared: Declared) -> None:
    empty_dirs = {v["name"] for v in declared.pod_spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in declared.server["volumeMounts"]}
    assert mounts["/tmp"] in empty_dirs
    assert mounts["/cache"] in empty_dirs
    assert declared.one("ConfigMap")["data"]["HF_HOME"].startswith("/cache/")


def test_shared_memory_is_memory_backed() -> None:
    declared = declare({"resources": {"shmSize": "3Gi"}})
    mount = next(m for m in declared.server["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in declared.pod_spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "3Gi"}


# Rollout and shutdown
def _strategy(declared: Declared) -> dict[str, Any]:
    strategy = declared.one("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    return strategy["rollingUpdate"]


def test_cpu_rollout_surges_and_never_drops_below_capacity(declared: Declared) -> None:
    assert _strategy(declared) == {"maxSurge": 1, "maxUnavailable": 0}


def test_gpu_rollout_replaces_in_place_so_a_full_pool_cannot_deadlock_it() -> None:
    """A surge pod needs a free GPU node; on a full pool it would wait forever and the rollout with it."""
    declared = declare({"gpu": {"count": 1}}, target=gpu_target())
    assert _strategy(declared) == {"maxSurge": 0, "maxUnavailable": 1}


def test_rollout_strategy_from_config() -> None:
    changes = {"gpu": {"count": 1}, "rollout": {"maxSurge": 1, "maxUnavailable": 0}}
    declared = declare(changes, target=gpu_target())
    assert _strategy(declared) == {"maxSurge": 1, "maxUnavailable": 0}


def test_rollout_that_can_replace_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"llm-serving:rollout\.maxUnavailable"):
        declare({"rollout": {"maxSurge": 0, "maxUnavailable": 0}})


def test_pre_stop_keeps_serving_until_the_endpoint_is_gone_then_drains() -> None:
    declared = declare({"rollout": {"preStopSeconds": 12}, "server": {"drainTimeoutSeconds": 30}})
    assert declared.server["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "12"]}}
    assert declared.pod_spec["terminationGracePeriodSeconds"] > 12 + 30


def test_deployment_waits_for_its_namespace(declared: Declared) -> None:
    (deployment,) = [r for r in declared.mocks.resources if r.type == "kubernetes:apps/v1:Deployment"]
    assert any(dependency.startswith("kubernetes:core/v1:Namespace ") for dependency in deployment.depends_on)


def test_grace_period_outlasts_the_drain() -> None:
    drain = 77.5
    declared = declare({"server": {"drainTimeoutSeconds": drain}})
    assert declared.pod_spec["terminationGracePeriodSeconds"] > drain
    assert declared.one("ConfigMap")["data"][env_name("drain_timeout_seconds")] == str(drain)


def test_pulumi_waits_longer_than_a_model_load() -> None:
    load_seconds = 2000
    deployment = declare({"model": {"loadTimeoutSeconds": load_seconds}}).one("Deployment")
    assert int(deployment["metadata"]["annotations"]["pulumi.com/timeoutSeconds"]) > load_seconds
    assert deployment["spec"]["progressDeadlineSeconds"] > load_seconds


def test_replicas_left_to_the_autoscaler(declared: Declared) -> None:
    assert "replicas" not in declared.one("Deployment")["spec"]


def test_replicas_set_without_autoscaling() -> None:
    spec = declare({"autoscaling": {"enabled": False}, "replicas": 3}).one("Deployment")["spec"]
    assert spec["replicas"] == 3


def test_disruption_budget_covers_the_pods(declared: Declared) -> None:
    budget = declared.one("PodDisruptionBudget")["spec"]
    assert budget["selector"] == declared.one("Deployment")["spec"]["selector"]
    assert budget["maxUnavailable"] == 1


# Image
def test_image_pulled_as_configured(declared: Declared) -> None:
    assert declared.server["image"] == BASE_CONFIG["image"]
    assert declared.server["imagePullPolicy"] == "Always"


def test_tag_pinned_image_skips_digest_check_with_reason(declared: Declared) -> None:
    annotations = declared.one("Deployment")["metadata"]["annotations"]
    check, reason = annotations["checkov.io/skip1"].split("=", 1)
    assert check == "CKV_K8S_43"
    assert reason


def test_digest_pinned_image_skips_nothing() -> None:
    image = "registry.example.com/inference@sha256:" + "b" * 64
    annotations = declare({"image": image}).one("Deployment")["metadata"]["annotations"]
    assert not any(key.startswith("checkov.io/skip") for key in annotations)


def test_private_registry_gets_a_pull_secret() -> None:
    registry = {"server": "registry.example.com", "username": "ci"}
    declared = declare({"registry": registry}, secrets={"apiKey": API_KEY, "registryPassword": "hunter2"})
    pull = declared.one("Secret", "llm-serving-registry")
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert "hunter2" in pull["stringData"][".dockerconfigjson"]
    assert declared.pod_spec["imagePullSecrets"] == [{"name": "llm-serving-registry"}]


def test_container_port_is_the_servers(declared: Declared) -> None:
    assert declared.server["ports"] == [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]
