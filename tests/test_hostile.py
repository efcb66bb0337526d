"""Hostile input (issue 13): whatever arrives, no question is lost and no traceback is shown.

Each test here failed on the code before the fix it names; the figures they stand for are in
benchmarks/hostile_bench.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, bot_for as slack_bot, settled

from bots.slack_bot import ZWJ, neutralize
from core.paging import Pager

CHANNEL = "C0GENERAL"
WAIT = 60.0

# --- 4. special mentions in any case ---------------------------------------------------------


@pytest.mark.parametrize("text", [
    "<!HERE>", "<!Channel>", "<!EVERYONE>", "<!HeRe|x>", "<!SUBTEAM^S1|@devs>",
    "@HERE", "@Channel!", "hey @EveryOne,",
])
def test_special_mentions_are_neutralized_in_any_case(text: str) -> None:
    out = neutralize(text)
    assert out != text and out.replace(ZWJ, "") == text
    assert not re.search(r"<[!@][a-zA-Z]|@(channel|here|everyone)\b", out, re.IGNORECASE)


@pytest.mark.parametrize("text", ["<!DOCTYPE html>", "@Herein", "@CHANNELS", "ME@HERE.com"])
def test_case_insensitivity_leaves_lookalikes_alone(text: str) -> None:
    assert neutralize(text) == text


# --- 3. pages measured as sent, after neutralizing --------------------------------------------

MENTIONS = "".join(f"<@U{i:05d}> " for i in range(3000))  # 3,000 mentions, 30,000 characters


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_a_reply_of_3000_mentions_loses_no_text(slack: FakeSlack, fake_openai: FakeOpenAI,
                                                     tmp_path: Path, mode: str) -> None:
    fake_openai.reply(MENTIONS)
    async with slack_bot(slack, fake_openai, tmp_path, streaming=mode,
                         stream={"max_reply_chars": 0}):
        ts = await slack.mention(CHANNEL, "mention everyone you know")
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts, pages=3)
                             and "U02999" in slack.reply_text(CHANNEL, ts), WAIT)
    msgs = slack.bot_messages(CHANNEL, ts)
    assert [c for c in slack.errors() if c.error != "ratelimited"] == []
    assert all(len(m.text) <= 12_000 for m in msgs)
    shown = slack.reply_text(CHANNEL, ts)
    assert shown.replace(ZWJ, "").rstrip() == MENTIONS.rstrip()
    assert "<@U" not in shown.replace(f"<{ZWJ}@U", "")  # and none of them pings


def test_pager_measures_pages_with_the_target_s_measure() -> None:
    pager = Pager(200, measure=lambda text: len(text) * 2)
    pager.feed("word " * 200)
    pager.render(streaming=False)
    assert pager.pages and all(len(p.text) * 2 <= 200 for p in pager.pages)
    assert len(pager.render(streaming=False)) * 2 <= 200
