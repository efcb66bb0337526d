"""Reasoning models: their thinking never reaches the answer, on any API or platform, and the
message says "💭 thinking…" while they think.

Driven through the real openai client and Agents SDK against the fake OpenAI server, which
streams `<think>` text (as Ollama and vLLM do without a reasoning parser), Responses reasoning
summary events, and Chat Completions `reasoning_content` deltas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import final, wait_for
from harness import running_discord_bot as discord_bot
from harness import slack_bot_for as slack_bot

from core.config import Config, MemoryConfig, ModelConfig, StreamConfig
from core.events import Done, TextDelta, Thinking, Usage
from core.pacing import Pacer
from core.relay import THINKING_STATUS, THOUGHT_NOTE, Reply
from core.sources import build_brain
from fakes.clock import FakeClock
from fakes.discord_server import FakeDiscord
from fakes.openai_server import FakeOpenAI, split_text
from fakes.scripted import RecordingTarget, ScriptRun, deltas
from fakes.slack_server import FakeSlack, settled

APIS = ["responses", "chat_completions"]
THOUGHTS = "SECRET-PLAN: first add, then check"
ANSWER = "The answer is **4**."
# A reasoning model's output text, its tags cut across deltas the way tokenizers cut them.
INLINE = [
    "\n<th",
    "ink>\nSECRET",
    "-PLAN: first add,",
    " then check\n</",
    "think>\n\n",
    "The answer ",
    "is **4**.",
]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")


async def events_for(fake: FakeOpenAI, tmp_path: Path, api: str) -> list:
    config = Config(
        model=ModelConfig(base_url=fake.base_url, api=api), memory=MemoryConfig(path=str(tmp_path / "m.db"))
    )
    return [ev async for ev in build_brain(config).start("2+2?").events()]


def split(events: list) -> tuple[str, str]:
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    thoughts = "".join(e.text for e in events if isinstance(e, Thinking))
    return answer, thoughts


@pytest.mark.parametrize("api", APIS)
async def test_think_tags_in_the_output_text_become_thinking(fake_openai, tmp_path, key, api) -> None:
    fake_openai.reply(INLINE)
    events = await events_for(fake_openai, tmp_path, api)
    assert split(events) == (ANSWER, "\nSECRET-PLAN: first add, then check\n")
    assert isinstance(events[-1], Done) and isinstance(events[-2], Usage)
    # the status can show before the first thought arrives, and every thought before the answer
    kinds = [type(e) for e in events]
    assert kinds.index(Thinking) < kinds.index(TextDelta)


@pytest.mark.parametrize("api", APIS)
async def test_reasoning_events_become_thinking(fake_openai, tmp_path, key, api) -> None:
    # Responses: reasoning summary events; Chat Completions: reasoning_content deltas, which
    # the Agents SDK turns into the same summary events
    fake_openai.reply(ANSWER, reasoning=["SECRET-PLAN: ", "first add", "\n\nthen check"])
    events = await events_for(fake_openai, tmp_path, api)
    answer, thoughts = split(events)
    assert answer == ANSWER
    assert "SECRET-PLAN" in thoughts and "then check" in thoughts
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.output_tokens == len(split_text(ANSWER)) + 3  # the fake counts a token a chunk


async def relay(steps, **settings) -> tuple[RecordingTarget, object]:
    clock = FakeClock()
    target = RecordingTarget(clock, limit=2000)
    reply = Reply(ScriptRun(clock, steps), target, Pacer(clock), StreamConfig(**settings))
    return target, await clock.run(reply.run())


@pytest.mark.parametrize("mode", ["status", "summary", "off"])
async def test_show_reasoning_chooses_what_the_status_line_says(mode: str) -> None:
    steps = [(0.5, Thinking("")), (2.0, Thinking("weighing the " + "options " * 100 + "LAST-WORDS"))]
    steps += deltas(ANSWER, 3, 2.0)
    target, outcome = await relay(steps, show_reasoning=mode)
    frames = [f.text for f in target.messages[0]]
    assert outcome.status == "done" and target.shown == [ANSWER]
    thinking = [f for f in frames if THINKING_STATUS in f]
    if mode == "off":
        assert not thinking
    else:
        assert thinking, frames
        assert all(len(f) <= 2000 // 4 + 10 for f in thinking)  # the status stays a line
        assert any("LAST-WORDS" in f for f in thinking) == (mode == "summary")
    assert not any(
        THINKING_STATUS in f for f in frames[frames.index(next(f for f in frames if "The" in f)) :]
    )


async def test_a_model_that_only_thinks_says_so() -> None:
    target, outcome = await relay([(0.1, Thinking("")), (0.1, Thinking("hmm"))])
    assert outcome.status == "empty" and target.shown == [THOUGHT_NOTE]


# --- on the platforms, through the real SDK -----------------------------------------------------


async def test_discord_never_shows_a_thought_and_shows_the_status_while_thinking(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_openai.reply(INLINE, hold_after=5)  # held after the close tag, before the answer
    async with discord_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as bot:
        question = await fake_discord.send(f"<@{fake_discord.bot.id}> 2+2?")
        await script.wait_held()

        def thinking_shown() -> bool:
            return any(THINKING_STATUS in r.content for m in fake_discord.bot_messages() for r in m.history)

        await wait_for(thinking_shown, 30.0, "the thinking status")
        script.release()
        outcome = await bot.outcome(question.id)
        assert outcome.status == "done"
        [message] = fake_discord.bot_messages()
        assert final(message) == ANSWER
        for rev in message.history:
            assert "SECRET" not in rev.content and "think>" not in rev.content and "<th" not in rev.content


async def test_discord_says_when_the_model_never_stopped_thinking(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_openai.reply(["<think>", "SECRET-PLAN and", " more"])
    async with discord_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as bot:
        question, outcome = await bot.ask("2+2?")
        assert outcome.status == "empty"
        [message] = fake_discord.bot_messages()
        assert final(message) == THOUGHT_NOTE
        assert not any("SECRET" in r.content for r in message.history)


@pytest.mark.parametrize("mode", ["native", "edit"])
async def test_slack_never_shows_a_thought(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    fake_openai.reply(INLINE, reasoning=["SECRET summary"], delay=0.01)
    async with slack_bot(slack, fake_openai, tmp_path, streaming=mode):
        ts = await slack.mention("C0GENERAL", "2+2?")
        await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), 30.0, "the reply")
        assert slack.reply_text("C0GENERAL", ts) == ANSWER
        [message] = slack.bot_messages("C0GENERAL", ts)
        for state in message.history:
            assert "SECRET" not in state and "think>" not in state


@pytest.mark.parametrize("api", APIS)
async def test_the_console_prints_only_the_answer(fake_openai, tmp_path, key, api) -> None:
    import io

    from rich.console import Console

    from bots.console import ConsoleSettings, ask
    from core.host import Host

    fake_openai.reply(INLINE, reasoning=["SECRET summary"])
    config = Config(
        model=ModelConfig(base_url=fake_openai.base_url, api=api),
        memory=MemoryConfig(path=str(tmp_path / "m.db")),
    )
    out = io.StringIO()  # not a terminal: plain, append-only output, as `streambot ask > file`
    outcome = await ask(Host(config, build_brain(config)), ConsoleSettings(), "2+2?", Console(file=out))
    assert outcome is not None and outcome.status == "done"
    assert out.getvalue() == ANSWER + "\n"


async def test_openai_reasoning_summaries_are_asked_for_only_when_configured(
    fake_openai, tmp_path, key
) -> None:
    for summary in ("off", "auto"):
        config = Config(
            model=ModelConfig(base_url=fake_openai.base_url, reasoning_summary=summary),
            memory=MemoryConfig(path=""),
        )
        [ev async for ev in build_brain(config).start("2+2?").events()]
    off, auto = (r.body for r in fake_openai.requests)
    assert not off.get("reasoning")  # a model that does not reason would reject it
    assert auto["reasoning"]["summary"] == "auto"


@pytest.mark.parametrize("api", APIS)
async def test_a_failed_run_still_reports_what_it_used(fake_openai, tmp_path, key, api) -> None:
    from agents import function_tool

    from core.events import Failed

    @function_tool
    def lookup(q: str) -> str:
        """Look something up."""
        return "found"

    config = Config(model=ModelConfig(base_url=fake_openai.base_url, api=api), memory=MemoryConfig(path=""))
    fake_openai.tool_call("lookup", {"q": "x"})
    fake_openai.error_mid_stream("partial ")
    events = [ev async for ev in build_brain(config, tools=[lookup]).start("2+2?").events()]
    assert isinstance(events[-1], Failed) and isinstance(events[-2], Usage)
    assert events[-2].requests >= 1 and events[-2].input_tokens > 0  # the tool call's request


async def test_chat_completions_reasoning_field_becomes_thinking_too(fake_openai, tmp_path, key) -> None:
    # OpenRouter and newer vLLM name the field `reasoning`; the SDK makes reasoning text events of it
    fake_openai.reply(ANSWER, reasoning=["SECRET-PLAN: ", "add"]).reasoning_field = "reasoning"
    events = await events_for(fake_openai, tmp_path, "chat_completions")
    assert split(events) == (ANSWER, "SECRET-PLAN: add")
