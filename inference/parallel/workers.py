"""The ranks of a tensor-parallel engine: rank 0 is the engine's process, the others are its workers.

Rank 0 runs the scheduler and the sampler; the workers only hold their shards and KV caches and make,
on their shards, every model-runner call rank 0 makes (`TensorParallelRunner` sends each call before
making it). A worker that dies is seen at once by a thread waiting on the worker processes: the engine
stops being ready, and the server exits non-zero. A worker whose rank 0 dies exits by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from inference.config import ServerConfig, default_torch_threads
from inference.engine.model_runner import ModelRunner, StepInputs
from inference.engine.telemetry import device_memory
from inference.logging import configure_logging
from inference.parallel.group import (
    STARTUP_TIMEOUT,
    STORE_HOST,
    RankGroup,
    join_group,
    leave_group,
    rank_device,
)
from inference.parallel.loading import checkpoint_files, empty_model, load_shard
from inference.parallel.sharding import Split, plan_splits
from inference.quantize.checkpoint import is_quantized_checkpoint, read_record
from inference.quantize.schemes import QuantizationError, Scheme, check_scheme_runs_on, resolve_scheme

logger = logging.getLogger(__name__)

_START = "start"
_STOP = "stop"
# How long workers get to leave after the stop command before they are terminated.
_EXIT_GRACE_SECONDS = 10.0
_PARENT_POLL_SECONDS = 1.0
_STARTUP_POLL_SECONDS = 0.05
_MEMORY_REPORT_SECONDS = 1.0


def _started_key(rank: int) -> str:
    return f"llm-serving/rank-{rank}/started"


@dataclass
class ShardPlan:
    """What every rank loads: the empty model, how its linears split, and from which files."""

    model: PreTrainedModel
    splits: dict[str, Split]
    files: list[Path]
    dtype: torch.dtype
    scheme: Scheme | None
    int8_in_checkpoint: frozenset[str]
    split_vocabulary: bool

    @classmethod
    def of(
        cls,
        model_dir: Path,
        config: ServerConfig,
        device: torch.device,
        dtype: torch.dtype,
        split_vocabulary: bool,
    ) -> ShardPlan:
        """Raises TensorParallelError for a model that does not split, before anything is read."""
        record = read_record(model_dir) if is_quantized_checkpoint(model_dir) else None
        if record is not None:
            check_scheme_runs_on(record.scheme, device)
            if config.quantization not in ("none", "int8", record.scheme):
                raise QuantizationError(
                    f"{model_dir} is quantized with {record.scheme}; "
                    f"serve it with quantization none or {record.scheme}"
                )
            scheme: Scheme | None = record.scheme
        else:
            scheme = None if config.quantization == "none" else resolve_scheme(config.quantization, device)
        model = empty_model(model_dir, dtype)
        splits = plan_splits(model, config.tensor_parallel_size)
        int8_in_checkpoint = frozenset(record.quantized_modules) if record is not None else frozenset()
        files = checkpoint_files(model_dir, record)
        return cls(model, splits, files, dtype, scheme, int8_in_checkpoint, split_vocabulary)

    def load(self, group: RankGroup) -> PreTrainedModel:
        shard = load_shard(
            self.model, self.splits, self.files, group.rank, group.world_size, self.dtype, self.scheme,
            self.int8_in_checkpoint, self.split_vocabulary,
        )  # fmt: skip
        return shard.to(group.device)


@dataclass(frozen=True)
class WorkerSpec:
    rank: int
    store_port: int
    model_dir: Path
    config: ServerConfig
    split_vocabulary: bool
    parent_pid: int
    # (used, total) device bytes per rank, shared with rank 0, which exports them.
    memory: Any


class WorkerPool:
    """Rank 0's handle on the other ranks: starts them, sends them commands, watches that they live."""

    def __init__(
        self, model_dir: Path, config: ServerConfig, device: torch.device, split_vocabulary: bool
    ) -> None:
        world_size = config.tensor_parallel_size
        self._store = dist.TCPStore(
            STORE_HOST, 0, world_size, is_master=True, timeout=STARTUP_TIMEOUT, wait_for_workers=False
        )
        # Workers need no credentials: they never see a request.
        worker_config = config.model_copy(update={"api_key": None, "api_key_file": None})
        spawn = get_context("spawn")
        self._memory = spawn.Array("q", 2 * world_size, lock=False)
        port, parent, memory = self._store.port, os.getpid(), self._memory
        self.processes = [
            spawn.Process(
                target=run_worker,
                args=(WorkerSpec(rank, port, model_dir, worker_config, split_vocabulary, parent, memory),),
                name=f"tensor-parallel-rank-{rank}",
                daemon=True,
            )
            for rank in range(1, world_size)
        ]
        for process in self.processes:
            process.start()
        self.failure: str | None = None
        self._closing = False
        threading.Thread(target=self._watch, name="tensor-parallel-monitor", daemon=True).start()
        self.group: RankGroup | None = None
        try:
            self._wait_for_workers()
            self.group = join_group(self._store, 0, world_size, device)
        except BaseException:
            self.close()
            raise

    def _wait_for_workers(self) -> None:
        """Until every worker has reached the store: a worker that dies on the way (say, at import)
        fails the start-up at once, where the process group's rendezvous would wait out its timeout."""
        keys = [_started_key(process_rank) for process_rank in range(1, len(self.processes) + 1)]
        deadline = time.monotonic() + STARTUP_TIMEOUT.total_seconds()
        while not self._store.check(keys):
            if self.failure is not None:
                raise RuntimeError(f"a tensor-parallel worker failed to start: {self.failure}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the tensor-parallel workers did not start within {STARTUP_TIMEOUT}")
            time.sleep(_STARTUP_POLL_SECONDS)

    @property
    def alive(self) -> bool:
        return self.failure is None and not self._closing

    @property
    def ranks_up(self) -> int:
        return 1 + sum(process.is_alive() for process in self.processes)

    def worker_memory(self) -> list[tuple[int, int]]:
        """(used, total) device bytes of ranks 1, 2, ..., as each last reported them."""
        ranks = range(1, len(self.processes) + 1)
        return [(self._memory[2 * rank], self._memory[2 * rank + 1]) for rank in ranks]

    def send(self, method: str, *arguments: object) -> None:
        assert self.group is not None
        self.group.broadcast((method, arguments))

    def _watch(self) -> None:
        by_sentinel = {process.sentinel: process for process in self.processes}
        ended = connection.wait(list(by_sentinel))
        if self._closing:
            return
        process = by_sentinel[ended[0]]
        process.join()
        self.failure = f"{process.name} (pid {process.pid}) exited with status {process.exitcode}"
        logger.error("a tensor-parallel rank died; the server cannot serve", extra={"failure": self.failure})

    def close(self) -> None:
        """Stop the workers: by command when all are healthy, by signal otherwise."""
        if self._closing:
            return
        healthy = self.failure is None and self.group is not None
        self._closing = True
        if healthy:
            with contextlib.suppress(Exception):
                self.group.broadcast((_STOP, ()))  # type: ignore[union-attr]
        deadline = time.monotonic() + _EXIT_GRACE_SECONDS
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()
        if self.group is not None:
            leave_group(peers_alive=healthy)


class TensorParallelRunner(ModelRunner):
    """Rank 0's model runner: each call that touches the model or the KV cache goes to the workers
    first, which make the same call on their shards, so that the collectives inside line up."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        options: tuple[int, str, str],  # ModelRunner's: block size, attention backend, KV cache dtype
        workers: WorkerPool,
    ) -> None:
        self.workers = workers
        workers.send(_START, *options)
        super().__init__(model, device, *options)

    def allocate_cache(self, num_blocks: int) -> None:
        self.workers.send("allocate_cache", num_blocks)
        super().allocate_cache(num_blocks)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        self.workers.send("forward", inputs)
        return super().forward(inputs)


def start_tensor_parallel(
    model_dir: Path, config: ServerConfig, device: torch.device, dtype: torch.dtype, split_vocabulary: bool
) -> tuple[PreTrainedModel, str, WorkerPool]:
    """Rank 0's shard, the quantization in effect, and the running workers."""
    if device.type == "cuda" and torch.cuda.device_count() < config.tensor_parallel_size:
        raise ValueError(
            f"tensor_parallel_size={config.tensor_parallel_size} needs as many GPUs; "
            f"{torch.cuda.device_count()} are visible"
        )
    plan = ShardPlan.of(model_dir, config, device, dtype, split_vocabulary)
    pool = WorkerPool(model_dir, config, device, split_vocabulary)
    try:
        assert pool.group is not None
        model = plan.load(pool.group)
    except BaseException:
        pool.close()
        raise
    return model, plan.scheme or "none", pool


def _exit_with_parent(parent_pid: int) -> None:
    # A worker outliving its server would hold its device memory forever.
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def run_worker(spec: WorkerSpec) -> None:
    """A worker's life: join the group, load the shard, make rank 0's runner calls until told to stop."""
    from inference.model_loading import pick_device, pick_dtype

    config = spec.config
    configure_logging(config.log_level)
    torch.set_num_threads(config.torch_threads or default_torch_threads())
    threading.Thread(target=_exit_with_parent, args=(spec.parent_pid,), daemon=True).start()
    store = dist.TCPStore(
        STORE_HOST, spec.store_port, config.tensor_parallel_size, is_master=False, timeout=STARTUP_TIMEOUT
    )
    store.set(_started_key(spec.rank), "1")
    device = rank_device(pick_device(config.device), spec.rank)
    group = join_group(store, spec.rank, config.tensor_parallel_size, device)
    dtype = pick_dtype(config.dtype, device, spec.model_dir)
    model = ShardPlan.of(spec.model_dir, config, device, dtype, spec.split_vocabulary).load(group)
    runner: ModelRunner | None = None
    reported_at = float("-inf")
    while True:
        method, arguments = group.broadcast()  # type: ignore[misc]
        if method == _STOP:
            break
        if method == _START:
            runner = ModelRunner(model, device, *arguments)
        else:
            getattr(runner, method)(*arguments)
        if time.monotonic() - reported_at >= _MEMORY_REPORT_SECONDS:
            reported_at = time.monotonic()
            spec.memory[2 * spec.rank], spec.memory[2 * spec.rank + 1] = device_memory(device)
    leave_group()
