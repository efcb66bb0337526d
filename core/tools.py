"""What a profile's agent can use: its knowledge search, Python function tools named by import
path, MCP servers and the hosted tools, all as Agents SDK objects.

A tool that raises does not end the answer: the model is told it failed and carries on, and the
run's `RunState` notes the call so the reply shows one short line for it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sqlite3
import typing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agents import FileSearchTool, FunctionTool, RunContextWrapper, Tool, WebSearchTool, function_tool
from agents.mcp import MCPServer, MCPServerStdio, MCPServerStreamableHttp, MCPToolCustomDataContext

from core.config import Config, ConfigError, McpServerConfig, Problem, ProfileConfig, env
from core.knowledge import Hit, KnowledgeBase, Searcher

log = logging.getLogger("streambot.tools")

SEARCH_TOOL = "search_docs"
NOT_FOUND = (
    "NO RELEVANT PASSAGES: the documentation does not cover {query!r}. Tell the person plainly "
    "that the docs do not cover this, do not guess an answer, and offer to get a human."
)
KNOWLEDGE_INSTRUCTIONS = (
    "\n\nBefore answering a question about the product, search the documentation with the "
    f"{SEARCH_TOOL} tool. Answer only from the passages it returns, and cite every passage you "
    "use as a Markdown link with its heading as the text and its link exactly as given, e.g. "
    "[Rotating an API key](docs/api-keys.md#rotating-an-api-key). If the search finds nothing "
    "relevant, say that the docs do not cover it and offer to get a human; never guess."
)
PASSAGE_CHARS = 1200  # of each passage shown to the model


@dataclass
class Search:
    query: str
    hits: list[Hit]


@dataclass
class RunState:
    """The Agents SDK run context of one answer: what its tools did, for the reply and reports."""

    searches: list[Search] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # call ids of tool calls that raised


def tool_failed(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """A tool raised: note it for the status line and let the model carry on without it."""
    call_id = str(getattr(ctx, "tool_call_id", "") or "")
    name = str(getattr(ctx, "tool_name", "") or "a tool")
    if isinstance(ctx.context, RunState):
        ctx.context.failed.add(call_id)
    log.warning("tool %s failed: %s: %s", name, type(error).__name__, error)
    return (
        f"The tool failed ({type(error).__name__}). Do not retry it; tell the person in one short "
        "sentence that this lookup is unavailable and answer as well as you can without it."
    )


def mcp_error(ctx: MCPToolCustomDataContext) -> None:
    """An MCP tool that answered with an error result failed too (it did not raise)."""
    if ctx.is_error:
        state = ctx.run_context.context
        if isinstance(state, RunState):
            state.failed.add(str(getattr(ctx.run_context, "tool_call_id", "") or ""))
        log.warning("MCP tool %s of %s failed", ctx.tool_name, ctx.server_name)
    return None


def format_hits(query: str, hits: list[Hit]) -> str:
    """The search tool's output: numbered passages, each with the link to cite."""
    if not hits:
        return NOT_FOUND.format(query=query)
    blocks = [
        f"[{n}] {h.heading or h.path}\nlink: {h.link}\n{h.body[:PASSAGE_CHARS]}"
        for n, h in enumerate(hits, 1)
    ]
    return (
        f"{len(hits)} passage(s) for {query!r}, best first. Cite what you use as "
        "[heading](link).\n\n" + "\n\n".join(blocks)
    )


def knowledge_tool(kb: Searcher) -> FunctionTool:
    async def search_docs(ctx: RunContextWrapper[Any], query: str) -> str:
        """Search the team's documentation for passages that answer a question.

        Args:
            query: The question or its key words, e.g. "rotate API key".
        """
        hits = await asyncio.to_thread(kb.search, query)
        if isinstance(ctx.context, RunState):
            ctx.context.searches.append(Search(query, hits))
        return format_hits(query, hits)

    return function_tool(search_docs, name_override=SEARCH_TOOL, failure_error_function=tool_failed)


def import_tool(spec: str) -> Tool:
    """The tool at "package.module:function": a FunctionTool as is, a plain function wrapped
    with the Agents SDK's `function_tool`. Raises ValueError saying what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError("not an import path of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing at import
        raise ValueError(f"cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name} has no {attr}")
        obj = getattr(obj, part)
    if isinstance(obj, FunctionTool):
        if getattr(obj, "_use_default_failure_error_function", False):  # the short line too
            obj._failure_error_function = tool_failed
        return obj
    if isinstance(obj, _TOOL_CLASSES):  # a hosted tool object, say
        return obj  # type: ignore[no-any-return]
    if not callable(obj):
        raise ValueError(f"{spec} is not a function")
    try:
        return function_tool(obj, failure_error_function=tool_failed)
    except Exception as exc:
        raise ValueError(f"cannot turn {spec} into a tool ({type(exc).__name__}: {exc})") from None


_TOOL_CLASSES = tuple(typing.get_origin(t) or t for t in typing.get_args(Tool))  # Tool is a Union


def mcp_name(server: McpServerConfig) -> str:
    return server.name or (server.command if server.command else urlsplit(server.url).netloc or server.url)


def mcp_server(server: McpServerConfig, cwd: str = "") -> MCPServer:
    """An Agents SDK MCP server for one `mcp_servers` entry (not connected yet)."""
    if server.command:
        # The server sees only what the MCP client passes by default (PATH, HOME…), `env` and
        # the variables named in `env_from`: never the bot's tokens.
        extra = {var: env(var) for var in server.env_from if env(var)}
        params: dict[str, Any] = {"command": server.command, "args": server.args}
        if server.env or extra:
            params["env"] = {**server.env, **extra}
        if server.cwd or cwd:
            params["cwd"] = server.cwd or cwd
        return MCPServerStdio(
            params,  # type: ignore[arg-type]  # a TypedDict built up key by key
            name=mcp_name(server),
            cache_tools_list=True,
            client_session_timeout_seconds=server.timeout,
            failure_error_function=tool_failed,
            custom_data_extractor=mcp_error,
        )
    headers = dict(server.headers)
    if server.token_env and env(server.token_env):
        headers["Authorization"] = f"Bearer {env(server.token_env)}"
    return MCPServerStreamableHttp(
        {"url": server.url, "headers": headers, "timeout": server.timeout},
        name=mcp_name(server),
        cache_tools_list=True,
        client_session_timeout_seconds=server.timeout,
        failure_error_function=tool_failed,
        custom_data_extractor=mcp_error,
    )


def hosted_tools(profile: ProfileConfig) -> list[Tool]:
    tools: list[Tool] = []
    if profile.web_search:
        tools.append(WebSearchTool())
    if profile.file_search:
        tools.append(FileSearchTool(vector_store_ids=list(profile.file_search)))
    return tools


def build_tools(config: Config, name: str, profile: ProfileConfig) -> list[Tool]:
    """The function and hosted tools of profile `name` (not its knowledge search or MCP
    servers); raises ConfigError naming every tool that cannot be loaded and every knowledge
    source that does not exist."""
    tools: list[Tool] = []
    problems: list[Problem] = []
    for i, spec in enumerate(profile.tools):
        try:
            tools.append(import_tool(spec))
        except ValueError as exc:
            problems.append(
                Problem(
                    config.source,
                    f"profiles.{name}.tools.{i}",
                    str(exc),
                    "give the import path of a function (package.module:function) that is "
                    "installed in streambot's Python environment",
                )
            )
    for i, source in enumerate(profile.knowledge):
        if not config.path(source).exists():
            problems.append(
                Problem(
                    config.source,
                    f"profiles.{name}.knowledge.{i}",
                    f"{config.path(source)} does not exist",
                    "fix the path (a relative one starts at the config file's folder)",
                )
            )
    if problems:
        raise ConfigError(problems)
    return tools + hosted_tools(profile)


def knowledge_base(config: Config, name: str, profile: ProfileConfig) -> KnowledgeBase | None:
    """The profile's search index, brought up to date now; None without `knowledge`."""
    if not profile.knowledge:
        return None
    db = config.path(profile.index) if profile.index else config.path(".streambot") / f"{name}.kb.db"
    try:
        kb = KnowledgeBase(db, [config.path(k) for k in profile.knowledge], docs_url=profile.docs_url)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            [
                Problem(
                    config.source,
                    f"profiles.{name}.index",
                    f"cannot open the search index {db} ({exc})",
                    "set index to a file path streambot can write",
                )
            ]
        ) from None
    report = kb.sync()
    log.info("knowledge of profile %s: %s (%s)", name, report, db)
    return kb
