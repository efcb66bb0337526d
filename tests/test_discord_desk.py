"""Discord as a support desk: 👍/👎 buttons (👎 opens a modal for a reason), "Get a human" pings
the profile's role exactly once, and the bot stays silent in that conversation until resolved."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from harness import GUARD, final
from harness import running_discord_bot as running_bot
from prometheus_client import REGISTRY

from core.ledger import SqliteLedger
from fakes.discord_server import FakeDiscord, FakeMessage
from fakes.openai_server import FakeOpenAI


def feedback_count(vote: str) -> float:
    labels = {"platform": "discord", "profile": "default", "vote": vote}
    return REGISTRY.get_sample_value("streambot_feedback_total", labels) or 0.0


def pinging(fake: FakeDiscord) -> list[tuple[FakeMessage, tuple[str, ...]]]:
    """The bot's messages that notified anyone, and whom."""
    return [(m, rev.pings) for m in fake.bot_messages() for rev in m.history if rev.pings]


async def test_feedback_buttons_store_the_last_vote_and_a_reason(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    up, down = feedback_count("up"), feedback_count("down")
    async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
        fake_openai.reply("Use the settings page.")
        question, outcome = await bot.ask("how do I change my email?")
        assert outcome.status == "done"
        [page] = fake.reply_pages(question)
        await fake.click(page, f"streambot:fb:up:{question.id}", user=fake.bob)
        await fake.click(page, f"streambot:fb:up:{question.id}", user=fake.bob)  # a double click
        await fake.click(page, f"streambot:fb:up:{question.id}", user=fake.alice)
        thumbs_down = await fake.click(page, f"streambot:fb:down:{question.id}", user=fake.alice)
        await fake.wait_for(lambda: thumbs_down.modal, GUARD, "the reason modal")
        assert thumbs_down.modal is not None and thumbs_down.modal["title"] == "What was wrong?"
        field = thumbs_down.modal["components"][0]["components"][0]
        assert field["required"] is False  # the reason is optional
        submitted = await fake.submit_modal(thumbs_down, {field["custom_id"]: "The page moved"})
        await fake.wait_for(lambda: submitted.acknowledged, GUARD, "the modal's answer")

        _, votes, _ = await SqliteLedger(str(tmp_path / "memory.db")).everything()
        assert sorted((v.user, v.vote, v.reason) for v in votes) == [
            (str(fake.alice.id), "down", "The page moved"),
            (str(fake.bob.id), "up", ""),
        ]
        assert feedback_count("up") == up + 3 and feedback_count("down") == down + 1
        assert pinging(fake) == []


async def test_get_a_human_pings_the_role_once_and_silences_until_resolved(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO)
    desk = {
        "profiles": {"support": {"handoff": {"discord_role": fake.member_role}}},
        "routes": [{"platform": "discord", "profile": "support"}],
    }
    async with running_bot(fake, fake_openai, tmp_path, monkeypatch, open_threads=True, **desk) as bot:
        fake_openai.reply("Have you tried the reset link?")
        question, _ = await bot.ask("I cannot log in")
        [page] = fake.in_thread(question.id)  # the answer, in a thread opened on the question
        thread = page.channel_id
        assert page.custom_ids()[-1] == f"streambot:human:{question.id}"
        clicks = [
            await fake.click(page, f"streambot:human:{question.id}", user=user)
            for user in (fake.alice, fake.alice, fake.bob)
        ]
        await fake.wait_for(
            lambda: len(pinging(fake)) >= 1 and sum(len(c.followups) for c in clicks) >= 2,
            GUARD,
            "one ping and two 'already asked' notes",
        )
        [(handoff, pings)] = pinging(fake)
        assert pings == (f"<@&{fake.member_role}>",) and handoff.channel_id == thread
        assert handoff.history[0].allowed_mentions["roles"] == [fake.member_role]  # that role only
        await fake.wait_for(lambda: "🆘" in page.reactions, GUARD, "the 🆘 on the answer")
        assert handoff.custom_ids() == [f"streambot:resolved:discord:thread:{question.id}"]

        # in the handed-off thread the bot stays silent
        requests = len(fake_openai.requests)
        await fake.send(f"<@{fake.bot.id}> hello?", channel=fake.channels[thread])
        await fake.wait_for(
            lambda: any("is with a person" in r.getMessage() for r in caplog.records), GUARD, "the silence"
        )
        assert len(fake_openai.requests) == requests

        # Resolved: it answers there again (the thread's memory kept)
        resolve = await fake.click(handoff, handoff.custom_ids()[0], user=fake.bob)
        await fake.wait_for(lambda: resolve.acknowledged, GUARD, "the Resolved click")
        assert "Resolved" in final(handoff) and handoff.history[-1].components == []
        fake_openai.reply("Welcome back.")
        again = await fake.send(f"<@{fake.bot.id}> works now", channel=fake.channels[thread])
        await bot.outcome(again.id)
        assert "I cannot log in" in str(fake_openai.requests[-1].body)
        assert len(pinging(fake)) == 1
