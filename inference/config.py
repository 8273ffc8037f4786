"""ServerConfig: every setting of the server, from CLI flags or `LLM_SERVING_*` environment variables.

The Kubernetes ConfigMap that `infra/` generates sets exactly these environment variables, so the
names here are part of the contract between the two halves (see `env_name`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LLM_SERVING_"

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8", "int8-weight-only", "int8-dynamic"]
# vLLM's names; fp8 is fp8_e4m3.
KvCacheDtype = Literal["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]
LogLevel = Literal["debug", "info", "warning", "error"]


class LoraModule(BaseModel):
    """One adapter to serve: its model id in the API and its directory (`adapter_config.json` + weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^\S+$")
    path: Path

    @model_validator(mode="before")
    @classmethod
    def _from_name_equals_path(cls, value: object) -> object:
        # vLLM's form on the command line and in the environment's JSON list: "NAME=PATH".
        if isinstance(value, str):
            name, separator, path = value.partition("=")
            if not separator or not name or not path:
                raise ValueError(f"expected NAME=PATH, got {value!r}")
            return {"name": name, "path": path}
        return value

    def __str__(self) -> str:
        return f"{self.name}={self.path}"


class ServerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model_path: Path | None = Field(
        None, description="Hugging Face model directory; none makes and serves the tiny demo model."
    )
    served_model_name: str | None = Field(
        None, description="Model id in the API; defaults to the directory name."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: LogLevel = "info"
    device: Device = "auto"
    dtype: Dtype = Field(
        "auto",
        description="auto: bfloat16 on CUDA; on the CPU, bfloat16 for a 16-bit checkpoint where the CPU "
        "has bfloat16 dot products (AVX512-BF16, AMX), else float32.",
    )
    quantization: Quantization = "none"
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="Processes (one per device) that each hold a shard of every attention and MLP layer; "
        "for a model that does not fit one device.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch; default: the usable cores minus one, which stays free for the "
        "HTTP server and the event loop that hands tokens to clients.",
    )

    # SecretStr: the key never shows in a repr, a log line or a validation error.
    api_key: SecretStr | None = Field(
        None, description="Bearer token required on /v1 routes; prefer api_key_file."
    )
    api_key_file: Path | None = Field(None, description="File holding the bearer token (a mounted Secret).")

    max_num_seqs: int = Field(64, ge=1, description="Sequences in the running batch at most.")
    max_num_batched_tokens: int = Field(2048, ge=16, description="Tokens in one forward pass at most.")
    max_model_len: int | None = Field(None, ge=16, description="Context length; defaults to the model's.")
    kv_cache_block_size: int = Field(16, ge=1, description="Tokens per KV cache block.")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="KV cache budget; defaults to a fraction of free device memory."
    )
    kv_cache_dtype: KvCacheDtype = Field(
        "auto",
        description="What the KV cache stores: auto, the model's dtype; bfloat16 or fp8 (fp8_e4m3, or "
        "fp8_e5m2 for more range), unscaled, hold 2x or 4x the tokens of a float32 cache and read "
        "that much less per decode, at some accuracy: outputs then differ from the model's own.",
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of prompt prefixes already computed (hashed full blocks)."
    )
    attention_backend: Literal["auto", "sdpa", "triton", "compiled"] = Field(
        "auto",
        description="Decode attention: triton reads K/V straight from the KV block pool (needs the gpu "
        "extra and CUDA); compiled does too on the CPU, with a C++ kernel built at start-up (needs a "
        "C++ compiler); sdpa attends over blocks gathered per step; auto picks triton on CUDA, compiled "
        "on the CPU (sdpa where the kernel cannot be built).",
    )
    enforce_eager: bool = Field(
        False, description="Run decode steps eagerly instead of replaying captured CUDA graphs."
    )
    engine_process: bool = Field(
        True,
        description="Run the engine loop in a process of its own (as vLLM's V1 does), so that HTTP, "
        "tokenization and SSE work never hold the GIL it needs; --no-engine-process runs it on a "
        "thread of the server's process.",
    )
    max_queue_len: int = Field(256, ge=0, description="Requests waiting for admission at most; more get 429.")
    enable_auto_tool_choice: bool = Field(
        False, description="Let the model decide to call tools (tool_choice auto); needs tool_call_parser."
    )
    tool_call_parser: Literal["hermes", "llama3_json"] | None = Field(
        None, description="How the model writes tool calls: hermes (<tool_call> blocks) or llama3_json."
    )
    drain_timeout_seconds: float = Field(30.0, ge=0, description="Grace for in-flight requests on SIGTERM.")

    # The HTTP edge: every connection and request body is bounded in size and time.
    max_request_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413 before parsing."
    )
    timeout_keep_alive: float = Field(
        65.0,
        gt=0,
        description="Seconds an idle keep-alive connection stays open; longer than the idle timeout of "
        "clients and proxies (5 s for httpx and openai, 60 s for nginx and cloud load balancers), so the "
        "client, not the server, closes it and never sends on a socket being closed.",
    )
    timeout_request_headers: float = Field(
        30.0, gt=0, description="Seconds to receive request headers, from their first byte or the connection."
    )
    timeout_request_body: float = Field(60.0, gt=0, description="Seconds to receive a whole request body.")
    limit_concurrency: int = Field(
        1024, ge=1, description="Open connections at most; a request on one beyond it gets 429."
    )
    lora_modules: list[LoraModule] = Field(
        default_factory=list,
        description="LoRA adapters served beside the base model, each its own model id: NAME=PATH ... "
        '(environment: a JSON list, ["NAME=PATH", ...]).',
    )
    max_loras: int = Field(8, ge=1, description="LoRA adapters loaded at once at most.")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank an adapter may have.")
    allow_runtime_lora_updating: bool = Field(
        False,
        description="Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs an API key).",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ServerConfig:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        return self

    @model_validator(mode="after")
    def _lora_settings(self) -> ServerConfig:
        names = [module.name for module in self.lora_modules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"lora_modules names each adapter once; repeated: {', '.join(duplicates)}")
        if len(names) > self.max_loras:
            raise ValueError(f"lora_modules lists {len(names)} adapters but max_loras is {self.max_loras}")
        if (names or self.allow_runtime_lora_updating) and self.tensor_parallel_size > 1:
            # The adapters' A and B would have to be split like the layers they wrap; they are not.
            raise ValueError("LoRA adapters are not supported with tensor_parallel_size > 1")
        if self.allow_runtime_lora_updating and self.api_key is None and self.api_key_file is None:
            # Loading reads any path the server can see: never open to callers without the key.
            raise ValueError("allow_runtime_lora_updating needs api_key or api_key_file")
        return self


def env_name(field: str) -> str:
    """The environment variable that sets `field`, e.g. `max_num_seqs` -> `LLM_SERVING_MAX_NUM_SEQS`."""
    if field not in ServerConfig.model_fields:
        raise KeyError(f"ServerConfig has no field {field!r}")
    return ENV_PREFIX + field.upper()


def default_torch_threads() -> int:
    """Usable cores minus one: torch's threads spinning on every core starve the event loop."""
    return max(1, len(os.sched_getaffinity(0)) - 1)
