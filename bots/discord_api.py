"""Discord API conventions the adapter relies on: the `[discord]` settings, the gateway intents
and permissions the bot needs, its invite URL, the access lists, the rate budgets, how
discord.py's errors map onto the core's, one attempt per relay request, and pointing one
client at a proxy or a fake.

Kept apart from bots/discord_bot.py, which turns Discord events into host calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

import aiohttp
import discord
import yarl
from discord.http import HTTPClient, Route, json_or_text
from discord.utils import MISSING
from pydantic import Field, model_validator
from redis.asyncio import Redis

from core.adapter import AdapterSettings
from core.platform import MessageGone, Rate, RateLimited, TransientError

# Discord counts a bucket's window from the first request it *receives*; our pacer counts from
# when it *grants*. Grants come in bursts exactly one window apart (each waits for the oldest to
# expire), so a few ms of network jitter can land a burst inside Discord's previous window. Padding
# our windows by more than the jitter keeps every Discord window at or under our count.
JITTER = 0.5
WINDOW = 5.0 + JITTER  # Discord: ~5 message creates/edits per 5 s per channel
GLOBAL_RATE = Rate(45, 1.0 + JITTER / 5)  # Discord: 50 requests/s; the rest: typing, callbacks
# Longest a post or edit of a reply may take, discord.py's own bucket waits included (capped at
# half of `[stream] final_deadline`); without it a hung request waits out aiohttp's 300 s.
REQUEST_TIMEOUT = 30.0
# Discord: one IDENTIFY per 5 s in each `shard_id % max_concurrency` bucket, across all processes
IDENTIFY_EVERY = 5.0


class DiscordSettings(AdapterSettings):
    """`[discord]` in the config file (documented in config.example.toml)."""

    api_base: str = ""  # replaces https://discord.com/api/v10 (a proxy or a fake); gateway via it
    page_chars: int = Field(2000, ge=200, le=2000)
    edits_per_5s: int = Field(4, ge=1, le=5)  # per channel, shared by every reply in it
    open_threads: bool = False
    reply_ping: bool = False
    allow_dms: bool = True
    sync_commands: bool = True  # register /ask with Discord at start-up
    # Discord shows Markdown tables as raw pipes: render them as monospace blocks at most this wide
    # (lists when wider); 0 leaves them as the model wrote them
    table_width: int = Field(60, ge=0, le=200)
    guild_ids: list[int] = []
    channel_ids: list[int] = []  # a channel, thread parent or category id
    role_ids: list[int] = []
    user_ids: list[int] = []
    blocked_guild_ids: list[int] = []
    blocked_channel_ids: list[int] = []
    blocked_role_ids: list[int] = []
    blocked_user_ids: list[int] = []
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] = []

    @model_validator(mode="after")
    def _shards_fit(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("shard_ids needs shard_count (the total number of shards)")
        if self.shard_count is not None and any(not 0 <= i < self.shard_count for i in self.shard_ids):
            raise ValueError(f"every shard id must be in 0..{self.shard_count - 1}")
        return self


# --- set-up facts: intents, permissions, invite -----------------------------------------------


def intents() -> discord.Intents:
    """Exactly the gateway intents the bot needs. Message Content is privileged."""
    wanted = discord.Intents.none()
    wanted.guilds = True  # channels, threads and roles, for access checks
    wanted.guild_messages = True  # mentions and replies in servers, and their deletion
    wanted.dm_messages = True
    wanted.message_content = True  # to read the question
    return wanted


def permissions(config: DiscordSettings) -> discord.Permissions:
    """Exactly the channel permissions the bot uses."""
    needed = discord.Permissions(
        view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
    )
    if config.open_threads:
        needed.create_public_threads = True
    return needed


def invite_url(app_id: int, config: DiscordSettings) -> str:
    return discord.utils.oauth_url(
        app_id, permissions=permissions(config), scopes=("bot", "applications.commands")
    )


_UI_NAMES = {
    "read_messages": "View Channels",
    "send_messages": "Send Messages",
    "send_messages_in_threads": "Send Messages in Threads",
    "read_message_history": "Read Message History",
    "create_public_threads": "Create Public Threads",
}


def setup_summary(app_id: int, config: DiscordSettings) -> str:
    perms = ", ".join(_UI_NAMES.get(name, name) for name, on in permissions(config) if on)
    return (
        f"invite the bot with {invite_url(app_id, config)}\n"
        f"  permissions: {perms}; scopes: bot, applications.commands\n"
        "  gateway intents: Guilds, Guild Messages, Direct Messages, Message Content "
        f"(privileged: enable it at {portal(app_id)} under Privileged Gateway Intents)"
    )


def portal(app_id: int | None) -> str:
    base = "https://discord.com/developers/applications"
    return f"{base}/{app_id}/bot" if app_id else base


# --- access ----------------------------------------------------------------------------------


def is_allowed(
    config: DiscordSettings, *, user_id: int, role_ids: set[int], guild_id: int | None, channel_ids: set[int]
) -> bool:
    """Whether to answer this person here. Blocklists win; allowlists are off when empty.

    `channel_ids` holds the channel plus its thread parent and category, so listing a category
    or a parent channel covers everything under it. Users and roles allow as one group: with
    `user_ids` or `role_ids` set, a person needs to be listed or to hold a listed role (so in
    DMs, where there are no roles, only `user_ids` can allow them).
    """
    if user_id in config.blocked_user_ids or role_ids & set(config.blocked_role_ids):
        return False
    if guild_id is None:
        if not config.allow_dms:
            return False
    else:
        if guild_id in config.blocked_guild_ids or (config.guild_ids and guild_id not in config.guild_ids):
            return False
        if channel_ids & set(config.blocked_channel_ids):
            return False
        if config.channel_ids and not channel_ids & set(config.channel_ids):
            return False
    if config.user_ids or config.role_ids:
        return user_id in config.user_ids or bool(role_ids & set(config.role_ids))
    return True


def channel_ids(channel: Any) -> set[int]:
    ids = {channel.id}
    parent = getattr(channel, "parent", None)
    for c in (channel, parent):
        for attr in ("parent_id", "category_id"):
            if (value := getattr(c, attr, None)) is not None:
                ids.add(value)
    return ids


def role_ids(user: discord.abc.User) -> set[int]:
    return {r.id for r in getattr(user, "roles", [])}


# --- the client's HTTP: a proxy, and one attempt per relay request ------------------------------

# Set while the relay's post or edit runs (see `relayed`): its requests get one attempt each.
_RELAYED: ContextVar[bool] = ContextVar("streambot_discord_relayed", default=False)


class FirstAnswer:
    """`session.request(...)` for a request the relay retries itself: a 429 or a 5xx is raised
    as soon as it arrives, instead of reaching discord.py's retry loops (`HTTPClient.request`
    and the webhook adapter's both re-send up to five times, sleeping outside our pacer)."""

    __slots__ = ("_request",)

    def __init__(self, request: Any) -> None:
        self._request = request

    async def __aenter__(self) -> aiohttp.ClientResponse:
        response = await self._request.__aenter__()
        if response.status == 429 or response.status >= 500:
            try:
                data = await json_or_text(response)
            finally:
                await self._request.__aexit__(None, None, None)
            if response.status >= 500:
                raise discord.DiscordServerError(response, data)
            retry = data.get("retry_after") if isinstance(data, dict) else None
            raise discord.RateLimited(
                float(retry if retry is not None else response.headers.get("Retry-After", 1))
            )
        return response

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._request.__aexit__(*exc)


class RebasedSession:
    """The client's aiohttp session, with discord.com URLs rewritten to `api_base` (when set)
    and the relay's requests answered once (`FirstAnswer`).

    discord.py sends REST calls, interaction webhooks and the gateway connection through this
    one session, so wrapping it covers all three for this client only.
    """

    def __init__(self, session: aiohttp.ClientSession, http: RebasedHTTP) -> None:
        self._session = session
        self._http = http

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        request = self._session.request(method, self._http.rebase(str(url)), **kwargs)
        return FirstAnswer(request) if _RELAYED.get() else request

    async def ws_connect(self, url: Any, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await self._session.ws_connect(await self._http.gateway_for(str(url)), **kwargs)


class RebasedHTTP(HTTPClient):
    """discord.py's HTTP client as every DiscordBot uses it: behind `api_base` when one is set,
    and with one attempt per request inside `relayed` (the relay retries those through the pacer).

    `Route.BASE` is a class attribute shared by every client in the process, so instead of
    changing it this subclass intercepts the private session discord.py stores (a property
    named after the mangled `_HTTPClient__session`) and wraps it in `RebasedSession`. A plain
    client connects to the hard-coded `wss://gateway.discord.gg` whenever it (re)identifies;
    behind `api_base` that URL is replaced by the one `GET /gateway/bot` returns through it.
    """

    def __init__(self, api_base: str, original: HTTPClient) -> None:
        super().__init__(
            original.loop,
            None if original.connector is MISSING else original.connector,
            proxy=original.proxy,
            proxy_auth=original.proxy_auth,
            unsync_clock=not original.use_clock,
            http_trace=original.http_trace,
            max_ratelimit_timeout=original.max_ratelimit_timeout,
        )
        self.api_base = api_base.rstrip("/")

    @property
    def _HTTPClient__session(self) -> Any:  # noqa: N802 - the name discord.py reads and writes
        return self.__dict__.get("_rebased_session", MISSING)

    @_HTTPClient__session.setter
    def _HTTPClient__session(self, session: Any) -> None:  # noqa: N802
        wrapped = session if session is MISSING else RebasedSession(session, self)
        self.__dict__["_rebased_session"] = wrapped

    def rebase(self, url: str) -> str:
        if self.api_base and url.startswith(Route.BASE):
            return self.api_base + url[len(Route.BASE) :]
        return url

    async def gateway_for(self, url: str) -> str:
        wanted = yarl.URL(url)
        if not self.api_base or not (wanted.host or "").endswith(".discord.gg"):
            return url  # Discord's own, or a URL the proxy (or fake) handed out: already behind it
        _, gateway, _ = await self.get_bot_gateway()
        return str(yarl.URL(gateway).with_query(wanted.query))


# --- shards in many processes: whose turn to IDENTIFY -----------------------------------------


def identify_key(app_id: int, shard_id: int, max_concurrency: int) -> str:
    """The Redis key that holds one bucket of an application's IDENTIFYs."""
    return f"streambot:identify:{app_id}:{shard_id % max(1, max_concurrency)}"


async def identify_turn(redis: Redis, key: str) -> None:
    """Wait until this process may IDENTIFY in the bucket `key`, whichever process asks.

    Taking the bucket is `SET NX` with an expiry of the window (plus JITTER, since Discord counts
    from when an IDENTIFY arrives): exactly one caller wins, and the next can win only once the
    window has passed. Nothing is released early, so a process that dies cannot break the rule.
    """
    window = max(1, round((IDENTIFY_EVERY + JITTER) * 1000))
    while not await redis.set(key, "1", nx=True, px=window):  # noqa: ASYNC110 - another process
        await asyncio.sleep(max(10, await redis.pttl(key)) / 1000)  # holds it: nothing to await


# --- requests: budgets and errors ------------------------------------------------------------


def global_budget() -> list[tuple[str, Rate]]:
    """Every request the bot makes counts towards Discord's 50 requests/s."""
    return [("discord:global", GLOBAL_RATE)]


def budgets(key: str, config: DiscordSettings) -> list[tuple[str, Rate]]:
    """A message create or edit in one channel (or interaction): its bucket plus the global one."""
    return [(key, Rate(config.edits_per_5s, WINDOW)), *global_budget()]


NO_PINGS = discord.AllowedMentions.none


@contextlib.contextmanager
def platform_errors() -> Iterator[None]:
    """Translate discord.py's errors into the relay's: gone, rate limited, transient."""
    try:
        yield
    except discord.NotFound as exc:  # Unknown Message / Channel / Webhook: it was deleted
        raise MessageGone(str(exc)) from exc
    except discord.RateLimited as exc:  # a 429 (see FirstAnswer), or a wait over max_ratelimit_timeout
        raise RateLimited(exc.retry_after) from exc
    except discord.DiscordServerError as exc:
        raise TransientError(str(exc)) from exc
    except discord.HTTPException as exc:
        if exc.status == 429:
            retry = exc.response.headers.get("Retry-After", "1") if exc.response else "1"
            raise RateLimited(float(retry)) from exc
        if exc.status >= 500:
            raise TransientError(str(exc)) from exc
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


@contextlib.asynccontextmanager
async def relayed(final_deadline: float) -> AsyncIterator[None]:
    """Around a post or edit the relay makes (and retries, through the pacer): each request
    inside gets one attempt - the first 429 or 5xx reaches the relay as RateLimited or
    TransientError - and the whole is cut off after REQUEST_TIMEOUT, well before
    `final_deadline`, as a TransientError."""
    relaying = _RELAYED.set(True)
    try:
        with platform_errors():
            async with asyncio.timeout(min(REQUEST_TIMEOUT, final_deadline / 2)):
                yield
    finally:
        _RELAYED.reset(relaying)
