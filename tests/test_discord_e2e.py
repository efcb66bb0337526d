"""The Discord adapter end to end: the real discord.py client, the real relay, pacer and Agents
SDK, against the fake Discord (REST + gateway) and the fake OpenAI server, all on 127.0.0.1.

Nothing here asserts on timing: tests wait for conditions (a reply's outcome, a message's state)
with generous timeouts, and assert on what a Discord user would have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import GUARD, Bot, assert_pages_are, final, long_markdown, no_stop
from harness import make_discord_config as make_config
from harness import running_discord_bot as running_bot

from bots.discord_bot import serve
from core.errors import SetupError
from core.host import Host
from core.relay import EMPTY_NOTE
from core.sources import build_brain
from fakes.discord_server import FakeDiscord, FakeInteraction, FakeMessage
from fakes.openai_server import FakeOpenAI

EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
POST = "POST /channels/{channel_id}/messages"
CURSOR = " ▌"
STOPPED = "⏹ stopped"
INTERRUPTED = "⚠️ interrupted — please ask again"


# --- harness (the shared parts live in tests/harness.py) -------------------------------------


@pytest.fixture
async def bot(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bot]:
    async with running_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as running:
        yield running


# --- checks on what users saw -----------------------------------------------------------------


def assert_never_pinged(fake: FakeDiscord) -> None:
    for message in fake.bot_messages():
        for rev in message.history:
            if rev.via == "interaction" and not rev.content:
                continue  # the deferred "is thinking…" state: no content, nothing to ping
            assert rev.allowed_mentions is not None, f"{rev.via} without allowed_mentions"
            assert rev.allowed_mentions.get("parse") == [], rev.allowed_mentions
            assert rev.pings == (), f"{rev.via} of {message.id} would ping {rev.pings}"


# --- the tests ---------------------------------------------------------------------------------


async def test_short_reply(bot: Bot) -> None:
    fake = bot.fake
    bot.model.reply("Hello **there**! A short answer.", delay=0.01)
    question, outcome = await bot.ask("say hi")

    assert outcome.status == "done"
    [page] = fake.reply_pages(question)
    assert final(page) == "Hello **there**! A short answer."
    assert page.reference == question.id  # posted as a reply to the question
    first = page.history[0]
    assert first.content.startswith("…") and first.content.endswith(CURSOR)  # the placeholder
    assert "streambot:stop:" in first.components[0]["components"][0]["custom_id"]
    assert no_stop(page.history[-1].components)  # Stop button gone when done
    assert page.custom_ids() == [f"streambot:fb:up:{question.id}", f"streambot:fb:down:{question.id}"]
    assert any(channel == fake.general.id for channel, _ in fake.typing)
    assert_never_pinged(fake)
    assert fake.throttled == []
    # the model got the question without the bot's mention, and who asked (a shared channel)
    assert bot.model.requests[-1].body["input"][-1]["content"] == "Alice: say hi"


async def test_long_markdown_reply_is_paged(bot: Bot) -> None:
    fake, text = bot.fake, long_markdown()
    bot.model.reply(text, delay=0.001)
    question, outcome = await bot.ask("write a lot")

    pages = fake.reply_pages(question)
    assert len(pages) >= 4
    shown = [final(p) for p in pages]
    assert_pages_are(shown, text, 2000)
    assert shown == outcome.pages
    for page in pages:
        assert all(len(rev.content) <= 2000 for rev in page.history)
        assert no_stop(page.history[-1].components)
    # each continuation replies to the page before it, so concurrent replies stay readable
    assert [p.reference for p in pages[1:]] == [p.id for p in pages[:-1]]
    assert not [c for c in fake.calls if c.status >= 400]
    assert_never_pinged(fake)


async def test_unicode_and_emoji_survive_paging(bot: Bot) -> None:
    fake = bot.fake
    unit = "Grüße 👋🏽 👨‍👩‍👧‍👦 🇳🇴 café naïve 日本語のテキスト עברית e\u0301 "
    text = (unit * 80).strip()  # > 2000 characters, so cuts land among emoji
    bot.model.reply(text)
    question, outcome = await bot.ask("emoji please")

    pages = [final(p) for p in fake.reply_pages(question)]
    assert len(pages) >= 2
    assert_pages_are(pages, text, 2000)
    assert outcome.status == "done"


async def test_mentions_in_model_output_never_ping(bot: Bot) -> None:
    fake = bot.fake
    text = f"Hey @everyone and @here, ask <@{fake.bob.id}> or <@&{fake.member_role}>."
    bot.model.reply(text, delay=0.01)
    question, _ = await bot.ask(f"mention <@{fake.bob.id}> for me")

    [page] = fake.reply_pages(question)
    assert final(page) == text
    assert len(page.history) >= 2  # the post and at least one edit were both checked
    assert_never_pinged(fake)


async def test_reply_ping_option_pings_only_the_asker(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(fake_discord, fake_openai, tmp_path, monkeypatch, reply_ping=True) as bot:
        fake_openai.reply("ping @everyone please")
        question, _ = await bot.ask("hi")
        [page] = fake_discord.reply_pages(question)
        assert page.history[0].pings == (f"reply:<@{fake_discord.alice.id}>",)
        assert all(rev.pings == () for rev in page.history[1:])


async def test_model_error_mid_stream_keeps_partial_text(bot: Bot) -> None:
    fake = bot.fake
    bot.model.error_mid_stream("The first half of an answer", "upstream exploded")
    question, outcome = await bot.ask("fail please")

    assert outcome.status == "failed"
    [page] = fake.reply_pages(question)
    shown = final(page)
    assert shown.startswith("The first half of an answer\n\n⚠️")
    assert "upstream exploded" in shown
    assert no_stop(page.history[-1].components)


async def test_empty_model_reply_says_so(bot: Bot) -> None:
    fake = bot.fake
    bot.model.empty()
    question, outcome = await bot.ask("say nothing")

    assert outcome.status == "empty"
    [page] = fake.reply_pages(question)
    assert final(page) == EMPTY_NOTE
    assert all(rev.content.strip() for rev in page.history)  # never an empty message
    assert not [c for c in fake.calls if c.status >= 400]


async def _streaming_page(bot: Bot, question: FakeMessage, shows: str) -> FakeMessage:
    """The reply's page once it shows `shows` (the model is held after that)."""

    def ready() -> FakeMessage | None:
        pages = bot.fake.reply_pages(question)
        return pages[0] if pages and shows in pages[0].content else None

    return await bot.fake.wait_for(ready, GUARD)


async def test_stop_button_stops_the_run(bot: Bot) -> None:
    fake = bot.fake
    script = bot.model.reply(["Partial ", "answer ", "that ", "never ", "ends"], hold_after=2)
    question = await fake.send(f"<@{fake.bot.id}> go on forever")
    page = await _streaming_page(bot, question, "Partial answer")
    assert page.has_buttons

    click = await fake.click(page, user=fake.alice)
    outcome = await bot.outcome(question.id)
    script.release()

    assert outcome.status == "stopped"
    assert click.callbacks == [{"type": 6}]  # acknowledged without a visible change
    assert final(page) == f"Partial answer \n\n{STOPPED}"  # the model's text, then the marker
    assert no_stop(page.history[-1].components)
    await bot.model.wait_idle()
    assert bot.model.disconnects == 1  # the model stream was really cancelled


async def test_stop_button_is_for_the_asker(bot: Bot) -> None:
    fake = bot.fake
    script = bot.model.reply(["Keep ", "going ", "on."], hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> talk")
    page = await _streaming_page(bot, question, "Keep")

    click = await fake.click(page, user=fake.bob)
    await fake.wait_for(lambda: click.callbacks, GUARD)
    assert click.callbacks[0]["type"] == 4 and click.callbacks[0]["data"]["flags"] == 64  # ephemeral
    script.release()
    outcome = await bot.outcome(question.id)
    assert outcome.status == "done"
    assert final(page) == "Keep going on."


async def test_stale_stop_button_is_tidied(bot: Bot) -> None:
    """A button left by an earlier run of the bot (no such reply now) is removed on click."""
    fake = bot.fake
    row = {
        "type": 1,
        "components": [{"type": 2, "style": 2, "label": "Stop", "custom_id": "streambot:stop:12345"}],
    }
    old = fake.seed_bot_message("half an answer" + CURSOR, [row])
    click = await fake.click(old)
    await fake.wait_for(lambda: click.callbacks, GUARD)
    assert click.callbacks[0]["type"] == 7
    assert final(old) == f"half an answer\n\n{STOPPED}"
    assert old.components == []


async def test_deleting_the_bot_message_cancels_cleanly(bot: Bot) -> None:
    fake = bot.fake
    script = bot.model.reply(["Soon ", "to be ", "deleted"], hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> hi")
    page = await _streaming_page(bot, question, "Soon")

    await fake.delete(page)
    deleted_at = len(fake.calls)
    outcome = await bot.outcome(question.id)
    script.release()

    assert outcome.status == "stopped"
    path = f"/channels/{page.channel_id}/messages/{page.id}"
    assert not [c for c in fake.calls[deleted_at:] if c.path.endswith(path)], "edited after deletion"
    await bot.model.wait_idle()
    assert bot.model.disconnects == 1


async def test_deleting_the_question_cancels_and_marks(bot: Bot) -> None:
    fake = bot.fake
    script = bot.model.reply(["Answer ", "to a ", "deleted question"], hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> hi")
    page = await _streaming_page(bot, question, "Answer")

    await fake.delete(question)
    outcome = await bot.outcome(question.id)
    script.release()
    assert outcome.status == "stopped"
    assert final(page) == f"Answer \n\n{STOPPED}"
    assert page.components == []


async def test_missed_delete_event_still_stops_without_errors(bot: Bot) -> None:
    """No MESSAGE_DELETE arrives: the next edit gets 404 Unknown Message and the run stops."""
    fake = bot.fake
    # slow chunks: the model is still writing when the next edit finds the message gone
    script = bot.model.reply(["Going "] + ["on "] * 30, delay=1.0, hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> hi")
    page = await _streaming_page(bot, question, "Going")

    await fake.delete(page, dispatch=False)
    script.release()
    outcome = await bot.outcome(question.id)
    assert outcome.status == "stopped"
    edits = [c.status for c in fake.calls if c.path.endswith(f"/messages/{page.id}")]
    assert edits.count(404) == 1 and edits[-1] == 404  # no retries after Unknown Message
    await bot.model.wait_idle()
    assert bot.model.disconnects == 1


async def test_ten_concurrent_replies_in_one_channel(bot: Bot) -> None:
    fake = bot.fake
    texts = [f"Answer number {i}: " + " ".join(f"w{i}.{j}" for j in range(60)) for i in range(10)]
    for text in texts:
        bot.model.reply(text, delay=0.02)
    people = [fake.person(f"person{i}") for i in range(10)]  # one each: [limits]
    questions = [await fake.send(f"<@{fake.bot.id}> question {i}", author=people[i]) for i in range(10)]
    outcomes = [await bot.outcome(q.id) for q in questions]

    assert [o.status for o in outcomes] == ["done"] * 10
    assert fake.throttled == []  # zero 429s
    shown = sorted("".join(final(p) for p in fake.reply_pages(q)) for q in questions)
    assert shown == sorted(texts)  # every reply intact (which text went where is up to the model)
    assert_never_pinged(fake)


async def test_ask_slash_command(bot: Bot) -> None:
    fake, text = bot.fake, long_markdown()
    bot.model.reply(text, delay=0.001)
    inter: FakeInteraction = await fake.slash("ask", {"prompt": "write a lot"})
    outcome = await bot.outcome(inter.id)

    assert outcome.status == "done"
    assert inter.callbacks[0]["type"] == 5  # deferred: "streambot is thinking…" at once
    assert inter.original is not None and len(inter.original.history) > 2  # edited progressively
    pages = [inter.original, *inter.followups]
    assert len(pages) >= 4
    assert_pages_are([final(p) for p in pages], text, 2000)
    assert all(no_stop(p.history[-1].components) for p in pages)
    assert_never_pinged(fake)
    assert fake.throttled == []
    assert bot.model.requests[-1].body["input"][-1]["content"] == "Alice: write a lot"


async def test_gateway_reconnect(bot: Bot) -> None:
    fake = bot.fake
    bot.model.reply("before")
    await bot.ask("one")

    await fake.drop_gateway(4000)
    await fake.wait_for(lambda: fake.resumes >= 1, GUARD)
    bot.model.reply("after a resume")
    question, _ = await bot.ask("two")
    assert final(fake.reply_pages(question)[0]) == "after a resume"

    await fake.request_reconnect()  # op 7
    await fake.wait_for(lambda: fake.resumes >= 2, GUARD)
    bot.model.reply("after op 7")
    question, _ = await bot.ask("three")
    assert final(fake.reply_pages(question)[0]) == "after op 7"


async def test_reply_chain_is_one_conversation(bot: Bot) -> None:
    fake = bot.fake
    bot.model.reply("The capital of Norway is Oslo.")
    first, _ = await bot.ask("What is the capital of Norway?")
    answer = fake.reply_pages(first)[0]

    bot.model.reply("About 700,000 people.")
    follow_up = await fake.send("How many people live there?", reply_to=answer)  # no mention
    await bot.outcome(follow_up.id)
    history = str(bot.model.requests[-1].body["input"])
    assert "capital of Norway" in history and "Oslo" in history

    bot.model.reply("Unrelated.")
    await bot.ask("Something else")  # a new mention starts a new conversation
    assert "Oslo" not in str(bot.model.requests[-1].body["input"])


async def test_dms_and_ignored_authors(bot: Bot) -> None:
    fake = bot.fake
    await fake.send(f"<@{fake.bot.id}> hi from a bot", author=fake.other_bot)
    bot.model.reply("hello in private")
    dm = await fake.dm("hi there")  # no mention needed in a DM
    await bot.outcome(dm.id)
    assert final(fake.reply_pages(dm)[0]) == "hello in private"
    assert fake.bot_messages(fake.general) == []  # the other bot got no answer
    assert len(bot.model.requests) == 1


async def test_access_lists(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    async with running_bot(
        fake,
        fake_openai,
        tmp_path,
        monkeypatch,
        role_ids=[fake.member_role],
        allow_dms=False,
        blocked_channel_ids=[fake.random.id],
    ) as bot:
        await fake.send(f"<@{fake.bot.id}> no role", author=fake.bob)
        await fake.dm("dms are off")
        await fake.send(f"<@{fake.bot.id}> blocked channel", channel=fake.random)
        fake_openai.reply("you may")
        question, _ = await bot.ask("alice has the role")
        assert final(fake.reply_pages(question)[0]) == "you may"
        assert len(fake.bot_messages()) == 1
        assert len(fake_openai.requests) == 1


async def test_open_threads(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    async with running_bot(fake, fake_openai, tmp_path, monkeypatch, open_threads=True) as bot:
        fake_openai.reply("Threaded answer about Oslo.")
        question, _ = await bot.ask("Tell me about Oslo")
        thread = fake.channels[question.id]  # a thread started from the question
        assert thread.type == 11 and thread.name == "Tell me about Oslo"
        [page] = fake.in_thread(thread.id)
        assert final(page) == "Threaded answer about Oslo."

        fake_openai.reply("Still Oslo.")
        follow_up = await fake.send("and its size?", channel=thread)  # no mention in our thread
        await bot.outcome(follow_up.id)
        assert "Threaded answer about Oslo." in str(fake_openai.requests[-1].body["input"])


async def test_message_content_intent_missing_is_a_clear_error(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeDiscord(message_content_intent=False) as fake:
        monkeypatch.setenv("DISCORD_BOT_TOKEN", fake.token)
        config = make_config(fake, fake_openai, tmp_path)
        with pytest.raises(SetupError, match="Message Content intent"):
            await asyncio.wait_for(serve(Host(config, build_brain(config)), config.discord), GUARD)
        assert fake.gateway_closes == [4014]


async def test_bad_token_is_a_clear_error(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "wrong")
    config = make_config(fake_discord, fake_openai, tmp_path)
    with pytest.raises(SetupError, match="rejected DISCORD_BOT_TOKEN") as err:
        await asyncio.wait_for(serve(Host(config, build_brain(config)), config.discord), GUARD)
    assert "wrong" not in str(err.value)


async def test_startup_logs_invite_url(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "streambot.discord")
    async with running_bot(fake_discord, fake_openai, tmp_path, monkeypatch):
        pass
    text = caplog.text
    assert f"client_id={fake_discord.app_id}" in text
    assert "permissions=274877975552" in text  # view, send, send in threads, read history
    assert "scope=bot+applications.commands" in text
    assert "Message Content" in text
    assert fake_discord.token not in text


async def test_sharding(fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discord recommends 2 shards: both connect; the guild's events arrive on its shard."""
    async with FakeDiscord(recommended_shards=2) as fake:
        async with running_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            await fake.wait_for(lambda: len(fake.identifies) == 2, GUARD)
            assert sorted(tuple(i["shard"]) for i in fake.identifies) == [(0, 2), (1, 2)]
            fake_openai.reply("sharded hello")
            question, _ = await bot.ask("hi")
            assert final(fake.reply_pages(question)[0]) == "sharded hello"


async def test_explicit_shard_ids(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeDiscord() as fake:
        mine = (fake.guild_id >> 22) % 3
        async with running_bot(
            fake, fake_openai, tmp_path, monkeypatch, shard_count=3, shard_ids=[mine]
        ) as bot:
            assert [tuple(i["shard"]) for i in fake.identifies] == [(mine, 3)]
            fake_openai.reply("from one shard of three")
            question, _ = await bot.ask("hi")
            assert final(fake.reply_pages(question)[0]) == "from one shard of three"


async def test_shutdown_interrupts_replies_that_outlast_the_grace_period(bot: Bot) -> None:
    fake = bot.fake
    bot.config.stream.shutdown_grace = 0.5
    script = bot.model.reply(["Halfway ", "there"], hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> long task")
    page = await _streaming_page(bot, question, "Halfway")

    assert bot.task is not None
    bot.task.cancel()  # what Ctrl-C / SIGTERM does to the CLI's serve() task
    with contextlib.suppress(asyncio.CancelledError):
        await bot.task
    script.release()
    assert bot.logs.outcomes[question.id].status == "stopped"
    assert final(page) == f"Halfway \n\n{INTERRUPTED}"
    assert page.components == []


async def test_shutdown_lets_running_replies_finish_and_turns_new_questions_away(bot: Bot) -> None:
    fake = bot.fake
    script = bot.model.reply(["Halfway ", "there"], hold_after=1)
    question = await fake.send(f"<@{fake.bot.id}> long task")
    page = await _streaming_page(bot, question, "Halfway")

    assert bot.task is not None
    bot.task.cancel()  # shutting down: the grace period (20 s by default) starts
    late = await fake.send(f"<@{fake.bot.id}> one more?")
    [notice] = await fake.wait_for(lambda: fake.reply_pages(late), GUARD)
    assert "restarting" in final(notice)
    script.release()
    with contextlib.suppress(asyncio.CancelledError):
        await bot.task
    assert bot.logs.outcomes[question.id].status == "done"
    assert final(page) == "Halfway there"
    assert len(bot.model.requests) == 1  # the late question never reached the model


async def test_a_person_over_the_rate_limit_is_told_to_wait(bot: Bot) -> None:
    fake = bot.fake
    bot.config.limits.user_per_minute = 1
    bot.model.reply("first answer")
    await bot.ask("one")
    question = await fake.send(f"<@{fake.bot.id}> two")
    [notice] = await fake.wait_for(lambda: fake.reply_pages(question), GUARD)
    assert "1 questions in the last minute. Please wait" in final(notice)
    assert len(bot.model.requests) == 1
    assert_never_pinged(fake)


async def test_bare_mention_gets_a_hint(bot: Bot) -> None:
    fake = bot.fake
    question = await fake.send(f"<@{fake.bot.id}>")
    [hint] = await fake.wait_for(lambda: fake.reply_pages(question), GUARD)
    assert "/ask" in final(hint)
    assert bot.model.requests == []
    assert_never_pinged(fake)
