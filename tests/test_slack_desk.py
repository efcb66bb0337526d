"""Slack as a support desk: native streams show status, tool steps and a Stop button; answers
carry 👍/👎 and "Get a human"; a handoff pings the team once and silences the bot until resolved."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from agents import function_tool
from harness import slack_bot_for as bot
from prometheus_client import REGISTRY

from bots.slack_api import HUMAN_ACTION, RESOLVED_ACTION, STOP_ACTION
from core.ledger import SqliteLedger
from fakes.openai_server import FakeOpenAI
from fakes.slack_server import FakeSlack, Message, settled

CHANNEL = "C0SUPPORT"
WAIT = 30.0
SUPPORT = {
    "profiles": {"support": {"handoff": {"slack_group": "S0ONCALL"}}},
    "routes": [{"platform": "slack", "channel_ids": [CHANNEL], "profile": "support"}],
}


@function_tool
async def lookup_order(order: int) -> str:
    """Look an order up by its number."""
    return f"order {order}: shipped"


async def reply_in(slack: FakeSlack, ts: str) -> Message:
    await slack.wait_for(lambda: settled(slack, CHANNEL, ts), WAIT, "the reply to finish")
    [msg] = slack.bot_messages(CHANNEL, ts)
    return msg


def feedback_count(profile: str, vote: str) -> float:
    value = REGISTRY.get_sample_value(
        "streambot_feedback_total", {"platform": "slack", "profile": profile, "vote": vote}
    )
    return value or 0.0


# --- native streams: status, task chunks, the Stop button -------------------------------------


async def test_native_stream_shows_status_tool_steps_and_feedback(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.tool_call("lookup_order", {"order": 42}, call_id="call_42")
    fake_openai.reply("Order 42 has shipped.", delay=0.005)
    loading = ["Reading the question…", "Looking things up…"]
    async with bot(
        slack, fake_openai, tmp_path, streaming="native", tools=[lookup_order], loading_messages=loading
    ):
        ts = await slack.mention(CHANNEL, "where is order 42?")
        msg = await reply_in(slack, ts)
        # the placeholder: the thread's "is thinking…" status, with the loading messages
        assert (CHANNEL, ts, "is thinking…") in slack.statuses
        assert loading in slack.loading_messages
        # the tool step streamed as a task chunk: running, then done
        assert [(u["id"], u["status"]) for u in msg.task_updates] == [
            ("call_42", "in_progress"),
            ("call_42", "complete"),
        ]
        assert msg.tasks["call_42"]["title"] == "lookup order"
        assert msg.text == "Order 42 has shipped."
        assert msg.stream == "stopped"
        # 👍/👎 came with chat.stopStream; no "Get a human" where no handoff is set up
        assert msg.feedback is not None and not msg.buttons
        stop = [c for c in slack.calls if c.method == "chat.stopStream"]
        assert stop and any(b.get("type") == "context_actions" for b in stop[-1].args["blocks"])
        # the stream started with its first content, not empty
        [start] = [c for c in slack.calls if c.method == "chat.startStream"]
        assert start.args.get("chunks") and start.args.get("task_display_mode") == "timeline"
        # the Stop button posted beside the stream is gone
        assert [m for m in slack.bot_messages(CHANNEL, ts, controls=True) if m.is_control] == []
        controls = [c for c in slack.calls if c.method == "chat.postMessage" and "Stop" in str(c.args)]
        assert len(controls) == 1 and slack.count("chat.delete", ok=True) == 1


async def test_a_failing_tool_is_an_error_task_in_the_native_stream(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tools.py").write_text(
        "def check_status(service: str) -> str:\n"
        '    """Check a service."""\n'
        '    raise RuntimeError("status page down")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_openai.tool_call("check_status", {"service": "api"}, call_id="call_s")
    fake_openai.reply("I could not check the status right now.")
    desk = {
        "profiles": {"support": {"tools": ["broken_tools:check_status"]}},
        "routes": [{"platform": "slack", "profile": "support"}],
    }
    async with bot(slack, fake_openai, tmp_path, streaming="native", **desk):
        ts = await slack.mention(CHANNEL, "is the API up?")
        msg = await reply_in(slack, ts)
        assert [(u["id"], u["status"]) for u in msg.task_updates] == [
            ("call_s", "in_progress"),
            ("call_s", "error"),
        ]
        assert msg.text == "I could not check the status right now."


async def test_native_stream_stops_on_its_stop_button(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    script = fake_openai.reply("alpha " * 200, delay=0.005, hold_after=10)
    async with bot(slack, fake_openai, tmp_path, streaming="native"):
        ts = await slack.mention(CHANNEL, "a long one", user="U0ASKER")
        await script.wait_held()
        control = await slack.wait_for(
            lambda: next((m for m in slack.bot_messages(CHANNEL, ts, controls=True) if m.is_control), None),
            WAIT,
            "the Stop button beside the stream",
        )
        answer = slack.bot_messages(CHANNEL, ts)[0]
        assert answer.stream == "streaming"
        await slack.click(control, STOP_ACTION, user="U0ASKER")
        msg = await reply_in(slack, ts)
        assert msg is answer and msg.stream == "stopped"
        assert msg.text.startswith("alpha") and msg.text.endswith("⏹ stopped")
        assert control.deleted
        assert msg.feedback is None  # a stopped answer asks for no rating


async def test_slow_model_shows_as_the_thread_status_in_native_mode(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    script = fake_openai.reply("finally", delay=0.0, hold_after=0)
    async with bot(slack, fake_openai, tmp_path, streaming="native", stream={"slow_notice": 0.2}):
        ts = await slack.mention(CHANNEL, "slow please")
        await slack.wait_for(
            lambda: any(s[2].startswith("⏳") for s in slack.statuses), WAIT, "the slow status"
        )
        assert slack.count("chat.startStream") == 0  # nothing streamed yet: the status stands in
        script.release()
        msg = await reply_in(slack, ts)
        assert msg.text == "finally"
        # the slow status is cleared at the end
        await slack.wait_for(lambda: slack.statuses[-1] == (CHANNEL, ts, ""), WAIT, "the status cleared")


# --- feedback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_feedback_is_stored_last_write_wins_and_counted(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.reply("Here you go.")
    before_up, before_down = feedback_count("default", "up"), feedback_count("default", "down")
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention("C0GENERAL", "help")
        await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), WAIT, "the reply")
        [msg] = slack.bot_messages("C0GENERAL", ts)
        assert msg.feedback is not None
        await slack.click_feedback(msg, "up", user="U0ANN")
        await slack.click_feedback(msg, "up", user="U0BOB", redeliver=1)
        await slack.wait_for(lambda: feedback_count("default", "up") >= before_up + 3, WAIT, "3 up clicks")
        await slack.click_feedback(msg, "down", user="U0ANN")  # Ann changes her mind
        view = await slack.wait_for(
            lambda: slack.views[-1] if slack.views else None, WAIT, "the reason modal"
        )
        await slack.submit_view(view, {"reason": {"text": "It skipped step 2"}}, user="U0ANN")
        ledger = SqliteLedger(str(tmp_path / "memory.db"))

        async def reason_stored() -> bool:
            _, rows, _ = await ledger.everything()
            return any(v.reason for v in rows)

        await slack.wait_for(reason_stored, WAIT, "the reason")
        answers, rows, _ = await ledger.everything()
        assert sorted((v.user, v.vote, v.reason) for v in rows) == [
            ("U0ANN", "down", "It skipped step 2"),
            ("U0BOB", "up", ""),
        ]
        assert [a.question for a in answers] == ["help"]
        assert feedback_count("default", "down") == before_down + 1
        assert view["private_metadata"] == rows[0].reply_id == answers[0].reply_id


async def test_feedback_can_be_turned_off(slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.reply("Plain.")
    async with bot(slack, fake_openai, tmp_path, streaming="edit", feedback={"enabled": False}):
        ts = await slack.mention("C0GENERAL", "hi")
        await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), WAIT, "the reply")
        [msg] = slack.bot_messages("C0GENERAL", ts)
        assert msg.feedback is None and msg.blocks == [{"type": "markdown", "text": "Plain."}]


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_a_slack_without_feedback_buttons_gets_the_answer_without_them(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    slack.feedback_blocks = False  # an older Slack: context_actions is an invalid block
    fake_openai.reply("The answer.")
    fake_openai.reply("The second answer.")
    async with bot(slack, fake_openai, tmp_path, streaming=mode):
        for question in ("one", "two"):
            ts = await slack.mention("C0GENERAL", question)
            await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), WAIT, "the reply")  # noqa: B023
            [msg] = slack.bot_messages("C0GENERAL", ts)
            assert msg.text.startswith("The") and msg.feedback is None
    assert len([c for c in slack.calls if c.error == "invalid_blocks"]) == 1  # tried once, then never


# --- handoff -----------------------------------------------------------------------------------


async def all_acked(slack: FakeSlack) -> None:
    await slack.wait_for(
        lambda: all(d.acked for d in slack.deliveries.values()), WAIT, "every delivery acked"
    )


async def wait_logged(caplog: pytest.LogCaptureFixture, slack: FakeSlack, text: str, times: int = 1) -> None:
    await slack.wait_for(
        lambda: sum(text in r.getMessage() for r in caplog.records) >= times, WAIT, f"log: {text}"
    )


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_get_a_human_pings_once_and_the_bot_stays_silent_until_resolved(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO)
    fake_openai.reply("I think you need to restart it.")
    async with bot(slack, fake_openai, tmp_path, streaming=mode, **SUPPORT):
        ts = await slack.mention(CHANNEL, "it is broken", user="U0ASKER")
        msg = await reply_in(slack, ts)
        assert [b["action_id"] for b in msg.buttons] == [HUMAN_ACTION] and msg.feedback is not None
        # double click, a redelivered click, and someone else's click
        await slack.click(msg, HUMAN_ACTION, user="U0ASKER", redeliver=1)
        await slack.click(msg, HUMAN_ACTION, user="U0ASKER")
        await slack.click(msg, HUMAN_ACTION, user="U0OTHER")
        # all four handled: one pinged, three were told a person is already asked
        await slack.wait_for(
            lambda: len(slack.ephemeral) >= 3 and slack.pings,
            WAIT,
            "the ping and three 'already asked' notes",
        )
        assert slack.pings == [(CHANNEL, slack.pings[0][1], "<!subteam^S0ONCALL>")]
        handoff = slack.messages[(CHANNEL, slack.pings[0][1])]
        assert handoff.thread_ts == ts and "<@U0ASKER> asked for a person" not in handoff.text
        assert [b["action_id"] for b in handoff.buttons] == [RESOLVED_ACTION]
        await slack.wait_for(lambda: slack.messages[(CHANNEL, ts)].reactions == {"sos"}, WAIT, "the 🆘")

        # while a person has it, the bot does not answer in the thread
        requests = len(fake_openai.requests)
        await slack.user_message(CHANNEL, "hello? anyone?", thread_ts=ts, user="U0ASKER")
        await wait_logged(caplog, slack, "is with a person; not answering")
        assert len(fake_openai.requests) == requests

        # Resolved: the 🆘 goes, and the bot answers again, with the thread's memory
        await slack.click(handoff, RESOLVED_ACTION, user="U0AGENT")
        await slack.wait_for(lambda: "Resolved" in handoff.text, WAIT, "the handoff message to say resolved")
        assert slack.messages[(CHANNEL, ts)].reactions == set() and not handoff.buttons
        fake_openai.reply("Glad it works now.")
        await slack.user_message(CHANNEL, "thanks, fixed", thread_ts=ts, user="U0ASKER")
        await slack.wait_for(
            lambda: any("Glad it works" in m.text for m in slack.bot_messages(CHANNEL, ts)), WAIT, "an answer"
        )
        history = fake_openai.requests[-1].body
        assert "it is broken" in str(history) and "hello? anyone?" not in str(history)
        assert len(slack.pings) == 1


async def test_the_model_hands_off_once_and_resolved_command_reopens(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake_openai.tool_call("request_human", {"reason": "wants a refund <!channel>"})
    fake_openai.reply("I've asked a person to help with the refund.")
    async with bot(slack, fake_openai, tmp_path, streaming="edit", **SUPPORT):
        ts = await slack.mention(CHANNEL, "I want a refund", redeliver=2)  # Slack resends it twice
        await slack.wait_for(
            lambda: slack.pings and settled(slack, CHANNEL, ts), WAIT, "the answer and the ping"
        )
        await all_acked(slack)
        answer = slack.bot_messages(CHANNEL, ts)[0]
        assert answer.text == "I've asked a person to help with the refund."
        assert answer.buttons == [] and answer.feedback is not None  # a person is asked already
        assert [p[2] for p in slack.pings] == ["<!subteam^S0ONCALL>"]  # never the model's <!channel>
        handoff = slack.messages[(CHANNEL, slack.pings[0][1])]
        assert "wants a refund" in handoff.text
        # the model's own tool list had request_human
        tools = fake_openai.requests[0].body.get("tools", [])
        assert [t["name"] for t in tools] == ["request_human"]

        await slack.wait_for(lambda: slack.messages[(CHANNEL, ts)].reactions == {"sos"}, WAIT, "the 🆘")
        await slack.mention(CHANNEL, "resolved", thread_ts=ts, user="U0AGENT")
        await slack.wait_for(
            lambda: any("Resolved" in m.text for m in slack.bot_messages(CHANNEL, ts)), WAIT, "resolved"
        )
        assert slack.messages[(CHANNEL, ts)].reactions == set()
        assert len(slack.pings) == 1
        # answering again: a new question in the thread reaches the model
        fake_openai.reply("Back to you.")
        await slack.mention(CHANNEL, "one more thing", thread_ts=ts)
        await slack.wait_for(
            lambda: any("Back to you." in m.text for m in slack.bot_messages(CHANNEL, ts)), WAIT, "an answer"
        )
