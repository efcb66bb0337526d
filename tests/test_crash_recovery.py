"""Killing the bot mid-stream and starting it again: the reply a crash cut off is finished.

The bot runs as a real `streambot run` process against the fake Discord and the fake OpenAI
server in this test's process, so kill -9 and SIGTERM hit exactly what they hit in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

from harness import start_streambot

from fakes.discord_server import FakeDiscord, FakeMessage
from fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
GUARD = 60.0
INTERRUPTED = "⚠️ interrupted — please ask again"


async def start_bot(fake: FakeDiscord, model: FakeOpenAI, tmp_path: Path) -> asyncio.subprocess.Process:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbase_url = "{model.base_url}"\n'
        f'[memory]\npath = "{tmp_path / "bot.db"}"\n'
        f"[stream]\nshutdown_grace = 0.5\n"
        f'[discord]\nenabled = true\napi_base = "{fake.api_base}"\n'
    )
    env = {**os.environ, "DISCORD_BOT_TOKEN": fake.token, "OPENAI_API_KEY": "test"}
    fake.identifies.clear()
    proc = await start_streambot(config, env, tmp_path / "bot.log")
    await fake.wait_for(lambda: fake.identifies or None, GUARD)
    await fake.wait_ready(GUARD)
    return proc


def recorded_text(db: Path) -> str:
    """What the bot has recorded its streaming reply shows (read as a second process would)."""
    if not db.exists():
        return ""
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT record FROM streambot_replies").fetchall()
        except sqlite3.OperationalError:  # the table does not exist yet
            return ""
    return " ".join(r[0] for r in rows)


async def streaming_page(fake: FakeDiscord, question: FakeMessage, shows: str) -> FakeMessage:
    def ready() -> FakeMessage | None:
        pages = fake.reply_pages(question)
        return pages[0] if pages and shows in pages[0].content else None

    return await fake.wait_for(ready, GUARD)


async def test_a_reply_cut_off_by_kill_9_is_finished_at_the_next_start(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake = fake_discord
    fake_openai.reply(["Halfway ", "there"], hold_after=1)
    proc = await start_bot(fake, fake_openai, tmp_path)
    question = await fake.send(f"<@{fake.bot.id}> long task")
    page = await streaming_page(fake, question, "Halfway")
    await fake.wait_for(lambda: "Halfway" in recorded_text(tmp_path / "bot.db") or None, GUARD)

    proc.kill()  # SIGKILL: no clean-up of any kind
    await proc.wait()
    assert page.content.endswith("▌")  # left frozen mid-stream
    assert page.has_buttons

    proc = await start_bot(fake, fake_openai, tmp_path)
    try:
        await fake.wait_for(lambda: INTERRUPTED in page.content or None, GUARD)
        assert page.content == f"Halfway\n\n{INTERRUPTED}"
        assert not page.has_buttons
        assert len(fake.reply_pages(question)) == 1  # finished in place, nothing posted again
        assert recorded_text(tmp_path / "bot.db") == ""  # handed out once
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), GUARD) in (0, 130)


async def test_sigterm_interrupts_a_long_reply_and_exits(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake = fake_discord
    script = fake_openai.reply(["Still ", "going"], hold_after=1)
    proc = await start_bot(fake, fake_openai, tmp_path)
    question = await fake.send(f"<@{fake.bot.id}> long task")
    page = await streaming_page(fake, question, "Still")

    proc.send_signal(signal.SIGTERM)  # docker stop / systemctl stop
    code = await asyncio.wait_for(proc.wait(), GUARD)
    script.release()
    assert code in (0, 130)
    assert page.content == f"Still \n\n{INTERRUPTED}"  # grace (0.5 s) over: text kept, marked
    assert not page.has_buttons
    assert recorded_text(tmp_path / "bot.db") == ""  # a clean exit leaves nothing to repair
