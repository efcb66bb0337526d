"""A real Redis server for tests: Debian's redis-server on a free 127.0.0.1 port, nothing saved.

Not a fake: the Redis backend's atomicity (SET NX, HDEL, Lua scripts) is what is under test,
so it runs against the real thing. Use the `redis_url` fixture (import it into a test module).

Without redis-server the tests that need it skip on a developer's machine, but fail in CI
(the CI environment variable is set): .ci/run installs it, so a skip there would hide a
broken install behind a green run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from harness import reserved_port

SKIP_REASON = "install redis-server (apt-get install redis-server)"
START_ATTEMPTS = 3


class RedisServer:
    """`redis-server` as a subprocess on `port`; `url` is ready to use once `start()` returns."""

    def __init__(self, executable: str, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = [
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until it answers as this process; RuntimeError if it does not."""
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)
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
                except redis.RedisError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not answer on port {self.port} within {timeout:g} s: {exc}"
                        ) from exc
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


def redis_executable() -> str:
    """redis-server's path; skips the test without it, or fails it in CI."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(
                f"redis-server is missing in CI, where .ci/run installs it: {SKIP_REASON}", pytrace=False
            )
        pytest.skip(SKIP_REASON)
    return executable


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a fresh, empty Redis server, stopped after the test."""
    executable = redis_executable()
    for attempt in range(1, START_ATTEMPTS + 1):
        with reserved_port() as port:  # held until redis-server listens on it
            server = RedisServer(executable, port)
            try:
                server.start()
                break
            except RuntimeError:
                server.stop()
                if attempt == START_ATTEMPTS:
                    raise
    try:
        yield server.url
    finally:
        server.stop()
