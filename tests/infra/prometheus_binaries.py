"""The Prometheus binaries the monitoring tests run: Debian's prometheus package, which
scripts/setup.sh installs when it runs as root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails the test, never skips it, when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/setup.sh installs Debian's prometheus package as root")
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
