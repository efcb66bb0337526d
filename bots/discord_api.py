"""Discord API conventions the adapter relies on: the `[discord]` settings, the gateway intents
and permissions the bot needs, its invite URL, the access lists, the rate budgets, how
discord.py's errors map onto the core's, one attempt per relay request, and pointing one
client at a proxy or a fake.

Kept apart from bots/discord_bot.py, which turns Discord events into host calls.

Rate budgets are learned, not hard-coded (Discord: "rate limits should not be hard coded").
Every answer carries `X-RateLimit-Bucket/Limit/Remaining/Reset-After`. `Buckets` reads them
through an aiohttp `TraceConfig` handed to discord.py (`Client(http_trace=...)`): its
`on_request_end` sees every response of the client's one session - REST calls and interaction
webhooks, through a proxy or not, the 429s `relayed` hands to the relay and those discord.py
retries by itself (typing, notices) - through a public aiohttp hook rather than discord.py's
private `Ratelimit` objects (which keep the numbers but not which budget of ours they belong
to). Each message route (create, edit; the webhook's two) is mapped to the pacer key
`discord:<route>:<channel or webhook>`, and learns the limit, window and remaining count
Discord reports for it (`Pacer.learn`): creates and edits are budgeted apart when Discord names
two buckets (as it does today), together when it names one. Until both buckets of a pair are
named, the two routes split one guessed bucket, so no guess can cause a 429 (`Buckets`). A 429
pauses and slows the budget (`Pacer.pause`). `GUESS` and `GLOBAL_RATE` are only the starting
point (the global limit is never described by headers, so it stays a guess) and
`edits_per_5s` a ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import aiohttp
import discord
import yarl
from discord.http import HTTPClient, Route, json_or_text
from discord.utils import MISSING
from pydantic import Field, model_validator
from redis.asyncio import Redis

from core.adapter import AdapterSettings
from core.pacing import Pacer
from core.platform import MessageGone, Rate, RateLimited, TransientError

log = logging.getLogger("streambot.discord")

# The starting guess for a message bucket before Discord has described it: 5 per 5 s per
# channel (and per interaction webhook). Discord counts a window from the first request it
# *receives*, our pacer from when it *grants*; the headers of each answer realign the two
# (`Pacer.learn`), so the guess needs only a little padding for the first window.
GUESS = Rate(5, 5.1)
GLOBAL_RATE = Rate(45, 1.1)  # Discord: 50 requests/s, never described in headers; the rest of
# the 50 is for requests the pacer does not see (discord.py's own retries, interaction callbacks)
# The share of GUESS each route of a pair gets while Discord has not named both buckets (a
# webhook mostly edits: its first "post" is an edit of the deferred response).
_SHARE = {"create": 3, "edit": 2, "webhook-create": 1, "webhook-edit": 4}
_PAIR = {
    "create": "edit",
    "edit": "create",
    "webhook-create": "webhook-edit",
    "webhook-edit": "webhook-create",
}
# A route that carries nearly all of its pair's requests (an /ask reply edits; it posts a
# follow-up only for a second page). It takes the rate Discord reports as soon as its own bucket
# is named; its partner, until named, also takes a slot in its budget (they may be one bucket).
_MAIN = {"webhook-edit"}
# Message routes, by method and URL path; the major parameter is the channel or the webhook.
_ROUTES = (
    ("POST", re.compile(r"/channels/(\d+)/messages$"), "create"),
    ("PATCH", re.compile(r"/channels/(\d+)/messages/\d+$"), "edit"),
    ("POST", re.compile(r"/webhooks/\d+/([^/]+)$"), "webhook-create"),
    ("PATCH", re.compile(r"/webhooks/\d+/([^/]+)/messages/[^/]+$"), "webhook-edit"),
)
# Longest a post or edit of a reply may take, discord.py's own bucket waits included (capped at
# half of `[stream] final_deadline`); without it a hung request waits out aiohttp's 300 s.
REQUEST_TIMEOUT = 30.0
# Discord: one IDENTIFY per 5 s in each `shard_id % max_concurrency` bucket, across all processes.
# Discord counts from when an IDENTIFY arrives, we from when we send it: JITTER covers the skew.
IDENTIFY_EVERY = 5.0
JITTER = 0.5


class DiscordSettings(AdapterSettings):
    """`[discord]` in the config file (documented in config.example.toml)."""

    api_base: str = ""  # replaces https://discord.com/api/v10 (a proxy or a fake); gateway via it
    page_chars: int = Field(2000, ge=200, le=2000)
    edits_per_5s: int = Field(5, ge=1, le=5)  # at most, per bucket per channel (a ceiling)
    open_threads: bool | Literal["auto"] = False
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
            throttled = discord.RateLimited(
                float(retry if retry is not None else response.headers.get("Retry-After", 1))
            )
            # `Buckets` (the client's trace) has seen this answer and paused the budgets it
            # applies to: the global one, or the message route's own; not any other request's.
            route = message_route(response.method, response.url)
            throttled.paused = is_global(response.headers) or route is not None  # type: ignore[attr-defined]
            raise throttled
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


MessageRoute = Literal["create", "edit", "webhook-create", "webhook-edit"]


def global_budget() -> list[tuple[str, Rate]]:
    """Every request the bot makes counts towards Discord's 50 requests/s."""
    return [("discord:global", GLOBAL_RATE)]


def webhook_major(token: str) -> str:
    """An interaction webhook's budget name: a digest, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class Buckets:
    """Discord's message buckets as its answers describe them, taught to the pacer.

    Each route has a budget per channel (or webhook), `discord:<route>:<major>`; the key never
    changes, so no request is left waiting in a budget that no longer applies. What changes is
    what the budget knows. Routes come in pairs (a channel's creates and edits; a webhook's),
    which Discord may serve from one bucket or from two. Until Discord has named the buckets of
    both routes of a pair, the two split one guessed bucket (`_SHARE`), so that no guess can
    overrun a bucket they turn out to share, and what Discord says is kept aside (a webhook's
    edits, nearly all of its requests, learn at once instead: `_MAIN`). Once both are
    named, each budget learns what Discord said (`Pacer.learn`): from its own route's answers
    if the buckets are two; from both routes' answers if they are one, and then the two budgets
    are linked (`Pacer.link`), so that each counts every request of both.
    """

    def __init__(self, pacer: Pacer, settings: DiscordSettings) -> None:
        self.pacer = pacer
        self.ceiling = settings.edits_per_5s
        self.guess = Rate(min(GUESS.count, self.ceiling), GUESS.per)
        self.hashes: dict[str, str] = {}  # route -> the bucket hash Discord named for it
        self._kept: dict[str, tuple[str, int, int, float, float]] = {}  # while a pair is unknown

    def _known(self, route: str) -> bool:
        """Discord has named the buckets of both routes of `route`'s pair."""
        return route in self.hashes and _PAIR[route] in self.hashes

    def _settled(self, route: str) -> bool:
        """`route`'s budget can take the rate Discord reports for it."""
        return self._known(route) or (route in _MAIN and route in self.hashes)

    def key(self, route: MessageRoute, major: str | int) -> str:
        """The pacer key of `route` requests for one channel or webhook."""
        return f"discord:{route}:{major}"

    def rate(self, route: MessageRoute) -> Rate:
        """The starting guess for `route`'s budget: its share of a bucket until the pair is known."""
        if self._settled(route):
            return self.guess
        return Rate(max(1, min(_SHARE[route], self.ceiling)), self.guess.per)

    def budgets(self, route: MessageRoute, major: str | int) -> list[tuple[str, Rate]]:
        """One message request: its bucket, then the global one. (If Discord serves the pair
        from one bucket, the two budgets are linked: each counts the other's requests.)"""
        if len(keys := self._sharing(route, major)) > 1:
            self.pacer.link(*keys)
        budgets = [(keys[0], self.rate(route))]
        if not self._settled(route) and self._settled(main := _PAIR[route]):
            budgets.append((self.key(main, major), self.guess))  # type: ignore[arg-type]
        return budgets + global_budget()

    def spacing(self, route: MessageRoute, major: str | int) -> float:
        """Seconds between requests if the bucket's allowance is spread evenly over its window
        (as Discord describes it, or as guessed: not a share of a guess split in two)."""
        rate = (self.pacer.current(self.key(route, major)) if self._settled(route) else None) or self.guess
        return rate.per / rate.count

    def trace(self) -> aiohttp.TraceConfig:
        """Hand to discord.py as `http_trace`: every response it gets is then `observe`d."""
        config = aiohttp.TraceConfig()

        async def on_request_end(session: Any, context: Any, params: Any) -> None:
            self.observe(params.method, params.url, params.response.status, params.response.headers)

        config.on_request_end.append(on_request_end)
        return config

    def observe(self, method: str, url: Any, status: int, headers: Any) -> None:
        """Learn from one response: which bucket its route uses, and that bucket's state."""
        if status == 429 and is_global(headers):  # whatever the route: every request waits
            self.pacer.pause(global_budget(), retry_after(headers))
            return
        if (found := message_route(method, url)) is None:
            return
        route, major = found
        if route.startswith("webhook"):
            major = webhook_major(major)
        was_known = self._known(route)
        if (bucket := headers.get("X-RateLimit-Bucket")) and self.hashes.get(route) != bucket:
            log.debug("Discord: %s requests use bucket %s", route, bucket)
            self.hashes[route] = bucket
        if status == 429:
            self._throttled(self._sharing(route, major), headers)
        else:
            try:
                limit = int(headers["X-RateLimit-Limit"])
                remaining = int(headers["X-RateLimit-Remaining"])
                reset_after = float(headers["X-RateLimit-Reset-After"])
            except (KeyError, TypeError, ValueError):
                return
            if limit > self.ceiling:  # fewer than Discord allows: as if the rest were used
                limit, remaining = self.ceiling, max(0, remaining - (limit - self.ceiling))
            if self._settled(route):
                if len(keys := self._sharing(route, major)) > 1:
                    self.pacer.link(*keys)
                for key in keys:
                    self.pacer.learn(key, limit, remaining, reset_after, self.guess)
            elif len(self._kept) < 10_000:
                self._kept[self.key(route, major)] = (
                    route,
                    limit,
                    remaining,
                    reset_after,
                    self.pacer.clock.now(),
                )
        if self._known(route) and not was_known:
            self._catch_up()

    def _sharing(self, route: MessageRoute, major: str | int) -> list[str]:
        """The budgets one bucket of `route` serves: its own, and its pair's if they share it."""
        keys = [self.key(route, major)]
        pair = _PAIR[route]
        if self._known(route) and self.hashes[route] == self.hashes[pair]:
            keys.append(self.key(pair, major))  # type: ignore[arg-type]
        return keys

    def _catch_up(self) -> None:
        """A pair became known: teach its budgets what Discord said while it was not."""
        now = self.pacer.clock.now()
        for key, (route, limit, remaining, reset_after, at) in list(self._kept.items()):
            if self._known(route):
                del self._kept[key]
                if (left := reset_after - (now - at)) > 0:
                    window = reset_after if limit - remaining == 1 else None  # as if just seen
                    keys = self._sharing(route, key.rsplit(":", 1)[1])  # type: ignore[arg-type]
                    if len(keys) > 1:
                        self.pacer.link(*keys)
                    for shared in keys:
                        self.pacer.learn(shared, limit, remaining, left, self.guess, window)

    def _throttled(self, keys: list[str], headers: Any) -> None:
        # a "shared" resource limit is not our doing: wait, but do not slow down
        scope = headers.get("X-RateLimit-Scope", "user")
        self.pacer.pause(
            [(key, self.guess) for key in keys], retry_after(headers), slow_down=scope != "shared"
        )


def message_route(method: str, url: Any) -> tuple[MessageRoute, str] | None:
    """The message route (and its major parameter) a request takes; None for other routes."""
    path = yarl.URL(str(url)).path
    for verb, pattern, route in _ROUTES:
        if verb == method and (m := pattern.search(path)):
            return route, m[1]  # type: ignore[return-value]
    return None


def is_global(headers: Any) -> bool:
    """A 429 of the global limit (every request of the bot waits), not of one route's bucket."""
    return bool(headers.get("X-RateLimit-Global")) or headers.get("X-RateLimit-Scope") == "global"


def retry_after(headers: Any) -> float:
    """How long a 429 says to wait: Retry-After, or the bucket's reset if that is later."""
    waits = []
    for name in ("Retry-After", "X-RateLimit-Reset-After"):
        with contextlib.suppress(TypeError, ValueError):
            waits.append(float(headers.get(name)))
    return max(waits, default=1.0)


NO_PINGS = discord.AllowedMentions.none


@contextlib.contextmanager
def platform_errors() -> Iterator[None]:
    """Translate discord.py's errors into the relay's: gone, rate limited, transient."""
    try:
        yield
    except discord.NotFound as exc:  # Unknown Message / Channel / Webhook: it was deleted
        raise MessageGone(str(exc)) from exc
    except discord.RateLimited as exc:  # a 429 (see FirstAnswer), or a wait over max_ratelimit_timeout
        raise RateLimited(exc.retry_after, paused=getattr(exc, "paused", False)) from exc
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
