"""How late the event loop runs a timer: the time in which it served no stream and read no request."""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

TIMER_SECONDS = 0.1


async def watch_event_loop(lag: Histogram, interval: float = TIMER_SECONDS) -> None:
    """Observe into `lag`, every `interval`, how late the loop woke this task; runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lag.observe(max(0.0, loop.time() - due))
