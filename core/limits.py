"""Abuse and cost limits: who may start a reply now, and the clear message when they may not.

One `Gate` per process, shared by every adapter. A reply holds its slots from `admit` until
`release`, so a person cannot flood a channel with parallel answers, and a busy channel cannot
starve the others. `Gate` counts in this process; with the redis backend `RedisGate` counts
for every replica together.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

from core.config import LimitsConfig
from core.pacing import Clock, RealClock
from core.usage import UsageStore

log = logging.getLogger("streambot.limits")


@dataclass(frozen=True)
class Slot:
    """An admitted reply's place in the counters; hand it back to `Gate.release`."""

    user: str
    channel: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class Refused(Exception):
    """The reply may not start; `str(exc)` is the message to show the person who asked."""


def too_long(length: int, limit: int) -> Refused:
    return Refused(
        f"That question is too long ({length:,} characters; the limit is {limit:,}). Please shorten it."
    )


def too_many_running(count: int) -> Refused:
    return Refused(f"You already have {count} answer(s) being written. Please wait for one to finish.")


def channel_busy() -> Refused:
    return Refused("I'm answering several questions here already. Please ask again in a moment.")


def too_many_asked(count: int, wait: float) -> Refused:
    return Refused(
        f"You've asked {count} questions in the last minute. Please wait "
        f"{math.ceil(wait)} s before asking again."
    )


def out_of_tokens(limit: int) -> Refused:
    return Refused(f"You've used your {limit:,} tokens for today. You can ask again after midnight (UTC).")


def channel_out_of_tokens(limit: int) -> Refused:
    return Refused(
        f"This channel has used its {limit:,} tokens for today. Questions here can be asked "
        "again after midnight (UTC)."
    )


class Gate:
    """The counters of this process. `RedisGate` (core/redis_state.py) counts for every replica.

    With a `usage` store, `[limits] user_tokens_per_day` and `channel_tokens_per_day` refuse
    new questions once today's tokens reach them (a reply already running may pass them)."""

    def __init__(
        self, limits: LimitsConfig, clock: Clock | None = None, usage: UsageStore | None = None
    ) -> None:
        self.limits = limits
        self.clock = clock or RealClock()
        self.usage = usage
        self._user_active: Counter[str] = Counter()
        self._channel_active: Counter[str] = Counter()
        self._asked: dict[str, deque[float]] = {}

    async def admit(self, user: str, channel: str, prompt: str) -> Slot:
        """Take a slot for a reply to `prompt`, or raise `Refused` saying why and what to do."""
        await self.check_tokens(user, channel)
        return self.admit_here(user, channel, prompt)

    async def check_tokens(self, user: str, channel: str) -> None:
        """Refuse when the person or the channel has used today's tokens. A usage store that
        cannot be read refuses no one (answering beats refusing everyone)."""
        lim = self.limits
        if self.usage is None or not (lim.user_tokens_per_day or lim.channel_tokens_per_day):
            return
        try:
            if lim.user_tokens_per_day and await self.usage.used("user", user) >= lim.user_tokens_per_day:
                raise out_of_tokens(lim.user_tokens_per_day)
            if (
                lim.channel_tokens_per_day
                and await self.usage.used("channel", channel) >= lim.channel_tokens_per_day
            ):
                raise channel_out_of_tokens(lim.channel_tokens_per_day)
        except Refused:
            raise
        except Exception as exc:
            log.warning("could not read today's token usage for [limits] (%s): not counting it", exc)

    async def release(self, slot: Slot) -> None:
        self.release_here(slot)

    def admit_here(self, user: str, channel: str, prompt: str) -> Slot:
        lim, now = self.limits, self.clock.now()
        if lim.max_prompt_chars and len(prompt) > lim.max_prompt_chars:
            raise too_long(len(prompt), lim.max_prompt_chars)
        if lim.user_concurrent and self._user_active[user] >= lim.user_concurrent:
            raise too_many_running(self._user_active[user])
        if lim.channel_concurrent and self._channel_active[channel] >= lim.channel_concurrent:
            raise channel_busy()
        asked = self._asked.setdefault(user, deque())
        while asked and asked[0] <= now - 60.0:
            asked.popleft()
        if lim.user_per_minute and len(asked) >= lim.user_per_minute:
            raise too_many_asked(len(asked), asked[0] + 60.0 - now)
        asked.append(now)
        self._user_active[user] += 1
        self._channel_active[channel] += 1
        if len(self._asked) > 10_000:  # forget people who have not asked for a minute
            self._asked = {u: q for u, q in self._asked.items() if q and q[-1] > now - 60.0}
        return Slot(user, channel)

    def release_here(self, slot: Slot) -> None:
        for counter, key in ((self._user_active, slot.user), (self._channel_active, slot.channel)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
