"""`python -m infra render` on bad stack files: exit non-zero, name the key, write nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import API_KEY, REPO, render_cli

KEY = "llm-serving:"


def bad_project(tmp_path: Path, changes: dict[str, Any]) -> Path:
    """A project whose stack `bad` is the dev stack with `changes` (None removes a key)."""
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    document = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            document["config"].pop(KEY + key, None)
        else:
            document["config"][KEY + key] = value
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump(document))
    return tmp_path


def render_bad(project: Path, out: Path, with_secret: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVING_SECRET_")}
    if with_secret:
        env["LLM_SERVING_SECRET_API_KEY"] = API_KEY
    return render_cli("bad", out, env, "--project-dir", str(project), timeout=120)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"cloud": "openstack"}, "llm-serving:cloud"),
        ({"replicas": -2}, "llm-serving:replicas"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}},
            "llm-serving:autoscaling.minReplicas",
        ),
        ({"model": {"source": "demo", "storageSize": "huge"}}, "llm-serving:model.storageSize"),
        ({"replicaCount": 2}, "llm-serving:replicaCount"),
    ],
    ids=["unknown-cloud", "negative-replicas", "min-above-max", "bad-size", "unknown-key"],
)
def test_bad_config_exits_naming_the_key_and_writes_nothing(
    tmp_path: Path, changes: dict[str, Any], key: str
) -> None:
    out = tmp_path / "out"
    result = render_bad(bad_project(tmp_path, changes), out)
    assert result.returncode == 2
    assert f"Pulumi.bad.yaml: {key}:" in result.stderr
    assert not out.exists()


def test_missing_secret_exits_saying_how_to_set_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = render_bad(bad_project(tmp_path, {}), out, with_secret=False)
    assert result.returncode == 2
    assert "llm-serving:apiKey" in result.stderr
    assert "LLM_SERVING_SECRET_API_KEY" in result.stderr
    assert not out.exists()


def test_bad_config_leaves_an_earlier_render_untouched(tmp_path: Path) -> None:
    project, out = bad_project(tmp_path, {}), tmp_path / "out"
    assert render_bad(project, out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad_project(tmp_path, {"replicas": -2})
    assert render_bad(project, out).returncode == 2
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
