"""`python -m infra monitoring-files`: the files a local Prometheus and Grafana load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.cli import main
from tests.infra.prometheus_binaries import promtool


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitoring")
    assert main(["monitoring-files", "--out", str(out), "--target", "inference:8000", "--job", "llm"]) == 0
    return out


def test_prometheus_config_scrapes_the_given_target_as_the_given_job(written: Path) -> None:
    config = yaml.safe_load((written / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert (job["job_name"], job["static_configs"][0]["targets"]) == ("llm", ["inference:8000"])


def test_prometheus_config_loads_the_written_rules(written: Path) -> None:
    config = yaml.safe_load((written / "prometheus.yml").read_text())
    matched = {path for pattern in config["rule_files"] for path in written.glob(pattern)}
    assert matched == set(written.glob("rules/*.yml")) != set()


def test_written_config_passes_promtool(written: Path) -> None:
    result = promtool("check", "config", "prometheus.yml", cwd=written)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_a_grafana_dashboard_model(written: Path) -> None:
    (path,) = written.glob("dashboards/*.json")
    model = json.loads(path.read_text())
    assert model["panels"] and all(panel["targets"] for panel in model["panels"])


def test_dashboard_splits_traffic_and_latency_by_served_model(written: Path) -> None:
    """A LoRA adapter is a model id of its own: its tokens/s and TTFT are plotted apart from the base's."""
    (path,) = written.glob("dashboards/*.json")
    by_model = [
        panel["title"]
        for panel in json.loads(path.read_text())["panels"]
        if any("by (model" in target["expr"] for target in panel["targets"])
    ]
    assert any("Tokens" in title for title in by_model) and any("first token" in title for title in by_model)
