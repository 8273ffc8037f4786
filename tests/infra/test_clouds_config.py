"""A wrong cloud section stops before any resource with one message naming the key."""

from __future__ import annotations

import pytest

from infra.config import ConfigError
from tests.infra.cloud_stacks import load_config, stack_values, with_changes

# Each cloud's example stack and the section it configures.
CLOUD_STACKS = {"aws": "prod", "alicloud": "prod-alicloud", "tencent": "prod-tencent"}
EXISTING_CLUSTERS = {
    "aws": {"name": "team-gpu"},
    "alicloud": {
        "name": "c0123",
        "rrsaOidcProviderArn": "acs:ram::1:oidc-provider/ack-rrsa-c0123",
        "rrsaOidcIssuerUrl": "https://oidc-ack.cn-hangzhou.aliyuncs.com/c0123",
    },
    "tencent": {"name": "cls-0123abcd"},
}


def _error(cloud: str, changes: dict) -> ConfigError:
    stack = CLOUD_STACKS[cloud]
    with pytest.raises(ConfigError) as raised:
        load_config(stack, with_changes(stack_values(stack), changes))
    return raised.value


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_every_example_stack_is_valid(cloud: str) -> None:
    stack = CLOUD_STACKS[cloud]
    assert load_config(stack, stack_values(stack)).cloud == cloud


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_missing_region_names_the_key(cloud: str) -> None:
    error = _error(cloud, {f"{cloud}.region": None})
    assert [key for key, _ in error.problems] == [f"llm-serving:{cloud}.region"]


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_cpu_instance_type_for_the_gpu_pool_names_the_key_and_the_families(cloud: str) -> None:
    error = _error(cloud, {f"{cloud}.cluster.nodePool.instanceType": "m7.large"})
    ((key, problem),) = error.problems
    assert key == f"llm-serving:{cloud}.cluster.nodePool.instanceType"
    assert "allowed families" in problem


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_existing_cluster_and_create_together_name_both_keys(cloud: str) -> None:
    error = _error(cloud, {f"{cloud}.existingCluster": EXISTING_CLUSTERS[cloud]})
    ((key, problem),) = error.problems
    assert key == f"llm-serving:{cloud}"
    assert "existingCluster" in problem and "cluster" in problem


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_neither_existing_cluster_nor_create_is_refused(cloud: str) -> None:
    error = _error(cloud, {f"{cloud}.cluster": None})
    assert [key for key, _ in error.problems] == [f"llm-serving:{cloud}"]


def test_gpu_pool_sizes_out_of_order_name_the_pool() -> None:
    error = _error("aws", {"aws.cluster.nodePool.minSize": 5, "aws.cluster.nodePool.desiredSize": 2})
    assert [key for key, _ in error.problems] == ["llm-serving:aws.cluster.nodePool"]


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_synced_model_volume_must_be_each_pods_own(cloud: str) -> None:
    error = _error(cloud, {"model.accessMode": "ReadWriteMany"})
    assert [key for key, _ in error.problems] == ["llm-serving:model.accessMode"]


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_quota_must_hold_a_model_volume_per_pod(cloud: str) -> None:
    stack = CLOUD_STACKS[cloud]
    one_volume = load_config(stack, stack_values(stack)).model.storage_size
    error = _error(cloud, {"quota.storage": one_volume})
    assert [key for key, _ in error.problems] == ["llm-serving:quota.storage"]


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_max_replicas_beyond_the_gpu_pool_is_refused(cloud: str) -> None:
    """One GPU per pod and per node: 9 replicas cannot fit a pool of at most 8 nodes."""
    error = _error(cloud, {"autoscaling.maxReplicas": 9})
    assert "llm-serving:autoscaling.maxReplicas" in str(error)
    assert "at most 8" in str(error)


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_a_rollout_surge_counts_against_the_gpu_pool(cloud: str) -> None:
    error = _error(cloud, {"rollout.maxSurge": 1})
    assert "llm-serving:autoscaling.maxReplicas" in str(error)


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_more_gpus_per_pod_than_the_instance_type_has_is_refused(cloud: str) -> None:
    error = _error(cloud, {"gpu.count": 2})
    assert "llm-serving:gpu.count" in str(error)


def test_an_instance_type_of_unknown_gpu_count_needs_gpus_per_node() -> None:
    error = _error("aws", {"aws.cluster.nodePool.instanceType": "g4dn.metal"})
    assert "llm-serving:aws.cluster.nodePool.gpusPerNode" in str(error)
    stack = CLOUD_STACKS["aws"]
    changes = {"aws.cluster.nodePool.instanceType": "g4dn.metal", "aws.cluster.nodePool.gpusPerNode": 8,
               "gpu.count": 4, "quota.gpus": 64}
    assert load_config(stack, with_changes(stack_values(stack), changes)).gpu.count == 4


@pytest.mark.parametrize("cloud", CLOUD_STACKS)
def test_the_issuer_needs_an_acme_email(cloud: str) -> None:
    assert "llm-serving:platform.acmeEmail" in str(_error(cloud, {"platform.acmeEmail": None}))


def test_chart_values_only_for_charts_of_the_table() -> None:
    assert "llm-serving:platform.chartValues" in str(_error("aws", {"platform.chartValues": {"nginx": {}}}))
