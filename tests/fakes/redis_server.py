"""A real Redis server for tests: Debian's redis-server on a free 127.0.0.1 port, nothing saved.

Not a fake: the Redis backend's atomicity (SET NX, HDEL, Lua scripts) is what is under test,
so it runs against the real thing. Use the `redis_url` fixture (import it into a test module).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

SKIP_REASON = "install redis-server (apt-get install redis-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`redis-server` as a subprocess; `url` is ready to use once `start()` returns."""

    def __init__(self, executable: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = [executable, "--port", str(self.port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no"]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self._proc.stdout.read().decode()[-500:]}")
                try:
                    # ours, not another test run's server that took the port first
                    if client.info("server")["process_id"] != self._proc.pid:
                        raise RuntimeError(f"port {self.port} is taken by another redis-server")
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a fresh, empty Redis server, stopped after the test."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(SKIP_REASON)
    for attempt in range(3):  # a free port can be taken before redis-server binds it
        server = RedisServer(executable)
        try:
            server.start()
            break
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
    try:
        yield server.url
    finally:
        server.stop()
