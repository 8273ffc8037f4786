"""The CPU time a system spent serving: where a slower run's time went.

A server's CPU seconds over a run (its process and the engine process under it), and its main
thread's (the event loop, in this server and in the bench). Where the engine loop shares a process
with the event loop (`--no-engine-process`), the cores can sit idle while the event loop holds the GIL
that the engine thread needs between tensor operations: fewer cores busy than in-process, on the
same workload, is that stall; more CPU seconds is work added.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuSeconds:
    process: float
    main_thread: float

    def __sub__(self, earlier: CpuSeconds) -> CpuSeconds:
        return CpuSeconds(self.process - earlier.process, self.main_thread - earlier.main_thread)


def cpu_seconds(pid: int | None = None, *, with_children: bool = False) -> CpuSeconds:
    """User and system CPU seconds so far of process `pid` (this one by default), with its live
    descendants if asked, and of its main thread."""
    process = psutil.Process(pid)
    family = [process, *process.children(recursive=True)] if with_children else [process]
    total = 0.0
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that ended meanwhile
            times = member.cpu_times()
            total += times.user + times.system
    # The main thread's id is the process id.
    main = next(thread for thread in process.threads() if thread.id == process.pid)
    return CpuSeconds(total, main.user_time + main.system_time)


@dataclass
class CpuUse:
    """Filled in when the `measure` block ends: CPU seconds of the server's processes (and of its
    event loop), and of the clients' process where that is another one."""

    server: CpuSeconds | None = None
    clients: float | None = None

    def report(self, duration_s: float, output_tokens: int) -> dict[str, float]:
        assert self.server is not None, "report() before the measured block ended"
        figures = {
            "server_cpu_s": self.server.process,
            "server_cores_busy": self.server.process / duration_s,
            "event_loop_cpu_s": self.server.main_thread,
            "event_loop_cpu_us_per_output_token": self.server.main_thread / output_tokens * 1e6,
        }
        if self.clients is not None:
            figures["clients_cpu_s"] = self.clients
        return figures


@contextlib.contextmanager
def measure(server_pid: int | None = None) -> Iterator[CpuUse]:
    """CPU use over the block of the server (`server_pid` and its engine process; None: this process,
    serving in-process) and, when that is another process, of this one, whose clients drive it."""
    use = CpuUse()
    server_before = cpu_seconds(server_pid, with_children=server_pid is not None)
    clients_before = cpu_seconds() if server_pid is not None else None
    yield use
    use.server = cpu_seconds(server_pid, with_children=server_pid is not None) - server_before
    if clients_before is not None:
        use.clients = (cpu_seconds() - clients_before).process
