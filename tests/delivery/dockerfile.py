"""A small reader for Dockerfile.inference: instructions with their continuation lines joined."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD, ENTRYPOINT or VOLUME (raises on shell form)."""
        return json.loads(self.value)


def instructions(path: Path) -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    result = []
    for text in logical:
        keyword, _, value = text.partition(" ")
        result.append(Instruction(keyword.upper(), value.strip()))
    return result


def arg_defaults(items: list[Instruction]) -> dict[str, str]:
    return dict(item.value.split("=", 1) for item in items if item.keyword == "ARG" and "=" in item.value)


def env(items: list[Instruction]) -> dict[str, str]:
    """Every ENV key=value of the file; later stages override earlier ones, as in the final image."""
    values: dict[str, str] = {}
    for item in items:
        if item.keyword == "ENV":
            values.update(part.split("=", 1) for part in shlex.split(item.value))
    return values


def healthcheck_command(items: list[Instruction]) -> list[str]:
    (check,) = [item for item in items if item.keyword == "HEALTHCHECK"]
    options, _, command = check.value.partition("CMD ")
    assert re.fullmatch(r"(--\S+=\S+\s*)*", options), options
    return json.loads(command)
