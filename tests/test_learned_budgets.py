"""Budgets learned from the platform, 429s that slow a budget down and wear off, and
acknowledge-first turns (all on virtual time), plus how the Discord adapter reads its headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bots.discord_api import Buckets, DiscordSettings, global_budget
from core.config import StreamConfig
from core.pacing import ACK, MAX_SLOW, NORMAL, RECOVERY_HALF_LIFE, SLOW_STEP, Pacer
from core.platform import Rate
from core.relay import Reply
from fakes.clock import FakeClock
from fakes.redis_server import redis_url  # noqa: F401  (the fixture)
from fakes.scripted import RecordingTarget, ScriptRun, deltas


async def grant_times(clock: FakeClock, pacer: Pacer, budget: list[tuple[str, Rate]], n: int) -> list[float]:
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
    # the answer to that first request
    pacer.learn("chan", limit=5, remaining=4, reset_after=5.0, guess=Rate(2, 10.0))
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

    await clock.run(
        asyncio.gather(
            ask("edit-1", NORMAL, 0.0),
            ask("edit-2", NORMAL, 0.1),
            ask("edit-3", NORMAL, 0.2),
            ask("ack-1", ACK, 0.3),
            ask("edit-4", NORMAL, 0.4),
            ask("ack-2", ACK, 0.5),
        )
    )
    assert order == ["edit-1", "ack-1", "ack-2", "edit-2", "edit-3", "edit-4"]


@pytest.mark.parametrize("rate", [Rate(60, 60.0, burst=3), Rate(2, 2.0)], ids=["bucket", "window"])
async def test_backlog_tells_how_long_a_new_request_would_wait_behind_those_queued(rate: Rate) -> None:
    """What the Slack adapter asks before it decides a question needs 👀 at once."""
    clock = FakeClock()
    pacer = Pacer(clock)
    budget = [("chan", rate)]
    assert pacer.backlog("chan") == 0.0  # no budget yet: nothing to wait for
    granted: dict[int, float] = {}

    async def ask(i: int) -> None:
        await pacer.acquire(budget, ACK)
        granted[i] = clock.now()

    async def scenario() -> float:
        asking = [asyncio.ensure_future(ask(i)) for i in range(6)]
        await asyncio.sleep(0)  # those the budget cannot take yet are queued now
        estimate = pacer.backlog("chan")
        await asyncio.gather(*asking, ask(6))
        return estimate

    estimate = await clock.run(scenario())
    assert estimate == pytest.approx(granted[6]) and granted[6] > max(granted[i] for i in range(6))


def recorded(clock: FakeClock, log: list[tuple[float, str, int]]) -> RecordingTarget:
    """A target in one budget shared with the others (posts and edits together, as Discord's
    were), noting (time, shows model text) for each of its own requests."""
    target = RecordingTarget(clock, limit=2000, rate=Rate(5, 5.0), log=log)
    target.own: list[tuple[float, bool]] = []  # type: ignore[attr-defined]
    original = target._request

    async def request(op: str, frame: Any) -> None:
        await original(op, frame)
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


async def test_a_placeholder_goes_before_other_replies_first_texts() -> None:
    """Five replies' first texts wait for a full budget; two more questions arrive meanwhile:
    their placeholders go first (a first text is waited for, but an asker with no placeholder
    does not know they were heard)."""
    clock = FakeClock()
    pacer = Pacer(clock)
    log: list[tuple[float, str, int]] = []
    targets = [recorded(clock, log) for _ in range(7)]

    async def start(i: int) -> None:
        steps = deltas(f"answer {i} " * 20, 3, 0.05)
        if i >= 5:
            await clock.sleep(2.0)  # asked while the first five's first texts wait
        else:
            steps = [(1.0, steps[0][1]), *steps[1:]]  # the model starts after a second
        await Reply(ScriptRun(clock, steps), targets[i], pacer, StreamConfig()).run()

    await clock.run(asyncio.gather(*(start(i) for i in range(7))))
    assert [op for t, op, _ in log[:5]] == ["post"] * 5  # the first five placeholders fill the window
    assert [op for t, op, _ in log[5:7]] == ["post", "post"], log[:10]  # then the two new ones


# --- Discord's headers ----------------------------------------------------------------------------


def headers(bucket: str, limit: int, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset-After": str(reset_after),
    }


CREATE = "https://discord.com/api/v10/channels/42/messages"
EDIT = "https://discord.com/api/v10/channels/42/messages/7"


def test_discord_creates_and_edits_get_the_buckets_discord_names() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    buckets = Buckets(pacer, DiscordSettings())
    create, edit = buckets.key("create", 42), buckets.key("edit", 42)
    # until both are named they split one guessed bucket (they might turn out to be one)
    assert buckets.rate("create").count + buckets.rate("edit").count <= 5
    assert [k for k, _ in buckets.budgets("create", 42)] == [create, "discord:global"]
    buckets.observe("POST", CREATE, 200, headers("aaaa", 5, 4, 5.0))
    assert pacer.current(create) is None  # kept aside: one bucket for both is still possible
    clock.t = 1.0
    buckets.observe("PATCH", EDIT, 200, headers("bbbb", 5, 4, 5.0))
    # two buckets: each budget learns its own, including what was kept aside (1 s ago)
    assert pacer.current(create) == pacer.current(edit) == Rate(5, 5.0)
    assert pacer.budget(create, Rate(1, 1)).wait_time() == 0
    assert len(pacer.budget(create, Rate(1, 1))._sent) == 1  # Discord counted one create
    assert [k for k, _ in buckets.budgets("edit", 42)] == [edit, "discord:global"]
    # other routes teach nothing
    buckets.observe("GET", EDIT, 200, headers("cccc", 50, 49, 1.0))
    buckets.observe("POST", "https://discord.com/api/v10/channels/42/typing", 204, headers("dddd", 5, 4, 5.0))
    assert set(buckets.hashes) == {"create", "edit"}


async def test_discord_routes_sharing_a_bucket_count_every_request_in_both_budgets() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    buckets = Buckets(pacer, DiscordSettings())
    buckets.observe("POST", CREATE, 200, headers("aaaa", 5, 4, 5.0))
    buckets.observe("PATCH", EDIT, 200, headers("aaaa", 5, 3, 4.9))
    create, edit = buckets.key("create", 42), buckets.key("edit", 42)
    for key in (create, edit):  # each knows Discord counted both requests
        assert len(pacer.budget(key, Rate(1, 1))._sent) == 2
    assert [k for k, _ in buckets.budgets("edit", 42)] == [edit, "discord:global"]
    await clock.run(pacer.acquire(buckets.budgets("edit", 42)))  # counts in both from now on
    assert len(pacer.budget(create, Rate(1, 1))._sent) == 3


def test_discord_edits_per_5s_is_a_ceiling_on_what_discord_allows() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    buckets = Buckets(pacer, DiscordSettings(edits_per_5s=3))
    buckets.observe("POST", CREATE, 200, headers("aaaa", 5, 4, 5.0))
    buckets.observe("PATCH", EDIT, 200, headers("bbbb", 5, 4, 5.0))
    assert pacer.current(buckets.key("edit", 42)) == Rate(3, 5.0)


async def test_discord_429s_pause_the_right_budget() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    buckets = Buckets(pacer, DiscordSettings())
    buckets.observe("POST", CREATE, 200, headers("aaaa", 5, 4, 5.0))
    buckets.observe("PATCH", EDIT, 200, headers("bbbb", 5, 4, 5.0))
    key = buckets.key("edit", 42)
    buckets.observe("PATCH", EDIT, 429, headers("bbbb", 5, 0, 2.5) | {"X-RateLimit-Scope": "user"})
    await clock.run(pacer.acquire(buckets.budgets("edit", 42)))
    assert clock.now() == 2.5 and pacer.current(key).per > 5.0  # paused and slowed
    buckets.observe(
        "POST", CREATE, 429, {"Retry-After": "1", "X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
    )
    start = clock.now()
    await clock.run(pacer.acquire(global_budget()))
    assert clock.now() == start + 1.0
    buckets.observe("POST", CREATE, 429, headers("aaaa", 5, 0, 1.0) | {"X-RateLimit-Scope": "shared"})
    assert pacer.current(buckets.key("create", 42)).per == 5.0  # not our doing: not slowed


def test_discord_interaction_webhooks_are_budgeted_by_a_digest_of_their_token() -> None:
    pacer = Pacer(FakeClock())
    buckets = Buckets(pacer, DiscordSettings())
    url = "http://127.0.0.1:1/api/v10/webhooks/1/secret-token"
    buckets.observe("PATCH", url + "/messages/@original", 200, headers("wwww", 5, 4, 5.0))
    # an /ask reply mostly edits: its edits take Discord's rate at once, and a follow-up, until
    # its bucket is named, takes a slot in the edits' budget as well as in its own
    major = next(k for k in pacer._budgets).rsplit(":", 1)[1]
    assert pacer.current(buckets.key("webhook-edit", major)) == Rate(5, 5.0)
    assert [k for k, _ in buckets.budgets("webhook-create", major)] == [
        buckets.key("webhook-create", major),
        buckets.key("webhook-edit", major),
        "discord:global",
    ]
    buckets.observe("POST", url, 200, headers("wwww", 5, 3, 4.0))
    assert buckets.hashes == {"webhook-edit": "wwww", "webhook-create": "wwww"}
    assert pacer._budgets and not any("secret-token" in k for k in pacer._budgets)


# --- shared by every replica (the redis backend) ---------------------------------------------------


async def test_replicas_share_a_burst_budget(redis_url: str) -> None:  # noqa: F811
    """A token bucket in Redis: the burst once for all processes, then its steady rate."""
    import time

    from core.redis_state import RedisWindows, connect

    clients = [connect(redis_url), connect(redis_url)]
    pacers = [Pacer(shared=RedisWindows(c)) for c in clients]
    budget = [("slack:T1:chat.appendStream", Rate(10, 1.0, burst=4))]  # 4 at once, then 10/s
    grants: list[float] = []

    async def user(pacer: Pacer) -> None:
        for _ in range(4):
            await pacer.acquire(budget)
            grants.append(time.monotonic())

    try:
        start = time.monotonic()
        await asyncio.gather(*(user(p) for p in pacers))
    finally:
        for c in clients:
            await c.aclose()
    grants.sort()
    assert len(grants) == 8
    # the burst of 4 went at once; the other 4 had to wait for tokens (0.1 s each) in Redis,
    # although each process alone had a burst of 4 left for them
    assert grants[4] - start >= 0.05 and grants[-1] - start >= 0.35
