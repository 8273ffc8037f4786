"""The synchronous engine core: admit sequences, run steps, report the tokens each step produced.

Not thread-safe; `AsyncEngine` serialises access. `step()` is schedule + execute + commit; the
async engine calls the three apart so that the forward pass runs without holding its lock, and
isolates failures: what one request's computation raises ends that request alone.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from inference.config import ServerConfig
from inference.engine import fault_injection
from inference.engine.architectures import check_supported
from inference.engine.block_manager import BlockManager
from inference.engine.grammar import (
    CompiledGrammar,
    GrammarSpec,
    compile_grammar,
    grammar_compiler,
    token_bytes,
)
from inference.engine.model_runner import ModelRunner
from inference.engine.request import (
    FinishReason,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
    TokenEvent,
    TokenLogprobs,
    UnknownModelError,
)
from inference.engine.sampler import Sampled, sample
from inference.engine.scheduler import Chunk, Scheduler
from inference.engine.sequence import Sequence, SequenceStatus
from inference.lora import BASE_LORA_ID
from inference.model_loading import LoadedModel

logger = logging.getLogger(__name__)

# Without an explicit budget, the KV cache takes this share of the memory free after loading.
_CUDA_FREE_MEMORY_SHARE = 0.85
_HOST_FREE_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float  # share of the KV blocks in use, 0-1
    preemptions: int  # since the engine started


class StepOutput(NamedTuple):
    seq: Sequence
    event: TokenEvent


@dataclass(frozen=True)
class RequestFailure:
    seq: Sequence
    error: Exception


@dataclass
class ExecutedStep:
    """What a step computed: the chunks that ran, their sampled tokens, and the requests that failed."""

    chunks: list[Chunk]
    sampled: Sampled
    failures: list[RequestFailure] = field(default_factory=list)


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * _CUDA_FREE_MEMORY_SHARE)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * _HOST_FREE_MEMORY_SHARE)


def plan_num_blocks(config: ServerConfig, runner: ModelRunner, max_model_len: int) -> int:
    """KV blocks that fit the budget, never more than every sequence at full length could use."""
    block_bytes = runner.kv_bytes_per_token * config.kv_cache_block_size
    budget = config.kv_cache_memory_bytes or _free_memory_bytes(runner.device)
    blocks_per_sequence = -(-max_model_len // config.kv_cache_block_size)
    num_blocks = min(budget // block_bytes, blocks_per_sequence * config.max_num_seqs)
    if num_blocks < blocks_per_sequence:
        raise ValueError(
            f"the KV cache budget of {budget} bytes holds {num_blocks} blocks of "
            f"{config.kv_cache_block_size} tokens; one sequence of max_model_len={max_model_len} "
            f"needs {blocks_per_sequence}: "
            "raise kv_cache_memory_bytes or lower max_model_len"
        )
    return int(num_blocks)


def _runner_for(loaded: LoadedModel, config: ServerConfig) -> ModelRunner:
    block_size = config.kv_cache_block_size
    options = (block_size, config.attention_backend, config.kv_cache_dtype)
    if loaded.workers is None:
        return ModelRunner(loaded.model, loaded.device, *options)
    from inference.parallel.workers import TensorParallelRunner

    return TensorParallelRunner(loaded.model, loaded.device, options, loaded.workers)


class EngineCore:
    def __init__(self, loaded: LoadedModel, config: ServerConfig) -> None:
        self.device = loaded.device
        self.max_model_len = loaded.max_model_len
        self.vocab_size = loaded.vocab_size
        self.eos_token_ids = loaded.eos_token_ids
        check_supported(loaded.model.config, loaded.max_model_len)
        self.adapters = loaded.adapters
        self.tokenizer = loaded.tokenizer
        self.grammars = grammar_compiler(loaded.tokenizer, loaded.vocab_size, self.eos_token_ids)
        self.runner = _runner_for(loaded, config)
        num_blocks = plan_num_blocks(config, self.runner, loaded.max_model_len)
        self.runner.allocate_cache(num_blocks)
        if not config.enforce_eager and loaded.workers is None:
            # Before readiness: the capture's cost is paid, and logged, at start-up.
            self.runner.capture_decode_graphs(config.max_num_seqs, loaded.max_model_len)
        self.blocks = BlockManager(num_blocks, config.kv_cache_block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.sequences: dict[str, Sequence] = {}

    def validate(self, request: GenerationRequest) -> None:
        prompt, max_tokens = request.prompt_token_ids, request.sampling.max_tokens
        if not prompt:
            raise InvalidRequestError("the prompt has no tokens")
        if max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise InvalidRequestError(f"prompt token ids must lie in [0, {self.vocab_size})")
        if len(prompt) + max_tokens > self.max_model_len:
            raise PromptTooLongError(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context length of {self.max_model_len} tokens"
            )
        invalid_ids = [t for t in request.sampling.logit_bias if not 0 <= t < self.vocab_size]
        if invalid_ids:
            raise InvalidRequestError(f"logit_bias token ids must lie in [0, {self.vocab_size})")
        if request.lora_name is not None and request.lora_name not in self.adapters:
            raise UnknownModelError(f"no LoRA adapter named {request.lora_name!r} is loaded")
        if request.request_id in self.sequences:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in the engine")

    def compile_grammar(self, spec: GrammarSpec) -> CompiledGrammar:
        """Raises InvalidGrammarError for a schema, regex or grammar that does not compile."""
        return compile_grammar(self.grammars, spec)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for on its own (part of a character, for some)."""
        return token_bytes(self.grammars, self.tokenizer, token_id)

    def add(self, seq: Sequence) -> None:
        seq.end_token_ids = seq.sampling.end_token_ids(self.eos_token_ids)
        seq.max_length = min(seq.num_prompt_tokens + seq.sampling.max_tokens, self.max_model_len)
        seq.lora_id = self.adapters.id_of(seq.lora_name)
        if seq.lora_id != BASE_LORA_ID:
            # An adapter changes the KV of the same tokens, so only its own sequences share cached
            # blocks. Keyed by id, not name: ids are never re-used, so an adapter unloaded and loaded
            # again under the same name starts a cache of its own.
            seq.cache_salt = f"{seq.cache_salt or ''}\0lora:{seq.lora_id}"
        self.sequences[seq.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str, finish_reason: FinishReason = "abort") -> Sequence | None:
        seq = self.sequences.pop(request_id, None)
        if seq is not None:
            seq.finish_reason = finish_reason
            self.scheduler.finish(seq)
        return seq

    def abort_adapter(self, lora_name: str) -> list[Sequence]:
        """Abort every request for the adapter, which is going away."""
        users = [seq.request_id for seq in self.sequences.values() if seq.lora_name == lora_name]
        return [seq for seq in map(self.abort, users) if seq is not None]

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            self.num_running, self.num_waiting, self.blocks.usage, self.scheduler.num_preemptions
        )

    def schedule(self) -> list[Chunk]:
        chunks = self.scheduler.schedule()
        if len(self.adapters):
            # Each adapter's tokens then form one range of rows: its A and B apply once per step.
            chunks.sort(key=lambda chunk: chunk.seq.lora_id)
        return chunks

    def execute(self, chunks: list[Chunk]) -> Sampled:
        seqs = [chunk.seq for chunk in chunks if chunk.samples]
        fault_injection.check(seqs)
        # Grammar work is done by the sampler on this thread, after the forward is launched and before
        # its logits are read, and masks only where they change the draw: on a GPU (asynchronous) that
        # overlaps the forward without a thread; on a CPU a thread filling every mask during the forward
        # competed with it for the cores (both ran slower).
        return sample(self.runner.run(chunks), seqs, self.eos_token_ids, self.grammars)

    def execute_isolated(self, chunks: list[Chunk]) -> ExecutedStep:
        """`execute`, but when the batch raises, each chunk runs again alone so that only the requests
        whose own computation raises fail. Re-running a chunk writes the same keys and values to the
        same KV slots, and sampling only reads a request's state, so the chunks that ran before the
        failure are computed again safely."""
        try:
            return ExecutedStep(chunks, self.execute(chunks))
        except Exception as batch_error:
            if len(chunks) == 1:
                return ExecutedStep([], Sampled([], []), [RequestFailure(chunks[0].seq, batch_error)])
        step = ExecutedStep([], Sampled([], []))
        for chunk in chunks:
            try:
                sampled = self.execute([chunk])
            except Exception as error:
                step.failures.append(RequestFailure(chunk.seq, error))
                continue
            step.chunks.append(chunk)
            step.sampled.token_ids.extend(sampled.token_ids)
            step.sampled.logprobs.extend(sampled.logprobs)
        return step

    def commit(self, chunks: list[Chunk], sampled: Sampled) -> tuple[list[StepOutput], list[RequestFailure]]:
        """Append the sampled tokens; finish the sequences they end. Aborted ones are skipped; one
        whose commit raises (its grammar, say) is reported as failed, not the others."""
        for chunk in chunks:
            # Only now is their KV really in the cache, for later sequences to reuse.
            if chunk.seq.status is SequenceStatus.RUNNING:
                self.blocks.cache_computed(chunk.seq)
        outputs, failures = [], []
        sampling = (chunk.seq for chunk in chunks if chunk.samples)
        for seq, token_id, logprobs in zip(sampling, sampled.token_ids, sampled.logprobs, strict=True):
            if seq.status is not SequenceStatus.RUNNING:
                continue
            try:
                outputs.append(self._append(seq, token_id, logprobs))
            except Exception as error:
                failures.append(RequestFailure(seq, error))
        return outputs, failures

    def step(self) -> list[StepOutput]:
        """One step with the batch as a whole: any failure raises (warm-up, offline benchmarks)."""
        chunks = self.schedule()
        if not chunks:
            return []
        outputs, failures = self.commit(chunks, self.execute(chunks))
        if failures:
            raise failures[0].error
        return outputs

    def _append(self, seq: Sequence, token_id: int, logprobs: TokenLogprobs | None) -> StepOutput:
        tokens = seq.token_ids
        tokens.append(token_id)
        grammar_done = seq.grammar is not None and seq.grammar.accept(token_id)
        if grammar_done or token_id in seq.end_token_ids:
            seq.finish_reason = "stop"
        elif len(tokens) >= seq.max_length:
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            del self.sequences[seq.request_id]
            self.scheduler.finish(seq)
        cached = seq.num_cached_tokens if len(tokens) == seq.num_prompt_tokens + 1 else None
        return StepOutput(seq, TokenEvent(token_id, logprobs, seq.finish_reason, cached))

    def warm_up(self) -> int:
        """Generate two tokens from a one-token prompt, a prefill and a decode step: ready then means
        that the model produces output and that the decode kernel has run (Triton's compiles on its
        first call; logged, as it can take seconds). Returns the first token."""
        started = time.perf_counter()
        sampling = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        seq = Sequence("warm-up", [0], sampling, arrival_time=0.0)
        self.add(seq)
        while not seq.is_finished:
            self.step()
        logger.info("warm-up (first prefill and decode steps) took %.1f s", time.perf_counter() - started)
        return seq.output_token_ids[0]
