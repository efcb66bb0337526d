"""When a request may go out: shared, fair budgets per platform bucket, learned from the platform.

A budget is a sliding window ("at most N requests in any T seconds"), or a token bucket for a
`Rate` with a `burst`, shared by every reply that names the same key, e.g. one channel, or one
API method in one workspace. A reply only queues
when it has something new to show, so ten concurrent replies take turns instead of one hogging
the bucket. Time comes from a `Clock` so tests can run without sleeping.

Turns: waiters are served by priority, then first come, first served. `ACK` (a question's first
message, a notice) goes first, so when several questions arrive at once every one is
acknowledged before any running reply gets another edit; then `SOON` (a reply's first text,
and its final text: the frames people are waiting for), then `NORMAL` (progress).

Learning: the rate an adapter names is only the starting guess. What the platform says
replaces it, through two calls any adapter can make:

* `learn(key, limit, remaining, reset_after)`: the platform's answer described the bucket (as
  rate-limit headers on every response can). The budget takes the platform's limit; the window
  length is the reset time reported right after a window opened (`remaining == limit - 1`); and
  the budget is aligned with the platform's window: if the platform counted `limit - remaining`
  requests in a window ending `reset_after` from now, at least that many of our grants are
  counted up to that moment. (We stamp a grant when we make it; the platform counts a request
  when it arrives, a little later: aligning removes that skew instead of padding every window.)
* `pause(budgets, retry_after)`: the platform said 429. Nobody uses the budget for Retry-After,
  and its window is stretched (`SLOW_STEP`, at most `MAX_SLOW`; a burst shrinks as much) so it
  runs below the rate that failed; the stretch halves every `RECOVERY_HALF_LIFE` seconds without
  another 429, so the budget recovers slowly to the full rate.

With `SharedBudgets` (the redis backend: core/redis_state.py), every grant also takes a slot in
a window all processes share, and a 429 pauses the key for every process: two replicas
streaming into one channel stay under the platform's limit together.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

from core.platform import Rate

ACK = 0  # a question's first message or a notice: the asker learns they were heard
SOON = 1  # a reply's first text or its final text
NORMAL = 2  # progress: further edits, continuation messages

SLOW_STEP = 1.5  # a 429 stretches the budget's window by this factor...
MAX_SLOW = 4.0  # ...up to this much in all
RECOVERY_HALF_LIFE = 60.0  # seconds for half the stretch to wear off without another 429


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


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    turn: asyncio.Event = field(default_factory=asyncio.Event, compare=False)


class Budget:
    """At most `rate.count` grants in any `rate.per` seconds, by priority, then in FIFO order.

    `rate` starts as the adapter's guess and becomes what the platform says (`learn`). With
    `shared`, a grant also needs a slot in the window every process shares under `key`.
    """

    def __init__(self, rate: Rate, clock: Clock, key: str = "", shared: SharedBudgets | None = None) -> None:
        self.rate = rate
        self.clock = clock
        self.key = key
        self.shared = shared
        self.learned = False  # the platform has described this bucket
        self._sent: list[float] = []  # grant times, sorted
        self._paused_until = 0.0
        self._queue: list[_Waiter] = []  # a heap: the head is the next to be served
        self._seq = itertools.count()
        self._slow = 1.0  # window stretch after 429s, as of `_slow_at`
        self._slow_at = 0.0
        self._tokens = float(rate.burst)  # a token bucket's (rate.burst > 0) content...
        self._tokens_at = clock.now()  # ...as of this time
        self._nap: asyncio.Future[None] | None = None  # the head's sleep, cut short by `wake`
        self._woken = False
        self.partner: Budget | None = None  # one platform bucket behind two keys (`Pacer.link`)

    # --- the rate in force -------------------------------------------------------------------

    def slowdown(self) -> float:
        """How much the window is stretched now after 429s (1.0: not at all)."""
        if self._slow <= 1.0:
            return 1.0
        left: float = (self._slow - 1.0) * 0.5 ** ((self.clock.now() - self._slow_at) / RECOVERY_HALF_LIFE)
        if left < 0.01:
            self._slow = 1.0
            return 1.0
        return 1.0 + left

    def effective(self) -> Rate:
        """The rate grants follow now: the learned (or guessed) rate, slowed after 429s."""
        slow, rate = self.slowdown(), self.rate
        burst = max(1, int(rate.burst / slow)) if rate.burst else 0
        return Rate(rate.count, rate.per * slow, burst)

    def _refill(self, now: float, rate: Rate) -> None:
        self._tokens = min(float(rate.burst), self._tokens + (now - self._tokens_at) * rate.count / rate.per)
        self._tokens_at = now

    def wait_time(self) -> float:
        """Seconds until one more request fits (0 if it fits now)."""
        now = self.clock.now()
        rate = self.effective()
        wait = self._paused_until - now
        if rate.burst:
            self._refill(now, rate)
            if self._tokens < 1.0:
                wait = max(wait, (1.0 - self._tokens) * rate.per / rate.count)
            return max(0.0, wait)
        expired = bisect.bisect_right(self._sent, now - rate.per)
        if expired:
            del self._sent[:expired]
        if len(self._sent) >= rate.count:
            wait = max(wait, self._sent[-rate.count] + rate.per - now)
        return max(0.0, wait)

    def backlog(self) -> float:
        """Seconds a request asked now would likely wait for its turn: until one more fits,
        and then a turn at the steady rate for each request already waiting (an estimate: a
        request of higher priority may still come first)."""
        wait, ahead = self.wait_time(), len(self._queue)
        if not ahead:
            return wait
        rate = self.effective()
        step = rate.per / rate.count
        if rate.burst:  # what is left in the bucket serves the first of those waiting
            return max(wait, (ahead + 1 - self._tokens) * step)
        return wait + ahead * step

    def idle(self) -> bool:
        """As good as a new budget: nothing in its window (or a full bucket), no pause, no 429
        remembered, nobody waiting. (What it learned is cheap to learn again.)"""
        full = not self.rate.burst or self._tokens >= self.effective().burst
        return (
            self.wait_time() == 0 and not self._sent and full and not self._queue and self.slowdown() == 1.0
        )

    # --- turns ---------------------------------------------------------------------------------

    async def acquire(self, priority: int = NORMAL) -> float:
        """Wait for a turn; returns the time the slot was stamped with."""
        me = _Waiter(priority, next(self._seq))
        heapq.heappush(self._queue, me)
        try:
            while True:
                if self._queue[0] is not me:
                    me.turn.clear()
                    await me.turn.wait()
                    continue
                if (wait := self.wait_time()) > 0:
                    await self._sleep(wait)
                    continue  # a waiter of higher priority may have come meanwhile
                if self.shared is not None:
                    if (wait := await self.shared.reserve(self.key, self.effective())) > 0:
                        await self.clock.sleep(wait)
                        continue
                break  # (a slot reserved in the shared window is taken even if overtaken)
        finally:
            self._leave(me)
        now = self.clock.now()
        if self.rate.burst:
            self._tokens -= 1.0
        else:
            bisect.insort(self._sent, now)
            if self.partner is not None:  # the same bucket: it counts there too
                bisect.insort(self.partner._sent, now)
        return now

    async def _sleep(self, seconds: float) -> None:
        """Sleep until a slot may be free, or until `wake` (the rate changed)."""
        self._nap = nap = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await nap
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._woken or (task is not None and task.cancelling()):
                raise  # cancelled from outside, not woken
        finally:
            self._nap, self._woken = None, False

    def wake(self) -> None:
        """The rate changed: the waiter at the head re-checks its wait now."""
        if self._nap is not None and not self._nap.done():
            self._woken = True
            self._nap.cancel()
        if self._queue:
            self._queue[0].turn.set()

    def _leave(self, me: _Waiter) -> None:
        if self._queue and self._queue[0] is me:
            heapq.heappop(self._queue)
        else:
            self._queue.remove(me)
            heapq.heapify(self._queue)
        if self._queue:
            self._queue[0].turn.set()

    def restamp(self, granted: float, sent: float) -> None:
        """A slot granted at `granted` was used at `sent` (it waited for another budget)."""
        if self.rate.burst:
            return  # a token bucket keeps no times
        for window in (self._sent, self.partner._sent if self.partner is not None else None):
            if window is None:
                continue
            i = bisect.bisect_left(window, granted)
            if i < len(window) and window[i] == granted:
                del window[i]
            bisect.insort(window, sent)

    # --- what the platform says -----------------------------------------------------------------

    def pause(self, seconds: float, *, slow_down: bool = True) -> None:
        """The platform said 429: nobody uses this budget for `seconds`, and (with `slow_down`)
        it runs slower for a while. 429s that arrive together count as one."""
        now = self.clock.now()
        if slow_down and now >= self._paused_until:
            self._slow = min(MAX_SLOW, self.slowdown() * SLOW_STEP)
            self._slow_at = now
        self._paused_until = max(self._paused_until, now + seconds)

    def learn(self, limit: int, remaining: int, reset_after: float, window: float | None = None) -> None:
        """The platform says this bucket allows `limit` requests per window (`window` seconds
        long, if known), of which `remaining` are left, and the window resets `reset_after`
        seconds from now."""
        if limit < 1:
            return
        now = self.clock.now()
        used = max(0, min(limit, limit - remaining))
        per = window or self.rate.per
        if window is None and used == 1 and reset_after > 0:
            per = reset_after  # the window just opened: its reset is its length
        before = self.rate
        self.rate = Rate(limit, per)
        self.learned = True
        self._align(used, now + reset_after - per)
        if self.rate != before:
            self.wake()

    def _align(self, used: int, start: float) -> None:
        """The platform counted `used` requests in its window since `start`: make sure as many
        of ours count in our window at least that long (move the newest earlier ones up to
        `start`; add slots for requests we never granted, e.g. a client's own retries)."""
        self.wait_time()  # drop what has expired
        inside = len(self._sent) - bisect.bisect_left(self._sent, start)
        missing = used - inside
        if missing <= 0:
            return
        before = bisect.bisect_left(self._sent, start)
        moved = min(missing, before)
        del self._sent[before - moved : before]
        for _ in range(missing):
            bisect.insort(self._sent, start)


class Pacer:
    """All budgets of one process, created on first use by key; `shared` spans processes."""

    def __init__(self, clock: Clock | None = None, shared: SharedBudgets | None = None) -> None:
        self.clock: Clock = clock or RealClock()
        self.shared = shared
        self._budgets: dict[str, Budget] = {}
        self._links: dict[str, str] = {}  # key -> the key sharing its platform bucket
        self._prune_at = 1024
        self._pausing: set[asyncio.Task[None]] = set()

    def budget(self, key: str, rate: Rate) -> Budget:
        """The budget under `key`; `rate` is the adapter's guess, followed until the platform
        describes the bucket (`learn`)."""
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) >= self._prune_at:
                self._prune()
            budget = self._budgets[key] = Budget(rate, self.clock, key, self.shared)
            if (partner := self._budgets.get(self._links.get(key, ""))) is not None:
                budget.partner, partner.partner = partner, budget
        elif not budget.learned and budget.rate != rate:
            budget.rate = rate
            budget.wake()
        return budget

    def current(self, key: str) -> Rate | None:
        """The rate `key` follows now (learned, slowed after 429s); None if it has no budget."""
        budget = self._budgets.get(key)
        return budget.effective() if budget is not None else None

    def backlog(self, key: str) -> float:
        """Seconds a request in `key`'s budget asked now would likely wait (0 if it has none)."""
        budget = self._budgets.get(key)
        return budget.backlog() if budget is not None else 0.0

    def _prune(self) -> None:
        """Forget budgets that are as good as new (nothing in their window, no pause, nobody
        waiting): keys per reply or per channel would otherwise pile up for the process's life."""
        self._budgets = {k: b for k, b in self._budgets.items() if not b.idle()}
        self._links = {k: p for k, p in self._links.items() if k in self._budgets or p in self._budgets}
        self._prune_at = max(1024, 2 * len(self._budgets))

    def link(self, key: str, other: str) -> None:
        """The platform serves `key` and `other` from one bucket: from now on every grant in
        either counts in both (a request still waits in its own key's queue only)."""
        if self._links.get(key) == other:
            return
        self._links[key], self._links[other] = other, key
        a, b = self._budgets.get(key), self._budgets.get(other)
        if a is not None and b is not None:
            a.partner, b.partner = b, a

    async def acquire(self, budgets: list[tuple[str, Rate]], priority: int = NORMAL) -> None:
        """Wait for a turn in every named budget, in the order given (name the one that waits
        longest first: a slot taken early in one budget sits unused while the others are
        waited for). Every slot is then stamped with the time the request really goes out."""
        taken = [(b, await b.acquire(priority)) for b in (self.budget(key, rate) for key, rate in budgets)]
        now = self.clock.now()
        for budget, granted in taken:
            if granted != now:
                budget.restamp(granted, now)

    def learn(
        self,
        key: str,
        limit: int,
        remaining: int,
        reset_after: float,
        guess: Rate | None = None,
        window: float | None = None,
    ) -> None:
        """The platform described the bucket behind `key` (see `Budget.learn`). `guess` is the
        starting rate if `key` has no budget yet (the window length until one is seen)."""
        budget = self._budgets.get(key) or self.budget(
            key, guess or Rate(max(1, limit), max(reset_after, 1.0))
        )
        budget.learn(limit, remaining, reset_after, window)

    def pause(self, budgets: list[tuple[str, Rate]], seconds: float, *, slow_down: bool = True) -> None:
        """The platform said 429: pause (and, with `slow_down`, slow) each budget, here and in
        every process sharing them."""
        for key, rate in budgets:
            self.budget(key, rate).pause(seconds, slow_down=slow_down)
            if self.shared is not None:  # tell the other processes without holding this one up
                task = asyncio.ensure_future(self.shared.pause(key, seconds))
                self._pausing.add(task)
                task.add_done_callback(self._pausing.discard)
