"""Model sources: run an Agents SDK agent and normalize its stream into core events.

`Brain` owns the agent, the model and the conversation memory; `brain.start(prompt, key)` gives
one `AgentRun` the relay can consume. Text grows only from the SDK's raw `output_text.delta`
events; run-item events (message created, tool called, tool output, handoff) arrive later and are
used for status only, so no text is ever shown twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import openai
from agents import Agent, MaxTurnsExceeded, Model, ModelBehaviorError, ModelSettings, RunConfig, Runner, Tool
from agents.items import TResponseInputItem
from agents.mcp import MCPServer, MCPServerManager
from agents.memory import Session
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.models.openai_responses import OpenAIResponsesModel
from agents.result import RunResultStreaming
from openai.types.shared import Reasoning

from core.attachments import FileLimits, Prepared, Turn, notes_text, prepare
from core.config import DEFAULT_PROFILE, Config, McpServerConfig, ModelConfig, env, redis_url
from core.events import (
    Done,
    Event,
    Failed,
    Handoff,
    HumanWanted,
    Searched,
    TextDelta,
    Thinking,
    ToolFinished,
    ToolStarted,
    Usage,
)
from core.handoff import HANDOFF_TOOL, handoff_tool
from core.knowledge import KnowledgeBase
from core.memory import SQLiteMemory, prune_sqlite, redis_memory, undo
from core.profiles import resolve
from core.think import ThinkSplitter
from core.tools import (
    KNOWLEDGE_INSTRUCTIONS,
    RunState,
    build_tools,
    knowledge_base,
    knowledge_tool,
    mcp_server,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("streambot.model")
HOSTED_CALLS = {"web_search_call": "web_search", "file_search_call": "file_search"}
_SECRETISH = re.compile(r"\b(sk|xox[abpr]|xapp)-[A-Za-z0-9_\-*]{6,}")


MEMORY_NOTE = "I can't reach my memory store right now; please try again in a moment."


def _memory_error(exc: BaseException) -> bool:
    """A failure of the conversation memory (SQLite or Redis), not of the model."""
    if isinstance(exc, sqlite3.Error):
        return True
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return False
    return isinstance(exc, RedisError)


def describe_error(exc: BaseException) -> str:
    """A short, user-facing sentence for a model failure, with anything secret-looking removed."""
    if isinstance(exc, openai.AuthenticationError):
        msg = "the model server rejected the API key (401): check OPENAI_API_KEY"
    elif isinstance(exc, openai.RateLimitError):
        msg = "the model is rate limited or out of quota (429): try again shortly"
    elif isinstance(exc, openai.APITimeoutError):
        msg = "the model server timed out"
    elif isinstance(exc, openai.APIConnectionError):
        msg = "could not reach the model server: check [model] base_url and the network"
    elif isinstance(exc, openai.APIStatusError):
        msg = f"the model server answered {exc.status_code}: {exc.message}"
    elif isinstance(exc, openai.APIError):  # the model server's own words (e.g. mid-stream)
        msg = f"the model server failed: {exc.message}"
    elif isinstance(exc, MaxTurnsExceeded):
        msg = "the agent used up its turns ([model] max_turns) before answering"
    elif isinstance(exc, ModelBehaviorError):
        msg = f"the model misbehaved: {exc}"
    elif _memory_error(exc):  # the details (host, port, errno, path) are for the log only
        return MEMORY_NOTE
    else:  # a bug or an internal failure: its text may hold paths, hosts, ids
        return "Something went wrong on my side; please try again (the log has the details)."
    key = env("OPENAI_API_KEY")
    if key:
        msg = msg.replace(key, "***")
    return "Model error — " + _SECRETISH.sub("***", msg)[:300]


async def normalize(result: RunResultStreaming, state: RunState | None = None) -> AsyncIterator[Event]:
    """Turn `Runner.run_streamed(...).stream_events()` into core events; always ends in Done/Failed
    (after a Usage event when the model reported any).

    Reasoning never becomes answer text: reasoning summary and reasoning text events (the
    Responses API's, and what the SDK makes of Chat Completions `reasoning_content`) and
    `<think>` blocks inside the output text (core/think.py) all become `Thinking` events.
    With the run's `state` (its context), a tool call that raised ends as a failed ToolFinished
    and each knowledge search becomes a Searched event."""
    tools: dict[str, str] = {}
    hosted: dict[str, str] = {}  # hosted tool calls (web search…): done once the text goes on
    reported = 0  # searches already turned into events
    wrote = False  # some answer text was yielded
    thought = False  # some reasoning was yielded
    needs_break = False  # the next answer text starts a new message: separate it
    last_item: str | None = None
    split = ThinkSplitter()

    def text(events: list[TextDelta | Thinking]) -> list[Event]:
        nonlocal wrote, thought, needs_break
        out: list[Event] = []
        for event in events:
            if isinstance(event, Thinking):
                thought = True
            elif event.text:
                if needs_break:
                    out.append(TextDelta("\n\n"))  # a new message after a tool call or handoff
                wrote, needs_break = True, False
            out.append(event)
        return out

    def next_message() -> list[Event]:
        """A new message starts: what the last one held back is decided, tags count again."""
        nonlocal split, needs_break
        events = text(split.end())
        split, needs_break = ThinkSplitter(), wrote
        return events

    try:
        async for ev in result.stream_events():
            if ev.type == "raw_response_event":
                data = ev.data
                if data.type == "response.created":
                    for out in next_message():
                        yield out
                elif data.type == "response.output_text.delta" and data.delta:
                    for call_id, name in hosted.items():
                        yield ToolFinished(name, call_id)
                    hosted.clear()
                    item = getattr(data, "item_id", None)
                    if item != last_item and last_item is not None:
                        for out in next_message():
                            yield out
                    last_item = item
                    for out in text(split.feed(data.delta)):
                        yield out
                elif data.type in _REASONING_DELTAS:
                    thought = True
                    yield Thinking(str(getattr(data, "delta", "") or ""))
                elif data.type == "response.reasoning_summary_part.added" and data.summary_index:
                    yield Thinking("\n\n")  # the next paragraph of the summary
            elif ev.type == "run_item_stream_event":
                raw = ev.item.raw_item
                if ev.name == "tool_called":
                    call_id = str(_get(raw, "call_id") or _get(raw, "id") or "")
                    name = str(_get(raw, "name") or _get(raw, "type") or "tool")
                    kind = _get(raw, "type")
                    if kind in HOSTED_CALLS:
                        name = HOSTED_CALLS[kind]
                        hosted[call_id] = name
                    else:
                        tools[call_id] = name
                    yield ToolStarted(name, call_id)
                    if name == HANDOFF_TOOL:
                        yield HumanWanted(_reason(_get(raw, "arguments")))
                elif ev.name == "tool_output":
                    call_id = str(_get(raw, "call_id") or "")
                    failed = state is not None and call_id in state.failed
                    yield ToolFinished(tools.pop(call_id, "tool"), call_id, failed)
                    while state is not None and reported < len(state.searches):
                        search = state.searches[reported]
                        reported += 1
                        yield Searched(search.query, tuple(h.link for h in search.hits))
                elif ev.name == "handoff_occured":
                    yield Handoff(ev.item.target_agent.name)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # the user sees a short line; the log gets the whole error (secrets scrubbed by core/logs)
        log.warning("model run failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        for out in next_message():
            yield out
        if usage := _usage(result):
            yield usage
        yield Failed(describe_error(exc))
        return
    for out in next_message():
        yield out
    final = result.final_output
    if not wrote and final is not None and str(final).strip():
        # Some OpenAI-compatible servers, and agents with an output_type, send no text deltas.
        split = ThinkSplitter()
        for out in text(split.feed(final if isinstance(final, str) else str(final)) + split.end()):
            yield out
    if not wrote and not thought:
        log.warning(
            "the model returned no text: check that [model] model exists on the server, "
            "that [model] api matches it (responses or chat_completions), and that the "
            "agent's instructions ask for an answer"
        )
    if usage := _usage(result):
        yield usage
    yield Done()


def _reason(arguments: Any) -> str:
    """The `reason` argument of a handoff tool call (JSON text), or '' if it has none."""
    try:
        value = json.loads(arguments or "{}").get("reason", "")
    except (ValueError, AttributeError):
        return ""
    return str(value)


# The SDK's raw events that carry reasoning: summaries, and raw reasoning text.
_REASONING_DELTAS = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")


def _usage(result: RunResultStreaming) -> Usage | None:
    """The run's token usage as the SDK added it up (None when the server reported none)."""
    try:
        usage = result.context_wrapper.usage
    except Exception:
        return None
    if not (usage.input_tokens or usage.output_tokens):
        return None
    return Usage(usage.input_tokens, usage.output_tokens, usage.requests)


def _get(raw: Any, name: str) -> Any:
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)


class _Watched:
    """A streamed result that remembers the exception its stream ended with (normalize turns
    it into a Failed line; a rejected picture is retried without it)."""

    def __init__(self, result: RunResultStreaming) -> None:
        self._result = result
        self.error: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    async def stream_events(self) -> AsyncIterator[Any]:
        try:
            async for ev in self._result.stream_events():
                yield ev
        except Exception as exc:
            self.error = exc
            raise


def _refused_images(exc: BaseException | None) -> str | None:
    """Why the model server refused a request carrying pictures, as a note, or None when the
    failure was something else: a 400/422 (a text-only model) or a 413 (too large for it)."""
    if isinstance(exc, openai.APIStatusError) and exc.status_code == 413:
        return IMAGES_TOO_LARGE
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError) or (
        isinstance(exc, openai.APIStatusError) and "image" in str(exc.message).lower()
    ):
        return IMAGES_REFUSED
    return None


IMAGES_REFUSED = "This model can't read pictures, so I answered from the text alone."
IMAGES_TOO_LARGE = "The pictures were too large for the model server, so I answered from the text alone."


class AgentRun:
    """One streamed agent run (the relay's `ModelRun`)."""

    def __init__(self, brain: Brain, prompt: str | Turn, session: Session | None) -> None:
        self._brain = brain
        self._prompt = prompt
        self._session = session
        self._result: RunResultStreaming | None = None
        self._cancelled = False
        text = prompt if isinstance(prompt, str) else prompt.text
        self._user_item: TResponseInputItem = {"role": "user", "content": text}

    async def events(self) -> AsyncIterator[Event]:
        if self._cancelled:
            return
        servers = self._brain.mcp_servers()
        if not servers:
            async for ev in self._run(self._brain.agent):
                yield ev
            return
        # Connected for this run and cleaned up after it. Each server gets a worker task of its
        # own, so the cleanup works from whichever task ends the run (a Stop, say).
        async with MCPServerManager(
            servers,
            connect_timeout_seconds=max(s.timeout for s in self._brain.mcp),
            connect_in_parallel=True,
        ) as manager:
            for server, error in manager.errors.items():
                log.warning(
                    "MCP server %s is unavailable (%s: %s); answering without it",
                    server.name,
                    type(error).__name__,
                    error,
                )
                yield ToolStarted(server.name, f"mcp:{server.name}")
                yield ToolFinished(server.name, f"mcp:{server.name}", failed=True)
            async for ev in self._run(self._brain.agent.clone(mcp_servers=manager.active_servers)):
                yield ev

    async def _run(self, agent: Agent[Any]) -> AsyncIterator[Event]:
        if self._cancelled:
            return
        await self._brain.prune_when_due()
        prepared: Prepared | None = None
        model_input: str | list[TResponseInputItem] = self._prompt if isinstance(self._prompt, str) else []
        if isinstance(self._prompt, Turn):
            prepared = await prepare(self._prompt, self._brain.file_limits)
            if prepared.notes:
                yield TextDelta(notes_text(prepared.notes))
            self._user_item = cast(TResponseInputItem, prepared.item())
            model_input = [self._user_item]
        retry = prepared is not None and bool(prepared.images)
        while not self._cancelled:
            state = RunState()  # what this attempt's tools did (searches, failures)
            try:
                self._result = Runner.run_streamed(
                    agent,
                    model_input,
                    context=state,
                    session=self._session,
                    max_turns=self._brain.max_turns,
                    run_config=self._brain.run_config,
                )
            except Exception as exc:
                log.warning("model run failed to start: %s: %s", type(exc).__name__, exc, exc_info=exc)
                yield Failed(describe_error(exc))
                return
            watched = _Watched(self._result)
            wrote, why = False, None
            async for ev in normalize(cast(RunResultStreaming, watched), state):
                if isinstance(ev, Failed) and retry and not wrote and (why := _refused_images(watched.error)):
                    break
                wrote = wrote or isinstance(ev, TextDelta)
                yield ev
            else:
                return
            assert prepared is not None
            log.info("the model server refused pictures (%s); answering without them", watched.error)
            retry = False
            if self._session is not None:
                await undo(self._session)
            yield TextDelta(notes_text([why]))
            self._user_item = cast(TResponseInputItem, prepared.item(with_images=False))
            model_input = [self._user_item]

    def cancel(self) -> None:
        self._cancelled = True
        if self._result is not None and not self._result.is_complete:
            self._result.cancel()

    async def remember(self, shown: str) -> None:
        """The SDK stores only the user's turn when a run is cut short; add what they saw."""
        if self._session is None:
            return
        if not getattr(self._session, "added_user", False):
            await self._session.add_items([self._user_item])
        await self._session.add_items([{"role": "assistant", "content": shown}])


PRUNE_EVERY = 3600.0  # seconds between two `[memory] ttl_days` sweeps of the SQLite file


class Brain:
    """The agent plus conversation memory: start one run per incoming message.

    Memory is a SQLite file at `memory_path`, or, given `redis`, the Agents SDK's RedisSession so
    every replica of the bot sees the same conversations. With `ttl_days`, memory older than
    that is forgotten (SQLite: swept hourly; Redis: the keys expire).
    """

    def __init__(
        self,
        agent: Agent[Any],
        *,
        max_turns: int = 10,
        memory_path: str | None = None,
        history_limit: int = 0,
        tracing: bool = False,
        demo: bool = False,
        redis: Redis | None = None,
        file_limits: FileLimits | None = None,
        ttl_days: float = 0.0,
        mcp: Sequence[McpServerConfig] = (),
        mcp_cwd: str = "",
        knowledge: KnowledgeBase | None = None,
    ) -> None:
        self.agent = agent
        self.mcp = list(mcp)  # connected per run: see AgentRun.events
        self.mcp_cwd = mcp_cwd
        self.knowledge = knowledge
        self.max_turns = max_turns
        self.memory_path = memory_path
        self.redis = redis
        self.history_limit = history_limit
        self.run_config = RunConfig(tracing_disabled=not tracing)
        self.demo = demo
        self.file_limits = file_limits or FileLimits()
        self.ttl_days = ttl_days
        self._pruned_at: float | None = None

    def mcp_servers(self) -> list[MCPServer]:
        """Fresh server objects for one run (a connection serves one run at a time)."""
        return [mcp_server(m, self.mcp_cwd) for m in self.mcp]

    def session(self, conversation: str) -> Session:
        settings = {"limit": self.history_limit} if self.history_limit else None
        if self.redis is not None:
            return redis_memory(conversation, self.redis, self.ttl_days, settings)
        return SQLiteMemory(conversation, self.memory_path or ":memory:", session_settings=settings)

    def start(self, prompt: str | Turn, conversation: str | None = None) -> AgentRun:
        """A run answering `prompt` (a plain question, or a Turn with its author, pictures and
        files); with a `conversation` key, earlier turns are remembered."""
        session = self.session(conversation) if conversation and self.remembers else None
        return AgentRun(self, prompt, session)

    @property
    def remembers(self) -> bool:
        return bool(self.memory_path) or self.redis is not None

    async def forget(self, conversation: str) -> bool:
        """Start `conversation` over: everything remembered of it is dropped. False when
        there is no memory to drop."""
        if not (conversation and self.remembers):
            return False
        await self.session(conversation).clear_session()
        return True

    async def prune_when_due(self) -> None:
        """Apply `ttl_days` to the SQLite file, at most once per PRUNE_EVERY (Redis expires
        keys itself). A failure is logged and costs no answer."""
        now = time.monotonic()
        if not self.ttl_days or self.redis is not None or not self.memory_path:
            return
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            await asyncio.to_thread(prune_sqlite, self.memory_path, self.ttl_days)
        except sqlite3.Error as exc:
            log.warning("memory: could not forget old conversations: %s", exc)


def build_model(config: Config, profile: ModelConfig | None = None) -> Model:
    """The model of `profile` (default: `[model]`), or the offline demo model when nothing is
    configured."""
    m = profile or config.model
    if not (env("OPENAI_API_KEY") or m.base_url or env("OPENAI_BASE_URL")):
        from core.demo import DemoModel

        return DemoModel()
    client = openai.AsyncOpenAI(
        api_key=env("OPENAI_API_KEY") or "not-needed",  # local OpenAI-compatible servers take any key
        base_url=m.base_url or env("OPENAI_BASE_URL") or None,
    )
    if m.api == "chat_completions":
        return OpenAIChatCompletionsModel(model=m.model, openai_client=client)
    return OpenAIResponsesModel(model=m.model, openai_client=client)


def build_brain(
    config: Config,
    tools: Sequence[Tool] = (),
    model: Model | None = None,
    redis: Redis | None = None,
    profile: str = DEFAULT_PROFILE,
) -> Brain:
    """A Brain for profile `profile` of `config`: its model, instructions, tools and memory.

    With the redis backend, pass the client the process already has (`RedisStore.redis`) to
    share its connections; without one, a client for the configured URL is made.
    """
    p = resolve(config, profile)
    own_tools = build_tools(config, profile, p)  # first: a bad tool path stops before any work
    if config.memory.backend == "redis" and redis is None:
        from core.redis_state import connect

        redis = connect(redis_url(config))
    kb = knowledge_base(config, profile, p)
    chosen = model or build_model(config, p)
    summary = p.reasoning_summary
    agent = Agent(
        name="streambot" if profile == DEFAULT_PROFILE else profile,
        instructions=p.instructions + (KNOWLEDGE_INSTRUCTIONS if kb else ""),
        model=chosen,
        # include_usage: Chat Completions servers report a stream's tokens only when asked (the
        # SDK asks OpenAI's own endpoint by itself, not vLLM, Ollama or LM Studio)
        model_settings=ModelSettings(
            max_tokens=p.max_output_tokens,
            include_usage=True if p.api == "chat_completions" else None,
            reasoning=Reasoning(summary=summary) if summary != "off" else None,
        ),
        # a profile with people to hand over to lets the model ask for them (core/handoff.py)
        tools=[
            *tools,
            *own_tools,
            *([knowledge_tool(kb)] if kb else []),
            *([handoff_tool()] if p.handoff is not None else []),
        ],
    )
    limits = config.limits
    return Brain(
        agent,
        file_limits=FileLimits(
            limits.max_images,
            limits.max_image_bytes,
            limits.max_files,
            limits.max_file_bytes,
            limits.max_file_chars,
        ),
        ttl_days=config.memory.ttl_days,
        max_turns=p.max_turns,
        memory_path=config.memory.path,
        history_limit=config.memory.max_items,
        tracing=p.tracing,
        demo=model is None and _is_demo(chosen),
        redis=redis,
        mcp=p.mcp_servers,
        mcp_cwd=str(config.path(".")),
        knowledge=kb,
    )


def _is_demo(model: Model) -> bool:
    from core.demo import DemoModel

    return isinstance(model, DemoModel)


async def answer(brain: Brain, prompt: str | Turn, conversation: str | None = None) -> str:
    """The whole answer as one string (for scripts and notebooks: `await answer(...)`)."""
    parts: list[str] = []
    async for ev in brain.start(prompt, conversation).events():
        if isinstance(ev, TextDelta):
            parts.append(ev.text)
        elif isinstance(ev, Failed):
            raise RuntimeError(ev.message)
    return "".join(parts)


def answer_sync(brain: Brain, prompt: str | Turn, conversation: str | None = None) -> str:
    """`answer` for code with no event loop; inside one it fails clearly instead of hanging."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(answer(brain, prompt, conversation))
    raise RuntimeError(
        "answer_sync() was called inside a running event loop (Jupyter, IPython or an async "
        "app), which is what 'This event loop is already running' means. Use "
        "`await answer(brain, prompt)` there instead."
    )
