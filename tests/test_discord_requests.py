"""The relay's Discord requests get one attempt each, bounded in time, and `/ask` follow-ups are
never posted twice.

discord.py retries 429s and 5xx itself (up to five tries, sleeping outside the pacer), so every
retry is a request the pacer never granted; and a hung request would wait out aiohttp's 300 s.
The relay retries through the pacer already, so each failure must reach it exactly once: the
fake counts what it answered, the outcome counts what the relay saw. No timing assertions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import discord
import pytest
from harness import assert_pages_are, final, long_markdown, no_stop
from harness import running_discord_bot as running_bot

import bots.discord_api
from bots.discord_api import DiscordSettings, RebasedHTTP
from bots.discord_bot import DiscordBot
from core.config import Config
from core.host import Host
from core.relay import Outcome
from fakes.discord_server import FakeDiscord, FakeInteraction
from fakes.faults import Fault, Faults
from fakes.openai_server import FakeOpenAI

CURSOR = "▌"
MESSAGE_ROUTES = (
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
    "POST /webhooks/{app_id}/{token}",
    "PATCH /webhooks/{app_id}/{token}/messages/{message_id}",
)
HISTORY = "GET /channels/{channel_id}/messages"


def answer(words: int = 40) -> str:
    return "An answer: " + " ".join(f"w{j}" for j in range(words)) + " (end)"


def message_calls(fake: FakeDiscord) -> tuple[int, int]:
    """(message creates and edits the fake answered, of which failed: 5xx, 429 or reset)."""
    calls = [c for c in fake.calls if c.route in MESSAGE_ROUTES]
    return len(calls), sum(1 for c in calls if c.status in (0, 429) or c.status >= 500)


def reached_the_relay(outcome: Outcome) -> int:
    return outcome.failed_requests + outcome.rate_limited


@dataclass
class FollowUpFaults(Faults):
    """The first follow-up posts fail as `first_posts` says (in order); nothing else does."""

    first_posts: list[Fault] = field(default_factory=list)

    def draw(self, op: str) -> Fault | None:  # type: ignore[override]
        if op == "post" and self.first_posts:
            fault = self.first_posts.pop(0)
            self.injected[fault] += 1
            return fault
        return None


async def test_each_failed_request_reaches_the_relay_once(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5xx (retried by discord.py when 500/502/504), 429s (slept on and re-sent by discord.py)
    and a reset: each is one request at the fake and one failure the relay retried."""
    text = answer()
    fake_openai.reply(text, delay=0.02)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = Faults(
                upcoming=["error", "rate_limit", "error", "reset", "rate_limit", "error"], seed=2
            )
            question, outcome = await bot.ask("hello")
    assert outcome.status == "done" and outcome.delivered
    pages = fake.reply_pages(question)
    assert [final(p) for p in pages] == [text] and no_stop(pages[0].history[-1].components)
    requests, failed = message_calls(fake)
    assert failed == sum(fake.faults.injected.values()) == 6
    assert reached_the_relay(outcome) == failed  # not one retried underneath the relay
    assert requests == outcome.posts + outcome.edits + failed
    assert fake.throttled == []  # and so no 429 from a request the pacer did not grant


async def test_a_429_of_one_bucket_slows_that_bucket_not_every_request(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay sees the 429 (one attempt) but leaves the pausing to the adapter, which knows
    from Discord's answer which bucket it was: the channel's edits wait and slow down; the
    global budget, which every reply in every channel draws on, does not."""
    text = answer()
    fake_openai.reply(text, delay=0.02)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = Faults(upcoming=[None, "rate_limit"], seed=3)  # the placeholder's first edit
            question, outcome = await bot.ask("hello")
            assert bot.host is not None
            pacer = bot.host.pacer
            edits, every_request = (
                pacer.current(f"discord:edit:{fake.general.id}"),
                pacer.current("discord:global"),
            )
    assert [final(p) for p in fake.reply_pages(question)] == [text]
    assert outcome.rate_limited == 1 and fake.faults.injected["rate_limit"] == 1
    assert edits is not None and edits.per > 5.0  # Discord's 5 per 5 s, slowed after the 429
    assert every_request == bots.discord_api.GLOBAL_RATE


async def test_ask_follow_up_failures_reach_the_relay_once(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through the interaction webhook, which discord.py retries on every 5xx."""
    text = long_markdown()
    fake_openai.reply(text, delay=0.001)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = Faults(
                upcoming=["error", "rate_limit", "error", "rate_limit"],
                error_rate=0.1,
                rate_limit_rate=0.05,
                seed=4,
            )
            inter: FakeInteraction = await fake.slash("ask", {"prompt": "write a lot"})
            outcome = await bot.outcome(inter.id)
    assert outcome.status == "done" and outcome.delivered
    pages = [inter.original, *inter.followups]
    assert_pages_are([final(p) for p in pages], text, 2000)
    requests, failed = message_calls(fake)
    assert failed == sum(fake.faults.injected.values()) >= 4
    assert reached_the_relay(outcome) == failed
    assert requests == outcome.posts + outcome.edits + failed
    assert fake.throttled == []


async def test_a_hung_request_is_cut_off_and_retried(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The placeholder's create never gets an answer: the reply goes on without it (the retry
    carries the same nonce) while that request is still hanging at the fake."""
    monkeypatch.setattr(bots.discord_api, "REQUEST_TIMEOUT", 0.5)
    fake_openai.reply("Answered despite a hung request.", delay=0.02)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = Faults(upcoming=["timeout"], timeout_after=3600.0)  # a hang
            question, outcome = await bot.ask("hello")
            assert fake.faults.injected["timeout"] == 1
            assert not [c for c in fake.calls if c.status == 504]  # still hanging
    assert outcome.status == "done" and outcome.delivered and outcome.failed_requests == 1
    assert [final(p) for p in fake.reply_pages(question)] == ["Answered despite a hung request."]
    assert len(fake.bot_messages()) == 1


@pytest.mark.parametrize("fault", ["applied_error", "reset"])
async def test_an_ask_follow_up_is_posted_once(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    """The first follow-up page is created and then answered 5xx (applied_error), or is lost
    with the connection (reset): the retry finds it in the channel's history instead of
    posting it again (or, not finding it, posts it once)."""
    text = long_markdown()
    fake_openai.reply(text, delay=0.001)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = FollowUpFaults(first_posts=[fault])
            inter: FakeInteraction = await fake.slash("ask", {"prompt": "write a lot"})
            outcome = await bot.outcome(inter.id)
    assert outcome.status == "done" and outcome.delivered
    pages = [inter.original, *inter.followups]
    assert len(pages) >= 3
    assert_pages_are([final(p) for p in pages], text, 2000)  # each page once, in order
    assert all(CURSOR not in final(p) and no_stop(p.history[-1].components) for p in pages)
    assert len(fake.bot_messages()) == len(pages)
    assert fake.faults.injected == {fault: 1} and outcome.failed_requests == 1
    assert len(fake.calls_to(HISTORY)) == 1  # looked up once, after the failure only


async def test_follow_ups_are_posted_again_where_history_cannot_be_read(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app used where the bot cannot read the channel: the lookup is refused, the page is
    posted again (a lost page would be worse than a possible duplicate) and the reply ends."""
    text = long_markdown()
    fake_openai.reply(text, delay=0.001)
    async with FakeDiscord() as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = FollowUpFaults(first_posts=["reset"])
            fake.unreadable.add(fake.general.id)
            inter: FakeInteraction = await fake.slash("ask", {"prompt": "write a lot"})
            outcome = await bot.outcome(inter.id)
    assert outcome.status == "done" and outcome.delivered
    assert_pages_are([final(p) for p in [inter.original, *inter.followups]], text, 2000)
    assert [c.status for c in fake.calls_to(HISTORY)] == [403]


async def test_every_client_uses_the_one_attempt_http_even_without_api_base() -> None:
    """Without `api_base` nothing is rebased, and the gateway is Discord's own."""
    bot = DiscordBot(Host(Config(), brain=None), DiscordSettings())  # type: ignore[arg-type]
    assert isinstance(bot.http, RebasedHTTP) and bot._connection.http is bot.http
    http = RebasedHTTP("", discord.http.HTTPClient(None))  # type: ignore[arg-type]
    url = "https://discord.com/api/v10/channels/1/messages"
    assert http.rebase(url) == url
    gateway = "wss://gateway.discord.gg/?v=10&encoding=json"
    assert await http.gateway_for(gateway) == gateway
