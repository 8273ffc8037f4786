"""Dockerfile.inference against the contract the Kubernetes components and the server rely on."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from infra.components.pod_security import RUN_AS_USER
from infra.components.settings import CACHE_DIR, TMP_DIR
from infra.components.workload import READY_PATH
from infra.config import SERVER_PORT
from tests.delivery.conftest import REPO_ROOT
from tests.delivery.dockerfile import Instruction, arg_defaults, env, healthcheck_command, instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions(REPO_ROOT / "Dockerfile.inference")


def _final_stage(items: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, item in enumerate(items) if item.keyword == "FROM")
    return items[last_from:]


def test_image_runs_as_the_uid_the_pods_run_as(dockerfile: list[Instruction]) -> None:
    (user,) = [item.value for item in _final_stage(dockerfile) if item.keyword == "USER"]
    uid = arg_defaults(dockerfile)["UID"]

    assert user.split(":")[0] == "${UID}"
    assert int(uid) == RUN_AS_USER > 10000


def test_writable_paths_are_the_volumes_the_pods_mount(dockerfile: list[Instruction]) -> None:
    values = env(dockerfile)
    (volume,) = [item for item in dockerfile if item.keyword == "VOLUME"]

    assert values["HOME"] == values["TMPDIR"] == TMP_DIR
    assert values["XDG_CACHE_HOME"] == CACHE_DIR
    assert values["HF_HOME"].startswith(CACHE_DIR + "/")
    assert set(volume.exec_form()) == {TMP_DIR, CACHE_DIR}


def test_torch_is_the_version_ci_pins(dockerfile: list[Instruction]) -> None:
    pinned = re.search(r'"torch==([^"]+)"', (REPO_ROOT / "scripts" / "setup.sh").read_text())
    assert pinned is not None

    assert arg_defaults(dockerfile)["TORCH_VERSION"] == pinned.group(1)


def test_server_starts_under_an_init_that_forwards_signals(dockerfile: list[Instruction]) -> None:
    (entrypoint,) = [item.exec_form() for item in dockerfile if item.keyword == "ENTRYPOINT"]
    (cmd,) = [item.exec_form() for item in dockerfile if item.keyword == "CMD"]

    assert entrypoint[:2] == ["/usr/bin/tini", "--"]
    assert entrypoint[2:] == ["python", "-m", "inference"]
    assert cmd == ["serve", "--host", "0.0.0.0", "--port", str(SERVER_PORT)]


def test_healthcheck_probes_readiness_with_python_alone(dockerfile: list[Instruction]) -> None:
    command = healthcheck_command(dockerfile)
    (url,) = re.findall(r"http://[^'\"]+", command[-1])

    assert command[0] == "python"
    assert urlsplit(url).port == SERVER_PORT
    assert urlsplit(url).path == READY_PATH


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == READY_PATH else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readiness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_exit_status_follows_readiness(
    dockerfile: list[Instruction], readiness_server: http.server.HTTPServer, status: int, healthy: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Readiness, "status", status)
    command = healthcheck_command(dockerfile)
    # The same command against a stand-in server on a free port, with this interpreter as `python`.
    script = command[-1].replace(f":{SERVER_PORT}/", f":{readiness_server.server_port}/")

    result = subprocess.run([sys.executable, *command[1:-1], script], capture_output=True, timeout=60)

    assert (result.returncode == 0) is healthy
