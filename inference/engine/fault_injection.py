"""A seam through which tests make one request's step raise, to prove the failure stays with it.

Nothing in the server sets the hook: no flag, environment variable or request field reaches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.engine.sequence import Sequence as EngineSequence

StepFault = Callable[["EngineSequence"], None]

_hook: StepFault | None = None


@contextlib.contextmanager
def step_fault(hook: StepFault) -> Iterator[None]:
    """While active, `hook(seq)` runs for every sequence an engine step samples; what it raises, the
    step raises."""
    global _hook
    _hook = hook
    try:
        yield
    finally:
        _hook = None


def check(seqs: Sequence[EngineSequence]) -> None:
    if _hook is not None:
        for seq in seqs:
            _hook(seq)
