"""Writing a model directory so that a reader never sees it half-written: beside the target, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def output_dir_problem(out_dir: Path, overwrite: bool) -> str | None:
    """Why `out_dir` cannot be written (for the caller to raise in its own terms), or None."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir} exists and is not a directory"
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        return f"{out_dir} is not empty; pass --overwrite to replace it"
    return None


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A fresh directory beside `out_dir` to write into, moved into place only if the block completes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    # Replacing: the old directory stays intact until the new one is complete beside it.
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)
