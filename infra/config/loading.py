"""Loading a stack's config: read Pulumi's runtime config (the same under `pulumi up` and under the
mock runtime of the offline render), validate it, and raise one `ConfigError` naming the stack file,
every bad key and what is allowed, before the program declares a single resource.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ValidationError

from infra.config.base import PROJECT
from infra.config.checks import config_key, cross_checks
from infra.config.stack import SECRET_KEYS, StackConfig, StackSecrets, secret_env_name


def stack_file(stack: str) -> str:
    return f"Pulumi.{stack}.yaml"


class ConfigError(pulumi.RunError):
    """A stack file is wrong. RunError makes Pulumi print the message alone, without a traceback."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {key}: {problem}" for key, problem in problems]
        super().__init__("invalid stack configuration\n" + "\n".join(lines))


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The config class holding the key at `loc`, to list what keys it allows."""
    model: type[BaseModel] = StackConfig
    for part in loc:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(str(part))
        if info is None:
            return None
        candidates = [a for a in getattr(info.annotation, "__args__", (info.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _problem(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        section = _section_at(tuple(error["loc"][:-1]))
        allowed = sorted(i.alias or n for n, i in section.model_fields.items()) if section else []
        return "unknown key; allowed keys: " + ", ".join(allowed)
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{message} (got {error['input']!r})"

def _decode(value: Any) -> Any:
    """Pulumi hands structured config values over as JSON strings and scalars as plain strings."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


def _runtime_config() -> tuple[dict[str, Any], set[str]]:
    """Every `llm-serving:` key and which of them are secrets, wherever the runtime keeps them."""
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env()) | {
        k for k in merged if runtime_config.is_config_secret(k)
    }
    prefix = f"{PROJECT}:"
    values = {k.removeprefix(prefix): _decode(v) for k, v in merged.items() if k.startswith(prefix)}
    return values, {k.removeprefix(prefix) for k in secret_keys if k.startswith(prefix)}


def _secrets(values: dict[str, Any], secret_keys: set[str], config_registry: bool) -> tuple[
    StackSecrets, list[tuple[str, str]]
]:
    problems: list[tuple[str, str]] = []
    secrets: dict[str, pulumi.Output[str]] = {}
    for key, spec in SECRET_KEYS.items():
        value = values.pop(key, None)
        required = spec.required or (key == "registryPassword" and config_registry)
        if value is None:
            if required:
                problems.append((config_key(key), (
                    f"required secret ({spec.description}) is missing; set it with "
                    f"`pulumi config set --secret {key}` (offline render: environment variable "
                    f"{secret_env_name(key)})"
                )))
            continue
        if key not in secret_keys:
            problems.append((config_key(key), f"is set in plain text; allowed: a secret only, "
                                           f"set it with `pulumi config set --secret {key}`"))
            continue
        secrets[key] = pulumi.Output.secret(str(value))
    return StackSecrets(secrets), problems


def load_stack_config(stack: str | None = None) -> StackConfig:
    """The validated config of `stack` (default: the running stack), or a ConfigError naming every problem."""
    stack = stack or pulumi.get_stack()
    values, secret_keys = _runtime_config()
    secrets, problems = _secrets(values, secret_keys, config_registry="registry" in values)
    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(values)
    except ValidationError as error:
        problems += [(config_key(*e["loc"]), _problem(e)) for e in error.errors()]
    if config is not None:
        problems += cross_checks(config)
    if problems:
        raise ConfigError(stack_file(stack), problems)
    assert config is not None
    config._stack = stack
    config._secrets = secrets
    return config
