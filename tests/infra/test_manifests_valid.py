"""Every stack file renders to manifests that real validators accept.

kubernetes-validate checks each object against the API schemas of every supported Kubernetes
version (strict: unknown fields are errors); checkov checks security and reliability practice.
Both run once over all stacks, rendered once per session through the real CLI (`rendered_stacks`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.infra.conftest import REPO, STACKS

KUBERNETES_VERSIONS = [f"1.{minor}.0" for minor in range(29, 34)]
# Custom resources have no schema in kubernetes-validate: their CRDs come from the platform layer's charts
# (prometheus-operator, Gateway API and Envoy Gateway, cert-manager). Any other unknown kind is an error.
CRD_GROUPS = (
    "monitoring.coreos.com/", "gateway.networking.k8s.io/", "gateway.envoyproxy.io/", "cert-manager.io/"
)

pytestmark = pytest.mark.slow


def manifests(rendered: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, yaml.safe_load(p.read_text())) for p in sorted(rendered.glob("*/*.yaml"))]


def test_every_stack_renders(rendered_stacks: Path) -> None:
    for stack in STACKS:
        kinds = {yaml.safe_load(p.read_text())["kind"] for p in (rendered_stacks / stack).glob("*.yaml")}
        assert {"Namespace", "Deployment", "Service", "NetworkPolicy"} <= kinds, stack


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_valid_for_kubernetes(rendered_stacks: Path, version: str) -> None:
    errors, custom = [], set()
    for path, obj in manifests(rendered_stacks):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.add(f"{obj['apiVersion']}/{obj['kind']}")
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{path.parent.name}/{path.name}: {error.message}")
    print(
        f"kubernetes {version}: {len(manifests(rendered_stacks))} manifests, "
        f"custom kinds not schema-checked: {sorted(custom) or 'none'}"
    )
    assert not [kind for kind in custom if not kind.startswith(CRD_GROUPS)]
    assert errors == []


def checkov_binary() -> str:
    found = shutil.which("checkov") or str(REPO / ".tools" / "checkov" / "bin" / "checkov")
    assert Path(found).exists(), "checkov is not installed; run scripts/setup.sh"
    return found


def test_checkov_finds_no_failed_check(rendered_stacks: Path) -> None:
    result = subprocess.run(
        # Not --quiet: it leaves the skipped checks out of the report, and their count is part of the result.
        [
            checkov_binary(),
            "--framework",
            "kubernetes",
            "-d",
            str(rendered_stacks),
            "--compact",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r["results"].get("failed_checks", [])
    ]
    skipped = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_result'].get('suppress_comment', '')}"
        for r in reports
        for c in r["results"].get("skipped_checks", [])
    ]
    print(
        f"checkov: {sum(r['summary']['passed'] for r in reports)} passed, {len(failed)} failed, "
        f"{len(skipped)} skipped in the manifests themselves"
    )
    for line in skipped:
        print(f"  skipped {line}")
    assert sum(r["summary"]["resource_count"] for r in reports) >= len(manifests(rendered_stacks))
    assert failed == []
    # A skip must say why, in the manifest.
    assert all(line.split("): ", 1)[1] for line in skipped)
