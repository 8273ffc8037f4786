"""What every config section shares: the base class, the value types that validate themselves, and the
constants the server fixes (its port and where the model is mounted), not the stack."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from infra.quantity import Quantity

PROJECT = "llm-serving"
# The container port and paths the server listens on; fixed by the server, not by the stack.
SERVER_PORT = 8000
MODEL_MOUNT_PATH = "/models"
MODEL_DIR = f"{MODEL_MOUNT_PATH}/model"
ADAPTERS_DIR = f"{MODEL_MOUNT_PATH}/adapters"


def adapter_dir(name: str) -> str:
    """Where the model sync puts the LoRA adapter `name`, and where the server loads it from."""
    return f"{ADAPTERS_DIR}/{name}"


class Section(BaseModel):
    """Base of every config section: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS label; allowed: lower-case letters, digits and '-', "
            "1 to 63 characters, starting and ending with a letter or digit"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]


def _pinned_image(value: str) -> str:
    name, _, digest = value.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{value!r} has a malformed digest; allowed: @sha256:<64 hex digits>")
        return value
    last_segment = name.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        raise ValueError(
            f"{value!r} has no tag; allowed: a pinned tag (repo:1.2.3) or a digest (repo@sha256:...)"
        )
    if last_segment.rsplit(":", 1)[1] == "latest":
        raise ValueError(f"{value!r} uses the moving tag 'latest'; allowed: a pinned tag or a digest")
    return value


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


def _nginx_size(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", value):
        raise ValueError(
            f"{value!r} is not a size; allowed: a positive number with optional k, m or g, e.g. '10m'"
        )
    return value


NginxSize = Annotated[str, AfterValidator(_nginx_size)]
PrometheusDuration = Annotated[str, Field(pattern=r"^[1-9][0-9]*(s|m|h)$")]


class ComputeResources(Section):
    cpu: Quantity
    memory: Quantity
