"""Budgets learned from the platform, 429s that slow a budget down and wear off, and
acknowledge-first turns, all on virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

from core.config import StreamConfig
from core.pacing import ACK, MAX_SLOW, NORMAL, RECOVERY_HALF_LIFE, SLOW_STEP, Pacer
from core.platform import Rate
from core.relay import Reply
from fakes.clock import FakeClock
from fakes.scripted import RecordingTarget, ScriptRun, deltas


async def grant_times(clock: FakeClock, pacer: Pacer, budget: list[tuple[str, Rate]],
                      n: int) -> list[float]:
    times = []
    for _ in range(n):
        await clock.run(pacer.acquire(budget))
        times.append(clock.now())
    return times


# --- learning what the platform says ------------------------------------------------------------


async def test_the_platforms_limit_and_window_replace_the_guess() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    guess = [("chan", Rate(2, 10.0))]
    await clock.run(pacer.acquire(guess))
    pacer.learn("chan", limit=5, remaining=4, reset_after=5.0)  # the answer to that first request
    times = [0.0, *await grant_times(clock, pacer, guess, 5)]
    assert times == [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]  # 5 per 5 s, not the guessed 2 per 10 s
    assert pacer.current("chan") == Rate(5, 5.0)
    pacer.budget("chan", Rate(1, 60.0))  # a later guess does not undo what was learned
    assert pacer.current("chan") == Rate(5, 5.0)


async def test_a_window_the_platform_opened_later_than_our_grant_is_followed() -> None:
    """We stamp grants when we make them; the platform counts a request when it arrives.
    Its reset time moves our window to match instead of risking a 429."""
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", Rate(5, 5.0))]
    await grant_times(clock, pacer, budget, 5)  # all at t=0
    clock.t = 0.3  # the last answer: its window (opened on arrival at 0.2) resets 4.9 s from now
    pacer.learn("chan", limit=5, remaining=0, reset_after=4.9)
    await clock.run(pacer.acquire(budget))
    assert clock.now() == 5.2  # not 5.0, when our own window would have let it go


async def test_requests_the_pacer_never_granted_count_too() -> None:
    """The platform counted more than we granted (a client's own retries, another process):
    only what it says remains goes out before its window resets."""
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", Rate(5, 5.0))]
    await clock.run(pacer.acquire(budget))
    pacer.learn("chan", limit=5, remaining=2, reset_after=4.0)  # 3 used, we granted 1
    times = await grant_times(clock, pacer, budget, 3)
    assert times == [0.0, 0.0, 4.0]


async def test_a_429_pauses_slows_and_the_slowdown_wears_off() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("method", Rate(1, 1.0))]
    await clock.run(pacer.acquire(budget))
    pacer.pause(budget, 2.0)
    pacer.pause(budget, 2.0)  # 429s that arrive together count as one
    times = await grant_times(clock, pacer, budget, 2)
    assert times[0] == 2.0  # Retry-After
    slowed = 1 + (SLOW_STEP - 1) * 0.5 ** (2.0 / RECOVERY_HALF_LIFE)  # ~1.49 s a request
    assert abs(times[1] - times[0] - slowed) < 1e-9
    assert pacer.current("method").per > 1.4  # running slower than the rate that failed
    clock.t += RECOVERY_HALF_LIFE
    assert 1.2 < pacer.current("method").per < 1.3  # half the slowdown is gone
    clock.t += 10 * RECOVERY_HALF_LIFE
    assert pacer.current("method") == Rate(1, 1.0)  # back to the full rate


async def test_429s_in_a_row_slow_down_further_up_to_a_floor() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("method", Rate(10, 1.0))]
    for _ in range(20):
        pacer.pause(budget, 0.5)
        clock.t += 1.0  # each after the previous pause ended
    assert MAX_SLOW * 0.95 < pacer.current("method").per <= MAX_SLOW


async def test_a_pause_without_slowing_down() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("method", Rate(1, 1.0))]
    pacer.pause(budget, 3.0, slow_down=False)
    assert await grant_times(clock, pacer, budget, 2) == [3.0, 4.0]


async def test_linked_budgets_count_each_others_grants() -> None:
    """Two keys the platform serves from one bucket: a request waits in its own key's queue,
    but every grant counts in both windows."""
    clock = FakeClock()
    pacer = Pacer(clock)
    a, b = [("a", Rate(2, 1.0))], [("b", Rate(2, 1.0))]
    await clock.run(pacer.acquire(a))
    pacer.link("a", "b")
    await clock.run(pacer.acquire(b))
    await clock.run(pacer.acquire(a))
    assert clock.now() == 1.0  # "a" counted b's grant: its window was full


async def test_a_slot_counts_from_when_the_request_really_goes_out() -> None:
    """Waiting in a second budget after a first one granted: the first one's slot is stamped
    with the time the request was sent, so its window is not counted short."""
    clock = FakeClock()
    pacer = Pacer(clock)
    slow, chan = ("slow", Rate(1, 3.0)), ("chan", Rate(1, 1.0))
    await clock.run(pacer.acquire([slow]))
    await clock.run(pacer.acquire([chan, slow]))  # chan granted at 0, slow only at 3
    assert clock.now() == 3.0
    await clock.run(pacer.acquire([chan]))
    assert clock.now() == 4.0  # one window after 3.0, not after 0.0


async def test_a_burst_budget_allows_bursts_then_refills_steadily() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("method", Rate(1, 1.0, burst=3))]
    assert await grant_times(clock, pacer, budget, 6) == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    clock.t = 100.0  # refilled, but never above the burst
    assert await grant_times(clock, pacer, budget, 4) == [100.0, 100.0, 100.0, 101.0]


async def test_a_429_shrinks_a_burst_too() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("method", Rate(10, 10.0, burst=9))]
    pacer.pause(budget, 0.0)
    assert pacer.current("method") == Rate(10, 10.0 * SLOW_STEP, int(9 / SLOW_STEP))


# --- acknowledge first ----------------------------------------------------------------------------


async def test_acknowledgements_go_before_waiting_edits_first_come_first_served_within() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", Rate(1, 1.0))]
    order: list[str] = []

    async def ask(name: str, priority: int, after: float) -> None:
        await clock.sleep(after)
        await pacer.acquire(budget, priority)
        order.append(name)

    await clock.run(asyncio.gather(
        ask("edit-1", NORMAL, 0.0), ask("edit-2", NORMAL, 0.1), ask("edit-3", NORMAL, 0.2),
        ask("ack-1", ACK, 0.3), ask("edit-4", NORMAL, 0.4), ask("ack-2", ACK, 0.5)))
    assert order == ["edit-1", "ack-1", "ack-2", "edit-2", "edit-3", "edit-4"]


def recorded(clock: FakeClock, log: list[tuple[float, str, int]]) -> RecordingTarget:
    """A target in one budget shared with the others (posts and edits together, as Discord's
    were), noting (time, shows model text) for each of its own requests."""
    target = RecordingTarget(clock, limit=2000, rate=Rate(5, 5.0), log=log)
    target.own: list[tuple[float, bool]] = []  # type: ignore[attr-defined]
    original = target._request

    def request(op: str, frame: Any) -> None:
        original(op, frame)
        target.own.append((clock.now(), bool(frame.raw.strip())))  # type: ignore[attr-defined]

    target._request = request  # type: ignore[method-assign]
    return target


async def busy_budget(first_token_after: float) -> tuple[list[RecordingTarget], list, float]:
    """Three replies stream 30 s of text into a budget that cannot keep up; three more
    questions arrive at `asked`, their model's first text `first_token_after` later."""
    clock = FakeClock()
    pacer = Pacer(clock)
    log: list[tuple[float, str, int]] = []
    targets = [recorded(clock, log) for _ in range(6)]
    asked = 10.3

    async def start(i: int) -> None:
        steps = deltas(f"answer {i} " * 200, 3, 0.05)
        if i >= 3:
            await clock.sleep(asked)
            steps = [(first_token_after + steps[0][0], steps[0][1]), *steps[1:]]
        await Reply(ScriptRun(clock, steps), targets[i], pacer, StreamConfig()).run()

    await clock.run(asyncio.gather(*(start(i) for i in range(6))))
    return targets, [(op, t) for t, op, _ in log if t >= asked], asked


async def test_new_questions_get_their_placeholders_before_running_replies_get_edits() -> None:
    """Three more questions arrive while three replies stream into one budget that cannot keep
    up: their placeholders are the next requests, and they show their first text (here, in
    the placeholder: it was ready by its turn) before the running replies get another edit."""
    targets, after, asked = await busy_budget(0.0)
    assert [op for op, _ in after[:3]] == ["post", "post", "post"], after[:6]
    first_texts = [next(t for t, text in target.own if text) for target in targets[3:]]
    running_next = [next(t for t, _ in target.own if t >= asked) for target in targets[:3]]
    assert max(first_texts) <= min(running_next)


async def test_first_text_goes_before_running_replies_progress() -> None:
    """The same with a model slow to start: the placeholders go out empty; the first text, once
    there is some, goes before the running replies' progress edits."""
    slow = 6.0
    targets, after, asked = await busy_budget(slow)
    assert [op for op, _ in after[:3]] == ["post", "post", "post"], after[:6]
    assert not any(text for target in targets[3:] for t, text in target.own[:1])  # empty placeholders
    first_texts = [next(t for t, text in target.own if text) for target in targets[3:]]
    running_since = [next(t for t, _ in target.own if t >= asked + slow) for target in targets[:3]]
    assert max(first_texts) <= min(running_since)
