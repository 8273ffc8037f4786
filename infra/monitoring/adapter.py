"""prometheus-adapter rules, generated from the metric catalog: each Pods metric the HPA scales on is
served from the server's own series, summed per pod. Nothing here spells a metric name by hand.

prometheus-adapter rather than KEDA: the HPA stays one plain autoscaling/v2 object (validated with the
other manifests, with the CPU and memory targets beside the load signal) and nothing else takes over
its replica count; the adapter only serves the custom metrics API that HPA reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inference.metrics import MetricSpec
from infra.monitoring.promql import gauge, selector

# Labels the scrape attaches (ServiceMonitor and scrape-config alike) that name the pod's objects.
RESOURCE_LABELS = {"namespace": "namespace", "pod": "pod"}


def adapter_rule(spec: MetricSpec) -> dict[str, Any]:
    """The rule serving one catalog gauge as a Pods metric of the same name."""
    series = gauge(spec)
    return {
        "seriesQuery": selector(series, {label: ("!=", "") for label in RESOURCE_LABELS}),
        "resources": {"overrides": {label: {"resource": kind} for label, kind in RESOURCE_LABELS.items()}},
        "name": {"matches": f"^{series}$", "as": series},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }


def adapter_rules(specs: Iterable[MetricSpec]) -> list[dict[str, Any]]:
    return [adapter_rule(spec) for spec in specs]
