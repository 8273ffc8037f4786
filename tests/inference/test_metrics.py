"""The server's Prometheus collectors (`inference.metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from prometheus_client import CollectorRegistry

from inference import metrics
from inference.api.loop_lag import watch_event_loop


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


def test_merged_families_add_up_the_series_two_processes_write_and_keep_each_family_once():
    server, engine = CollectorRegistry(), CollectorRegistry()
    server_collectors, engine_collectors = metrics.build_collectors(server), metrics.build_collectors(engine)
    rejected = metrics.REQUESTS_REJECTED.name
    server_collectors[rejected].labels(reason="draining").inc(2)
    engine_collectors[rejected].labels(reason="queue_full").inc(3)
    engine_collectors[rejected].labels(reason="draining").inc(1)
    engine_collectors[metrics.REQUESTS_RUNNING.name].set(5)
    merged = metrics.MergedFamilies(server, list(engine.collect()))
    families = [family.name for family in merged.collect()]
    assert len(families) == len(set(families)) == len(list(server.collect()))
    exported = _exported(merged)  # type: ignore[arg-type]  # collects like a registry
    assert exported[("llm_requests_rejected_total", (("reason", "draining"),))] == 3
    assert exported[("llm_requests_rejected_total", (("reason", "queue_full"),))] == 3
    assert exported[("llm_requests_running", ())] == 5
    created = [
        sample for family in merged.collect() for sample in family.samples
        if sample.name == "llm_requests_rejected_created" and sample.labels == {"reason": "draining"}
    ]  # fmt: skip
    assert len(created) == 1


def test_a_stall_of_the_event_loop_shows_in_its_lag():
    registry = CollectorRegistry()
    lag = metrics.build_collectors(registry)[metrics.EVENT_LOOP_LAG.name]

    async def main() -> None:
        watching = asyncio.create_task(watch_event_loop(lag, interval=0.01))
        await asyncio.sleep(0.1)
        time.sleep(0.4)  # the loop serves nothing meanwhile, as in a full garbage collection
        await asyncio.sleep(0.1)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching

    asyncio.run(main())
    name = metrics.EVENT_LOOP_LAG.name
    count = registry.get_sample_value(f"{name}_count")
    within_quarter_second = registry.get_sample_value(f"{name}_bucket", {"le": "0.25"})
    assert count is not None and count >= 10  # a timer every 10 ms, before and after the stall
    assert count - within_quarter_second >= 1  # the stall
    assert registry.get_sample_value(f"{name}_sum") >= 0.35
