"""The benchmark's CPU accounting: a process's time and its main thread's, told apart."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from inference.bench import cpu_use

_BUSY_SECONDS = 0.3
# The kernel counts CPU time in clock ticks; a process's total and a thread's are read apart.
_TICKS = 0.02


def _spin(seconds: float) -> None:
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


def test_work_on_the_main_thread_counts_for_the_thread_and_the_process():
    with cpu_use.measure() as use:
        _spin(_BUSY_SECONDS)
    assert use.server is not None and use.clients is None
    assert use.server.main_thread >= _BUSY_SECONDS * 0.9
    assert use.server.process >= use.server.main_thread - _TICKS


def test_work_on_another_thread_counts_for_the_process_alone():
    with cpu_use.measure() as use:
        worker = threading.Thread(target=_spin, args=(_BUSY_SECONDS,))
        worker.start()
        worker.join()
    assert use.server is not None
    assert use.server.process >= _BUSY_SECONDS * 0.9
    assert use.server.main_thread < _BUSY_SECONDS / 2


# Waits for a line, spins 0.3 s, says so, and waits for another line before it exits.
_SPIN_WHEN_TOLD = (
    "import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
    "while time.process_time() - t < 0.3: pass\nprint(flush=True)\nsys.stdin.readline()"
)


def _measure_server(program: str) -> cpu_use.CpuUse:
    """CPU use, measured from here, while the server `program` (reading its orders as lines) spins."""
    server = subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        with cpu_use.measure(server.pid) as use:
            server.stdin.write("go\n")
            server.stdin.flush()
            server.stdout.readline()  # the spin is over; the spinner waits, alive, for the next line
        return use
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def test_another_processs_work_is_the_servers_and_ours_the_clients():
    use = _measure_server(_SPIN_WHEN_TOLD)
    assert use.server is not None and use.clients is not None
    assert use.server.process >= _BUSY_SECONDS * 0.9
    assert use.server.main_thread >= _BUSY_SECONDS * 0.9
    assert use.clients < _BUSY_SECONDS / 2


def test_the_work_of_a_servers_engine_process_is_the_servers_not_its_event_loops():
    # The server's main thread only waits; its child process (the engine's place) spins.
    spawn_spinner = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {_SPIN_WHEN_TOLD!r}])"
    use = _measure_server(spawn_spinner)
    assert use.server is not None
    assert use.server.process >= _BUSY_SECONDS * 0.9
    assert use.server.main_thread < _BUSY_SECONDS / 2


def test_the_report_divides_by_the_run():
    use = cpu_use.CpuUse(cpu_use.CpuSeconds(process=3.0, main_thread=0.5), clients=0.25)
    figures = use.report(duration_s=2.0, output_tokens=1000)
    assert figures == {
        "server_cpu_s": 3.0,
        "server_cores_busy": 1.5,
        "event_loop_cpu_s": 0.5,
        "event_loop_cpu_us_per_output_token": 500.0,
        "clients_cpu_s": 0.25,
    }


def test_the_main_thread_is_found_by_the_process_id():
    assert cpu_use.cpu_seconds(os.getpid()).main_thread > 0

