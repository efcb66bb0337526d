"""Abuse and cost limits: who may start a reply, and the message when they may not."""

from __future__ import annotations

import pytest

from core.config import LimitsConfig
from core.limits import Gate, Refused
from fakes.clock import FakeClock


def gate(**limits: int) -> tuple[Gate, FakeClock]:
    clock = FakeClock()
    return Gate(LimitsConfig(**limits), clock), clock


def test_a_person_has_at_most_user_concurrent_replies_at_once() -> None:
    g, _ = gate(user_concurrent=2, user_per_minute=0)
    first, second = g.admit_here("ann", "c1", "q"), g.admit_here("ann", "c2", "q")
    with pytest.raises(Refused, match="already have 2 answer"):
        g.admit_here("ann", "c3", "q")
    g.admit_here("bob", "c1", "q")  # others are not affected
    g.release_here(first)
    g.admit_here("ann", "c3", "q")  # a finished reply frees the slot
    g.release_here(second)


def test_a_channel_has_at_most_channel_concurrent_replies() -> None:
    g, _ = gate(channel_concurrent=2, user_per_minute=0)
    slot = g.admit_here("a", "busy", "q")
    g.admit_here("b", "busy", "q")
    with pytest.raises(Refused, match="several questions here"):
        g.admit_here("c", "busy", "q")
    g.admit_here("c", "quiet", "q")
    g.release_here(slot)
    g.admit_here("c", "busy", "q")


def test_questions_per_minute_are_limited_and_the_wait_is_named() -> None:
    g, clock = gate(user_per_minute=3, user_concurrent=0)
    for _ in range(3):
        g.release_here(g.admit_here("ann", "c", "q"))
    with pytest.raises(Refused, match=r"3 questions in the last minute\. Please wait 60 s"):
        g.admit_here("ann", "c", "q")
    clock.t = 60.5
    g.admit_here("ann", "c", "q")  # the window slid past the first question


def test_long_prompts_are_refused_with_the_limit() -> None:
    g, _ = gate(max_prompt_chars=10)
    with pytest.raises(Refused, match=r"too long \(11 characters; the limit is 10\)"):
        g.admit_here("ann", "c", "x" * 11)
    g.admit_here("ann", "c", "x" * 10)


def test_zero_turns_every_limit_off() -> None:
    g, _ = gate(max_prompt_chars=0, user_concurrent=0, user_per_minute=0, channel_concurrent=0)
    for _ in range(100):
        g.admit_here("ann", "c", "x" * 100_000)
