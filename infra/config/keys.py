"""Every stack key, as written in a stack file, with its type, default and description: the listing
`python -m infra keys` prints, read from the config classes themselves so it cannot go stale."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infra.config.base import PROJECT
from infra.config.stack import SECRET_KEYS, StackConfig


@dataclass(frozen=True)
class KeyInfo:
    key: str  # dotted camelCase path below `llm-serving:`
    type: str
    default: str
    description: str


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field holds (a section, or a section or None)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return "none" if value is None else repr(value)


def stack_keys(model: type[BaseModel] = StackConfig, prefix: str = "") -> Iterator[KeyInfo]:
    """Every key of `model` and of its sections, depth first, in declaration order."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        yield KeyInfo(key, type_name(info.annotation), _default(info), info.description or "")
        for section in _sections(info.annotation):
            yield from stack_keys(section, f"{key}.")


def secret_keys() -> Iterator[KeyInfo]:
    for key, spec in SECRET_KEYS.items():
        default = "required" if spec.required else "none"
        yield KeyInfo(key, "secret string", default, f"{spec.description}; set with --secret")


def keys_table() -> str:
    """One line per key, `llm-serving:<key>  <type>  default: <default>  <description>`, for grep."""
    rows = [*stack_keys(), *secret_keys()]
    unique = list(dict.fromkeys(rows))
    width = max(len(r.key) for r in unique) + len(PROJECT) + 1
    return "\n".join(
        f"{PROJECT + ':' + r.key:<{width}}  {r.type}  default: {r.default}"
        + (f"  -- {r.description}" if r.description else "")
        for r in unique
    )
