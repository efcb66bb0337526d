"""The operations endpoint: Prometheus metrics and health checks for an orchestrator.

* `GET /metrics`: every metric of `core.metrics` plus the process metrics, in Prometheus text.
* `GET /livez`: the event loop is responsive. A ticker sleeps 0.5 s over and over and measures
  how late it wakes up; a loop blocked or starved for `max_lag` seconds is not live (restart it).
* `GET /readyz`: every platform connection an adapter registered with `register_ready` is up
  (take it out of rotation, but do not restart it: the clients reconnect by themselves).
* `GET /healthz`: both, with the details: 200 `{"live": true, "ready": true, ...}` or 503.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.metrics import EVENT_LOOP_LAG
from core.webserver import GuardedSite

log = logging.getLogger("streambot.ops")

TICK = 0.5  # seconds between event loop lag measurements
MAX_LAG = 5.0  # lag at which the process stops being live
CHECK_TIMEOUT = 2.0  # a readiness check that takes longer counts as failed

ReadyCheck = Callable[[], bool | Awaitable[bool]]
ready_checks: dict[str, ReadyCheck] = {}  # name -> "is this connection up?"


def register_ready(name: str, check: ReadyCheck) -> None:
    """Make readiness depend on `check` (e.g. a chat gateway is connected)."""
    ready_checks[name] = check


async def _passes(check: ReadyCheck) -> bool:
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, CHECK_TIMEOUT)
        return bool(result)
    except Exception:
        log.debug("readiness check failed", exc_info=True)
        return False


class OpsServer:
    """Serves /metrics and the health endpoints and measures event loop lag while running."""

    def __init__(self, host: str, port: int, *, max_lag: float = MAX_LAG) -> None:
        self.host, self.port, self.max_lag = host, port, max_lag
        self.lag = 0.0
        self._last_tick = 0.0
        self._site: GuardedSite | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/livez", self._health)
        app.router.add_get("/readyz", self._health)
        self._site = GuardedSite(app, self.host, self.port)  # deadlines and a connection cap
        await self._site.start()
        self.port = self._site.port
        self._last_tick = asyncio.get_running_loop().time()
        self._ticker = asyncio.create_task(self._tick())
        log.info("ops endpoint on http://%s:%d (/metrics, /healthz)", self.host, self.port)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._site is not None:
            await self._site.stop()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK)
            self._last_tick = loop.time()
            self.lag = max(0.0, self._last_tick - before - TICK)
            EVENT_LOOP_LAG.set(self.lag)

    async def health(self) -> dict[str, Any]:
        """Liveness, readiness and why: what /healthz answers."""
        # a ticker that has not woken for a while is lag too (the loop was blocked until now)
        overdue = asyncio.get_running_loop().time() - self._last_tick - TICK
        lag = max(self.lag, overdue)
        checks = {name: await _passes(check) for name, check in list(ready_checks.items())}
        live = lag < self.max_lag
        return {
            "live": live,
            "ready": live and all(checks.values()),
            "event_loop_lag": round(lag, 3),
            "checks": checks,
            "failed": [n for n, ok in checks.items() if not ok] + ([] if live else ["event_loop"]),
        }

    async def _health(self, request: web.Request) -> web.Response:
        state = await self.health()
        key = {"/livez": "live", "/readyz": "ready"}.get(request.path)
        ok = state[key] if key else state["live"] and state["ready"]
        return web.json_response(state, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
