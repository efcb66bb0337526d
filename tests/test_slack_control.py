"""Slack adapter end to end: stopping, deletions, failures, redelivery, HTTP mode, access, limits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from harness import assert_pages_are
from harness import slack_bot_for as bot

import bots.slack_target
from bots.slack_api import STOP_ACTION
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import DEFAULT_LIMITS, FakeSlack, Limit, settled

CHANNEL = "C0GENERAL"
WAIT = 30.0
TEXT = "".join(f"Sentence number {i} of a long, carefully streamed answer. " for i in range(12))


async def reply_in(slack: FakeSlack, channel: str, ts: str, pages: int = 1) -> str:
    await slack.wait_for(lambda: settled(slack, channel, ts, pages=pages), WAIT, "the reply to finish")
    return slack.reply_text(channel, ts)


async def all_acked(slack: FakeSlack) -> None:
    await slack.wait_for(lambda: all(d.acked for d in slack.deliveries.values()), WAIT, "acks")


# --- stopping ------------------------------------------------------------------------------


async def test_stop_button_stops_the_reply_and_only_for_the_asker(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    first = fake_openai.reply("alpha " * 40, delay=0.005, hold_after=10)
    second = fake_openai.reply("beta " * 200, delay=0.005, hold_after=10)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        # Someone else clicking Stop does nothing.
        ts1 = await slack.mention(CHANNEL, "first")
        await first.wait_held()
        msg = await slack.wait_for(
            lambda: next(
                (m for m in slack.bot_messages(CHANNEL, ts1) if "alpha" in m.text and m.buttons), None
            ),
            WAIT,
        )
        delivery = await slack.click(msg, STOP_ACTION, user="U0SOMEONEELSE")
        await slack.wait_for(lambda: delivery.acked, WAIT)
        first.release()
        await reply_in(slack, CHANNEL, ts1)
        assert "stopped" not in slack.reply_text(CHANNEL, ts1)

        # The asker's click stops it: partial text, a visible marker, no button.
        ts2 = await slack.mention(CHANNEL, "second")
        await second.wait_held()
        msg = await slack.wait_for(
            lambda: next(
                (m for m in slack.bot_messages(CHANNEL, ts2) if "beta" in m.text and m.buttons), None
            ),
            WAIT,
        )
        await slack.click(msg, STOP_ACTION)
        shown = await reply_in(slack, CHANNEL, ts2)
    assert slack.reply_text(CHANNEL, ts1) == ("alpha " * 40)
    assert shown.startswith("beta beta") and shown.endswith("⏹ stopped")
    assert shown.count("beta") < 200


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_deleting_the_question_stops_the_reply(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    script = fake_openai.reply("gamma " * 200, delay=0.005, hold_after=10)
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention(CHANNEL, "question")
        await script.wait_held()
        await slack.wait_for(lambda: any("gamma" in m.text for m in slack.bot_messages(CHANNEL, ts)), WAIT)
        await slack.delete_message(CHANNEL, ts)
        shown = await reply_in(slack, CHANNEL, ts)
        await slack.wait_for(lambda: fake_openai.disconnects >= 1, WAIT, "the model run to end")
    assert shown.startswith("gamma") and shown.endswith("⏹ stopped")


async def test_deleting_the_reply_cancels_the_run(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    script = fake_openai.reply("delta " * 200, delay=0.005, hold_after=10)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "question")
        await script.wait_held()
        msg = await slack.wait_for(
            lambda: next((m for m in slack.bot_messages(CHANNEL, ts) if "delta" in m.text), None), WAIT
        )
        await slack.delete_message(CHANNEL, msg.ts)
        await slack.wait_for(lambda: fake_openai.disconnects >= 1, WAIT, "the model run to end")
        script.release()
    assert [m for m in slack.bot_messages(CHANNEL, ts) if not m.deleted] == []


# --- native streams failing ----------------------------------------------------------------


async def test_native_stream_failing_mid_reply_falls_back_to_edits(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    slack.fail_streams_after = 2
    fake_openai.reply(TEXT, delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming="native"):
        ts = await slack.mention(CHANNEL, "stream then break")
        shown = await reply_in(slack, CHANNEL, ts)
    assert shown == TEXT  # nothing lost, nothing doubled
    assert slack.count("chat.appendStream", ok=False) == 1
    assert slack.count("chat.update", ok=True) >= 1
    [msg] = slack.bot_messages(CHANNEL, ts)
    assert len(msg.history) >= 3


async def test_expired_native_stream_is_finished_with_an_update(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    slack.stream_ttl = 0.5
    fake_openai.reply(TEXT, delay=0.02)
    async with bot(slack, fake_openai, tmp_path, streaming="native"):
        ts = await slack.mention(CHANNEL, "slow answer")
        assert await reply_in(slack, CHANNEL, ts) == TEXT
    assert any(c.error == "message_not_in_streaming_state" for c in slack.calls)


async def test_long_native_reply_rolls_over_before_the_stream_expires(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bots.slack_target, "NATIVE_PAGE_AGE", 0.4)
    slack.stream_ttl = 5.0
    fake_openai.reply(TEXT, delay=0.02)
    async with bot(slack, fake_openai, tmp_path, streaming="native"):
        ts = await slack.mention(CHANNEL, "long and slow")
        await slack.wait_for(
            lambda: settled(slack, CHANNEL, ts, pages=2) and len(slack.reply_text(CHANNEL, ts)) >= len(TEXT),
            WAIT,
        )
    msgs = slack.bot_messages(CHANNEL, ts)
    # every page a stream stopped in time (a last page already final when its turn comes is
    # posted whole, without a stream), showing exactly the text, cut into pages
    assert len(msgs) >= 2 and all(m.stream == "stopped" for m in msgs[:-1])
    assert msgs[-1].stream in ("stopped", None)
    assert_pages_are([m.text for m in msgs], TEXT, 11000)
    assert not any(c.error for c in slack.calls if c.method.startswith("chat."))


@pytest.mark.parametrize("error", ["unknown_method", "channel_type_not_supported"])
async def test_auto_mode_falls_back_when_native_streaming_is_refused(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, error: str
) -> None:
    slack.native_streaming, slack.native_error = False, error
    fake_openai.reply("first answer", delay=0.01)
    fake_openai.reply("second answer", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming="auto"):
        ts1 = await slack.mention(CHANNEL, "one")
        assert await reply_in(slack, CHANNEL, ts1) == "first answer"
        ts2 = await slack.mention(CHANNEL, "two")
        assert await reply_in(slack, CHANNEL, ts2) == "second answer"
    assert slack.count("chat.startStream") == 1  # refused once, then remembered


# --- delivery ------------------------------------------------------------------------------


async def test_redelivered_event_gets_one_reply(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("only once", delay=0.01)
    async with bot(slack, fake_openai, tmp_path):
        ts = await slack.mention(CHANNEL, "hello", redeliver=3)
        assert await reply_in(slack, CHANNEL, ts) == "only once"
        await all_acked(slack)
        await slack.wait_for(lambda: len(slack.deliveries) >= 8, WAIT)  # 4 x (message + mention)
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(fake_openai.requests) == 1
    # Every event was acknowledged on its first delivery: before any model work.
    assert all(d.attempts == 1 for d in slack.deliveries.values())


async def test_http_mode_with_signed_requests_and_retries(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.reply("over HTTP", delay=0.01)
    async with FakeSlack(mode="http") as slack, bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "hello over http", redeliver=2)
        assert await reply_in(slack, CHANNEL, ts) == "over HTTP"
        await all_acked(slack)
        # The Stop button works over HTTP too (block_actions posted as a form).
        script = fake_openai.reply("epsilon " * 200, delay=0.005, hold_after=10)
        ts2 = await slack.mention(CHANNEL, "long one")
        await script.wait_held()
        msg = await slack.wait_for(
            lambda: next(
                (m for m in slack.bot_messages(CHANNEL, ts2) if "epsilon" in m.text and m.buttons), None
            ),
            WAIT,
        )
        await slack.click(msg, STOP_ACTION)
        shown = await reply_in(slack, CHANNEL, ts2)
    assert shown.endswith("⏹ stopped")
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(fake_openai.requests) == 2


async def test_http_mode_rejects_unsigned_events(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    async with (
        FakeSlack(mode="http", signing_secret="not-the-apps-secret", ack_timeout=0.5, max_retries=1) as slack,
        bot(slack, fake_openai, tmp_path),
    ):
        d = await slack.send_event(
            {
                "type": "app_mention",
                "channel": CHANNEL,
                "user": "U0HUMAN",
                "text": "<@U0BOT> forged",
                "ts": slack.new_ts(),
            }
        )
        await slack.wait_for(lambda: d.attempts == 2, WAIT, "the retry")
        await slack.wait_for(lambda: not slack._tasks, WAIT, "deliveries to end")
    assert d.acked is None
    assert fake_openai.requests == [] and slack.bot_messages() == []


# --- who may talk to the bot ---------------------------------------------------------------


async def test_access_rules_and_bots_are_ignored(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("allowed answer", delay=0.01)
    fake_openai.reply("thread answer", delay=0.01)
    async with bot(
        slack, fake_openai, tmp_path, channel_ids=["C0ALLOWED"], user_ids=["U0VIP"], allow_dms=False
    ):
        await slack.mention("C0ELSEWHERE", "wrong channel", user="U0VIP")
        await slack.mention("C0ALLOWED", "wrong user", user="U0NOBODY")
        await slack.user_message("D0VIP", "dms are off", user="U0VIP")
        ts = await slack.mention("C0ALLOWED", "right place, right person", user="U0VIP")
        assert await reply_in(slack, "C0ALLOWED", ts) == "allowed answer"
        # Another bot talking in the thread is not answered; a person is.
        await slack.other_bot_message("C0ALLOWED", "beep boop", thread_ts=ts)
        await slack.user_message("C0ALLOWED", "not on the list", user="U0NOBODY", thread_ts=ts)
        await slack.user_message("C0ALLOWED", "and a follow-up", user="U0VIP", thread_ts=ts)
        await slack.wait_for(lambda: settled(slack, "C0ALLOWED", ts, pages=2), WAIT)
        await all_acked(slack)
    assert len(fake_openai.requests) == 2
    assert [m.text for m in slack.bot_messages()] == ["allowed answer", "thread answer"]
    prompts = json.dumps(fake_openai.requests[1].body)
    assert "and a follow-up" in prompts and "beep boop" not in prompts


# --- rate limits and errors ----------------------------------------------------------------


async def test_429_is_honoured_and_the_reply_still_completes(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    limits = {**DEFAULT_LIMITS, "chat.update": Limit(per_minute=20, burst=1)}  # stricter than ours
    fake_openai.reply(TEXT, delay=0.01)
    async with FakeSlack(limits=limits) as slack, bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "go")
        assert await reply_in(slack, CHANNEL, ts) == TEXT
    updates = [c for c in slack.calls if c.method == "chat.update"]
    limited = [c for c in updates if c.status == 429]
    assert limited, "the fake should have rate limited this reply"
    for c in limited:  # nothing was sent to that method until Retry-After had passed
        assert c.retry_after
        early = [u for u in updates if c.at < u.at < c.at + c.retry_after - 0.1]
        assert early == [], (c, early)


@pytest.mark.parametrize("failure", [500, "fatal_error", "service_unavailable"])
async def test_server_errors_are_retried(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, failure: int | str
) -> None:
    slack.fail_next["chat.update"] = [failure, failure]
    slack.fail_next["chat.postMessage"] = [failure]
    fake_openai.reply("survives hiccups", delay=0.01)
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "go")
        assert await reply_in(slack, CHANNEL, ts) == "survives hiccups"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1


@pytest.mark.parametrize("variable", ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"])
async def test_a_bad_token_is_reported_without_being_shown(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bots.slack_api import SlackSettings
    from bots.slack_bot import serve
    from core.config import Config
    from core.host import Host
    from core.pacing import Pacer
    from core.sources import build_brain

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-fake-bot-token")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-fake-app-token")
    monkeypatch.setenv(variable, "xoxb-revoked-secret-value")
    config = Config(slack=SlackSettings(enabled=True, api_base=slack.base_url))
    with pytest.raises(RuntimeError, match=f"{variable}.*invalid_auth") as info:
        await asyncio.wait_for(serve(Host(config, build_brain(config), Pacer()), config.slack), WAIT)
    assert "revoked-secret" not in str(info.value)
