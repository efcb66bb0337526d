"""Pictures, files, speakers and memory retention, through the real Agents SDK and openai
clients against the fake OpenAI server (both APIs): what the model really received."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zlib
from pathlib import Path

import pytest
from agents.memory import SQLiteSession

from core.attachments import Attachment, FileLimits, Turn, prepare
from core.config import Config, LimitsConfig, MemoryConfig, ModelConfig
from core.events import Failed, TextDelta
from core.memory import prune_sqlite
from core.sources import IMAGES_REFUSED, IMAGES_TOO_LARGE, build_brain
from fakes.openai_server import FakeOpenAI, images_in, user_texts

# A real 1x1 PNG.
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
    b"\x89" + b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)
PATHS = {"responses": "/v1/responses", "chat_completions": "/v1/chat/completions"}


def make_pdf(text: str) -> bytes:
    """A minimal one-page PDF showing `text` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def config_for(fake: FakeOpenAI, tmp_path: Path, api: str = "responses", **limits: int) -> Config:
    return Config(
        model=ModelConfig(base_url=fake.base_url, api=api),
        memory=MemoryConfig(path=str(tmp_path / "memory.db")),
        limits=LimitsConfig(**limits),
    )


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")


async def run_text(run) -> tuple[str, list]:
    events = [ev async for ev in run.events()]
    return "".join(ev.text for ev in events if isinstance(ev, TextDelta)), events


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_a_picture_reaches_the_model_and_memory_keeps_a_marker(fake_openai, tmp_path, api) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path, api))
    fake_openai.reply("A tiny square.")
    turn = Turn("what is this?", "Sam", (Attachment("cat.png", "image/png", len(PNG), data=PNG),))
    text, _ = await run_text(brain.start(turn, "conv"))
    assert text == "A tiny square."
    body = fake_openai.requests_to(PATHS[api])[-1].body
    [image] = images_in(body)
    assert image.startswith("data:image/png;base64,")
    assert "Sam: what is this?" in user_texts(body)[-1]

    fake_openai.reply("It was a square.")
    await run_text(brain.start(Turn("and the colour?", "Sam"), "conv"))
    body = fake_openai.requests_to(PATHS[api])[-1].body
    assert images_in(body) == []  # not sent again
    first, second = user_texts(body)
    assert "[image: cat.png]" in first and "Sam: what is this?" in first
    assert second == "Sam: and the colour?"
    stored = sqlite3.connect(tmp_path / "memory.db").execute("SELECT message_data FROM agent_messages")
    assert not any("base64" in row[0] for row in stored)  # no blob in the session store


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_a_model_that_refuses_pictures_still_answers_the_text(fake_openai, tmp_path, api) -> None:
    fake_openai.reject_images = True
    brain = build_brain(config_for(fake_openai, tmp_path, api))
    fake_openai.reply("Hello Sam.")
    turn = Turn("hi, see this", "Sam", (Attachment("a.png", "image/png", data=PNG),))
    text, events = await run_text(brain.start(turn, "conv"))
    assert not any(isinstance(e, Failed) for e in events)
    assert text == f"_{IMAGES_REFUSED}_\n\nHello Sam."
    first, second = fake_openai.requests_to(PATHS[api])
    assert images_in(first.body) and not images_in(second.body)
    assert "[image: a.png]" in user_texts(second.body)[-1]
    fake_openai.reply("ok")
    await run_text(brain.start("again", "conv"))
    # the refused attempt left nothing behind: one user turn and one answer before this one
    texts = user_texts(fake_openai.requests_to(PATHS[api])[-1].body)
    assert len(texts) == 2 and texts[-1] == "again"


async def test_pictures_too_large_for_the_server_are_dropped_not_the_question(fake_openai, tmp_path) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path))
    fake_openai.http_error(413, "Request Entity Too Large")
    fake_openai.reply("Answered.")
    turn = Turn("hi", attachments=(Attachment("a.png", "image/png", data=PNG),))
    text, _ = await run_text(brain.start(turn, "conv"))
    assert text == f"_{IMAGES_TOO_LARGE}_\n\nAnswered."
    assert not images_in(fake_openai.requests[-1].body)
    # a refused key is not about pictures: it is reported, not retried without them
    fake_openai.http_error(401)
    text, events = await run_text(brain.start(turn, "conv"))
    assert isinstance(events[-1], Failed) and len(fake_openai.requests) == 3


async def test_an_image_only_question_is_answered(fake_openai, tmp_path) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path))
    fake_openai.reply("A picture.")
    text, _ = await run_text(brain.start(Turn("", "", (Attachment("x.jpg", data=PNG),))))
    assert text == "A picture."
    body = fake_openai.requests[-1].body
    assert images_in(body) and "(sent without a message)" in user_texts(body)[-1]


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_files_are_read_cut_with_a_note_and_binaries_named(fake_openai, tmp_path, api) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path, api, max_file_chars=1000))
    fake_openai.reply("Read them.")
    long_paste = "".join(f"line {i}\n" for i in range(500))  # ~4,400 characters
    turn = Turn(
        "summarise",
        attachments=(
            Attachment("message.txt", "text/plain; charset=utf-8", data=long_paste.encode()),
            Attachment("report.pdf", "application/pdf", data=make_pdf("Quarterly revenue grew 12 percent")),
            Attachment("data.csv", "", data=b"a,b\n1,2\n"),
            Attachment("blob.bin", "application/octet-stream", data=zlib.compress(b"x" * 100)),
            Attachment("fake.txt", "text/plain", data=b"\x00\x01\x02binary"),
        ),
    )
    text, events = await run_text(brain.start(turn))
    assert "message.txt is long: I read the first 1,000 of its" in text
    assert "blob.bin: not a picture or a text file I can read" in text
    assert "fake.txt: not readable as text" in text
    assert text.endswith("Read them.") and not any(isinstance(e, Failed) for e in events)
    sent = user_texts(fake_openai.requests_to(PATHS[api])[-1].body)[-1]
    assert "[file: message.txt, the first 1,000 of" in sent and "line 0\n" in sent
    assert "line 400" not in sent  # past the cap
    assert "[file: report.pdf]\nQuarterly revenue grew 12 percent" in sent
    assert "[file: data.csv]\na,b\n1,2" in sent
    assert "blob.bin" not in sent and "binary" not in sent


async def test_limits_on_pictures_and_downloads() -> None:
    calls: list[int] = []

    async def fetch(limit: int) -> bytes:
        calls.append(limit)
        return PNG

    limits = FileLimits(max_images=1, max_image_bytes=1000)
    turn = Turn(
        "two",
        attachments=(
            Attachment("big.png", "image/png", size=5000, fetch=fetch),  # too big: never downloaded
            Attachment("one.png", "image/png", fetch=fetch),
            Attachment("two.png", "image/png", fetch=fetch),
        ),
    )
    prepared = await prepare(turn, limits)
    assert [name for name, _ in prepared.images] == ["one.png"]
    assert calls == [1000]
    assert prepared.notes == [
        "big.png: larger than 1000 bytes, so I left it out",
        "two.png: skipped, at most 1 pictures per question",
    ]


async def test_speakers_and_thread_context_reach_the_model(fake_openai, tmp_path) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path))
    fake_openai.reply("Alex suggested Postgres.")
    turn = Turn(
        "what did Alex suggest?",
        "Sam",
        context=(("Alex", "let's use Postgres"), ("Kim", "fine by me")),
    )
    await run_text(brain.start(turn, "thread"))
    sent = user_texts(fake_openai.requests[-1].body)[-1]
    assert sent == (
        "Earlier messages in this thread:\nAlex: let's use Postgres\nKim: fine by me\n\n"
        "Sam: what did Alex suggest?"
    )
    stored = [json.loads(r[0]) for r in sqlite3.connect(tmp_path / "memory.db").execute(
        "SELECT message_data FROM agent_messages ORDER BY id"
    )]  # fmt: skip
    assert "Alex: let's use Postgres" in stored[0]["content"]  # memory records the names


async def test_forget_starts_the_conversation_over(fake_openai, tmp_path) -> None:
    brain = build_brain(config_for(fake_openai, tmp_path))
    fake_openai.reply("Noted.")
    await run_text(brain.start("my name is Sam", "dm"))
    await brain.forget("dm")
    fake_openai.reply("I don't know.")
    await run_text(brain.start("what is my name?", "dm"))
    assert user_texts(fake_openai.requests[-1].body) == ["what is my name?"]


async def test_ttl_prunes_old_items_only(tmp_path) -> None:
    path = str(tmp_path / "memory.db")
    assert prune_sqlite(path, 7) == 0  # nothing stored yet: no table, no error
    for conversation in ("old", "new"):
        await SQLiteSession(conversation, path).add_items([{"role": "user", "content": conversation}])
    await SQLiteSession("new", path).add_items([{"role": "user", "content": "recent"}])
    db = sqlite3.connect(path)
    db.execute("UPDATE agent_sessions SET updated_at = datetime('now', '-30 days') WHERE session_id = 'old'")
    db.execute("UPDATE agent_messages SET created_at = datetime('now', '-30 days') WHERE id <= 2")
    db.commit()
    assert prune_sqlite(path, 7) == 2
    assert [r[0] for r in db.execute("SELECT message_data FROM agent_messages")] == [
        json.dumps({"role": "user", "content": "recent"})
    ]
    assert [r[0] for r in db.execute("SELECT session_id FROM agent_sessions")] == ["new"]
    assert prune_sqlite(path, 0) == 0  # 0 keeps everything


async def test_ttl_is_applied_before_a_run(fake_openai, tmp_path) -> None:
    cfg = config_for(fake_openai, tmp_path)
    cfg.memory.ttl_days = 1
    brain = build_brain(cfg)
    fake_openai.reply("ok")
    await run_text(brain.start("remember this", "c"))
    db = sqlite3.connect(tmp_path / "memory.db")
    db.execute("UPDATE agent_messages SET created_at = datetime('now', '-2 days')")
    db.commit()
    brain._pruned_at = None  # the next sweep is due
    fake_openai.reply("ok")
    await run_text(brain.start("what did I say?", "c"))
    assert user_texts(fake_openai.requests[-1].body) == ["what did I say?"]


async def test_attachments_download_together_and_keep_their_order() -> None:
    started, both = 0, asyncio.Event()

    async def fetch(limit: int) -> bytes:
        nonlocal started
        started += 1
        if started == 2:
            both.set()
        await both.wait()  # one at a time would never get here
        return b"same text"

    turn = Turn("x", attachments=(Attachment("a.txt", fetch=fetch), Attachment("b.txt", fetch=fetch)))
    prepared = await asyncio.wait_for(prepare(turn, FileLimits()), 30)
    assert prepared.text == "x\n\n[file: a.txt]\nsame text\n\n[file: b.txt]\nsame text"
