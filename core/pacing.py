"""When a request may go out: shared, fair budgets per platform bucket.

A budget is a sliding window ("at most N requests in any T seconds") shared by every reply that
names the same key, e.g. one channel, or one API method in one workspace. Waiters are
served first come, first served, and a reply only queues when it has something new to show, so
ten concurrent replies take turns instead of one hogging the bucket. A 429 pauses the whole
budget for Retry-After. Time comes from a `Clock` so tests can run without sleeping.

With `SharedBudgets` (the redis backend: core/redis_state.py), every grant also takes a slot in
a window all processes share, and a 429 pauses the key for every process: two replicas
streaming into one channel stay under the platform's limit together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

from core.platform import Rate


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The event loop's monotonic time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SharedBudgets(Protocol):
    """Sliding windows shared by every process, by budget key."""

    async def reserve(self, key: str, rate: Rate) -> float:
        """Take a slot now and return 0, or return the seconds until one may be free."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Nobody, in any process, uses `key` for `seconds`."""
        ...


class Budget:
    """At most `rate.count` acquisitions in any `rate.per` seconds, granted in FIFO order.

    With `shared`, a grant also needs a slot in the window every process shares under `key`.
    """

    def __init__(self, rate: Rate, clock: Clock, key: str = "", shared: SharedBudgets | None = None) -> None:
        self.rate = rate
        self.clock = clock
        self.key = key
        self.shared = shared
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order: fair turns

    def wait_time(self) -> float:
        """Seconds until one more request fits (0 if it fits now)."""
        now = self.clock.now()
        while self._sent and self._sent[0] <= now - self.rate.per:
            self._sent.popleft()
        wait = self._paused_until - now
        if len(self._sent) >= self.rate.count:
            wait = max(wait, self._sent[0] + self.rate.per - now)
        return max(0.0, wait)

    def idle(self) -> bool:
        """As good as a new budget: nothing in the window, no pause, nobody waiting."""
        return self.wait_time() == 0 and not self._sent and not self._lock.locked()

    async def acquire(self) -> None:
        async with self._lock:  # the local queue first: replies in this process take turns
            while True:
                while (wait := self.wait_time()) > 0:
                    await self.clock.sleep(wait)
                if self.shared is None or (wait := await self.shared.reserve(self.key, self.rate)) <= 0:
                    break
                await self.clock.sleep(wait)
            self._sent.append(self.clock.now())

    def pause(self, seconds: float) -> None:
        """The platform said 429: nobody uses this budget for `seconds`."""
        self._paused_until = max(self._paused_until, self.clock.now() + seconds)


class Pacer:
    """All budgets of one process, created on first use by key; `shared` spans processes."""

    def __init__(self, clock: Clock | None = None, shared: SharedBudgets | None = None) -> None:
        self.clock: Clock = clock or RealClock()
        self.shared = shared
        self._budgets: dict[str, Budget] = {}
        self._prune_at = 1024
        self._pausing: set[asyncio.Task[None]] = set()

    def budget(self, key: str, rate: Rate) -> Budget:
        if key not in self._budgets:
            if len(self._budgets) >= self._prune_at:
                self._prune()
            self._budgets[key] = Budget(rate, self.clock, key, self.shared)
        return self._budgets[key]

    def _prune(self) -> None:
        """Forget budgets that are as good as new (nothing in their window, no pause, nobody
        waiting): keys per reply or per channel would otherwise pile up for the process's life."""
        self._budgets = {k: b for k, b in self._budgets.items() if not b.idle()}
        self._prune_at = max(1024, 2 * len(self._budgets))

    async def acquire(self, budgets: list[tuple[str, Rate]]) -> None:
        """Wait for a turn in every named budget (held in a fixed order: no deadlock)."""
        for key, rate in sorted(budgets, key=lambda b: b[0]):
            await self.budget(key, rate).acquire()

    def pause(self, budgets: list[tuple[str, Rate]], seconds: float) -> None:
        for key, rate in budgets:
            self.budget(key, rate).pause(seconds)
            if self.shared is not None:  # tell the other processes without holding this one up
                task = asyncio.ensure_future(self.shared.pause(key, seconds))
                self._pausing.add(task)
                task.add_done_callback(self._pausing.discard)
