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
        assert all(b - a <= 4 for a, b in zip(turns[1:], turns[2:], strict=False)), (n, order)


async def test_pause_blocks_the_whole_budget_for_retry_after() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", Rate(100, 1.0))]
    await clock.run(pacer.acquire(budget))
    pacer.pause(budget, 7.5)
    await clock.run(pacer.acquire(budget))
    assert clock.now() == 7.5


async def test_separate_keys_proceed_in_parallel_each_within_its_own_limit() -> None:
    clock = FakeClock()
    pacer, grants = Pacer(clock), []

    async def user(key: str) -> None:
        for _ in range(6):
            await pacer.acquire([(key, Rate(2, 1.0)), ("global", Rate(100, 1.0))])
            grants.append((clock.now(), key))

    await clock.run(asyncio.gather(user("a"), user("b"), user("c")))
    assert len(grants) == 18
    for key in "abc":  # each key keeps its own limit...
        assert max_in_window([t for t, k in grants if k == key], 1.0) == 2, key
    # ...and the keys do not wait for each other: 6 grants at 2/s each take 2 s for all three,
    # where one budget shared by the three keys would take 8 s
    assert Counter(t for t, _ in grants) == {0.0: 6, 1.0: 6, 2.0: 6}


async def test_multiple_budgets_all_apply() -> None:
    clock = FakeClock()
    pacer, grants = Pacer(clock), []

    async def user(key: str) -> None:
        for _ in range(4):
            await pacer.acquire([(key, Rate(2, 1.0)), ("global", Rate(5, 1.0))])
            grants.append(clock.now())

    await clock.run(asyncio.gather(user("a"), user("b"), user("c")))
    assert len(grants) == 12
    # The global budget binds below the keys' sum (3 x 2 = 6 > 5) and is used to the full: the
    # keys run side by side (one budget for all keys would allow only 2 in a second).
    assert max_in_window(grants, 1.0) == 5
    assert clock.now() >= (12 / 5 - 1) * 1.0


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
