"""End to end through the real openai + Agents SDK clients, a fake OpenAI server, and the relay."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest
from agents import function_tool
from harness import wait_for
from rich.console import Console

from bots.console import ConsoleSettings, ConsoleTarget, ask
from core.config import Config, MemoryConfig, ModelConfig
from core.events import Done, Failed, TextDelta, ToolFinished, ToolStarted, Usage
from core.host import Host
from core.pacing import Pacer
from core.relay import EMPTY_NOTE, Reply
from core.sources import build_brain
from fakes.openai_server import FakeOpenAI

LONG = (
    "Here is a list:\n\n"
    + "".join(f"- item {i}\n" for i in range(40))
    + "\n```python\n"
    + "".join(f"print({i})\n" for i in range(60))
    + "```\n\nDone."
)


def config_for(fake: FakeOpenAI, tmp_path: Path, api: str = "responses") -> Config:
    return Config(
        model=ModelConfig(base_url=fake.base_url, api=api),
        memory=MemoryConfig(path=str(tmp_path / "memory.db")),
    )


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-123456")
    return "sk-test-SECRET-123456"


async def collect(run) -> list:
    return [ev async for ev in run.events()]


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_text_streams_as_deltas_without_duplicates(fake_openai, tmp_path, key, api) -> None:
    fake_openai.reply(["Hel", "lo ", "wor", "ld"])
    brain = build_brain(config_for(fake_openai, tmp_path, api))
    events = await collect(brain.start("hi"))
    usage = events.pop(-2)  # both APIs report what the answer cost (chat: include_usage asked)
    assert events == [TextDelta("Hel"), TextDelta("lo "), TextDelta("wor"), TextDelta("ld"), Done()]
    assert isinstance(usage, Usage) and usage.output_tokens == 4 and usage.input_tokens > 0
    body = fake_openai.requests[0].body
    assert api == "responses" or body["stream_options"] == {"include_usage": True}
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert len(fake_openai.requests_to(path)) == 1
    assert fake_openai.requests[0].headers["Authorization"] == f"Bearer {key}"


async def test_tool_calls_show_status_and_text_continues(fake_openai, tmp_path, key) -> None:
    ran = []

    @function_tool
    def search_docs(query: str) -> str:
        """Search the documentation."""
        ran.append(query)
        return "found: streaming"

    brain = build_brain(config_for(fake_openai, tmp_path), tools=[search_docs])
    fake_openai.tool_call("search_docs", {"query": "stream"})
    fake_openai.reply("Streaming is supported.")
    events = await collect(brain.start("does it stream?"))
    assert ran == ["stream"]
    kinds = [type(e) for e in events]
    assert kinds.index(ToolStarted) < kinds.index(ToolFinished) < kinds.index(TextDelta)
    assert events[kinds.index(ToolStarted)].name == "search_docs"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Streaming is supported."


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_error_mid_stream_keeps_partial_text(fake_openai, tmp_path, key, api) -> None:
    fake_openai.error_mid_stream(["Partial ", "answer"], "upstream exploded")
    brain = build_brain(config_for(fake_openai, tmp_path, api))
    events = await collect(brain.start("hi"))
    assert events[:2] == [TextDelta("Partial "), TextDelta("answer")]
    assert isinstance(events[-1], Failed) and "upstream exploded" in events[-1].message


async def test_auth_error_is_clear_and_never_echoes_the_key(fake_openai, tmp_path, key) -> None:
    fake_openai.http_error(401, f"Incorrect API key provided: {key}")
    events = await collect(build_brain(config_for(fake_openai, tmp_path)).start("hi"))
    assert isinstance(events[-1], Failed)
    assert "OPENAI_API_KEY" in events[-1].message and key not in events[-1].message


async def test_relay_streams_a_long_reply_into_pages(fake_openai, tmp_path, key) -> None:
    fake_openai.reply(LONG)
    brain, out = build_brain(config_for(fake_openai, tmp_path)), io.StringIO()
    target = ConsoleTarget(Console(file=out), 400, 1000.0, plain=False)
    outcome = await Reply(brain.start("list"), target, Pacer()).run()
    assert outcome.status == "done" and outcome.text == LONG
    assert len(outcome.pages) >= 3 and all(len(p) <= 400 for p in outcome.pages)


async def test_empty_model_reply_says_so(fake_openai, tmp_path, key) -> None:
    fake_openai.empty()
    out = io.StringIO()
    config = config_for(fake_openai, tmp_path)
    outcome = await ask(Host(config, build_brain(config)), ConsoleSettings(), "hi", Console(file=out))
    assert outcome is not None
    assert outcome.status == "empty" and out.getvalue().strip() == EMPTY_NOTE


async def test_conversation_memory_and_honest_history_after_stop(fake_openai, tmp_path, key) -> None:
    cfg = config_for(fake_openai, tmp_path)
    brain = build_brain(cfg)
    target_args = (Console(file=io.StringIO()), 2000, 1000.0)
    fake_openai.reply("Paris is the capital of France.")
    await Reply(brain.start("capital of France?", "chat-1"), ConsoleTarget(*target_args), Pacer()).run()

    # the second answer is stopped after two chunks
    script = fake_openai.reply(["It has ", "about 2 ", "million ", "people."], hold_after=2)
    reply = Reply(brain.start("population?", "chat-1"), ConsoleTarget(*target_args), Pacer())
    task = asyncio.create_task(reply.run())
    await script.wait_held()
    await wait_for(lambda: "about 2" in reply.pager.text, 30.0, "the second chunk to arrive")
    reply.stop()
    outcome = await task
    assert outcome.status == "stopped" and outcome.text == "It has about 2 \n\n⏹ stopped"

    fake_openai.reply("ok")
    await Reply(brain.start("and Berlin?", "chat-1"), ConsoleTarget(*target_args), Pacer()).run()
    sent = str(fake_openai.requests_to("/v1/responses")[-1].body["input"])
    assert "capital of France?" in sent and "Paris is the capital of France." in sent
    assert "population?" in sent and "It has about 2" in sent and "⏹ stopped" in sent
    # another conversation does not see any of it
    fake_openai.reply("ok")
    await Reply(brain.start("hello", "chat-2"), ConsoleTarget(*target_args), Pacer()).run()
    assert "Paris" not in str(fake_openai.requests_to("/v1/responses")[-1].body["input"])


async def test_cli_ask_pipes_plain_text(fake_openai, tmp_path, key) -> None:
    fake_openai.reply("**Plain** answer\n\n```sh\necho hi\n```")
    (tmp_path / "config.toml").write_text(f'[model]\nbase_url = "{fake_openai.base_url}"\n')
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "streambot"),
        "ask",
        "say",
        "hi",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "**Plain** answer\n\n```sh\necho hi\n```\n"
    assert key.encode() not in out + err


async def test_cli_ask_about_a_file(fake_openai, tmp_path, key) -> None:
    from test_attachments import PNG

    from fakes.openai_server import images_in, user_texts

    (tmp_path / "config.toml").write_text(f'[model]\nbase_url = "{fake_openai.base_url}"\n')
    (tmp_path / "shot.png").write_bytes(PNG)
    (tmp_path / "notes.md").write_text("# Notes\nship on Friday\n")
    streambot = str(Path(sys.executable).parent / "streambot")
    fake_openai.reply("A picture and your notes.")
    proc = await asyncio.create_subprocess_exec(
        streambot, "ask", "what are these?", "--file", "shot.png", "-f", "notes.md",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "A picture and your notes.\n"
    body = fake_openai.requests[-1].body
    assert images_in(body)
    assert user_texts(body) == [
        "what are these?\n\n[file: notes.md]\n# Notes\nship on Friday\n\n[image: shot.png]"
    ]
    # a path that is not there: a clear error, and nothing is asked
    asked = len(fake_openai.requests)
    proc = await asyncio.create_subprocess_exec(
        streambot, "ask", "hi", "--file", "missing.png",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "--file missing.png: no such file" in err.decode()
    assert len(fake_openai.requests) == asked


async def test_answer_sync_inside_a_running_loop_fails_clearly(fake_openai, tmp_path, key) -> None:
    from core.sources import answer, answer_sync

    brain = build_brain(config_for(fake_openai, tmp_path))
    with pytest.raises(RuntimeError, match="already running.*await answer"):
        answer_sync(brain, "hi")
    fake_openai.reply("async works")
    assert await answer(brain, "hi") == "async works"


def test_answer_sync_works_without_a_loop(tmp_path) -> None:
    from core.demo import DemoModel
    from core.sources import answer_sync

    brain = build_brain(
        Config(memory=MemoryConfig(path=str(tmp_path / "m.db"))), model=DemoModel(chars_per_second=0)
    )
    assert "offline demo model" in answer_sync(brain, "hello")


async def test_streambot_with_no_keys_chats_on_the_demo_model(tmp_path) -> None:
    """The README's first command: no config, no keys -> console chat on the offline demo."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "streambot"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"hello bot\n/quit\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "offline demo model" in text.split("you ›")[0]  # said at start-up
    assert "**This is the offline demo model**" in text and "“hello bot”" in text
    assert "```python\n" in text and "OPENAI_API_KEY" in text
    assert (tmp_path / "streambot.db").exists()  # conversation memory on by default


async def test_handoff_to_another_agent_is_reported(fake_openai, tmp_path, key) -> None:
    from agents import Agent

    from core.events import Handoff

    brain = build_brain(config_for(fake_openai, tmp_path))
    billing = Agent(name="billing", instructions="Answer billing questions.", model=brain.agent.model)
    brain.agent = brain.agent.clone(handoffs=[billing])
    fake_openai.tool_call("transfer_to_billing", {})
    fake_openai.reply("Billing here: your invoice is paid.")
    events = await collect(brain.start("is my invoice paid?"))
    assert Handoff("billing") in events
    assert (
        "".join(e.text for e in events if isinstance(e, TextDelta)) == "Billing here: your invoice is paid."
    )
    assert isinstance(events[-1], Done)
