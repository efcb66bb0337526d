"""What the end-to-end tests share: one way to wait for a condition, ports for servers that must
be told a number, the real bots running against the fakes, and one strict oracle for what a
reply's messages show. Test modules import from here, never from each other.

The fakes import `wait_for` and `reserved_port` from this module, so it imports no fake at
module level (only inside functions and for type checking).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
import pytest

from bots.discord_api import DiscordSettings
from core.config import Config, MemoryConfig, ModelConfig
from core.host import Finished, Host
from core.pacing import Pacer
from core.relay import Outcome
from core.sources import build_brain
from core.usage import LocalUsage

if TYPE_CHECKING:
    from fakes.discord_server import FakeDiscord, FakeMessage
    from fakes.openai_server import FakeOpenAI
    from fakes.slack_server import FakeSlack

GUARD = 90.0  # generous: ten Discord replies at the real 5-per-5-s take ~30 s


ROOT = Path(__file__).resolve().parents[1]


# --- waiting -----------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the condition", *, poll: float = 0.01
) -> Any:
    """Wait until `predicate()` (a plain or an async function) returns something truthy, and
    return it. After `timeout` seconds, also when a check itself hangs, fail saying `what` did
    not happen."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(poll)
    except TimeoutError:
        if not deadline.expired():
            raise  # the predicate's own error
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


# --- ports -------------------------------------------------------------------------------------


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A free port for a server that must be given a number (redis-server, the bot's HTTP
    endpoint, the CLI's ops endpoint), held for it until the block ends.

    The port is bound, with SO_REUSEADDR and without listening, for the whole block: no other
    socket asking the system for a free port gets it in the meantime, while a server that sets
    SO_REUSEADDR (aiohttp and redis-server do) can still bind and listen on it. Start the server
    inside the block and leave it once the server listens (a listening socket keeps the port).
    A server that fails to start anyway should be retried on a new port.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        yield int(s.getsockname()[1])


# --- what a reply's messages show --------------------------------------------------------------

_OPEN_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_CLOSE_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")


def _fence_after(text: str, fence: tuple[str, str] | None) -> tuple[str, str] | None:
    """The code block (marker, info string) open after `text` read line by line as a Markdown
    renderer reads it (CommonMark fences), given the one open at its start."""
    for line in text.split("\n"):
        if fence is None:
            m = _OPEN_FENCE.fullmatch(line)
            if m and not (m[1][0] == "`" and "`" in m[2]):
                fence = (m[1], m[2].strip())
        else:
            m = _CLOSE_FENCE.fullmatch(line)
            if m and m[1][0] == fence[0][0] and len(m[1]) >= len(fence[0]):
                fence = None
    return fence


def _reopener(fence: tuple[str, str] | None) -> str:
    """The first line of a page that continues inside `fence`: its marker and its language."""
    if fence is None:
        return ""
    marker, info = fence
    return f"{marker[:16]}{info.split()[0][:32] if info else ''}\n"


def assert_pages_are(pages: list[str], text: str, limit: int) -> None:
    """`pages` (what each message of one reply shows, in order) show exactly `text`, each within
    `limit` characters. The only additions allowed: a page that ends inside a code block closes
    it with its own marker on a line of its own, and the next page reopens it with the same
    marker and language (any fence, any info string). Nothing else is added, lost or changed,
    whitespace included."""
    assert pages, "no pages"
    for i, page in enumerate(pages):
        assert len(page) <= limit, f"page {i} has {len(page)} characters, more than {limit}"

    def problem(i: int, pos: int, fence: tuple[str, str] | None) -> str | None:
        """Why pages[i:] do not show text[pos:] (None if they do), a block open at pos."""
        if i == len(pages):
            if fence is not None:
                return f"the last page leaves the code block {fence} open"
            return None if pos == len(text) else f"the pages stop at {pos} of {len(text)} characters"
        page, opener = pages[i], _reopener(fence)
        if not page.startswith(opener):
            return f"page {i} does not start by reopening the code block with {opener!r}: {page[:60]!r}"
        rest = page[len(opener) :]
        trailing = len(rest) - len(rest.rstrip("`~"))
        why = f"page {i} is not the next part of the text: {rest[:80]!r}"
        for size in sorted({len(rest), len(rest) - trailing, len(rest) - trailing - 1}, reverse=True):
            body, added = rest[:size], rest[size:]
            if size <= 0 or not text.startswith(body, pos):
                continue
            after = _fence_after(body, fence)  # the opener only restates `fence` (a bare ``` would close it)
            closer = "" if after is None else ("" if (opener + body).endswith("\n") else "\n") + after[0]
            if added != closer:
                continue
            why = problem(i + 1, pos + size, after)
            if why is None:
                return None
        return why

    why = problem(0, 0, None)
    assert why is None, why


PLACEHOLDER = "…"  # StreamConfig().placeholder
_CURSOR_AFTER_FENCE = re.compile(r"\n? {0,3}(?:`{3,}|~{3,})[ \t]*\n▌\Z")
_CURSOR = re.compile(r" ▌\Z")
_EARLY_CLOSERS = re.compile(r"[*~`]+\Z")


def settled_state(shown: str) -> str:
    """The text a streamed state of a message shows for good: without the cursor and what only
    comes with it (the temporary closer of a code block still open; `**`, `~~` or a backtick
    closed early), or a placeholder. A final state is returned as it is."""
    if (m := _CURSOR_AFTER_FENCE.search(shown)) is not None:
        return shown[: m.start()]
    if (m := _CURSOR.search(shown)) is not None:
        shown = _EARLY_CLOSERS.sub("", shown[: m.start()])
        return "" if shown == PLACEHOLDER else shown
    return shown


def assert_grew(history: list[str], final: str) -> list[str]:
    """The message was seen growing into `final`: it showed part of it (not nothing, not all)
    before the end, and each state's settled text is a prefix of the next state's, so nothing
    it showed was ever taken back. Returns the distinct settled states, oldest first."""
    assert history and history[-1] == final, (history[-1:], final)
    states: list[str] = []
    for shown in history:
        state = settled_state(shown)
        if state and (not states or state != states[-1]):
            states.append(state)
    for before, after in zip(states, states[1:], strict=False):
        assert after.startswith(before), f"{before!r} was taken back: next came {after!r}"
    assert any(len(s) < len(final) for s in states), f"never seen part way: {history}"
    return states


def long_markdown() -> str:
    """A 6,000-character answer with headings, a long code block and lists: several pages."""
    code = "\n".join(f"    result_{i} = compute({i}, factor={i * 3})  # step {i}" for i in range(70))
    prose = " ".join(f"Sentence {i} explains **one more** detail of the design." for i in range(45))
    text = (
        f"# A long answer\n\n{prose}\n\n```python\ndef main() -> None:\n{code}\n```\n\n"
        f"## After the code\n\n{prose}\n\n- item one\n- item two\n"
    )
    while len(text) < 6000:
        text += f"\nMore text to reach the size: {len(text)}."
    return text


# --- Discord: the real bot against the fake ----------------------------------------------------


class _Collector(logging.Handler):
    """Reply outcomes (from the host's `on_finished` hook) and ERROR records of the bot and
    discord.py."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.outcomes: dict[int, Outcome] = {}
        self.finished_replies: dict[int, Finished] = {}
        self.errors: list[logging.LogRecord] = []

    def finished(self, reply: Finished) -> None:
        self.outcomes[int(reply.question.reply_id)] = reply.outcome
        self.finished_replies[int(reply.question.reply_id)] = reply

    def emit(self, record: logging.LogRecord) -> None:
        # Only ours and discord.py's: an earlier test's HTTP client being garbage-collected
        # after its event loop closed is not this test's business.
        if record.levelno >= logging.ERROR and record.name.split(".")[0] in ("streambot", "discord"):
            self.errors.append(record)


@dataclass
class Bot:
    fake: FakeDiscord
    model: FakeOpenAI
    logs: _Collector
    task: asyncio.Task[None] | None = None
    config: Config = field(default_factory=Config)
    host: Host | None = None  # its pacer shows what the budgets learned

    async def outcome(self, reply_id: int) -> Outcome:
        return await self.fake.wait_for(lambda: self.logs.outcomes.get(reply_id), GUARD)

    async def ask(self, text: str, **kwargs: Any) -> tuple[FakeMessage, Outcome]:
        question = await self.fake.send(f"<@{self.fake.bot.id}> {text}", **kwargs)
        return question, await self.outcome(question.id)


def make_discord_config(
    fake: FakeDiscord,
    model: FakeOpenAI,
    tmp_path: Path,
    profiles: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    **discord_options: Any,
) -> Config:
    return Config(
        model=ModelConfig(base_url=model.base_url),
        memory=MemoryConfig(path=str(tmp_path / "memory.db")),
        discord=DiscordSettings(enabled=True, api_base=fake.api_base, **discord_options),
        profiles=profiles or {},
        routes=routes or [],
    )


def profile_brains(config: Config, redis: Any = None) -> Any:
    """The `brains` factory a host gets, as the CLI builds it: one Brain per profile."""
    return lambda profile: build_brain(config, redis=redis, profile=profile)


@contextlib.asynccontextmanager
async def running_discord_bot(
    fake: FakeDiscord,
    model: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **discord_options: Any,
) -> AsyncIterator[Bot]:
    """`serve()` exactly as the CLI runs it, against the fakes; cancelled at the end."""
    from bots.discord_bot import serve

    monkeypatch.setenv("DISCORD_BOT_TOKEN", fake.token)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    config = make_discord_config(fake, model, tmp_path, **discord_options)
    logs = _Collector()
    root = logging.getLogger()
    root.addHandler(logs)
    level = logging.getLogger("streambot").level
    logging.getLogger("streambot").setLevel(logging.INFO)
    bot = Bot(fake, model, logs, config=config)
    # token usage is added up in the memory file, as `streambot run` does (core/backend.py)
    host = bot.host = Host(
        config,
        build_brain(config),
        Pacer(),
        usage=LocalUsage(config.memory.path),
        brains=profile_brains(config),
    )
    host.on_finished.append(logs.finished)
    bot.task = asyncio.create_task(serve(host, config.discord))
    try:
        await asyncio.wait_for(_discord_ready(fake, bot.task), GUARD)
        yield bot
        assert not [r.getMessage() for r in logs.errors], "errors were logged"
        assert discord.http.Route.BASE == "https://discord.com/api/v10", "global Route.BASE changed"
    finally:
        bot.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bot.task
        root.removeHandler(logs)
        logging.getLogger("streambot").setLevel(level)


async def _discord_ready(fake: FakeDiscord, task: asyncio.Task[None]) -> None:
    ready = asyncio.ensure_future(fake.wait_ready(GUARD))
    await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what serve() raised
        raise AssertionError("serve() returned before the bot was ready")
    await ready
    # /ask is registered in setup_hook, before the gateway connects
    assert fake.commands, "the /ask command was not registered"


def final(message: FakeMessage) -> str:
    """What a Discord message shows now."""
    return message.history[-1].content


# --- Slack: the real bot against the fake ------------------------------------------------------


@contextlib.asynccontextmanager
async def running_slack_bot(
    slack: FakeSlack,
    *,
    model_base_url: str,
    memory_path: str,
    stream: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    store: Any = None,
    backend: Any = None,
    profiles: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    tools: Sequence[Any] = (),
    feedback: dict[str, Any] | None = None,
    **slack_settings: Any,
) -> AsyncIterator[asyncio.Task[None]]:
    """Run `bots.slack_bot.serve` (the real adapter, bolt and slack_sdk) against `slack`.

    The model is an OpenAI-compatible server at `model_base_url` (the fake OpenAI). Socket Mode
    waits for the websocket; HTTP mode gives the bot a reserved 127.0.0.1 port (a new one if it
    could not listen there) and points the fake at it. A `backend` (core.backend.Backend) shares
    store, pacer, limits and memory as a replica on the redis backend would.
    """
    from bots.slack_api import SlackSettings
    from bots.slack_bot import EVENTS_PATH, serve
    from core.config import FeedbackConfig, LimitsConfig, StreamConfig
    from fakes.slack_server import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET

    saved = {
        k: os.environ.get(k)
        for k in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY")
    }
    os.environ.update(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "OPENAI_API_KEY": "test",
        }
    )

    def start(**extra: Any) -> asyncio.Task[None]:
        settings = {
            "enabled": True,
            "api_base": slack.base_url,
            "mode": slack.mode,
            **slack_settings,
            **extra,
        }
        config = Config(
            model=ModelConfig(base_url=model_base_url),
            memory=MemoryConfig(path=memory_path, **(memory or {})),
            stream=StreamConfig(**(stream or {})),
            limits=LimitsConfig(**(limits or {})),
            feedback=FeedbackConfig(**(feedback or {})),
            slack=SlackSettings(**settings),
            profiles=profiles or {},
            routes=routes or [],
        )
        if backend is not None:
            host = Host(
                config,
                build_brain(config, tools, redis=backend.redis),
                backend.pacer,
                backend.store,
                backend.gate,
                brains=profile_brains(config, backend.redis),
            )
        else:
            host = Host(config, build_brain(config, tools), Pacer(), store, brains=profile_brains(config))
        return asyncio.create_task(serve(host, config.slack))

    task: asyncio.Task[None] | None = None
    try:
        if slack.mode == "socket":
            task = start()
            connected = asyncio.create_task(slack.wait_connected(30.0, more_than=slack.connections))
            await asyncio.wait({task, connected}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                connected.cancel()
                task.result()  # raises what went wrong
            await connected
        elif "port" in slack_settings:
            task = start()
            await _listening(
                slack, task, slack_settings.get("host", "127.0.0.1"), slack_settings["port"], EVENTS_PATH
            )
        else:
            for attempt in range(3):
                with reserved_port() as port:
                    task = start(host="127.0.0.1", port=port)
                    try:
                        await _listening(slack, task, "127.0.0.1", port, EVENTS_PATH)
                        break
                    except OSError:  # could not listen there after all: another port
                        if attempt == 2:
                            raise
        yield task
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _listening(slack: FakeSlack, task: asyncio.Task[None], host: str, port: int, path: str) -> None:
    """Wait until the bot's HTTP endpoint accepts connections (raising what the bot raised if it
    stopped first), then point the fake at it."""

    async def up() -> bool:
        if task.done():
            task.result()
            raise AssertionError("the Slack bot stopped before it listened")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await wait_for(up, 30.0, f"the Slack bot to listen on {host}:{port}")
    slack.http_url = f"http://{host}:{port}{path}"


def slack_bot_for(slack: FakeSlack, fake_openai: Any, tmp_path: Any, **settings: Any) -> Any:
    """`running_slack_bot` on the fake OpenAI server, with its memory file in the test's
    tmp_path."""
    return running_slack_bot(
        slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "memory.db"), **settings
    )


# --- streambot as a process --------------------------------------------------------------------


async def start_streambot(
    config: Path, env: dict[str, str], log: Path, *flags: str, **options: Any
) -> asyncio.subprocess.Process:
    """`python -m bots [flags] run --config CONFIG` as production runs it, its stderr appended
    to `log` (`options` go to create_subprocess_exec, e.g. preexec_fn)."""
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bots", *flags, "run", "--config", str(config),
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=err, **options,
        )  # fmt: skip


def no_stop(components: list[dict[str, Any]]) -> bool:
    """A Discord message's components hold no Stop button (a finished answer may hold 👍/👎)."""
    return not any(
        str(c.get("custom_id", "")).startswith("streambot:stop:")
        for row in components
        for c in row.get("components", [])
    )
