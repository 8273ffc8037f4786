"""`python -m infra render` for the Alibaba Cloud and Tencent Cloud stack files, offline: the
manifests pass the real validators and the plan lists the cloud resources `pulumi up` would create."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.cloud_stacks import PROJECT_DIR
from tests.infra.conftest import API_KEY

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
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(EXPECTED_PLAN))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    stack = request.param
    out = tmp_path_factory.mktemp("render") / stack
    subprocess.run(
        [sys.executable, "-m", "infra", "render", "--stack", stack, "--out", str(out)],
        cwd=PROJECT_DIR,
        env={**os.environ, "LLM_SERVING_SECRET_API_KEY": API_KEY},
        check=True,
        capture_output=True,
        text=True,
    )
    return stack, out


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed (scripts/setup.sh installs it)"
    return found


def test_plan_lists_the_cloud_resources(rendered: tuple[str, Path]) -> None:
    stack, out = rendered
    plan = json.loads((out / "plan" / "cloud-resources.json").read_text())
    assert EXPECTED_PLAN[stack] <= {entry["type"] for entry in plan}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_kubernetes_validate_strict(rendered: tuple[str, Path], version: str) -> None:
    _, out = rendered
    manifests = sorted(str(p) for p in out.glob("*.yaml"))
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *manifests],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_pass_checkov(rendered: tuple[str, Path]) -> None:
    _, out = rendered
    result = subprocess.run(
        [_tool("checkov"), "-d", str(out), "--framework", "kubernetes", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
    )
    report = json.loads(result.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["passed"] > 0
    assert summary["failed"] == 0, result.stdout
