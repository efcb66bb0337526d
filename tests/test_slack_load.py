"""Ten people ask at once in one channel: every reply completes intact, with no 429 at all.

The fake enforces Slack's real limits (per method per workspace; chat.postMessage per channel),
so this checks that the shared budgets keep every reply inside them while sharing them fairly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, settled
from harness import running_slack_bot as running_bot

CHANNEL = "C0BUSY"
REPLIES = 10


def answer(i: int) -> str:
    return f"Answer {i}: " + " ".join(f"word{i}-{k}" for k in range(40)) + f" (end of answer {i})"


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_ten_concurrent_replies_in_one_channel(fake_openai: FakeOpenAI, tmp_path: Path,
                                                     mode: str) -> None:
    for i in range(REPLIES):  # the fake answers requests in arrival order: match by content
        fake_openai.reply(answer(i), delay=0.01)
    async with FakeSlack() as slack, running_bot(slack, model_base_url=fake_openai.base_url,
                                                 memory_path=str(tmp_path / "m.db"),
                                                 streaming=mode):
        questions = await asyncio.gather(*(slack.mention(CHANNEL, f"question {i}",
                                                         user=f"U0PERSON{i}")
                                           for i in range(REPLIES)))
        await slack.wait_for(lambda: all(settled(slack, CHANNEL, ts) for ts in questions), 180.0,
                             "all ten replies")
    shown = sorted(slack.reply_text(CHANNEL, ts) for ts in questions)
    assert shown == sorted(answer(i) for i in range(REPLIES))  # each intact, none mixed up
    assert all(len(slack.bot_messages(CHANNEL, ts)) == 1 for ts in questions)
    assert slack.total_429s == 0, slack.rate_limited
    assert slack.errors() == []
    histories = [slack.bot_messages(CHANNEL, ts)[0].history for ts in questions]
    if mode == "native":  # startStream has a workspace-wide burst: every reply starts at once
        assert all(len(h) >= 2 for h in histories)
    else:  # placeholders queue at ~1 per second per channel; a late one may post its final text
        assert any(len(h) >= 3 for h in histories)
