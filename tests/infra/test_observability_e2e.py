"""End to end: a real server (`python -m inference serve`) exports every catalog metric, and a real
Prometheus on loopback, configured with the generated scrape config and rules, answers every
dashboard panel's query with data once the server has had some traffic."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference import metrics
from infra.monitoring import alerts
from infra.monitoring.dashboard import panels, variables
from infra.monitoring.files import write_monitoring_files
from infra.monitoring.service import MonitoredService
from tests.infra.prometheus_binaries import binary
from tests.infra.promql_names import series_names

pytestmark = pytest.mark.slow

SERVICE = MonitoredService(
    job="llm-serving", namespace="e2e", deployment="llm-serving", autoscaler="llm-serving"
)
# kube-state-metrics reports replica counts from the cluster's API; outside a cluster nothing
# exports them, so the queries that read only these series cannot return data here.
CLUSTER_ONLY_SERIES = {
    alerts.KSM_DEPLOYMENT_AVAILABLE, alerts.KSM_HPA_CURRENT_REPLICAS, alerts.KSM_HPA_MAX_REPLICAS,
}
# What Grafana substitutes for the variables: this namespace, and "All" pods.
VARIABLE_VALUES = {"$namespace": SERVICE.namespace, "$pod": ".*"}
STARTUP_SECONDS = 120.0
DATA_SECONDS = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"gave up after {seconds:.0f}s waiting for {what}")


def _start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `python -m inference serve` on loopback, serving its demo model."""
    home = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache")}
    process = _start(
        [sys.executable, "-m", "inference", "serve", "--host", "127.0.0.1", "--port", str(port)],
        home / "server.log", env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: process.poll() is None and httpx.get(f"{url}/health/ready").status_code == 200,
                    STARTUP_SECONDS, f"the server to be ready (log: {home / 'server.log'})")
        yield url
    finally:
        _stop(process)


def _model(url: str) -> str:
    return httpx.get(f"{url}/v1/models").json()["data"][0]["id"]


def _send_traffic(url: str) -> None:
    """A plain and a streamed completion (latency, first token and inter-token series), and a prompt
    longer than the context (a rejection, so that the `reason`-labelled series exists)."""
    model = _model(url)
    with httpx.Client(base_url=url, timeout=60) as client:
        body = {"model": model, "prompt": "hello", "max_tokens": 8}
        client.post("/v1/completions", json=body).raise_for_status()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
            stream.raise_for_status()
            stream.read()
        too_long = {**body, "prompt": "x" * 100_000}
        assert client.post("/v1/completions", json=too_long).status_code == 400


def _exported_series(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics").text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_server_exports_every_catalog_series(server: str) -> None:
    _send_traffic(server)
    assert metrics.series_names() - _exported_series(server) == set()


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real Prometheus on loopback scraping `server` every second, with the generated
    config and rules."""
    home = tmp_path_factory.mktemp("prometheus")
    target = server.removeprefix("http://")
    files = write_monitoring_files(home / "config", SERVICE, [target], interval="1s")
    port = _free_port()
    process = _start([
        binary("prometheus"),
        f"--config.file={files.prometheus_config}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ], home / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: process.poll() is None and httpx.get(f"{url}/-/ready").status_code == 200,
                    STARTUP_SECONDS, f"Prometheus to be ready (log: {home / 'prometheus.log'})")
        _wait_until(lambda: bool(_query(url, f'up{{job="{SERVICE.job}"}} == 1')), DATA_SECONDS,
                    "the first successful scrape of the server")
        yield url
    finally:
        _stop(process)


def _query(prometheus_url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    return response.json()["data"]["result"]


def _substituted(expr: str) -> str:
    for variable, value in VARIABLE_VALUES.items():
        expr = expr.replace(variable, value)
    return expr


def _has_data(prometheus_url: str, expr: str) -> bool:
    result = _query(prometheus_url, _substituted(expr))
    return bool(result) and all(math.isfinite(float(sample["value"][1])) for sample in result)


def _panel_queries() -> list[tuple[str, str]]:
    return [(panel.title, query.expr) for panel in panels(SERVICE) for query in panel.queries]


def _is_cluster_only(expr: str) -> bool:
    return series_names(expr) <= CLUSTER_ONLY_SERIES


def test_every_dashboard_panel_query_returns_data(server: str, prometheus: str) -> None:
    queries = [(title, expr) for title, expr in _panel_queries() if not _is_cluster_only(expr)]
    missing = queries

    def all_have_data() -> bool:
        nonlocal missing
        # Traffic between scrapes makes rates (and so every percentile) positive and finite.
        _send_traffic(server)
        missing = [(title, expr) for title, expr in missing if not _has_data(prometheus, expr)]
        return not missing

    deadline = time.monotonic() + DATA_SECONDS
    while not all_have_data() and time.monotonic() < deadline:
        time.sleep(1)
    assert missing == []


def test_only_replica_counts_from_kube_state_metrics_are_cluster_only() -> None:
    cluster_only = {title for title, expr in _panel_queries() if _is_cluster_only(expr)}
    assert cluster_only == {"Replicas"}


def test_every_dashboard_variable_has_values(server: str, prometheus: str) -> None:
    for variable in variables(SERVICE):
        response = httpx.get(f"{prometheus}/api/v1/label/{variable.label}/values",
                             params={"match[]": _substituted(variable.selector)})
        assert response.json()["data"], variable


def test_every_rule_evaluates_without_error(server: str, prometheus: str) -> None:
    def rules() -> list[dict]:
        groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    _wait_until(lambda: all(rule["health"] != "unknown" for rule in rules()), DATA_SECONDS,
                "every rule to be evaluated")
    assert {rule["name"]: rule.get("lastError", "") for rule in rules() if rule["health"] != "ok"} == {}
