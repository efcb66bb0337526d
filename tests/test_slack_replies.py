"""Slack adapter end to end: what people see for each kind of question and answer.

The real adapter (bolt, slack_sdk, core relay, Agents SDK) runs against the fake Slack and the
fake OpenAI server; assertions are on the text history of the messages, as a person saw them.
Waits are on conditions with generous timeouts; nothing asserts on durations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import assert_grew, assert_pages_are
from harness import slack_bot_for as bot

from bots.slack_api import STOP_ACTION, ZWJ
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import BOT_USER_ID, FakeSlack, settled

CHANNEL = "C0GENERAL"
WAIT = 30.0


async def reply_in(slack: FakeSlack, channel: str, ts: str, pages: int = 1) -> str:
    await slack.wait_for(lambda: settled(slack, channel, ts, pages=pages), WAIT, "the reply to finish")
    return slack.reply_text(channel, ts)


def grew(history: list[str], final: str) -> bool:
    """The message was shown growing into `final`: several distinct states (three at least,
    the placeholder counting), each state's settled text a prefix of the next one's, so that
    nothing shown was taken back (see harness.assert_grew)."""
    states = [h.replace(" ▌", "").replace("▌", "").rstrip() for h in history]
    distinct = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert_grew(history, final)
    return len(distinct) >= 3


MODES = ["native", "edit"]


@pytest.mark.parametrize("mode", MODES)
async def test_mention_gets_a_threaded_streamed_reply(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    answer = "Paris is the capital of **France**. It has about two million inhabitants."
    fake_openai.reply(answer, delay=0.02)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "What is the capital of France?")
        assert await reply_in(slack, CHANNEL, ts) == answer

    [msg] = slack.bot_messages(CHANNEL, ts)
    assert msg.thread_ts == ts  # in the thread of the mention
    assert grew(msg.history, answer), msg.history
    assert slack.total_429s == 0
    # The model got the question without the bot's mention.
    assert "What is the capital of France?" in json.dumps(fake_openai.requests[0].body)
    assert BOT_USER_ID not in json.dumps(fake_openai.requests[0].body)
    if mode == "native":
        start = next(c for c in slack.calls if c.method == "chat.startStream")
        assert start.args["recipient_user_id"] == "U0HUMAN"
        assert slack.count("chat.update") == 0 and slack.count("chat.stopStream") == 1
    else:
        assert msg.history[0].startswith("…")  # the placeholder came first
        assert slack.count("chat.startStream") == 0
        # The Stop button was there while streaming and is gone now.
        post = next(c for c in slack.calls if c.method == "chat.postMessage")
        assert any(b["type"] == "actions" for b in post.args["blocks"])
        assert msg.buttons == []


@pytest.mark.parametrize("mode", MODES)
async def test_dm_is_answered(slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str) -> None:
    fake_openai.reply("Hi! How can I help?", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.user_message("D0DIRECT", "hello bot")
        assert await reply_in(slack, "D0DIRECT", ts) == "Hi! How can I help?"
    assert slack.errors() == []


async def test_thread_follow_up_uses_the_thread_as_memory(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("Your favourite colour is noted: teal.", delay=0.01)
    fake_openai.reply("You told me it is teal.", delay=0.01)
    async with bot(slack, fake_openai, tmp_path):
        ts = await slack.mention(CHANNEL, "My favourite colour is teal.")
        await reply_in(slack, CHANNEL, ts)
        # No mention needed in a thread the bot is part of.
        await slack.user_message(CHANNEL, "What is my favourite colour?", thread_ts=ts)
        await slack.wait_for(
            lambda: len(slack.bot_messages(CHANNEL, ts)) == 2 and settled(slack, CHANNEL, ts, pages=2), WAIT
        )
        # A thread the bot is not part of is left alone.
        other = await slack.user_message(CHANNEL, "people talking")
        await slack.user_message(CHANNEL, "still just people", thread_ts=other)
        await slack.wait_for(lambda: slack.count("conversations.replies") >= 1, WAIT)

    assert slack.bot_messages(CHANNEL, ts)[1].text == "You told me it is teal."
    second = json.dumps(fake_openai.requests[1].body)
    assert "My favourite colour is teal." in second and "noted: teal" in second
    assert slack.bot_messages(CHANNEL, other) == []
    assert len(fake_openai.requests) == 2


async def test_follow_up_after_a_restart_finds_the_thread(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("First answer.", delay=0.01)
    fake_openai.reply("Second answer, remembering the first.", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "Remember the number 42.")
        await reply_in(slack, CHANNEL, ts)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):  # a new process
        await slack.user_message(CHANNEL, "Which number?", thread_ts=ts)
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts, pages=2), WAIT)
    assert slack.count("conversations.replies") == 1
    assert "Remember the number 42." in json.dumps(fake_openai.requests[1].body)


async def test_assistant_thread(slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.reply("Here is a haiku:\n\nsoft rain on the roof\n", delay=0.01)
    async with bot(slack, fake_openai, tmp_path):
        channel, thread_ts = await slack.start_assistant_thread()
        await slack.wait_for(lambda: slack.suggested_prompts, WAIT, "suggested prompts")
        await slack.user_message(channel, "Write me a haiku about rain", thread_ts=thread_ts)
        await slack.wait_for(
            lambda: settled(slack, channel, thread_ts) and slack.statuses and slack.statuses[-1][2] == "",
            WAIT,
        )

    assert slack.reply_text(channel, thread_ts) == "Here is a haiku:\n\nsoft rain on the roof\n"
    [prompts] = slack.suggested_prompts
    assert prompts["thread_ts"] == thread_ts and 1 <= len(prompts["prompts"]) <= 4
    assert [s[2] for s in slack.statuses] == ["is thinking…", ""]
    assert slack.titles[(channel, thread_ts)] == "Write me a haiku about rain"


LONG_MARKDOWN = (
    "# Sorting in Python\n\n"
    + "Sorting is *stable* and uses **Timsort**. " * 20
    + "\n\n"
    + "```python\n"
    + "".join(
        f"def step_{i}(items: list[int]) -> list[int]:\n    return sorted(items)[{i}:]\n\n" for i in range(60)
    )
    + "```\n\n"
    + "| n | time |\n|---|------|\n"
    + "".join(f"| {i} | {i * 3} ms |\n" for i in range(20))
    + "\nThat's all — *enjoy*!"
)


@pytest.mark.parametrize("mode", MODES)
async def test_6000_chars_of_markdown_with_a_long_code_block(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    assert 5500 < len(LONG_MARKDOWN) < 7000
    fake_openai.reply(LONG_MARKDOWN, delay=0.001)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "Explain sorting with lots of code")
        assert await reply_in(slack, CHANNEL, ts) == LONG_MARKDOWN
    [msg] = slack.bot_messages(CHANNEL, ts)
    if mode == "edit":  # every intermediate state kept the code block closed
        assert all(h.count("```") % 2 == 0 for h in msg.history)
    assert slack.total_429s == 0


@pytest.mark.parametrize("mode", MODES)
async def test_long_answer_continues_in_more_messages(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.reply(LONG_MARKDOWN, delay=0.001)
    async with bot(slack, fake_openai, tmp_path, streaming=mode, page_chars=2000):
        ts = await slack.mention(CHANNEL, "long please")
        await slack.wait_for(
            lambda: (
                settled(slack, CHANNEL, ts, pages=3) and "enjoy" in slack.bot_messages(CHANNEL, ts)[-1].text
            ),
            WAIT,
        )
    msgs = slack.bot_messages(CHANNEL, ts)
    assert all(m.thread_ts == ts for m in msgs)
    # Exactly the answer; code blocks closed at the end of a page and reopened on the next one.
    assert_pages_are([m.text for m in msgs], LONG_MARKDOWN, 2000)
    assert slack.total_429s == 0


UNICODE = "Grüße! 你好，世界。 مرحبا بالعالم 👩‍👩‍👧‍👦 🇳🇴 e\u0301 ﷽ — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓"


@pytest.mark.parametrize("mode", MODES)
async def test_unicode_arrives_intact(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.reply(list(UNICODE), delay=0.005)  # one code point at a time
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "say something in many scripts ✨")
        assert await reply_in(slack, CHANNEL, ts) == UNICODE


PINGS = (
    "Attention <!channel> and <!here|here> and <!everyone>! Also @channel, @here, @everyone, "
    "<!subteam^S0123|@team> and <@U0BOSS> or <@W0ENT|someone>. Email me@here.com. "
    "Code: `@dataclass` <!DOCTYPE html>"
)
PING_PATTERNS = [
    r"<!channel",
    r"<!here",
    r"<!everyone",
    r"<!subteam",
    r"<@U",
    r"<@W",
    r"(?<![\w.])@(channel|here|everyone)\b",
]


@pytest.mark.parametrize("mode", MODES)
async def test_mentions_in_model_output_never_ping(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.reply(PINGS, delay=0.005)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "ping everyone")
        shown = await reply_in(slack, CHANNEL, ts)
    assert shown.replace(ZWJ, "") == PINGS  # readable as written...
    sent = [json.dumps(c.args, ensure_ascii=False) for c in slack.calls if c.method.startswith("chat.")]
    for pattern in PING_PATTERNS:  # ...but no request ever carried a live mention
        assert not any(re.search(pattern, s) for s in sent), pattern
    assert "<!DOCTYPE html>" in shown and "`@dataclass`" in shown  # code is left alone


@pytest.mark.parametrize("mode", MODES)
async def test_model_error_mid_stream_keeps_the_partial_text(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.error_mid_stream("The answer starts well and then", message="overloaded", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "fail please")
        shown = await reply_in(slack, CHANNEL, ts)
    assert shown.startswith("The answer starts well and then")
    assert "⚠️" in shown and "Model error" in shown


@pytest.mark.parametrize("mode", MODES)
async def test_empty_model_reply_says_so(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.empty()
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "say nothing")
        shown = await reply_in(slack, CHANNEL, ts)
    assert "no text" in shown
    assert all(not m.buttons for m in slack.bot_messages(CHANNEL, ts))


async def test_stop_button_is_there_while_streaming_in_edit_mode(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("short", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "hi")
        await reply_in(slack, CHANNEL, ts)
    post = next(c for c in slack.calls if c.method == "chat.postMessage")
    [button] = [e for b in post.args["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == STOP_ACTION
