"""HTTP servers that hostile or broken clients cannot starve: the ops endpoint and the adapters'
webhook endpoints.

aiohttp's own server never closes a connection that sends nothing, or half a request, so ~1,100
idle sockets used up the usual 1,024 descriptors: questions were lost ("Too many open files",
SQLite's "unable to open database file"), /healthz stopped answering and asyncio logged an
accept() traceback many thousand times a second. `GuardedSite` serves an aiohttp app with:

* a deadline for each request's headers (`HEADER_TIMEOUT`) and body (`BODY_TIMEOUT`), and for an
  idle kept-alive connection (`IDLE_TIMEOUT`): a connection that does not get on with it is closed;
* a cap on open connections, shared by every site of the process and kept below the descriptor
  limit with a reserve (`RESERVE`) for SQLite, the platforms' and the model's connections. A
  connection over the cap closes the oldest one that is not in the middle of a request, so a
  flood of idle sockets cannot lock out a chat platform or an orchestrator; with none idle, the newcomer
  is refused;
* one line a minute, not a traceback per attempt, when accept() runs out of descriptors anyway
  (`quiet_accept_errors`).

`raise_descriptor_limit` lifts the soft RLIMIT_NOFILE to the hard limit at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("streambot.web")

HEADER_TIMEOUT = 10.0  # seconds from connecting to a complete request head
BODY_TIMEOUT = 10.0  # seconds to receive a request's body
IDLE_TIMEOUT = 15.0  # seconds a kept-alive connection may wait for its next request
BACKLOG = 64  # listen() backlog; asyncio also accepts up to this many per wake-up
RESERVE = 96  # descriptors kept for SQLite, outbound connections, logs, the rest of the process
MAX_CONNECTIONS = 1000  # the cap, however high the descriptor limit
SITES = 2  # sites the budget is shared by (ops and a chat platform's events endpoint)
LOG_EVERY = 60.0  # seconds between two lines about the same trouble

_conns: OrderedDict[Any, _Connection] = OrderedDict()  # every open connection, oldest first


def raise_descriptor_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (as far as the OS lets us); the soft limit
    now in force, or 0 where there is no such limit."""
    try:
        import resource
    except ImportError:  # not on this OS
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(limit: int) -> int:
    """How many connections every site together may hold under a descriptor `limit`."""
    return max(8, min(MAX_CONNECTIONS, limit - RESERVE - SITES * BACKLOG))


class _Every:
    """True at most once per `period` seconds: for log lines about a trouble that repeats."""

    def __init__(self, period: float = LOG_EVERY) -> None:
        self.period = period
        self.last = float("-inf")
        self.suppressed = 0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.period:
            self.last = now
            return True
        self.suppressed += 1
        return False


_over_cap = _Every()


class AcceptErrorFilter(logging.Filter):
    """For the "asyncio" logger: accept() failing for want of descriptors becomes one line a
    minute (asyncio logs it, traceback and all, for every attempt, and once more per retry it
    had scheduled when a listening socket closes)."""

    MARKERS = ("socket.accept() out of system resource", "BaseSelectorEventLoop._start_serving")

    def __init__(self) -> None:
        super().__init__()
        self.every = _Every()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not any(m in message for m in self.MARKERS):
            return True
        if not self.every():
            return False
        record.msg = (
            "cannot accept connections: out of file descriptors; new connections wait "
            "until some close (said at most once a minute)"
        )
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_accept_errors() -> None:
    """Install `AcceptErrorFilter` on asyncio's logger (once)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, AcceptErrorFilter) for f in logger.filters):
        logger.addFilter(AcceptErrorFilter())


class _Connection(asyncio.Protocol):
    """One accepted connection: counted, given deadlines, handed to aiohttp's protocol."""

    def __init__(self, site: GuardedSite) -> None:
        self.site = site
        self.inner: Any = None  # aiohttp's RequestHandler, once admitted
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests being handled
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol, forwarded to aiohttp --------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.site.admit(self):
            transport.abort()
            return
        _conns[transport] = self
        self.inner = self.site.handler_factory()
        self.inner.connection_made(transport)
        self.arm(self.site.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        _conns.pop(self.transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # --- deadlines -------------------------------------------------------------------------

    def arm(self, seconds: float) -> None:
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # frees the descriptor now: nothing is owed to this client


class GuardedSite:
    """Serve `app` on host:port with deadlines and the process-wide connection cap."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.header_timeout, self.body_timeout, self.idle_timeout = (
            header_timeout,
            body_timeout,
            idle_timeout,
        )
        self.cap = 0
        self.handler_factory: Callable[[], Any] = lambda: None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        app.middlewares.append(self._deadlines)

    async def start(self) -> None:
        """Listen (OSError when the address cannot be bound, like aiohttp's TCPSite)."""
        self.cap = connection_cap(raise_descriptor_limit())
        quiet_accept_errors()
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.idle_timeout)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.handler_factory = server
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Connection(self), self.host, self.port, backlog=BACKLOG, reuse_address=True
            )
        except BaseException:
            await self._runner.cleanup()
            raise
        if self.port == 0:  # tests ask for any free port: report the one we got
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in [c for c in _conns.values() if c.site is self]:
            if not conn.busy:
                conn.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def admit(self, conn: _Connection) -> bool:
        """Room for `conn`: under the cap, or by closing the oldest connection not serving a
        request. False: refuse it (every connection is busy)."""
        if len(_conns) < self.cap:
            return True
        idle = next((c for c in _conns.values() if not c.busy), None)
        if _over_cap():
            log.warning(
                "%d connections open, the most this process allows (descriptor limit); "
                "closing the longest idle ones (said at most once a minute)",
                len(_conns),
            )
        if idle is None:
            return False
        idle.close()
        _conns.pop(idle.transport, None)  # its connection_lost comes later; the room is now
        return True

    @web.middleware
    async def _deadlines(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = _conns.get(request.transport)
        if conn is None:  # not ours (e.g. a test client): just serve it
            return await handler(request)
        conn.busy += 1
        conn.disarm()
        try:
            if request.body_exists:
                try:  # read here, under a deadline; the handler reads the same bytes again
                    await asyncio.wait_for(request.read(), self.body_timeout)
                except TimeoutError:
                    raise web.HTTPRequestTimeout() from None
            return await handler(request)
        finally:
            conn.busy -= 1
            if not conn.busy:
                conn.arm(self.idle_timeout)
