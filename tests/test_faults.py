"""Platform failures: 5xx, 429 storms, resets, timeouts and dropped connections.

The real adapters run against the fakes with `Faults` switched on (tests/fakes/faults.py).
Whatever fails, every reply must end showing exactly the model's text, once: no message left
with the cursor or a Stop button, no duplicate message, nothing lost. No timing assertions.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from harness import Bot, final, no_stop, running_discord_bot
from harness import running_slack_bot as running_bot

import bots.discord_api
from core.config import StreamConfig
from core.pacing import Pacer
from core.platform import Rate, RateLimited
from core.relay import Reply
from fakes.clock import FakeClock
from fakes.discord_server import FakeDiscord, FakeMessage
from fakes.faults import Faults
from fakes.openai_server import FakeOpenAI
from fakes.scripted import RecordingTarget, ScriptRun, deltas
from fakes.slack_server import FakeSlack, settled

CURSOR = "▌"
WAIT = 60.0
SURELY = ("error", "rate_limit", "reset", "timeout")  # the first requests fail, then at random


def answer(i: int) -> str:
    return f"Answer {i}: " + " ".join(f"w{i}.{j}" for j in range(30)) + f" (end {i})"


# --- Discord -----------------------------------------------------------------------------------


def discord_replies(fake: FakeDiscord, questions: list[FakeMessage]) -> list[str]:
    """Each question's reply text, checking it is one finished message chain and nothing else."""
    shown = []
    for q in questions:
        pages = fake.reply_pages(q)
        assert pages, f"no reply to {q.content!r}"
        for page in pages:
            assert CURSOR not in final(page) and no_stop(page.history[-1].components), final(page)
        shown.append("".join(final(p) for p in pages))
    replies = sum(len(fake.reply_pages(q)) for q in questions)
    assert len(fake.bot_messages()) == replies, "a duplicate or stray bot message"
    return shown


async def ask_everywhere(bot: Bot, channels: list, per_channel: int) -> list[FakeMessage]:
    fake = bot.fake
    questions = [
        await fake.send(
            f"<@{fake.bot.id}> question {i}",
            channel=channels[i % len(channels)],
            author=fake.person(f"person{i}"),
        )
        for i in range(len(channels) * per_channel)
    ]
    for q in questions:
        outcome = await bot.outcome(q.id)
        assert outcome.status == "done" and outcome.delivered
    return questions


def mixed_faults(seed: int) -> Faults:
    """Every kind of platform fault at once, the sure ones first (SURELY), then seeded."""
    return Faults(
        error_rate=0.1,
        rate_limit_rate=0.05,
        reset_rate=0.03,
        timeout_rate=0.03,
        timeout_after=1.0,
        applied_error_rate=0.05,
        seed=seed,
        upcoming=list(SURELY),
    )


async def test_discord_replies_survive_5xx_429s_and_resets(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [answer(i) for i in range(12)]
    for text in texts:
        fake_openai.reply(text, delay=0.01)
    async with FakeDiscord() as fake:
        channels = [fake.general, fake.random, fake.add_text_channel("third")]
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = mixed_faults(seed=7)
            questions = await ask_everywhere(bot, channels, 4)
    assert Counter(discord_replies(fake, questions)) == Counter(texts)
    assert fake.faults.total >= len(SURELY)


async def test_discord_post_applied_before_a_5xx_is_not_duplicated(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discord sometimes creates the message and still answers 500; the retried create must
    not post it twice (the adapter sends a nonce Discord de-duplicates on)."""
    fake_openai.reply(answer(0), delay=0.01)
    async with FakeDiscord() as fake:
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            fake.faults = Faults(upcoming=["applied_error", "reset"], applied_error_posts=True)
            questions = await ask_everywhere(bot, [fake.general], 1)
    assert discord_replies(fake, questions) == [answer(0)]
    assert fake.faults.injected == Counter(applied_error=1, reset=1)


async def test_discord_gateway_drop_mid_stream(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply streaming across the drop finishes once; a question asked while the gateway is
    down (replayed on RESUME) and one asked after it are each answered once."""
    script = fake_openai.reply(["Streaming ", "across ", "a gateway ", "drop."], hold_after=2)
    fake_openai.reply("asked while down")
    fake_openai.reply("asked after")
    async with FakeDiscord() as fake:
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            first = await fake.send(f"<@{fake.bot.id}> one")
            await script.wait_held()
            await fake.drop_gateway(4000)
            during = await fake.send(f"<@{fake.bot.id}> two", author=fake.bob)
            await fake.wait_for(lambda: fake.resumes >= 1, WAIT)
            script.release()
            after = await fake.send(f"<@{fake.bot.id}> three", author=fake.person("carol"))
            for q in (first, during, after):
                await bot.outcome(q.id)
    shown = discord_replies(fake, [first, during, after])
    assert shown[0] == "Streaming across a gateway drop."
    assert sorted(shown[1:]) == ["asked after", "asked while down"]
    assert len(fake_openai.requests) == 3  # nobody was answered twice


async def test_discord_typing_shares_the_global_budget(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typing indicators count towards Discord's global limit: with many busy channels they
    must not push message requests over it (scaled down here: 10 requests/s, of which the bot
    plans 6 per 1.1 s, leaving room for the few unpaced start-up requests)."""
    monkeypatch.setattr(bots.discord_api, "GLOBAL_RATE", Rate(6, 1.1))
    texts = [answer(i) for i in range(12)]
    for text in texts:
        fake_openai.reply(text, delay=0.01)
    async with FakeDiscord(global_limit=(10, 1.0)) as fake:
        channels = [fake.add_text_channel(f"busy-{c}") for c in range(12)]
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            questions = await ask_everywhere(bot, channels, 1)
    assert Counter(discord_replies(fake, questions)) == Counter(texts)
    assert fake.typing and fake.throttled == []


# --- Slack -------------------------------------------------------------------------------------


def slack_replies(slack: FakeSlack, threads: list[tuple[str, str]]) -> list[str]:
    """Each thread's reply text, checking it is one finished message and nothing else."""
    for channel, ts in threads:
        msgs = slack.bot_messages(channel, ts)
        assert len(msgs) == 1, [m.text for m in msgs]
    assert len(slack.bot_messages()) == len(threads), "a stray bot message"
    return [slack.reply_text(c, ts) for c, ts in threads]


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_slack_replies_survive_5xx_429s_and_resets(
    fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    texts = [answer(i) for i in range(9)]
    for text in texts:
        fake_openai.reply(text, delay=0.01)
    async with (
        FakeSlack() as slack,
        running_bot(
            slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "m.db"), streaming=mode
        ),
    ):
        slack.faults = mixed_faults(seed=3)
        channels = ["C0ONE", "C0TWO", "C0THREE"]
        threads = []
        for i in range(len(texts)):
            channel = channels[i % 3]
            threads.append((channel, await slack.mention(channel, f"question {i}", user=f"U0P{i}")))
        await slack.wait_for(lambda: all(settled(slack, c, ts) for c, ts in threads), 2 * WAIT, "every reply")
    assert Counter(slack_replies(slack, threads)) == Counter(texts)
    assert slack.faults.total >= len(SURELY)


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_slack_post_applied_before_a_5xx_is_not_shown_twice(
    fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    """Slack has no idempotency key for posts: when one went through despite a 5xx or a reset,
    the adapter removes it before posting again, so the reply is shown once and finished."""
    fake_openai.reply(answer(0), delay=0.01)
    async with (
        FakeSlack() as slack,
        running_bot(
            slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "m.db"), streaming=mode
        ),
    ):
        slack.faults = Faults(upcoming=["applied_error", "reset"], applied_error_posts=True)
        ts = await slack.mention("C0ONCE", "question")
        await slack.wait_for(lambda: settled(slack, "C0ONCE", ts), WAIT, "the reply")
    assert slack_replies(slack, [("C0ONCE", ts)]) == [answer(0)]
    assert slack.count("chat.delete") == 1


async def test_slack_socket_mode_drop_mid_stream(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """The reply streaming across the drop finishes once; a mention sent while the socket is
    down (delivered on reconnect) and one sent after it are each answered once."""
    script = fake_openai.reply(["Streaming ", "across ", "a socket ", "drop."], hold_after=2)
    fake_openai.reply("asked while down")
    fake_openai.reply("asked after")
    channel = "C0DROP"
    async with (
        FakeSlack() as slack,
        running_bot(
            slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "m.db"), streaming="edit"
        ),
    ):
        first = await slack.mention(channel, "one")
        await script.wait_held()
        connections = slack.connections
        await slack.drop_socket()
        during = await slack.mention(channel, "two", user="U0TWO")
        await slack.wait_connected(WAIT, more_than=connections)
        script.release()
        after = await slack.mention(channel, "three", user="U0THREE")
        threads = [(channel, first), (channel, during), (channel, after)]
        await slack.wait_for(lambda: all(settled(slack, c, ts) for c, ts in threads), WAIT, "every reply")
    shown = slack_replies(slack, threads)
    assert shown[0] == "Streaming across a socket drop."
    assert sorted(shown[1:]) == ["asked after", "asked while down"]
    assert len(fake_openai.requests) == 3


# --- the relay's deadline ----------------------------------------------------------------------


async def test_a_429_storm_gives_up_on_the_final_text_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Endless 429s on the final edit end the reply as undelivered at `final_deadline`, with a
    warning, instead of retrying forever."""
    clock = FakeClock()
    target = RecordingTarget(clock, limit=500)
    target.errors = [None] + [RateLimited(5.0)] * 10_000  # the placeholder, then only 429s
    reply = Reply(
        ScriptRun(clock, deltas("never shown", 20, 0.1)),
        target,
        Pacer(clock),
        StreamConfig(final_deadline=60),
    )
    with caplog.at_level(logging.WARNING, "streambot.relay"):
        outcome = await clock.run(reply.run())
    assert not outcome.delivered
    assert 60 <= clock.now() <= 120
    assert any("giving up" in r.getMessage() for r in caplog.records)
    assert outcome.rate_limited > 1


def test_faults_are_reproducible_from_the_seed() -> None:
    def draws() -> list:
        faults = Faults(error_rate=0.2, rate_limit_rate=0.1, applied_error_rate=0.1, seed=5)
        return [faults.draw("edit") for _ in range(200)]

    first = draws()
    assert first == draws()
    assert 20 <= first.count("error") <= 60 and 5 <= first.count("rate_limit") <= 35
    posts = Faults(applied_error_rate=1.0)
    assert posts.draw("post") is None  # a post is only applied-then-failed when asked for
