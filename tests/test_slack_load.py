"""Ten people ask at once in one channel: every reply completes intact, with no 429 at all.

The fake enforces Slack's real limits (per method per workspace; chat.postMessage per channel),
so this checks that the shared budgets keep every reply inside them while sharing them fairly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import assert_grew, settled_state
from harness import running_slack_bot as running_bot

from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, settled

CHANNEL = "C0BUSY"
REPLIES = 10


def answer(i: int) -> str:
    return f"Answer {i}: " + " ".join(f"word{i}-{k}" for k in range(40)) + f" (end of answer {i})"


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_ten_concurrent_replies_in_one_channel(
    fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    # The fake answers requests in arrival order: match by content. Each answer is held after
    # its first chunks until all ten replies show them, so every reply is seen growing.
    scripts = [fake_openai.reply(answer(i), delay=0.01, hold_after=5) for i in range(REPLIES)]
    async with (
        FakeSlack() as slack,
        running_bot(
            slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "m.db"), streaming=mode
        ),
    ):
        questions = await asyncio.gather(
            *(slack.mention(CHANNEL, f"question {i}", user=f"U0PERSON{i}") for i in range(REPLIES))
        )

        def partial(ts: str) -> bool:
            msgs = slack.bot_messages(CHANNEL, ts)
            return len(msgs) == 1 and settled_state(msgs[0].text).startswith("Answer ")

        await slack.wait_for(
            lambda: all(partial(ts) for ts in questions),
            180.0,
            "all ten replies to show the start of their answer",
        )
        for script in scripts:
            script.release()
        await slack.wait_for(
            lambda: all(settled(slack, CHANNEL, ts) for ts in questions), 180.0, "all ten replies"
        )
    shown = sorted(slack.reply_text(CHANNEL, ts) for ts in questions)
    assert shown == sorted(answer(i) for i in range(REPLIES))  # each intact, none mixed up
    assert all(len(slack.bot_messages(CHANNEL, ts)) == 1 for ts in questions)
    assert slack.total_429s == 0, slack.rate_limited
    assert slack.errors() == []
    for ts in questions:  # every one of the ten was seen growing, nothing shown taken back
        [msg] = slack.bot_messages(CHANNEL, ts)
        assert_grew(msg.history, msg.text)
