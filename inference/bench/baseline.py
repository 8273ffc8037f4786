"""The seed server's batching, as the benchmark's baseline: collect requests for up to 50 ms or 16
requests, left-pad them to the longest prompt and run `transformers` `generate` on the batch until
its longest request is done. A request arriving meanwhile waits for the whole batch to finish.

Token times come from a streamer called at every decoding step, which is kinder to the baseline
than the seed was (it answered only when the batch finished).
"""

from __future__ import annotations

import queue
import threading
import time

import torch
from transformers import PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from inference.bench.workload import RequestTiming, WorkItem


class _StepClock(BaseStreamer):
    """Notes when each decoding step's tokens come out (the prompt, pushed first, is skipped)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1:
            self.times.append(time.monotonic())

    def end(self) -> None:
        pass


class WindowBatchingBaseline:
    def __init__(
        self, model: PreTrainedModel, pad_token_id: int, max_batch_size: int, batch_window_seconds: float
    ) -> None:
        # The engine swaps in its own attention when it shares the model; generate needs the stock one.
        model.set_attn_implementation("sdpa")
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.batch_window_seconds = batch_window_seconds
        # generate's first call pays one-off set-up costs; the engine warms up too before it is timed.
        self.generate([(WorkItem("warm-up", [pad_token_id] * 4, 2, 0.0), time.monotonic())])

    def run(self, workload: list[WorkItem]) -> list[RequestTiming]:
        inbox: queue.Queue[tuple[WorkItem, float]] = queue.Queue()
        start = time.monotonic()
        arrivals = threading.Thread(target=self._arrive, args=(workload, inbox, start), daemon=True)
        arrivals.start()
        timings: dict[str, RequestTiming] = {}
        while len(timings) < len(workload):
            batch = self._collect(inbox)
            timings.update(self.generate(batch))
        arrivals.join()
        return [timings[item.request_id] for item in workload]

    @staticmethod
    def _arrive(workload: list[WorkItem], inbox: queue.Queue, start: float) -> None:
        for item in workload:
            time.sleep(max(0.0, start + item.arrival_offset - time.monotonic()))
            inbox.put((item, time.monotonic()))

    def _collect(self, inbox: queue.Queue) -> list[tuple[WorkItem, float]]:
        batch = [inbox.get()]
        deadline = time.monotonic() + self.batch_window_seconds
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    @torch.inference_mode()
    def generate(self, batch: list[tuple[WorkItem, float]]) -> dict[str, RequestTiming]:
        """One padded `generate` over `batch` (each item with its arrival time), run to its longest."""
        longest = max(len(item.prompt_token_ids) for item, _ in batch)
        device = self.model.device
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (item, _) in enumerate(batch):
            input_ids[row, longest - len(item.prompt_token_ids) :] = torch.tensor(item.prompt_token_ids)
            attention_mask[row, longest - len(item.prompt_token_ids) :] = 1
        max_new_tokens = max(item.max_tokens for item, _ in batch)
        clock = _StepClock()
        self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            # Every request generates exactly its max_tokens, as the engine run does with ignore_eos.
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            streamer=clock,
        )
        return {
            item.request_id: RequestTiming(arrival, clock.times[: item.max_tokens]) for item, arrival in batch
        }
