"""Shared fixtures for the delivery tests: the repository root and the stacks' own rendered objects."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(
    path.name.removeprefix("Pulumi.").removesuffix(".yaml") for path in REPO_ROOT.glob("Pulumi.*.yaml")
)

Manifest = dict[str, Any]


def pulumi_type(manifest: Manifest) -> str:
    """The Pulumi type token of a Kubernetes object: apps/v1 Deployment -> kubernetes:apps/v1:Deployment."""
    group_version = manifest["apiVersion"]
    if "/" not in group_version:
        group_version = f"core/{group_version}"
    return f"kubernetes:{group_version}:{manifest['kind']}"


@pytest.fixture(scope="session")
def rendered_stack(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Manifest]]:
    """Every Kubernetes object of a stack, from the offline render of the real Pulumi program."""
    cache: dict[str, list[Manifest]] = {}

    def render(stack: str) -> list[Manifest]:
        if stack not in cache:
            out = tmp_path_factory.mktemp(f"render-{stack}") / "manifests"
            env = {**os.environ, "LLM_SERVING_SECRET_API_KEY": secrets.token_hex(16)}
            subprocess.run(
                [sys.executable, "-m", "infra", "render", "--stack", stack, "--out", str(out)],
                cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300,
            )
            cache[stack] = [
                doc
                for path in sorted(out.glob("*.yaml"))
                for doc in yaml.safe_load_all(path.read_text())
                if doc
            ]
        return cache[stack]

    return render


@pytest.fixture
def dev_objects(rendered_stack: Callable[[str], list[Manifest]]) -> list[Manifest]:
    return rendered_stack("dev")


def first_of_kind(objects: list[Manifest], kind: str) -> Manifest:
    return next(obj for obj in objects if obj["kind"] == kind)
