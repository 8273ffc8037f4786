"""Stack config validation: every wrong key stops the program with one message naming it."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError
from infra.program import run
from infra.render import RecordingMocks, run_program
from tests.infra.conftest import API_KEY, BASE_CONFIG, declare, merged, runtime_config


def problems_of(changes: dict[str, Any], secrets: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        declare(changes, secrets=secrets)
    return str(raised.value)


def test_unknown_cloud_names_key_and_allowed_clouds() -> None:
    message = problems_of({"cloud": "gcp"})
    assert "llm-serving:cloud" in message
    assert all(cloud in message for cloud in ("'local'", "'aws'", "'alicloud'", "'tencent'"))


def test_message_names_the_stack_file() -> None:
    assert "Pulumi.test.yaml" in problems_of({"cloud": "gcp"})


def test_negative_replicas_rejected() -> None:
    message = problems_of({"replicas": -1})
    assert "llm-serving:replicas" in message
    assert "greater than or equal to 1" in message


def test_min_replicas_above_max_rejected() -> None:
    message = problems_of({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}})
    assert "llm-serving:autoscaling.minReplicas" in message
    assert "minReplicas <= maxReplicas" in message


def test_missing_api_key_says_how_to_set_it() -> None:
    message = problems_of({}, secrets={})
    assert "llm-serving:apiKey" in message
    assert "pulumi config set --secret apiKey" in message


def test_api_key_in_plain_text_rejected() -> None:
    with pytest.raises(ConfigError, match="llm-serving:apiKey: is set in plain text"):
        declare({"apiKey": API_KEY}, secrets={})


def test_bad_storage_size_rejected() -> None:
    message = problems_of({"model": {"storageSize": "lots"}})
    assert "llm-serving:model.storageSize" in message
    assert "16Gi" in message  # the example of what is allowed


def test_zero_size_rejected() -> None:
    assert "llm-serving:resources.shmSize" in problems_of({"resources": {"shmSize": "0Gi"}})


def test_unknown_top_level_key_lists_allowed_keys() -> None:
    message = problems_of({"replica": 3})
    assert "llm-serving:replica: unknown key" in message
    assert "replicas" in message


def test_unknown_nested_key_lists_that_sections_keys() -> None:
    message = problems_of({"autoscaling": {"maxReplica": 3}})
    assert "llm-serving:autoscaling.maxReplica: unknown key" in message
    assert "maxReplicas" in message


def test_server_settings_owned_by_the_deployment_rejected() -> None:
    assert "llm-serving:server.port: unknown key" in problems_of({"server": {"port": 9000}})


def test_every_problem_reported_at_once() -> None:
    message = problems_of({"replicas": 0, "cloud": "gcp"})
    assert "llm-serving:replicas" in message
    assert "llm-serving:cloud" in message


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/inference",
        "registry.example.com/inference:latest",
        "registry.example.com:5000/inference",
    ],
)
def test_unpinned_image_rejected(image: str) -> None:
    assert "llm-serving:image" in problems_of({"image": image})


def test_image_by_digest_accepted() -> None:
    declared = declare({"image": "registry.example.com/inference@sha256:" + "a" * 64})
    assert declared.server["image"].endswith("a" * 64)


def test_requests_above_limits_rejected() -> None:
    message = problems_of({"resources": {"requests": {"cpu": "4"}}})
    assert "llm-serving:resources.requests.cpu" in message


def test_quota_too_small_for_the_workload_rejected() -> None:
    message = problems_of({"quota": {"limitsCpu": "1"}})
    assert "llm-serving:quota.limitsCpu" in message


def test_shared_model_volume_must_be_mountable_from_many_nodes() -> None:
    message = problems_of({"model": {"accessMode": "ReadWriteOnce"}})
    assert "llm-serving:model.accessMode" in message
    assert "ReadOnlyMany or ReadWriteMany" in message


def test_quota_without_room_for_model_volumes_rejected() -> None:
    message = problems_of({"quota": {"storage": "10Gi"}})
    assert "llm-serving:quota.storage" in message


def test_quota_without_room_for_gpus_rejected() -> None:
    assert "llm-serving:quota.gpus" in problems_of({"gpu": {"count": 1}, "quota": {"gpus": 1}})


def test_bucket_model_on_local_cloud_rejected() -> None:
    assert "llm-serving:model.source" in problems_of({"model": {"source": "bucket"}})


def test_cloud_section_required_for_a_cloud() -> None:
    assert "llm-serving:aws: cloud is 'aws', so its section is required" in problems_of({"cloud": "aws"})


def test_ingress_needs_a_host() -> None:
    assert "llm-serving:ingress.host" in problems_of({"ingress": {"host": None}})


def test_registry_needs_its_password_secret() -> None:
    message = problems_of({"registry": {"server": "registry.example.com", "username": "ci"}})
    assert "llm-serving:registryPassword" in message


def test_bad_config_declares_no_resource() -> None:
    values, secret_keys = runtime_config(merged(BASE_CONFIG, {"replicas": -1}), {"apiKey": API_KEY})
    mocks = RecordingMocks()
    with pytest.raises(ConfigError):
        run_program(run, "test", values, secret_keys, mocks=mocks)
    assert mocks.resources == []
