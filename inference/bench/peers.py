"""The peers the engine is measured against in `bench --peers`: `transformers`' own ways of serving
many requests, on the same model object, requests and threads as the engine.

- static batches: `generate` on left-padded batches of a fixed size, as a script would batch them;
- continuous batching: `transformers`' own continuous-batching manager (what `generate_batch`
  runs), fed each request at its arrival time, with per-token timestamps it records itself, and
  with its CUDA graphs on where there is CUDA (its default turns them off for the attention used).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.requests import GenerationOutput

from inference.bench.baseline import WindowBatchingBaseline
from inference.bench.workload import RequestTiming, WorkItem
from inference.config import ServerConfig
from inference.model_loading import LoadedModel

# How long the collecting loop waits for a result before checking that the manager still runs.
_RESULT_POLL_SECONDS = 1.0
# `add_request` treats a negative end-of-sequence id as none: every request runs to its max_tokens,
# as the engine's do with ignore_eos.
_NO_EOS = -1


def run_static_batches(loaded: LoadedModel, batch_size: int, workload: list[WorkItem]) -> list[RequestTiming]:
    """`generate` on padded batches of `batch_size` requests in arrival order, each batch run to its
    longest and started once its last request has arrived and the batch before it is done."""
    pad_token_id = loaded.tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = loaded.tokenizer.eos_token_id
    generator = WindowBatchingBaseline(loaded.model, pad_token_id, batch_size, 0.0)
    timings: dict[str, RequestTiming] = {}
    start = time.monotonic()
    for first in range(0, len(workload), batch_size):
        batch = workload[first : first + batch_size]
        time.sleep(max(0.0, start + max(item.arrival_offset for item in batch) - time.monotonic()))
        timings.update(generator.generate([(item, start + item.arrival_offset) for item in batch]))
    return [timings[item.request_id] for item in workload]


def cache_for_workload(workload: list[WorkItem], device: torch.device) -> ContinuousBatchingConfig:
    """A KV cache that holds the whole workload at once, the engine's token budget per step, and CUDA
    graphs on a CUDA device.

    Left to itself the manager sizes its cache from free memory, which on a CPU host is most of RAM
    (well over 10 GB touched for a 1 MB model) and says nothing about serving speed.
    """
    page = ContinuousBatchingConfig().page_size
    pages = sum(-(-(len(item.prompt_token_ids) + item.max_tokens) // page) for item in workload)
    return ContinuousBatchingConfig(
        num_blocks=pages + 1,  # + the warm-up request
        max_batch_tokens=ServerConfig.model_fields["max_num_batched_tokens"].default,
        use_cuda_graph=uses_cuda_graphs(device),
    )


def uses_cuda_graphs(device: torch.device) -> bool:
    """Whether the continuous-batching manager is run with its CUDA graphs: wherever there is CUDA."""
    return device.type == "cuda"


def run_transformers_continuous(loaded: LoadedModel, workload: list[WorkItem]) -> list[RequestTiming]:
    model = loaded.model
    model.set_attn_implementation("sdpa")  # the manager picks its own paged variant from the stock one
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(item.max_tokens for item in workload),
        eos_token_id=_NO_EOS,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    arrivals: dict[str, float] = {}
    results = {}
    manager_context = model.continuous_batching_context_manager(
        generation_config=config,
        block=True,
        timeout=5,
        continuous_batching_config=cache_for_workload(workload, loaded.device),
    )
    with manager_context as manager:
        # Its first request pays one-off set-up costs; the engine warms up too before it is timed.
        manager.add_request(workload[0].prompt_token_ids[:4], request_id="warm-up", max_new_tokens=2)
        _wait_for(manager, "warm-up")
        start = time.perf_counter()

        def arrive() -> None:
            for item in workload:
                time.sleep(max(0.0, start + item.arrival_offset - time.perf_counter()))
                arrivals[item.request_id] = time.perf_counter()
                manager.add_request(
                    item.prompt_token_ids,
                    request_id=item.request_id,
                    max_new_tokens=item.max_tokens,
                    record_timestamps=True,
                    eos_token_id=_NO_EOS,
                )

        sender = threading.Thread(target=arrive, name="peer-arrivals", daemon=True)
        sender.start()
        for _ in workload:
            result = _next_finished(manager)
            results[result.request_id] = result
        sender.join()
    return [
        RequestTiming(arrivals[item.request_id], list(results[item.request_id].timestamps or []))
        for item in workload
    ]


def _next_finished(manager: Any) -> GenerationOutput:
    while True:
        result = manager.get_result(timeout=_RESULT_POLL_SECONDS)
        if result is not None and result.is_finished():
            if result.error is not None:
                raise RuntimeError(f"transformers continuous batching failed: {result.error}")
            return result
        if result is None and not manager.is_running():
            raise RuntimeError("transformers' continuous-batching thread stopped")


def _wait_for(manager: Any, request_id: str) -> None:
    while _next_finished(manager).request_id != request_id:
        pass
