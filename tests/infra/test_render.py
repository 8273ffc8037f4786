"""Offline render: one stable YAML file per Kubernetes object, and a plan of the other resources."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml

from infra.config import load_stack_config
from infra.program import build_serving_stack, run
from infra.render import MARKER_FILE, PLAN_FILE, REDACTED, StackFileError, render
from tests.infra.conftest import API_KEY, REPO, gpu_target


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SERVING_SECRET_API_KEY", API_KEY)


def documents(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))}


def whole_floats(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in whole_floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in whole_floats(v)]
    return [value] if isinstance(value, float) and value.is_integer() else []


@pytest.mark.usefixtures("secret_env")
def test_one_file_per_kubernetes_object(tmp_path: Path) -> None:
    mocks = render("dev", tmp_path / "out", REPO, run)
    rendered = documents(tmp_path / "out")
    assert len(rendered) == len(mocks.kubernetes_objects())
    assert all(doc["kind"].lower() in name for name, doc in rendered.items())


@pytest.mark.usefixtures("secret_env")
def test_namespace_applied_first(tmp_path: Path) -> None:
    render("dev", tmp_path / "out", REPO, run)
    first = next(iter(documents(tmp_path / "out").values()))
    assert first["kind"] == "Namespace"


@pytest.mark.usefixtures("secret_env")
def test_render_is_deterministic(tmp_path: Path) -> None:
    contents = []
    for attempt in ("first", "second"):
        render("dev", tmp_path / attempt, REPO, run)
        contents.append(
            {p.name: p.read_bytes() for p in sorted((tmp_path / attempt).rglob("*")) if p.is_file()}
        )
    assert contents[0] == contents[1]


@pytest.mark.usefixtures("secret_env")
def test_secret_manifest_readable_by_owner_only(tmp_path: Path) -> None:
    render("dev", tmp_path / "out", REPO, run)
    (secret_file,) = [
        p for p in (tmp_path / "out").glob("*.yaml") if yaml.safe_load(p.read_text())["kind"] == "Secret"
    ]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


@pytest.mark.usefixtures("secret_env")
def test_secret_value_taken_from_the_environment(tmp_path: Path) -> None:
    render("dev", tmp_path / "out", REPO, run)
    secret = next(d for d in documents(tmp_path / "out").values() if d["kind"] == "Secret")
    assert list(secret["stringData"].values()) == [API_KEY]


@pytest.mark.usefixtures("secret_env")
def test_whole_numbers_written_as_integers(tmp_path: Path) -> None:
    render("dev", tmp_path / "out", REPO, run)
    assert whole_floats(list(documents(tmp_path / "out").values())) == []


@pytest.mark.usefixtures("secret_env")
def test_plan_empty_for_local_cloud(tmp_path: Path) -> None:
    render("dev", tmp_path / "out", REPO, run)
    assert json.loads((tmp_path / "out" / PLAN_FILE).read_text()) == []


@pytest.mark.usefixtures("secret_env")
def test_plan_lists_other_resources_with_secrets_redacted(tmp_path: Path) -> None:
    kubeconfig = "apiVersion: v1\nkind: Config\n# a secret kubeconfig\n"

    def program() -> None:
        provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(kubeconfig))
        build_serving_stack(load_stack_config(), gpu_target(kubernetes_provider=provider))

    render("dev", tmp_path / "out", REPO, program)
    plan_text = (tmp_path / "out" / PLAN_FILE).read_text()
    (entry,) = json.loads(plan_text)
    assert (entry["type"], entry["name"]) == ("pulumi:providers:kubernetes", "cluster")
    assert entry["inputs"]["kubeconfig"] == REDACTED
    assert "a secret kubeconfig" not in plan_text


@pytest.mark.usefixtures("secret_env")
def test_render_replaces_an_earlier_render(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render("dev", out, REPO, run)
    (out / "999-stale.yaml").write_text("kind: Stale\n")
    render("dev", out, REPO, run)
    assert not (out / "999-stale.yaml").exists()
    assert (out / MARKER_FILE).exists()


@pytest.mark.usefixtures("secret_env")
def test_render_refuses_to_replace_other_directories(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(StackFileError, match="not written by a render"):
        render("dev", out, REPO, run)
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_stack_file_named(tmp_path: Path) -> None:
    with pytest.raises(StackFileError, match=r"Pulumi\.nosuch\.yaml"):
        render("nosuch", tmp_path / "out", REPO, run)
