"""Slack: shutting down with replies in flight, finishing replies a crash cut off, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import slack_bot_for as bot

from core.state import LocalStore
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, settled

CHANNEL = "C0GENERAL"
WAIT = 30.0
INTERRUPTED = "⚠️ interrupted — please ask again"


async def held_message(slack: FakeSlack, ts: str, shows: str):
    return await slack.wait_for(
        lambda: next((m for m in slack.bot_messages(CHANNEL, ts) if shows in m.text), None), WAIT
    )


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_shutdown_interrupts_replies_that_outlast_the_grace_period(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    script = fake_openai.reply("delta " * 100, delay=0.005, hold_after=10)
    async with bot(slack, fake_openai, tmp_path, streaming=mode, stream={"shutdown_grace": 0.3}) as task:
        ts = await slack.mention(CHANNEL, "a long one")
        await script.wait_held()
        await held_message(slack, ts, "delta delta")
        task.cancel()  # Ctrl-C / SIGTERM
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts), WAIT, "the reply to be finished")
    script.release()
    shown = slack.reply_text(CHANNEL, ts)
    assert shown.startswith("delta delta") and shown.endswith(INTERRUPTED)


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_a_reply_left_by_a_dead_process_is_finished_by_the_next(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    db = str(tmp_path / "memory.db")
    script = fake_openai.reply("epsilon " * 100, delay=0.005, hold_after=10)
    first_store = LocalStore(db)
    async with bot(slack, fake_openai, tmp_path, streaming=mode, store=first_store):
        ts = await slack.mention(CHANNEL, "a long one")
        await script.wait_held()
        message = await held_message(slack, ts, "epsilon epsilon")
        await first_store.flush()
        # The first process is frozen here, as if killed; a new one starts with the same file.
        async with bot(slack, fake_openai, tmp_path, streaming=mode, store=LocalStore(db)):
            await slack.wait_for(lambda: INTERRUPTED in message.text or None, WAIT, "the repair")
            # what the model had said when it was held: ten 3-character chunks
            assert message.text == ("epsilon " * 100)[:30] + f"\n\n{INTERRUPTED}"
            assert not message.buttons and message.stream != "streaming"
            assert len(slack.bot_messages(CHANNEL, ts)) == 1
        script.release()


async def test_questions_past_the_rate_limit_get_a_note_not_an_answer(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("one answer")
    async with bot(slack, fake_openai, tmp_path, streaming="edit", limits={"user_per_minute": 1}):
        first = await slack.mention(CHANNEL, "first")
        await slack.wait_for(lambda: settled(slack, CHANNEL, first), WAIT, "the first reply")
        second = await slack.mention(CHANNEL, "second")
        await slack.wait_for(lambda: slack.bot_messages(CHANNEL, second) or None, WAIT, "a note")
    assert "questions in the last minute" in slack.reply_text(CHANNEL, second)
    assert len(fake_openai.requests) == 1
