"""The pacer: budgets are never exceeded, shared fairly, and paused by 429s (virtual time)."""

from __future__ import annotations

import asyncio
from collections import Counter

from core.pacing import Pacer
from core.platform import Rate
from fakes.clock import FakeClock


def max_in_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + per) for t in times), default=0)


async def test_budget_is_never_exceeded_by_concurrent_users() -> None:
    clock = FakeClock()
    pacer, grants = Pacer(clock), []

    async def user(n: int) -> None:
        for _ in range(12):
            await pacer.acquire([("chan", Rate(5, 5.0))])
            grants.append((clock.now(), n))

    await clock.run(asyncio.gather(*(user(n) for n in range(10))))
    assert len(grants) == 120
    assert max_in_window([t for t, _ in grants], 5.0) <= 5
    assert clock.now() >= (120 / 5 - 1) * 5.0  # and it did not wait longer than needed
    assert clock.now() <= (120 / 5) * 5.0


async def test_concurrent_users_take_fair_turns() -> None:
    clock = FakeClock()
    pacer, order = Pacer(clock), []

    async def user(n: int) -> None:
        for _ in range(10):
            await pacer.acquire([("chan", Rate(1, 1.0))])
            order.append(n)

    await clock.run(asyncio.gather(*(user(n) for n in range(4))))
    # round robin: once everyone is queued, no user waits more than one round for a turn
    for n in range(4):
        turns = [i for i, user_n in enumerate(order) if user_n == n]
        assert all(b - a <= 4 for a, b in zip(turns[1:], turns[2:])), (n, order)


async def test_pause_blocks_the_whole_budget_for_retry_after() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", Rate(100, 1.0))]
    await clock.run(pacer.acquire(budget))
    pacer.pause(budget, 7.5)
    await clock.run(pacer.acquire(budget))
    assert clock.now() == 7.5


async def test_separate_keys_do_not_share_and_multiple_budgets_all_apply() -> None:
    clock = FakeClock()
    pacer, times = Pacer(clock), Counter()

    async def user(key: str) -> None:
        for _ in range(4):
            await pacer.acquire([(key, Rate(2, 1.0)), ("global", Rate(6, 1.0))])
            times[int(clock.now())] += 1

    await clock.run(asyncio.gather(user("a"), user("b"), user("c")))
    assert sum(times.values()) == 12
    assert max(times.values()) <= 6  # the global budget binds: 3 channels x 2 would be 6


async def test_idle_budgets_are_forgotten_but_busy_ones_keep_their_window() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    busy = [("busy", Rate(2, 10.0))]
    await clock.run(pacer.acquire(busy))
    await clock.run(pacer.acquire(busy))
    for i in range(5000):  # a budget per reply, each used once, long ago
        await clock.run(pacer.acquire([(f"reply:{i}", Rate(1, 1.0))]))
        clock.t += 0.001
    assert len(pacer._budgets) < 2100  # bounded, not 5,001
    start = clock.now()
    await clock.run(pacer.acquire(busy))  # still full: waits for its window
    assert clock.now() >= 10.0 > start
