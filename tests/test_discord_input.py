"""Discord input end to end: attachments downloaded from the fake CDN and given to the model,
who is speaking, a thread joined mid-way, /forget and /ask new:true. The real discord.py client,
relay and Agents SDK against the fake Discord and the fake OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Bot, final
from harness import running_discord_bot as running_bot
from test_attachments import PNG

from fakes.discord_server import FakeDiscord
from fakes.openai_server import FakeOpenAI, images_in, user_texts


@pytest.fixture
async def bot(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bot]:
    async with running_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as running:
        yield running


def last_sent(model: FakeOpenAI) -> list[str]:
    return user_texts(model.requests[-1].body)


async def test_an_image_only_mention_is_answered_with_the_picture(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    model.reply("A one-pixel image.")
    question = await fake.send(f"<@{fake.bot.id}>", files=[("shot.png", "image/png", PNG)])
    outcome = await bot.outcome(question.id)
    assert outcome.status == "done"
    [page] = fake.reply_pages(question)
    assert final(page) == "A one-pixel image."
    [image] = images_in(model.requests[-1].body)
    assert image.startswith("data:image/png;base64,")
    assert "Alice: (sent without a message)\n[image: shot.png]" in last_sent(model)[-1]
    assert len(fake.downloads) == 1


async def test_a_long_paste_is_read_and_a_binary_named(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    paste = "def main():\n" + "    pass\n" * 50
    model.reply("Looks fine.")
    question = await fake.send(
        f"<@{fake.bot.id}> review this",
        files=[
            ("message.txt", "text/plain; charset=utf-8", paste.encode()),
            ("tool.exe", None, b"MZ\x90\x00"),
        ],
    )
    await bot.outcome(question.id)
    [page] = fake.reply_pages(question)
    assert (
        final(page) == "_tool.exe: not a picture or a text file I can read, so I left it out_\n\nLooks fine."
    )
    sent = last_sent(model)[-1]
    assert sent.startswith("Alice: review this\n\n[file: message.txt]\ndef main():")
    assert "tool.exe" not in sent


async def test_speakers_are_named_and_a_thread_is_read_from_its_start(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    thread = await fake.open_user_thread("plans")
    await fake.send("let's ship on Friday", channel=thread, author=fake.bob)
    await fake.send("Friday works for me", channel=thread)
    model.reply("Bob suggested Friday.")
    _, outcome = await bot.ask("what did Bob suggest?", channel=thread)
    assert outcome.status == "done"
    assert last_sent(model) == [
        "Earlier messages in this thread:\nBob: let's ship on Friday\nAlice: Friday works for me\n\n"
        "Alice: what did Bob suggest?"
    ]
    # next time only what was said since the bot's answer is new
    await fake.send("or Monday?", channel=thread, author=fake.bob)
    model.reply("Monday then.")
    await bot.ask("so which day?", channel=thread)
    sent = last_sent(model)
    assert sent[0].startswith("Earlier messages in this thread:\nBob: let's ship")  # remembered
    assert sent[-1] == "Earlier messages in this thread:\nBob: or Monday?\n\nAlice: so which day?"


async def test_a_thread_started_on_a_message_begins_with_it(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    start = await fake.send("Incident: the API is down", author=fake.bob)
    thread = await fake.open_user_thread("incident", on=start)
    await fake.send("restarting the pods", channel=thread)
    model.reply("Bob reported an outage; Alice restarted pods.")
    await bot.ask("summarise this thread", channel=thread)
    assert last_sent(model) == [
        "Earlier messages in this thread:\nBob: Incident: the API is down\nAlice: restarting the pods\n\n"
        "Alice: summarise this thread"
    ]


async def test_a_dm_does_not_name_the_speaker(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    question = await fake.dm("hello there")
    await bot.outcome(question.id)
    assert last_sent(model) == ["hello there"]


async def test_forget_and_ask_new_start_a_dm_over(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    first = await fake.dm("my name is Alice")
    await bot.outcome(first.id)
    second = await fake.dm("what is my name?")
    await bot.outcome(second.id)
    assert last_sent(model) == ["my name is Alice", "what is my name?"]

    dm = fake.dm_channel(fake.alice)
    inter = await fake.slash("forget", {}, channel=dm)
    await fake.wait_for(lambda: inter.acknowledged, what="/forget to answer")
    assert "forgotten" in str(inter.callbacks)
    third = await fake.dm("what is my name?")
    await bot.outcome(third.id)
    assert last_sent(model) == ["what is my name?"]

    inter = await fake.slash("ask", {"prompt": "start again", "new": True}, channel=dm)
    await bot.outcome(inter.id)
    assert last_sent(model) == ["start again"]
    inter = await fake.slash("ask", {"prompt": "and now?"}, channel=dm)
    await bot.outcome(inter.id)
    assert last_sent(model) == ["start again", "and now?"]


async def test_ask_takes_a_file(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    model.reply("A tiny picture.")
    inter = await fake.slash("ask", {"prompt": "what is it?", "file": ("pic.png", "image/png", PNG)})
    assert (await bot.outcome(inter.id)).status == "done"
    assert images_in(model.requests[-1].body)
    assert last_sent(model)[-1] == "Alice: what is it?\n[image: pic.png]"


async def test_forget_in_a_channel_explains_instead(bot: Bot) -> None:
    inter = await bot.fake.slash("forget", {})
    await bot.fake.wait_for(lambda: inter.acknowledged, what="/forget to answer")
    assert "every new mention starts a fresh conversation" in str(inter.callbacks)


async def test_forget_answers_at_once_while_a_reply_streams(bot: Bot) -> None:
    fake, model = bot.fake, bot.model
    held = model.reply(["Nice to ", "meet you."], hold_after=1)
    first = await fake.dm("my name is Alice")
    await held.wait_held()
    inter = await fake.slash("forget", {}, channel=fake.dm_channel(fake.alice))
    await fake.wait_for(lambda: inter.acknowledged, 20.0, "/forget to answer while the reply streams")
    assert first.id not in bot.logs.outcomes  # still streaming: Discord wants an answer in 3 s
    held.release()
    await bot.outcome(first.id)
    question = await fake.dm("what is my name?")
    await bot.outcome(question.id)
    assert last_sent(model) == ["what is my name?"]  # forgotten after the reply that was streaming
