"""A real redis-server on 127.0.0.1 for a test: started on a free port in a temporary directory, stopped after.

Import the fixture into a test module (``from redis_server import redis_server``).
Nothing is saved to disk (no RDB, no AOF), so each server starts empty.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

STARTUP_SECONDS = 10.0


def _ensure_installed() -> None:
    """Install redis-server as root where apt-get can; elsewhere skip, except in CI, which must run these tests."""
    if shutil.which("redis-server") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], capture_output=True, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed and cannot be installed here (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(directory: Path) -> tuple[subprocess.Popen, RedisServer]:
    """Start a server and wait until it answers PING; another process taking the port first gets a retry."""
    for _ in range(3):
        server = RedisServer("127.0.0.1", _free_port())
        with open(directory / "redis.log", "ab") as log:
            process = subprocess.Popen(
                ["redis-server", "--bind", server.host, "--port", str(server.port), "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--dir", str(directory)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if server.client().ping():
                    return process, server
            except redis.ConnectionError:
                time.sleep(0.01)
        process.kill()
        process.wait()
    raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _ensure_installed()
    process, server = _start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
