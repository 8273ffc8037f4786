"""Cloud targets, one module per cloud, each with `build_target(config) -> CloudTarget`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from infra.clouds.base import CloudTarget
from infra.config import StackConfig


def target_builder(cloud: str) -> Callable[[StackConfig], CloudTarget]:
    """The `build_target` of the module named after `cloud` (imported lazily: each cloud pulls in its SDK)."""
    return importlib.import_module(f"infra.clouds.{cloud}").build_target
