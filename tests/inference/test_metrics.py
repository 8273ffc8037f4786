"""The server's Prometheus collectors (`inference.metrics`)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from inference import metrics


def _exported(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_observing_a_steps_latencies_at_once_exports_what_observing_each_does():
    spec = metrics.INTER_TOKEN_LATENCY
    bounds = list(spec.buckets)
    # On bucket bounds, between them, below the first, past the last finite one; and an empty step.
    steps = [[bounds[0], bounds[1] / 2, 0.0, bounds[-1] * 10], [], [bounds[2]] * 5 + [bounds[3] * 0.999]]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    each = metrics.build_collectors(one_by_one)[spec.name].labels(model="m")
    batched = metrics.build_collectors(at_once)[spec.name].labels(model="m")
    for latencies in steps:
        for latency in latencies:
            each.observe(latency)
        batched.observe_all(latencies)
    # The same counts in every bucket; the same sum, but for the order of the additions.
    assert _exported(at_once) == pytest.approx(_exported(one_by_one), rel=1e-12, abs=0)
    assert _exported(at_once)[(f"{spec.name}_count", (("model", "m"),))] == 10
