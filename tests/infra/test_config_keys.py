"""`python -m infra keys` lists every stack key as a stack file spells it, with type and default."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from infra.config import PROJECT
from tests.infra.conftest import REPO, STACKS


def _flatten(prefix: str, value: Any) -> Iterator[str]:
    yield prefix
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _flatten(f"{prefix}.{key}", child)


def _keys_output() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "infra", "keys"], capture_output=True, text=True, cwd=REPO, timeout=120,
        check=True,
    )
    return result.stdout.splitlines()


def test_every_key_of_every_stack_file_is_listed() -> None:
    listed = {line.split()[0] for line in _keys_output()}
    used = set()
    for stack in STACKS:
        document = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
        for key, value in document["config"].items():
            if key.startswith(f"{PROJECT}:"):
                used.update(_flatten(key, value))
    assert used
    assert sorted(used - listed) == []


def test_a_key_line_gives_type_default_and_description() -> None:
    (line,) = [line for line in _keys_output() if line.split()[0] == f"{PROJECT}:autoscaling.maxReplicas"]
    assert " int " in line and "default: 10" in line
    (secret,) = [line for line in _keys_output() if line.split()[0] == f"{PROJECT}:apiKey"]
    assert "secret" in secret and "default: required" in secret
