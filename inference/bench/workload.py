"""The benchmark's workload and what it measures, shared by the engine run and the baseline run."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkItem:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_offset: float  # seconds after the start of the run


@dataclass(frozen=True)
class RequestTiming:
    arrival: float
    token_times: list[float]  # when each output token reached the caller


def make_workload(
    num_requests: int,
    prompt_tokens: tuple[int, int],
    output_tokens: tuple[int, int],
    vocab_size: int,
    rate_per_second: float | None,
    seed: int,
) -> list[WorkItem]:
    """Random prompts and output lengths; all at once, or Poisson arrivals at `rate_per_second`."""
    rng = random.Random(seed)
    arrival = 0.0
    workload = []
    for index in range(num_requests):
        if rate_per_second is not None and index:
            arrival += rng.expovariate(rate_per_second)
        prompt = [rng.randrange(vocab_size) for _ in range(rng.randint(*prompt_tokens))]
        workload.append(WorkItem(f"bench-{index}", prompt, rng.randint(*output_tokens), arrival))
    return workload


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90 and p99 by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99)}


def summarize(timings: list[RequestTiming]) -> dict[str, object]:
    output_tokens = sum(len(timing.token_times) for timing in timings)
    start = min(timing.arrival for timing in timings)
    end = max(timing.token_times[-1] for timing in timings)
    inter_token = [
        later - earlier
        for timing in timings
        for earlier, later in zip(timing.token_times, timing.token_times[1:], strict=False)
    ]
    return {
        "requests": len(timings),
        "output_tokens": output_tokens,
        "duration_s": end - start,
        "requests_per_s": len(timings) / (end - start),
        "output_tokens_per_s": output_tokens / (end - start),
        "ttft_s": percentiles([timing.token_times[0] - timing.arrival for timing in timings]),
        "inter_token_latency_s": percentiles(inter_token),
    }
