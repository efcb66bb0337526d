"""Tools of a profile, run by the real Agents SDK against the fake OpenAI server: the knowledge
search (cited, or "not in the docs"), Python function tools by import path, MCP servers over
stdio and streamable HTTP, hosted tools; a failing tool shows one line and the answer goes on."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from harness import reserved_port
from rich.console import Console

from bots.cli import SECTIONS, main, use_profile
from bots.console import ConsoleSettings, ask
from core.config import ConfigError, load, parse
from core.events import Event, Searched, TextDelta, ToolFinished, ToolStarted
from core.host import Finished, Host
from core.sources import build_brain
from fakes import mcp_server
from fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
APIS = ["responses", "chat_completions"]
ROTATE = "docs/keys.md#rotating-a-key"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def write_docs(root: Path) -> None:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "keys.md").write_text(
        "# Keys\n\nKeys open the API.\n\n## Rotating a key\n\nPress Rotate; the old secret works 24 hours.\n"
    )
    (root / "docs" / "billing.md").write_text("# Billing\n\n## Refunds\n\nYearly plans are refunded.\n")


def toml(value: Any) -> str:
    """A TOML value (inline tables for dicts)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value)


def desk(tmp_path: Path, fake: FakeOpenAI, api: str = "responses", **profile: Any) -> Path:
    """A config file with profile `support` over a small docs folder."""
    write_docs(tmp_path)
    path = tmp_path / "bot.toml"
    fields = {"knowledge": ["docs"], **profile}
    lines = [f"{k} = {toml(v)}" for k, v in fields.items()]
    path.write_text(
        f'[model]\nbase_url = "{fake.base_url}"\napi = "{api}"\n[memory]\npath = ""\n'
        "[profiles.support]\n" + "\n".join(lines) + "\n"
    )
    return path


async def answer(path: Path, question: str) -> tuple[Finished, list[Event], str]:
    """Ask profile `support` through the host, as `streambot ask --profile support` does."""
    config, _ = load(path, SECTIONS)
    use_profile(config, "support", str(path))
    brain = build_brain(config, profile="support")
    events: list[Event] = []

    class Tap:  # the Brain, with the events it produced kept for the test
        demo = brain.demo

        def start(self, prompt: str, conversation: str | None = None) -> Any:
            run = brain.start(prompt, conversation)
            inner = run.events

            async def events_() -> AsyncIterator[Event]:
                async for ev in inner():
                    events.append(ev)
                    yield ev

            run.events = events_  # type: ignore[method-assign]
            return run

    host = Host(config, Tap(), brains=lambda name: Tap())  # type: ignore[arg-type]
    finished: list[Finished] = []
    host.on_finished.append(finished.append)
    out = io.StringIO()
    await ask(host, ConsoleSettings(), question, Console(file=out, width=200))
    return finished[0], events, out.getvalue()


# --- the knowledge search --------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_the_model_searches_the_docs_and_cites_the_heading(
    fake_openai: FakeOpenAI, tmp_path: Path, api: str
) -> None:
    path = desk(tmp_path, fake_openai, api)
    fake_openai.tool_call("search_docs", {"query": "rotate key"})
    fake_openai.reply(f"Press Rotate ([Rotating a key]({ROTATE})).")
    done, events, shown = await answer(path, "How do I rotate a key?")
    # the search tool was offered, with instructions to cite
    first = fake_openai.requests[0].body
    assert "search_docs" in json.dumps(first["tools"]) and "cite" in json.dumps(first).lower()
    # its output reached the model: the passage and the exact link to cite
    tool_output = json.dumps(fake_openai.requests[1].body)
    assert ROTATE in tool_output and "old secret works 24 hours" in tool_output
    assert Searched("rotate key", (ROTATE, "docs/keys.md#keys")) in events
    kinds = [type(e) for e in events]
    assert kinds.index(ToolStarted) < kinds.index(Searched) < kinds.index(TextDelta)
    assert (done.sources, done.not_in_docs, done.profile) == ((ROTATE,), False, "support")
    assert ROTATE in shown


async def test_nothing_found_says_so_and_reports_not_in_docs(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    path = desk(tmp_path, fake_openai)
    fake_openai.tool_call("search_docs", {"query": "capital of France"})
    fake_openai.reply("The docs do not cover that. Shall I get a human?")
    done, events, _ = await answer(path, "What is the capital of France?")
    assert "NO RELEVANT PASSAGES" in json.dumps(fake_openai.requests[1].body)
    assert Searched("capital of France", ()) in events
    assert (done.sources, done.not_in_docs) == ((), True)


async def test_docs_url_makes_citations_page_links(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    path = desk(tmp_path, fake_openai, docs_url="https://docs.acme.test/")
    fake_openai.tool_call("search_docs", {"query": "refunds"})
    fake_openai.reply("Yes: see [Refunds](https://docs.acme.test/billing#refunds).")
    done, _, _ = await answer(path, "Refunds?")
    assert "https://docs.acme.test/billing#refunds" in json.dumps(fake_openai.requests[1].body)
    assert done.sources == ("https://docs.acme.test/billing#refunds",)


def test_sources_are_the_hit_links_the_answer_cites_in_order() -> None:
    from core.host import _Searches

    run = _Searches(None)  # type: ignore[arg-type]
    run.searches = [Searched("a", ("docs/a.md", "docs/a.md#x", "docs/b.md#y")), Searched("b", ())]
    text = "See [Y](docs/b.md#y) and [X](docs/a.md#x); also docs/c.md#z."
    assert run.citations(text) == (("docs/b.md#y", "docs/a.md#x"), False)  # not docs/a.md
    assert run.citations("no links") == ((), False)
    run.searches = [Searched("a", ())]
    assert run.citations("The docs do not cover it.") == ((), True)
    run.searches = []
    assert run.citations("no search at all") == ((), False)


# --- Python function tools by import path ------------------------------------------------------


@pytest.fixture
def tool_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "desk_tools.py").write_text(
        textwrap.dedent(
            '''
            from agents import function_tool

            def lookup_order(order_id: str) -> str:
                """Look up an order."""
                if order_id == "boom":
                    raise RuntimeError("orders database down")
                return f"order {order_id}: shipped"

            @function_tool
            def refund(order_id: str) -> str:
                """Refund an order."""
                return f"refunded {order_id}"

            NOT_A_TOOL = 3
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("desk_tools", None)
    return "desk_tools"


@pytest.mark.parametrize("api", APIS)
async def test_an_import_path_tool_runs_and_a_failing_one_shows_a_line(
    fake_openai: FakeOpenAI, tmp_path: Path, tool_module: str, api: str
) -> None:
    path = desk(tmp_path, fake_openai, api, tools=[f"{tool_module}:lookup_order", f"{tool_module}:refund"])
    fake_openai.tool_call("lookup_order", {"order_id": "42"})
    fake_openai.tool_call("lookup_order", {"order_id": "boom"})
    fake_openai.reply("Order 42 shipped; I could not look up the other one.")
    done, events, shown = await answer(path, "Where are my orders?")
    tools = json.dumps(fake_openai.requests[0].body["tools"])
    assert "lookup_order" in tools and "refund" in tools and "search_docs" in tools
    assert "order 42: shipped" in json.dumps(fake_openai.requests[1].body)
    failed = [e for e in events if isinstance(e, ToolFinished) and e.failed]
    assert [e.name for e in failed] == ["lookup_order"]  # the second call only
    assert "The tool failed (RuntimeError)" in json.dumps(fake_openai.requests[2].body)
    assert done.outcome.status == "done"
    assert done.outcome.text == "Order 42 shipped; I could not look up the other one."


def test_a_bad_tool_path_is_a_config_error_naming_the_key(tmp_path: Path, tool_module: str) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(
        "[profiles.support]\n"
        f'tools = ["{tool_module}:nope", "no_such_module:f", "{tool_module}:NOT_A_TOOL", "nocolon"]\n'
    )
    config, _ = load(path, SECTIONS)
    with pytest.raises(ConfigError) as err:
        build_brain(config, profile="support")
    lines = str(err.value).splitlines()
    assert lines[0] == (
        f"{path}: profiles.support.tools.0: {tool_module} has no nope: give the import path of a "
        "function (package.module:function) that is installed in streambot's Python environment"
    )
    assert lines[1].startswith(f"{path}: profiles.support.tools.1: cannot import no_such_module")
    assert lines[2].startswith(
        f"{path}: profiles.support.tools.2: {tool_module}:NOT_A_TOOL is not a function"
    )
    assert lines[3].startswith(f"{path}: profiles.support.tools.3: not an import path")


def test_check_config_and_run_report_bad_tools_and_missing_knowledge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bot.toml"
    path.write_text('[memory]\npath = ""\n[profiles.support]\ntools = ["nope:f"]\nknowledge = ["missing/"]\n')
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: profiles.support.tools.0: cannot import nope" in out
    assert f"{path}: profiles.support.knowledge.0: {tmp_path / 'missing'} does not exist" in out
    assert main(["ask", "--config", str(path), "hi"]) == 1  # every profile is built at start
    assert "profiles.support.tools.0" in capsys.readouterr().err


def test_hosted_tools_need_the_responses_api(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse(
            {"model": {"api": "chat_completions"}, "profiles": {"web": {"web_search": True}}},
            "bot.toml",
        )
    assert str(err.value) == (
        "bot.toml: profiles.web.web_search: hosted tools need the Responses API: set api = "
        '"responses" for this profile (it uses chat_completions), or remove web_search'
    )
    config = parse(
        {
            "model": {"api": "chat_completions"},
            "profiles": {"web": {"api": "responses", "web_search": True, "file_search": ["vs_1"]}},
        },
        "bot.toml",
    )
    tools = build_brain(config, profile="web").agent.tools
    assert [type(t).__name__ for t in tools] == ["WebSearchTool", "FileSearchTool"]


# --- MCP servers -------------------------------------------------------------------------------

STDIO = {"command": sys.executable, "args": [str(Path(mcp_server.__file__))], "name": "orders"}


@contextlib.asynccontextmanager
async def http_mcp() -> AsyncIterator[str]:
    """The test MCP server over streamable HTTP on 127.0.0.1; yields its URL."""
    with reserved_port() as port:
        pass
    server = uvicorn.Server(
        uvicorn.Config(mcp_server.http_app(), host="127.0.0.1", port=port, log_level="error")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_mcp_server_tools_are_called(fake_openai: FakeOpenAI, tmp_path: Path, transport: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        entry = STDIO if transport == "stdio" else {"url": await stack.enter_async_context(http_mcp())}
        path = desk(tmp_path, fake_openai, mcp_servers=[entry])
        fake_openai.tool_call("lookup_order", {"order_id": "7"})
        fake_openai.tool_call("lookup_order", {"order_id": "boom"})
        fake_openai.reply("Order 7 is on its way.")
        done, events, _ = await answer(path, "Where is order 7?")
    assert "lookup_order" in json.dumps(fake_openai.requests[0].body["tools"])
    assert "Order 7: shipped on 2026-11-20" in json.dumps(fake_openai.requests[1].body)
    assert [e.name for e in events if isinstance(e, ToolFinished) and e.failed] == ["lookup_order"]
    assert done.outcome.status == "done" and done.outcome.text == "Order 7 is on its way."


async def test_a_stdio_server_gets_only_the_variables_it_is_given(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", "orders-token-value")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-never-shared")
    server = {**STDIO, "env_from": ["ORDERS_TOKEN"], "env": {"MODE": "mode-value"}}
    path = desk(tmp_path, fake_openai, mcp_servers=[server])
    for name in ("ORDERS_TOKEN", "MODE", "SLACK_BOT_TOKEN", "OPENAI_API_KEY"):
        fake_openai.tool_call("show_env", {"name": name})
    fake_openai.reply("done")
    await answer(path, "env?")
    seen = [json.dumps(r.body["input"][-1]) for r in fake_openai.requests[1:]]  # each tool output
    assert "orders-token-value" in seen[0] and "mode-value" in seen[1]
    assert "unset" in seen[2] and "unset" in seen[3]  # the bot's own secrets stay with the bot
    assert "xoxb-never-shared" not in json.dumps([r.body for r in fake_openai.requests])


async def test_an_unreachable_mcp_server_shows_a_line_and_the_answer_goes_on(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    with reserved_port() as port:
        pass  # nothing listens there
    servers = [
        {"url": f"http://127.0.0.1:{port}/mcp", "name": "crm", "timeout": 3.0},
        {"command": str(tmp_path / "no-such-server"), "name": "wiki"},
    ]
    path = desk(tmp_path, fake_openai, mcp_servers=servers)
    fake_openai.reply("I can still answer from the docs.")
    done, events, _ = await answer(path, "hello")
    failed = [(e.name, e.failed) for e in events if isinstance(e, ToolFinished)]
    assert sorted(failed) == [("crm", True), ("wiki", True)]
    assert done.outcome.status == "done" and done.outcome.text == "I can still answer from the docs."
    assert "search_docs" in json.dumps(fake_openai.requests[0].body["tools"])


async def test_a_hosted_tool_call_ends_when_the_text_goes_on() -> None:
    """Hosted tools (web search) run on OpenAI's side and send no output item: their status
    line ends when the answer's text starts, instead of hanging over the whole answer."""
    from types import SimpleNamespace as NS

    from core.events import Done
    from core.sources import normalize

    class Result:
        final_output = "Found it."

        async def stream_events(self) -> AsyncIterator[Any]:
            yield NS(type="raw_response_event", data=NS(type="response.created"))
            yield NS(
                type="run_item_stream_event",
                name="tool_called",
                item=NS(raw_item={"type": "web_search_call", "id": "ws1"}),
            )
            yield NS(
                type="raw_response_event",
                data=NS(type="response.output_text.delta", delta="Found it.", item_id="m1"),
            )

    events = [ev async for ev in normalize(Result())]  # type: ignore[arg-type]
    assert events == [
        ToolStarted("web_search", "ws1"),
        ToolFinished("web_search", "ws1"),
        TextDelta("Found it."),
        Done(),
    ]
