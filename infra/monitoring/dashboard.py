"""The Grafana dashboard (JSON model), every panel a query over the catalog or the recorded series."""

from __future__ import annotations

from dataclasses import dataclass

from inference import metrics
from infra.monitoring import alerts, recording
from infra.monitoring.promql import MatcherValue, counter, gauge, quantile, selector
from infra.monitoring.service import MonitoredService

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's multi-value variables expand to a regex, so pods are always matched with `=~`.
PANEL_FILTER: dict[str, MatcherValue] = {"namespace": "$namespace", "pod": ("=~", "$pod")}
_PANEL_WIDTH, _PANEL_HEIGHT, _GRID_COLUMNS = 12, 8, 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]


def _percentiles(bucket_rates: str, percentiles: tuple[float, ...]) -> tuple[Query, ...]:
    rates = selector(bucket_rates, PANEL_FILTER)
    return tuple(Query(quantile(p, rates, ()), f"p{round(p * 100)}") for p in percentiles)


def _model_info(service: MonitoredService) -> str:
    """One series per serving pod in the chosen namespace."""
    return selector(gauge(metrics.MODEL_INFO), {**service.job_matcher, "namespace": "$namespace"})


def _replica_queries(service: MonitoredService) -> tuple[Query, ...]:
    deployment = {"namespace": "$namespace", "deployment": service.deployment}
    queries = [
        Query(f"count({_model_info(service)})", "serving"),
        Query(selector(alerts.KSM_DEPLOYMENT_AVAILABLE, deployment), "available"),
    ]
    if service.autoscaler is not None:
        hpa = {"namespace": "$namespace", "horizontalpodautoscaler": service.autoscaler}
        queries += [
            Query(selector(alerts.KSM_HPA_CURRENT_REPLICAS, hpa), "autoscaler current"),
            Query(selector(alerts.KSM_HPA_MAX_REPLICAS, hpa), "autoscaler maximum"),
        ]
    return tuple(queries)


def _prefix_cache_hit_rate(service: MonitoredService) -> Query:
    """Share of prompt tokens whose KV came from the prefix cache, per pod: each pod has its own cache."""

    def token_rate(spec: metrics.MetricSpec) -> str:
        series = selector(counter(spec), {**service.job_matcher, **PANEL_FILTER})
        return f"sum by (pod) (rate({series}[{recording.WINDOW}]))"

    hits, queries = token_rate(metrics.PREFIX_CACHE_HITS), token_rate(metrics.PREFIX_CACHE_QUERIES)
    return Query(f"{hits} / {queries}", "{{pod}}")


def _ttft_p95_by_model() -> Query:
    return Query(quantile(0.95, selector(recording.TTFT_BUCKET_RATE, PANEL_FILTER), ("model",)), "{{model}}")


def panels(service: MonitoredService) -> tuple[Panel, ...]:
    def server(spec: metrics.MetricSpec) -> str:
        return selector(gauge(spec), {**service.job_matcher, **PANEL_FILTER})

    return (
        Panel("Request rate by status", "reqps", (
            Query(f"sum by (status) ({selector(recording.API_REQUEST_RATE, PANEL_FILTER)})", "{{status}}"),
        )),
        Panel("Error ratio (5xx)", "percentunit", (
            Query(selector(recording.API_ERROR_RATIO, {"namespace": "$namespace"}), "5xx share"),
        )),
        Panel("API latency", "s", _percentiles(recording.API_LATENCY_BUCKET_RATE, (0.5, 0.95, 0.99))),
        Panel("Time to first token", "s", _percentiles(recording.TTFT_BUCKET_RATE, (0.5, 0.95))),
        Panel("Inter-token latency", "s", _percentiles(recording.INTER_TOKEN_BUCKET_RATE, (0.5, 0.95))),
        Panel("Tokens per second", "short", (
            Query(f"sum({selector(recording.GENERATION_TOKEN_RATE, PANEL_FILTER)})", "generated"),
            Query(f"sum({selector(recording.PROMPT_TOKEN_RATE, PANEL_FILTER)})", "prompt"),
        )),
        Panel("Tokens generated per second by model", "short", (
            Query(f"sum by (model) ({selector(recording.GENERATION_TOKEN_RATE, PANEL_FILTER)})", "{{model}}"),
        )),
        Panel("Time to first token p95 by model", "s", (_ttft_p95_by_model(),)),
        Panel("Requests running and waiting", "short", (
            Query(f"sum({server(metrics.REQUESTS_RUNNING)})", "running"),
            Query(f"sum({server(metrics.REQUESTS_WAITING)})", "waiting"),
        )),
        Panel("KV cache usage", "percentunit", (
            Query(f"max by (pod) ({server(metrics.KV_CACHE_USAGE)})", "{{pod}}"),
        )),
        Panel("Prefix cache hit rate (prompt tokens)", "percentunit", (_prefix_cache_hit_rate(service),)),
        Panel("Device memory", "percentunit", (
            Query(selector(recording.DEVICE_MEMORY_RATIO, PANEL_FILTER), "{{pod}} {{device}}"),
        )),
        Panel("Replicas", "short", _replica_queries(service)),
    )


@dataclass(frozen=True)
class Variable:
    """A dashboard variable whose values are those of `label` on the series `selector` picks."""

    name: str
    selector: str
    label: str
    multi: bool = False


def variables(service: MonitoredService) -> tuple[Variable, ...]:
    return (
        Variable("namespace", selector(gauge(metrics.MODEL_INFO), service.job_matcher), "namespace"),
        Variable("pod", _model_info(service), "pod", multi=True),
    )


def _variable_json(variable: Variable) -> dict[str, object]:
    query = f"label_values({variable.selector}, {variable.label})"
    multi = {"multi": True, "includeAll": True, "allValue": ".*"} if variable.multi else {}
    return {
        "type": "query", "name": variable.name, "label": variable.name.capitalize(), "datasource": DATASOURCE,
        "definition": query, "query": {"query": query, "refId": variable.name},
        "refresh": 2, "sort": 1, **multi,
    }


def _panel_json(panel: Panel, index: int) -> dict[str, object]:
    columns = _GRID_COLUMNS // _PANEL_WIDTH
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": {
            "x": (index % columns) * _PANEL_WIDTH, "y": (index // columns) * _PANEL_HEIGHT,
            "w": _PANEL_WIDTH, "h": _PANEL_HEIGHT,
        },
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }


def dashboard(service: MonitoredService) -> dict[str, object]:
    """The dashboard model as Grafana's file provisioning and dashboard sidecar read it."""
    return {
        "uid": f"{service.job}-serving"[:40],
        "title": f"LLM serving: {service.job}",
        "tags": ["llm-serving"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus"},
            *map(_variable_json, variables(service)),
        ]},
        "panels": [_panel_json(panel, i) for i, panel in enumerate(panels(service))],
    }
