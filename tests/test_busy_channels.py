"""Busy channels end to end, against the fakes' real limits: Discord budgets learned from the
headers (creates and edits apart, or together when Discord says so), `open_threads = "auto"`,
and Slack's 👀 for a question whose placeholder waits its turn. No timing is asserted: only
what people see, in what order, and that no request was rate limited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import running_discord_bot, slack_bot_for

import bots.slack_target
from bots.slack_api import ACK_EMOJI
from core.platform import Rate
from fakes.discord_server import FakeDiscord, FakeMessage
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, Limit, settled

WAIT = 120.0


def answer(i: int) -> str:
    return f"Answer {i}: " + " ".join(f"word{i}-{k}" for k in range(30)) + f" (end {i})"


def shown(fake: FakeDiscord, question: FakeMessage) -> str:
    pages = fake.reply_pages(question) or fake.in_thread(question.id)
    return "".join(p.content for p in pages)


@pytest.mark.parametrize("buckets", ["separate", "shared"])
async def test_discord_budgets_follow_the_buckets_discord_names(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buckets: str
) -> None:
    for i in range(6):
        fake_openai.reply(answer(i), delay=0.01)
    async with FakeDiscord(message_buckets=buckets) as fake:  # type: ignore[arg-type]
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            assert bot.host is not None
            pacer, finished = bot.host.pacer, bot.logs.outcomes
            questions = [
                await fake.send(f"<@{fake.bot.id}> q{i}", author=fake.person(f"p{i}")) for i in range(6)
            ]
            await fake.wait_for(lambda: all(q.id in finished for q in questions), WAIT)
            spent = {
                route: pacer.current(f"discord:{route}:{fake.general.id}") for route in ("create", "edit")
            }
            edit = pacer._budgets[f"discord:edit:{fake.general.id}"]
            linked = edit.partner is pacer._budgets[f"discord:create:{fake.general.id}"]
    assert sorted(shown(fake, q) for q in questions) == sorted(answer(i) for i in range(6))
    assert fake.throttled == []
    assert spent == {"create": Rate(5, 5.0), "edit": Rate(5, 5.0)}  # what Discord said
    # an edit counts in the creates' budget too when Discord serves both from one bucket
    assert linked == (buckets == "shared")


async def test_open_threads_auto_moves_answers_to_threads_only_while_the_channel_is_busy(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [fake_openai.reply(answer(i), hold_after=2) for i in range(4)]
    fake_openai.reply(answer(4))
    async with FakeDiscord() as fake:
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch, open_threads="auto") as bot:
            finished = bot.logs.outcomes
            questions = []
            for i in range(4):  # each keeps streaming (held) while the next is asked
                questions.append(await fake.send(f"<@{fake.bot.id}> q{i}", author=fake.person(f"p{i}")))
                await held[i].wait_held()
            for script in held:
                script.release()
            await fake.wait_for(lambda: all(q.id in finished for q in questions), WAIT)
            # the channel is quiet again: the next answer stays in it
            late = await fake.send(f"<@{fake.bot.id}> q4", author=fake.person("p4"))
            await fake.wait_for(lambda: late.id in finished, WAIT)
    in_threads = [q.id in fake.channels for q in [*questions, late]]
    # three answers share the channel's edits (one a second): a fourth would see each frame
    # only every ~4 s, so it gets a thread
    assert in_threads == [False, False, False, True, False]
    assert sorted(shown(fake, q) for q in [*questions, late]) == sorted(answer(i) for i in range(5))
    assert fake.throttled == []


async def test_slack_questions_waiting_for_their_placeholder_get_eyes(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """chat.postMessage allows about one message a second per channel: of eight questions asked
    at once, the last ones' placeholders wait several seconds, so they get 👀 meanwhile."""
    texts = [answer(i) for i in range(8)]
    for text in texts:
        fake_openai.reply(text, delay=0.01)
    async with FakeSlack() as slack, slack_bot_for(slack, fake_openai, tmp_path, streaming="edit"):
        questions = await asyncio.gather(
            *(slack.mention("C0BUSY", f"question {i}", user=f"U0P{i}") for i in range(8))
        )
        await slack.wait_for(
            lambda: all(settled(slack, "C0BUSY", ts) for ts in questions), WAIT, "every reply"
        )
    assert sorted(slack.reply_text("C0BUSY", ts) for ts in questions) == sorted(texts)
    assert slack.total_429s == 0, slack.rate_limited
    reacted = {ts: at for channel, ts, name, at in slack.reactions if name == ACK_EMOJI}
    by_placeholder = sorted(questions, key=lambda ts: slack.bot_messages("C0BUSY", ts)[0].created)
    last = by_placeholder[-1]  # its placeholder waited for the seven before it
    assert last in reacted and reacted[last] < slack.bot_messages("C0BUSY", last)[0].created
    assert by_placeholder[0] not in reacted  # the first was not held up


async def test_slack_native_replies_finishing_together_wait_their_turn_to_stop(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chat.stopStream (Tier 2) has a budget of its own: three native replies that end at once
    stop one after the other, within a workspace limit scaled down to one a second, with no
    429 - instead of three stops at once and two 429s."""
    monkeypatch.setattr(bots.slack_target, "STOP_RATE", Rate(50, 60.0, burst=1))
    texts = [answer(i) for i in range(3)]
    for text in texts:
        fake_openai.reply(text, delay=0.01)
    async with FakeSlack() as slack:
        slack.limits["chat.stopStream"] = Limit(60.0, 1.0)
        async with slack_bot_for(slack, fake_openai, tmp_path, streaming="native"):
            questions = await asyncio.gather(
                *(slack.mention("C0BUSY", f"question {i}", user=f"U0P{i}") for i in range(3))
            )
            await slack.wait_for(
                lambda: all(settled(slack, "C0BUSY", ts) for ts in questions), WAIT, "every reply"
            )
    assert sorted(slack.reply_text("C0BUSY", ts) for ts in questions) == sorted(texts)
    assert slack.count("chat.stopStream") == 3 and slack.total_429s == 0, slack.rate_limited
