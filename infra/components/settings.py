"""The server's environment: stack settings mapped onto `inference.config` names, so they cannot drift."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
from typing import Any

from inference.config import ENV_PREFIX, ServerConfig, env_name
from infra.config import SERVER_PORT, StackConfig
from infra.quantity import to_decimal

API_KEY_DIR = "/var/run/secrets/llm-serving"
API_KEY_FILE_NAME = "api-key"
CACHE_DIR = "/cache"
TMP_DIR = "/tmp"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def torch_threads_within(cpu_limit: str) -> int:
    """The pod's whole CPUs less one for the HTTP server: torch counts the node's cores, not the limit."""
    return max(1, math.floor(to_decimal(cpu_limit)) - 1)


def contract_env_name(field: str) -> str:
    """The variable of a server field the deployment derives from other stack keys, named by the flag/env
    contract (`tensor_parallel_size` -> LLM_SERVING_TENSOR_PARALLEL_SIZE) even before the server has it."""
    return env_name(field) if field in ServerConfig.model_fields else ENV_PREFIX + field.upper()


def derived_settings(config: StackConfig) -> dict[str, str]:
    """Server settings that follow from other keys (`StackConfig.derived_server_settings`), as the
    ConfigMap's variables: lists as JSON, which is how the server reads them from the environment."""
    return {
        contract_env_name(field): json.dumps(value) if isinstance(value, list) else str(value)
        for field, value in config.derived_server_settings.items()
    }


def server_environment(config: StackConfig, model_path: str | None) -> dict[str, str]:
    """Every variable of the server's ConfigMap, sorted by name."""
    settings = config.server.model_dump(exclude_none=True)
    settings.setdefault("torch_threads", torch_threads_within(config.resources.limits.cpu))
    settings.update(
        host="0.0.0.0",
        port=SERVER_PORT,
        api_key_file=str(PurePosixPath(API_KEY_DIR, API_KEY_FILE_NAME)),
    )
    if model_path is not None:
        settings["model_path"] = model_path
    environment = {env_name(field): _env_value(value) for field, value in settings.items()}
    environment.update(derived_settings(config))
    # The root filesystem is read-only: every cache (and the demo model) goes to writable emptyDirs.
    environment.update(
        HOME=TMP_DIR,
        TMPDIR=TMP_DIR,
        XDG_CACHE_HOME=CACHE_DIR,
        HF_HOME=f"{CACHE_DIR}/huggingface",
    )
    return dict(sorted(environment.items()))
