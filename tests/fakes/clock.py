"""A virtual clock: sleeps complete instantly in deadline order, so pacing is tested without waiting."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._seq), fut))
        await fut

    async def run(self, awaitable: Awaitable[T], limit: float = 100_000.0) -> T:
        """Run `awaitable`, advancing virtual time whenever every task is waiting on the clock."""
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            for _ in range(50):
                await asyncio.sleep(0)
                if task.done():
                    break
            else:
                while self._sleepers and self._sleepers[0][2].done():
                    heapq.heappop(self._sleepers)
                if not self._sleepers:
                    task.cancel()
                    raise AssertionError("deadlock: the task waits but nothing sleeps")
                deadline, _, fut = heapq.heappop(self._sleepers)
                if deadline > limit:
                    task.cancel()
                    raise AssertionError(f"virtual time passed {limit}s")
                self.t = max(self.t, deadline)
                fut.set_result(None)
        return task.result()
