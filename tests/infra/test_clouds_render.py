"""`python -m infra render` for the Alibaba Cloud and Tencent Cloud stack files, offline: the plan lists
the cloud resources `pulumi up` would create. Their manifests go through the real validators with every
other stack's in test_manifests_valid.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Each stack file and the cloud resources its plan must list (the cluster, its GPU pool, the model
# bucket, the identity that reads it, the log sink).
EXPECTED_PLAN = {
    "prod-alicloud": {
        "alicloud:cs/managedKubernetes:ManagedKubernetes",
        "alicloud:cs/nodePool:NodePool",
        "alicloud:oss/bucket:Bucket",
        "alicloud:ram/role:Role",
        "alicloud:log/project:Project",
        "alicloud:log/store:Store",
    },
    "prod-tencent": {
        "tencentcloud:Kubernetes/cluster:Cluster",
        "tencentcloud:Kubernetes/nodePool:NodePool",
        "tencentcloud:Cos/bucket:Bucket",
        "tencentcloud:Cam/policy:Policy",
        "tencentcloud:Cls/logset:Logset",
        "tencentcloud:Cls/topic:Topic",
    },
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(EXPECTED_PLAN))
def rendered(request: pytest.FixtureRequest, rendered_stacks: Path) -> tuple[str, Path]:
    return request.param, rendered_stacks / request.param


def test_plan_lists_the_cloud_resources(rendered: tuple[str, Path]) -> None:
    stack, out = rendered
    plan = json.loads((out / "plan" / "cloud-resources.json").read_text())
    assert EXPECTED_PLAN[stack] <= {entry["type"] for entry in plan}


def test_plan_lists_helm_releases_with_inputs_and_what_they_wait_for(rendered: tuple[str, Path]) -> None:
    _, out = rendered
    plan = json.loads((out / "plan" / "cloud-resources.json").read_text())
    releases = {e["inputs"]["name"]: e for e in plan if e["type"] == "kubernetes:helm.sh/v3:Release"}
    stack = releases["kube-prometheus-stack"]
    assert stack["inputs"]["version"] and stack["inputs"]["values"]["prometheus"]
    crds = releases["prometheus-operator-crds"]
    assert f"{crds['type']} {crds['name']}" in stack["dependsOn"]
    # Every release goes through the cluster's provider, which waits for the node pools.
    (provider,) = [e for e in plan if f"{e['type']} {e['name']}" == stack["provider"]]
    assert [d for d in provider["dependsOn"] if "nodePool:NodePool" in d]
    # Helm releases are not manifests: `kubectl apply -f` of the directory would not know them.
    assert not [p for p in out.glob("*.yaml") if "release" in p.name]
