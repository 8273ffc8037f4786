"""docker-compose.yml: valid against the Compose Specification, and wired to what it runs."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from inference.config import ServerConfig
from infra.config import SERVER_PORT
from tests.delivery.conftest import REPO_ROOT
from tests.delivery.dockerfile import Instruction, instructions

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GENERATED = REPO_ROOT / "deploy" / "compose" / "generated"
# The command docker-compose.yml documents for regenerating deploy/compose/generated, minus --out.
GENERATOR = [sys.executable, "-m", "infra", "monitoring-files", "--target", "server:8000"]

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def bind_mounts(service: Compose) -> dict[PurePosixPath, Path]:
    """Container path -> host path of a service's short-syntax bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = volume.split(":")[:2]
            mounts[PurePosixPath(target)] = REPO_ROOT / source
    return mounts


def host_path(service: Compose, container_path: PurePosixPath) -> Path:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    for target, source in bind_mounts(service).items():
        if container_path == target or target in container_path.parents:
            return source / container_path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from the repository")


def prometheus_config(prometheus: Compose) -> tuple[PurePosixPath, Compose]:
    """The config file Prometheus is started with (its path in the container, and its content)."""
    in_container = PurePosixPath(next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    ))
    return in_container, yaml.safe_load(host_path(prometheus, in_container).read_text())


def test_compose_file_matches_the_compose_specification(compose: Compose) -> None:
    # The schema check-jsonschema vendors: `docker compose config` needs a Docker engine.
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())

    jsonschema.validators.validator_for(schema)(schema).validate(compose)


def test_server_reserves_the_gpu_with_a_device_request(compose: Compose) -> None:
    (device,) = compose["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]

    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert all("runtime" not in service for service in compose["services"].values())


def test_every_container_is_read_only_without_capabilities(compose: Compose) -> None:
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_server_writable_paths_are_the_images_volumes(compose: Compose) -> None:
    server = compose["services"]["server"]
    dockerfile: list[Instruction] = instructions(REPO_ROOT / "Dockerfile.inference")
    (volume,) = [item.exec_form() for item in dockerfile if item.keyword == "VOLUME"]
    tmpfs = {entry.split(":")[0] for entry in server["tmpfs"]}
    named_volumes = {entry.split(":")[1] for entry in server["volumes"] if isinstance(entry, str)}

    assert tmpfs | named_volumes == set(volume)


def test_server_gets_longer_to_stop_than_it_takes_to_drain(compose: Compose) -> None:
    grace = re.fullmatch(r"(\d+)s", compose["services"]["server"]["stop_grace_period"])
    assert grace is not None

    assert int(grace.group(1)) > ServerConfig().drain_timeout_seconds


def test_generated_monitoring_files_are_current(tmp_path: Path) -> None:
    subprocess.run([*GENERATOR, "--out", str(tmp_path)], cwd=REPO_ROOT, check=True, capture_output=True,
                   timeout=120)

    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(GENERATED) for p in GENERATED.rglob("*") if p.is_file())
    assert fresh == committed
    _, mismatched, errors = filecmp.cmpfiles(tmp_path, GENERATED, [str(p) for p in fresh], shallow=False)
    assert mismatched == errors == [], f"stale: regenerate with the command in {COMPOSE_FILE.name}"


def test_prometheus_loads_the_generated_rules(compose: Compose) -> None:
    prometheus = compose["services"]["prometheus"]
    config_in_container, config = prometheus_config(prometheus)

    assert config["rule_files"]
    for pattern in config["rule_files"]:
        # Prometheus resolves rule globs against the directory of its config file.
        rules_in_container = config_in_container.parent / pattern
        rules_dir = host_path(prometheus, rules_in_container.parent)
        assert list(rules_dir.glob(rules_in_container.name)), pattern


def test_prometheus_scrapes_the_server_service(compose: Compose) -> None:
    _, config = prometheus_config(compose["services"]["prometheus"])
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]

    assert targets == [f"server:{SERVER_PORT}"]
    assert "server" in compose["services"]


def test_grafana_admin_password_must_come_from_the_environment(compose: Compose) -> None:
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]

    # ${VAR:?message}: compose refuses to start when the variable is unset or empty.
    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password)


def test_grafana_provisions_the_generated_dashboards(compose: Compose) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = host_path(grafana, PurePosixPath("/etc/grafana/provisioning"))
    (provider,) = yaml.safe_load((provisioning / "dashboards/llm-serving.yml").read_text())["providers"]
    dashboards = host_path(grafana, PurePosixPath(provider["options"]["path"]))
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]

    assert sorted(dashboards.glob("*.json")) == sorted((GENERATED / "dashboards").glob("*.json"))
    assert datasource["url"] == "http://prometheus:9090" and datasource["isDefault"] is True
