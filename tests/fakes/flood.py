"""Hold hundreds of idle and half-open connections to a running `streambot run` and see what
still works: used by tests/test_hostile.py and benchmarks/hostile_bench.py.

The bot runs in a subprocess whose descriptor limit is lowered (RLIMIT_NOFILE, e.g. 256), with
the ops endpoint and Slack's HTTP events endpoint on 127.0.0.1, against the fake Slack and the
fake OpenAI server of this process. While more sockets than the bot has descriptors are held
open, a person asks a question in Slack and an orchestrator asks /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import reserved_port, start_streambot

from bots.slack_bot import EVENTS_PATH
from fakes.slack_server import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack, settled

ROOT = Path(__file__).resolve().parents[2]
HALF_REQUEST = b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"


@dataclass
class Flood:
    held: int = 0  # sockets the flood managed to open
    max_fds: int = 0  # the most descriptors the bot had open at once
    answered: bool = False  # the question asked during the flood got its answer
    healthz: int | None = None  # /healthz status during the flood (None: no answer)
    closed_by_bot: int = 0  # flood sockets the bot closed by itself
    log_lines: int = 0
    log_bytes: int = 0
    returncode: int | None = None
    log_tail: list[str] = field(default_factory=list)


def _raise_own_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def _connect(port: int, payload: bytes) -> socket.socket | None:
    s = socket.socket()
    s.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port)), 0.5)
        if payload:
            s.send(payload)
        return s
    except (OSError, TimeoutError):
        s.close()
        return None


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1 << 16, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _healthz(port: int) -> int | None:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                return r.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def flood(
    slack: FakeSlack,
    model_base_url: str,
    tmp: Path,
    *,
    nofile: int = 256,
    idle: int = 400,
    half: int = 200,
    wait: float = 60.0,
) -> Flood:
    """Run the bot under `nofile` descriptors; hold `idle` silent and `half` half-request
    sockets to each of its two servers; ask a question and /healthz meanwhile."""
    _raise_own_limit(4 * (idle + half) + 256)
    ports = contextlib.ExitStack()  # held until the bot listens on them (and to the end)
    ops_port, events_port = (ports.enter_context(reserved_port()) for _ in range(2))
    slack.http_url = f"http://127.0.0.1:{events_port}{EVENTS_PATH}"
    config = tmp / "config.toml"
    config.write_text(
        f'[model]\nbase_url = "{model_base_url}"\n[memory]\npath = "{tmp / "bot.db"}"\n'
        f"[stream]\nshutdown_grace = 0.5\n"
        f"[ops]\nenabled = true\nport = {ops_port}\n"
        f'[slack]\nenabled = true\nmode = "http"\nhost = "127.0.0.1"\nport = {events_port}\n'
        f'api_base = "{slack.base_url}"\nstreaming = "edit"\n'
    )
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "OPENAI_API_KEY": "test",
    }
    log = tmp / "bot.log"

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    result = Flood()
    proc = await start_streambot(config, env, log, "--log-level", "INFO", preexec_fn=lower_limit)
    socks: list[socket.socket] = []
    try:
        for _ in range(300):  # up: both ports answer
            if await _healthz(ops_port) == 200:
                break
            if proc.returncode is not None:
                raise AssertionError(f"the bot exited: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        for port in (ops_port, events_port):
            for payload, count in ((b"", idle), (HALF_REQUEST, half)):
                failed = 0
                for _ in range(count):
                    if (s := await _connect(port, payload)) is not None:
                        socks.append(s)
                        failed = 0
                    elif (failed := failed + 1) >= 5:  # the listen backlog is full: stop
                        break
                    result.max_fds = max(result.max_fds, _fds(proc.pid))
        result.held = len(socks)
        ts = await slack.mention("C0FLOOD", "are you still there?")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            result.max_fds = max(result.max_fds, _fds(proc.pid))
            if result.healthz != 200:
                result.healthz = await _healthz(ops_port)
            result.answered = settled(slack, "C0FLOOD", ts) and bool(slack.reply_text("C0FLOOD", ts))
            result.closed_by_bot = sum(map(_closed, socks))
            if result.answered and result.healthz == 200 and result.closed_by_bot == len(socks):
                break
            await asyncio.sleep(0.5)
    finally:
        ports.close()
        for s in socks:
            s.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        result.returncode = proc.returncode
        data = log.read_bytes()
        result.log_bytes, result.log_lines = len(data), data.count(b"\n")
        result.log_tail = data.decode(errors="replace").splitlines()[-5:]
    return result
