"""Slack input end to end: files downloaded with the bot token (the fake refuses without it),
who is speaking, a thread the bot is mentioned into mid-way, `/streambot new` and a new DM
message starting fresh. The real bolt / slack_sdk / Agents SDK against the fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import slack_bot_for as bot
from test_attachments import PNG, make_pdf

from fakes.openai_server import FakeOpenAI, images_in, user_texts
from fakes.slack_server import FakeSlack, settled

CHANNEL = "C0GENERAL"
WAIT = 30.0


async def answered(slack: FakeSlack, channel: str, ts: str, pages: int = 1) -> str:
    await slack.wait_for(lambda: settled(slack, channel, ts, pages=pages), WAIT, "the reply to finish")
    return slack.reply_text(channel, ts)


def sent(model: FakeOpenAI) -> list[str]:
    return user_texts(model.requests[-1].body)


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_a_picture_alone_is_downloaded_with_the_token_and_seen(
    fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    async with FakeSlack(mode=mode) as slack, bot(slack, fake_openai, tmp_path, streaming="edit"):
        fake_openai.reply("A tiny image.")
        ts = await slack.mention(CHANNEL, "", files=[("shot.png", "image/png", PNG)])
        assert await answered(slack, CHANNEL, ts) == "A tiny image."
        assert slack.downloads and all(authed for _, authed in slack.downloads)
    [image] = images_in(fake_openai.requests[-1].body)
    assert image.startswith("data:image/png;base64,")
    assert "Sam: (sent without a message)\n[image: shot.png]" in sent(fake_openai)[-1]


async def test_files_in_a_dm_are_read_and_a_sign_in_page_is_not_a_file(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        fake_openai.reply("Revenue grew.")
        ts = await slack.user_message(
            "D0DIRECT",
            "what does the report say?",
            files=[
                ("report.pdf", "application/pdf", make_pdf("Revenue grew 12 percent")),
                ("x.zip", "application/zip", b"PK"),
            ],
        )
        text = await answered(slack, "D0DIRECT", ts)
        assert text == "_x.zip: not a picture or a text file I can read, so I left it out_\n\nRevenue grew."
        assert sent(fake_openai) == [
            "what does the report say?\n\n[file: report.pdf]\nRevenue grew 12 percent"
        ]

        # the token goes to Slack's hosts only; without it Slack answers with its sign-in page,
        # which is named in a note, never read as the file
        slack.file_host = "localhost"
        fake_openai.reply("ok")
        ts = await slack.user_message("D0DIRECT", "and this?", files=[("notes.txt", "text/plain", b"hi")])
        text = await answered(slack, "D0DIRECT", ts)
        assert text.startswith("_notes.txt: could not download it (got a sign-in page instead")
        assert slack.downloads[-1] == (slack.downloads[-1][0], False)
        assert "Sign in" not in str(fake_openai.requests[-1].body)


async def test_speakers_are_named_and_a_thread_joined_mid_way_is_read(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        root = await slack.user_message(CHANNEL, "Where should the offsite be?", user="U0OTHER")
        await slack.user_message(CHANNEL, "Lisbon, I'd say", thread_ts=root, user="U0OTHER")
        await slack.user_message(CHANNEL, "Porto is cheaper", thread_ts=root)
        fake_openai.reply("Alex suggested Lisbon; Sam said Porto is cheaper.")
        ts = await slack.mention(CHANNEL, "summarise this thread", thread_ts=root)
        await slack.wait_for(lambda: settled(slack, CHANNEL, root), WAIT)
        assert sent(fake_openai) == [
            "Earlier messages in this thread:\nAlex: Where should the offsite be?\nAlex: Lisbon, I'd say\n"
            "Sam: Porto is cheaper\n\nSam: summarise this thread"
        ]
        # the bot is in the thread now: a follow-up is answered, named, and not read again
        fake_openai.reply("Lisbon.")
        await slack.user_message(CHANNEL, "which did Alex want?", thread_ts=root, user="U0OTHER")
        await slack.wait_for(lambda: settled(slack, CHANNEL, root, pages=2), WAIT)
        texts = sent(fake_openai)
        assert texts[-1] == "Alex: which did Alex want?" and len(texts) == 2
        assert ts


async def test_a_long_thread_is_read_bounded(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(slack, fake_openai, tmp_path, streaming="edit", memory={"thread_messages": 5}):
        root = await slack.user_message(CHANNEL, "message 0", deliver=False)
        for i in range(1, 250):
            await slack.user_message(CHANNEL, f"message {i}", thread_ts=root, deliver=False)
        await slack.mention(CHANNEL, "summarise", thread_ts=root)
        await slack.wait_for(lambda: settled(slack, CHANNEL, root), WAIT)
    [text] = sent(fake_openai)
    earlier = [f"Sam: message {i}" for i in (0, 246, 247, 248, 249)]  # the first and the latest
    assert text == "Earlier messages in this thread:\n" + "\n".join(earlier) + "\n\nSam: summarise"
    assert slack.replies_pages == 2  # 250 messages: two pages of 200


async def test_streambot_new_and_a_new_dm_message_start_fresh(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention(CHANNEL, "my name is Sam")
        await answered(slack, CHANNEL, ts)
        await slack.user_message(CHANNEL, "what is my name?", thread_ts=ts)
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts, pages=2), WAIT)
        assert sent(fake_openai) == ["Sam: my name is Sam", "Sam: what is my name?"]

        delivery = await slack.slash("/streambot", "new", CHANNEL)
        await slack.wait_for(lambda: delivery.acked, WAIT, "/streambot to be acknowledged")
        assert "forgotten" in str(delivery.response)
        await slack.user_message(CHANNEL, "and now?", thread_ts=ts)
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts, pages=3), WAIT)
        assert sent(fake_openai) == ["Sam: and now?"]

        again = await slack.slash("/streambot", "new", "C0ELSEWHERE")
        await slack.wait_for(lambda: again.acked, WAIT)
        assert "Nothing to forget" in str(again.response)

        # in a DM, each top-level message is a conversation of its own (its own thread)
        first = await slack.user_message("D0DIRECT", "remember 7")
        await answered(slack, "D0DIRECT", first)
        second = await slack.user_message("D0DIRECT", "which number?")
        await answered(slack, "D0DIRECT", second)
        assert sent(fake_openai) == ["which number?"]


async def test_a_name_slack_will_not_give_is_the_id_asked_once(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    slack.fail_next["users.info"] = ["missing_scope"]  # an app installed before users:read
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        for question in ("first", "second"):
            ts = await slack.mention(CHANNEL, question)
            await answered(slack, CHANNEL, ts)
    assert sent(fake_openai) == ["U0HUMAN: second"]
    assert slack.count("users.info") == 1


async def test_malformed_files_in_an_event_cost_nothing(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.user_message("D0DIRECT", "hi", deliver=False)
        weird = ["x", {"url_private": 7}, {"url_private": "file:///etc/passwd", "name": "p"}, {"size": "big"}]
        event = {"type": "message", "channel": "D0DIRECT", "user": "U0HUMAN", "text": "hi", "ts": ts}
        await slack.send_event(event | {"channel_type": "im", "subtype": "file_share", "files": weird})
        await answered(slack, "D0DIRECT", ts)
    assert sent(fake_openai) == ["hi"]


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_streambot_answers_in_both_modes(fake_openai: FakeOpenAI, tmp_path: Path, mode: str) -> None:
    async with FakeSlack(mode=mode) as slack, bot(slack, fake_openai, tmp_path):
        delivery = await slack.slash("/streambot", "", CHANNEL)
        await slack.wait_for(lambda: delivery.acked, WAIT, "/streambot to be acknowledged")
        assert "`/streambot new` starts our conversation here over" in str(delivery.response)
        delivery = await slack.slash("/streambot", "new", CHANNEL)
        await slack.wait_for(lambda: delivery.acked, WAIT, "/streambot new to be acknowledged")
        assert "Nothing to forget here" in str(delivery.response)
