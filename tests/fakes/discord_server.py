"""A hermetic fake of Discord - REST API and gateway - that the real discord.py client talks to.

It runs an aiohttp server on 127.0.0.1 with:

* the REST routes a bot uses (`/users/@me`, `/gateway/bot`, `/applications/@me`, channel
  messages, typing, threads, DMs, application commands, interaction callbacks and the
  interaction webhooks for `@original` and follow-ups), each answering with Discord's JSON
  shapes and error bodies (50035 for content over 2000 characters, 50006 for an empty message,
  10008 Unknown Message, 10003 Unknown Channel, 40060 interaction already acknowledged);
* Discord's rate limits: per-route buckets keyed by the major parameter (channel, webhook
  token), a global 50 requests/s limit, `X-RateLimit-*` headers (Limit, Remaining, Reset,
  Reset-After and an opaque Bucket hash) on every answer, and a 429 with a `retry_after` body
  and `Retry-After` header when a bucket is exceeded. Every 429 is recorded in
  `FakeDiscord.throttled` so tests can assert there were none. As on Discord today, message
  creates and message edits are two buckets of 5 per 5 s per channel, each with its own hash;
  `message_buckets="shared"` makes them one bucket (one hash), as they were once, so the bot's
  learning of buckets can be tested both ways. An interaction's webhook (follow-ups and edits
  of its messages) is one bucket of 5 per 5 s per token;
* a gateway websocket: HELLO, IDENTIFY -> READY + GUILD_CREATE (with intents and sharding
  checked: close code 4014 when the Message Content intent is requested but "not enabled"; when
  each IDENTIFY arrived is kept in `identify_times`, against Discord's one per 5 s per
  `shard_id % max_concurrency` bucket),
  heartbeat ACKs, RESUME with replay of missed events, and dispatch of MESSAGE_CREATE /
  MESSAGE_UPDATE / MESSAGE_DELETE / THREAD_CREATE / INTERACTION_CREATE;
* failures on demand: `faults = Faults(...)` (tests/fakes/faults.py) answers message creates
  and edits with 5xx, 429 storms, connection resets or late 504s at seeded rates; `drop_gateway()`
  closes the gateway mid-run (the bot RESUMEs and missed events are replayed). A create that
  carries `nonce` + `enforce_nonce` is idempotent, as on Discord: a retry returns the message
  the first attempt created. Interaction follow-ups take no nonce; a bot can find one it posted
  in the channel's history (`GET /channels/{id}/messages`), by its `interaction_metadata`.

Tests act as users (`send`, `dm`, `delete`, `click`, `slash`) and observe what a user would see
through `FakeMessage` records: every revision of every message with its allowed_mentions and
components, whether it would have pinged anyone, and which message it replies to.

    async with FakeDiscord() as discord_fake:
        ...  # point the bot at discord_fake.api_base
        question = await discord_fake.send(f"<@{discord_fake.bot.id}> hi")
        pages = await discord_fake.wait_for(lambda: discord_fake.reply_pages(question) or None)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from aiohttp import WSMsgType, web
from harness import wait_for

from .faults import Faults

API_VERSION = 10
DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT_INTENT  # members, presences, content

# Discord's real numbers: 5 message creates and 5 edits per 5 s per channel (two buckets), 50
# requests per second per bot.
CHANNEL_MESSAGES = (5, 5.0)
GLOBAL = (50, 1.0)
WEBHOOK_MESSAGES = (5, 5.0)  # per interaction token
OTHER = (50, 1.0)  # routes this fake does not model precisely

T = TypeVar("T")


# --- Records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    bot: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": None if self.bot else self.username.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(frozen=True, slots=True)
class Revision:
    """One state of a message as users saw it, after a create or an edit."""

    content: str
    allowed_mentions: dict[str, Any] | None
    components: list[dict[str, Any]]
    pings: tuple[str, ...]  # who this revision would have notified ("@everyone", "<@1>", ...)
    at: float  # time.monotonic() when the fake applied it
    via: str  # "create" | "edit" | "interaction"


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    components: list[dict[str, Any]] = field(default_factory=list)
    reference: int | None = None  # id of the message this one replies to
    flags: int = 0
    webhook_id: int | None = None
    interaction_id: int | None = None
    deleted: bool = False
    created: float = field(default_factory=time.time)
    edited: float | None = None
    history: list[Revision] = field(default_factory=list)
    reactions: set[str] = field(default_factory=set)  # the bot's own reactions
    attachments: list[dict[str, Any]] = field(default_factory=list)  # as the message JSON shows them

    @property
    def contents(self) -> list[str]:
        return [r.content for r in self.history]

    @property
    def has_buttons(self) -> bool:
        return any(row.get("components") for row in self.components)

    def custom_ids(self) -> list[str]:
        return [
            c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c
        ]


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    type: int  # 0 text, 1 DM, 11 public thread
    name: str
    guild_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None
    recipient: User | None = None

    def json(self, fake: FakeDiscord) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "flags": 0,
            "last_message_id": None,
        }
        if self.type == 1:
            assert self.recipient is not None
            return data | {"recipients": [self.recipient.json()]}
        data |= {
            "guild_id": str(self.guild_id),
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "rate_limit_per_user": 0,
            "topic": None,
        }
        if self.type == 0:
            return data | {"parent_id": None}
        return data | {
            "parent_id": str(self.parent_id),
            "owner_id": str(self.owner_id),
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(time.time()),
                "locked": False,
            },
        }


@dataclass(frozen=True, slots=True)
class Call:
    """One REST request the fake answered."""

    method: str
    path: str
    route: str  # the route template, e.g. "PATCH /channels/{channel_id}/messages/{message_id}"
    status: int
    at: float  # time.monotonic()
    body: Any


@dataclass(eq=False)
class FakeInteraction:
    id: int
    token: str
    type: int  # 2 application command, 3 message component
    channel_id: int
    user: User
    data: dict[str, Any]
    message_id: int | None = None  # the message whose component was clicked
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # callback bodies, in order
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    modal: dict[str, Any] | None = None  # the modal the app answered with (callback type 9)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)


@dataclass(eq=False)
class _Session:
    id: str
    shard: tuple[int, int]
    intents: int
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None


class _Bucket:
    """A fixed window opened by its first request, the way Discord's buckets behave."""

    def __init__(self, limit: int, per: float, name: str) -> None:
        self.limit, self.per, self.name = limit, per, name
        self.used = 0
        self.reset_at = 0.0

    def take(self, now: float) -> float:
        """Count one request; return 0 if allowed, else the seconds until the window resets."""
        if now >= self.reset_at:
            self.used, self.reset_at = 0, now + self.per
        if self.used >= self.limit:
            return self.reset_at - now
        self.used += 1
        return 0.0

    def headers(self, now: float) -> dict[str, str]:
        after = max(0.0, self.reset_at - now)
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - self.used)),
            "X-RateLimit-Reset": f"{time.time() + after:.3f}",
            "X-RateLimit-Reset-After": f"{after:.3f}",
            "X-RateLimit-Bucket": self.name,
        }


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


_MENTION = re.compile(r"<@!?(\d+)>|<@&(\d+)>|@(everyone|here)")


def would_ping(
    content: str,
    allowed: dict[str, Any] | None,
    replied_user: User | None,
    user_ids: set[int],
    role_ids: set[int],
) -> tuple[str, ...]:
    """Who a message with `content` and `allowed_mentions` notifies, by Discord's rules."""
    parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse", []))
    users = set() if allowed is None else {int(u) for u in allowed.get("users", [])}
    roles = set() if allowed is None else {int(r) for r in allowed.get("roles", [])}
    pings: list[str] = []
    for m in _MENTION.finditer(content):
        user, role, everyone = m.groups()
        if user and int(user) in user_ids and ("users" in parse or int(user) in users):
            pings.append(f"<@{user}>")
        elif role and int(role) in role_ids and ("roles" in parse or int(role) in roles):
            pings.append(f"<@&{role}>")
        elif everyone and "everyone" in parse:
            pings.append(f"@{everyone}")
    if replied_user is not None and (allowed is None or allowed.get("replied_user", False)):
        pings.append(f"reply:<@{replied_user.id}>")
    return tuple(pings)


# --- The fake --------------------------------------------------------------------------------


class FakeDiscord:
    """One bot's view of Discord: a guild with two text channels, users, DMs, the gateway.

    Limits are Discord's by default; pass `channel_messages=(limit, seconds)` (each of the
    create and edit buckets) etc. to change them.
    `message_content_intent=False` makes IDENTIFY fail like an app whose Message Content
    intent is not enabled in the developer portal (close code 4014).
    """

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        message_content_intent: bool = True,
        channel_messages: tuple[int, float] = CHANNEL_MESSAGES,
        global_limit: tuple[int, float] = GLOBAL,
        webhook_messages: tuple[int, float] = WEBHOOK_MESSAGES,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        heartbeat_interval: float = 41.25,
        message_buckets: Literal["separate", "shared"] = "separate",
    ) -> None:
        self.token = token
        self.message_content_intent = message_content_intent
        self.limits = {
            "create": channel_messages,
            "edit": channel_messages,
            "messages": channel_messages,
            "webhook": webhook_messages,
            "other": OTHER,
        }
        self.message_buckets = message_buckets
        self.global_limit = global_limit
        self.recommended_shards = recommended_shards
        self.max_concurrency = max_concurrency  # session_start_limit: IDENTIFY buckets per 5 s
        self.heartbeat_interval = heartbeat_interval
        self.faults = Faults()  # no failures unless a test asks for them

        self._ids = itertools.count(1)
        self._last_snowflake = 0
        self.app_id = self.snowflake()
        self.bot = User(self.app_id, "streambot", bot=True)  # bot user id == application id
        self.alice = User(self.snowflake(), "alice")
        self.bob = User(self.snowflake(), "bob")
        self.other_bot = User(self.snowflake(), "otherbot", bot=True)
        self.guild_id = self.snowflake()
        self.member_role = self.snowflake()
        self.channels: dict[int, Channel] = {}
        self.general = self._add_channel(Channel(self.snowflake(), 0, "general", self.guild_id))
        self.random = self._add_channel(Channel(self.snowflake(), 0, "random", self.guild_id))
        self.roles: dict[int, set[int]] = {
            self.alice.id: {self.member_role},
            self.bob.id: set(),
            self.other_bot.id: set(),
            self.bot.id: set(),
        }

        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self.throttled: list[Call] = []
        """Every 429 the fake answered."""
        self.typing: list[tuple[int, float]] = []  # (channel id, monotonic time)
        self.unreadable: set[int] = set()  # channels whose history the bot may not read (403)
        self.identifies: list[dict[str, Any]] = []
        self.identify_times: list[tuple[int, float]] = []  # (shard id, monotonic time) per IDENTIFY
        self.resumes = 0
        self.gateway_closes: list[int] = []  # close codes the fake sent
        self._sessions: dict[str, _Session] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._global = _Bucket(*global_limit, "global")
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._route_meta: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._nonces: dict[tuple[int, str], int] = {}  # (channel id, nonce) -> message id
        self.files: dict[int, tuple[bytes, str]] = {}  # attachment id -> (bytes, content type)
        self.downloads: list[int] = []  # attachment ids fetched from the CDN, in order

    # --- running --------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not running; call start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """The REST base to give the bot (`[discord] api_base`)."""
        return f"{self.origin}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        return self.origin.replace("http://", "ws://") + "/gateway"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._rest_middleware])
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        prefix = f"/api/v{API_VERSION}"
        for method, path, handler, bucket, major in self._routes():
            app.router.add_route(method, prefix + path, handler)
            self._route_meta[(method, prefix + path)] = (f"{method} {path}", bucket, major)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- ids and lookups -------------------------------------------------------------------

    def snowflake(self) -> int:
        """A real-looking, strictly increasing snowflake (discord.py reads its timestamp)."""
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(value, self._last_snowflake + 1)
        return self._last_snowflake

    def _add_channel(self, channel: Channel) -> Channel:
        self.channels[channel.id] = channel
        return channel

    def add_text_channel(self, name: str) -> Channel:
        """Another text channel in the guild; add it before the bot connects (GUILD_CREATE)."""
        return self._add_channel(Channel(self.snowflake(), 0, name, self.guild_id))

    def user(self, user_id: int) -> User | None:
        for u in (self.bot, self.alice, self.bob, self.other_bot):
            if u.id == user_id:
                return u
        return None

    def person(self, name: str) -> User:
        """Another member of the server, to ask as (the bot limits what one person may ask)."""
        return User(self.snowflake(), name)

    def dm_channel(self, user: User) -> Channel:
        for c in self.channels.values():
            if c.type == 1 and c.recipient == user:
                return c
        return self._add_channel(Channel(self.snowflake(), 1, "", recipient=user))

    def bot_messages(self, channel: Channel | int | None = None) -> list[FakeMessage]:
        """The bot's messages (deleted ones too), oldest first."""
        cid = channel.id if isinstance(channel, Channel) else channel
        return [
            m for m in self.messages.values() if m.author == self.bot and (cid is None or m.channel_id == cid)
        ]

    def reply_pages(self, question: FakeMessage) -> list[FakeMessage]:
        """The bot's messages answering `question`: the reply to it, then each continuation
        page (a bot message replying to the previous page), in order."""
        pages: list[FakeMessage] = []
        current = question.id
        while True:
            nxt = [m for m in self.bot_messages() if m.reference == current]
            if not nxt:
                return pages
            if nxt[0] in pages:
                raise AssertionError(f"the reply chain of {question.id} loops at {nxt[0].id}")
            pages.append(nxt[0])
            current = nxt[0].id

    def in_thread(self, thread_id: int) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.channel_id == thread_id]

    def calls_to(self, route: str) -> list[Call]:
        """Calls whose route template matches, e.g. "PATCH /channels/{channel_id}/messages/{message_id}"."""
        return [c for c in self.calls if c.route == route]

    async def wait_for(
        self, condition: Callable[[], T | None], timeout: float = 60.0, what: str = "the condition"
    ) -> T:
        """Wait until `condition()` returns something truthy; return it (`harness.wait_for`)."""
        return await wait_for(condition, timeout, what)

    # --- acting as users -------------------------------------------------------------------

    async def send(
        self,
        content: str,
        *,
        channel: Channel | None = None,
        author: User | None = None,
        reply_to: FakeMessage | None = None,
        webhook_id: int | None = None,
        files: Sequence[tuple[str, str | None, bytes]] = (),
    ) -> FakeMessage:
        """A user posts `content` (MESSAGE_CREATE). `reply_to` makes it a reply (no ping);
        `webhook_id` makes it a webhook's message (its author is then the webhook's).
        `files` are attachments (name, content type or None, bytes), served by the fake's CDN."""
        channel = channel or self.general
        author = author or self.alice
        msg = FakeMessage(
            self.snowflake(),
            channel.id,
            channel.guild_id,
            author,
            content,
            reference=reply_to.id if reply_to else None,
            webhook_id=webhook_id,
            attachments=[self._attachment(channel, *f) for f in files],
        )
        self._record(msg, content, None, [], "create")
        self.messages[msg.id] = msg
        await self._dispatch("MESSAGE_CREATE", self._message_json(msg, member=True), channel.guild_id)
        return msg

    async def dm(
        self,
        content: str,
        *,
        author: User | None = None,
        reply_to: FakeMessage | None = None,
        files: Sequence[tuple[str, str | None, bytes]] = (),
    ) -> FakeMessage:
        author = author or self.alice
        return await self.send(
            content, channel=self.dm_channel(author), author=author, reply_to=reply_to, files=files
        )

    def _attachment(
        self, channel: Channel, name: str, content_type: str | None, data: bytes
    ) -> dict[str, Any]:
        """An attachment's JSON, its bytes kept for the CDN route (Discord's CDN needs no token)."""
        aid = self.snowflake()
        self.files[aid] = (data, content_type or "application/octet-stream")
        url = f"{self.origin}/attachments/{channel.id}/{aid}/{name}"
        data_json: dict[str, Any] = {
            "id": str(aid),
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            data_json["content_type"] = content_type
        return data_json

    async def _cdn(self, request: web.Request) -> web.Response:
        aid = int(request.match_info["attachment_id"])
        if aid not in self.files:
            return web.Response(status=404, text="not found")
        self.downloads.append(aid)
        data, content_type = self.files[aid]
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def open_user_thread(
        self,
        name: str,
        *,
        channel: Channel | None = None,
        owner: User | None = None,
        on: FakeMessage | None = None,
    ) -> Channel:
        """A person starts a thread (not the bot), on message `on` or on its own: THREAD_CREATE,
        and the bot is not its owner."""
        parent = channel or self.general
        tid = on.id if on is not None else self.snowflake()  # a thread on a message has its id
        thread = self._add_channel(
            Channel(tid, 11, name, parent.guild_id, parent.id, (owner or self.alice).id)
        )
        await self._dispatch("THREAD_CREATE", thread.json(self) | {"newly_created": True}, parent.guild_id)
        return thread

    async def delete(self, message: FakeMessage, *, dispatch: bool = True) -> None:
        """Someone deletes `message`; later edits of it get 404 Unknown Message. With
        `dispatch=False` no MESSAGE_DELETE is sent, like an event the bot missed."""
        message.deleted = True
        if not dispatch:
            return
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id:
            data["guild_id"] = str(message.guild_id)
        await self._dispatch("MESSAGE_DELETE", data, message.guild_id)

    def seed_bot_message(
        self, content: str, components: list[dict[str, Any]], *, channel: Channel | None = None
    ) -> FakeMessage:
        """A message the bot posted before this test (e.g. by an earlier run of the process)."""
        channel = channel or self.general
        msg = FakeMessage(self.snowflake(), channel.id, channel.guild_id, self.bot, content, components)
        self._record(msg, content, {"parse": []}, components, "create")
        self.messages[msg.id] = msg
        return msg

    async def click(
        self, message: FakeMessage, custom_id: str | None = None, *, user: User | None = None
    ) -> FakeInteraction:
        """A user clicks a button of `message` (the first one unless `custom_id` is given)."""
        if custom_id is None:
            custom_id = message.custom_ids()[0]
        data = {"custom_id": custom_id, "component_type": 2}
        inter = self._new_interaction(3, self.channels[message.channel_id], user or self.alice, data)
        inter.message_id = message.id
        payload = self._interaction_json(inter) | {"message": self._message_json(message)}
        await self._dispatch("INTERACTION_CREATE", payload, message.guild_id)
        return inter

    async def submit_modal(
        self, opened_by: FakeInteraction, values: dict[str, str], *, user: User | None = None
    ) -> FakeInteraction:
        """The user fills in the modal the app answered `opened_by` with (text input custom_id
        -> value) and submits it."""
        modal = opened_by.modal
        assert modal is not None, "the app answered with no modal"
        rows = []
        for row in modal.get("components", []):
            inputs = row.get("components", [row.get("component")] if row.get("component") else [])
            for comp in inputs:
                rows.append(
                    {
                        "type": 1,
                        "components": [
                            {
                                "type": 4,
                                "custom_id": comp["custom_id"],
                                "value": values.get(comp["custom_id"], ""),
                            }
                        ],
                    }
                )
        data = {"custom_id": modal["custom_id"], "components": rows}
        channel = self.channels[opened_by.channel_id]
        inter = self._new_interaction(5, channel, user or opened_by.user, data)
        await self._dispatch("INTERACTION_CREATE", self._interaction_json(inter), channel.guild_id)
        return inter

    async def slash(
        self, name: str, options: dict[str, Any], *, channel: Channel | None = None, user: User | None = None
    ) -> FakeInteraction:
        """A user runs `/name option:value ...` (a chat-input application command); a value
        (name, content type, bytes) is an uploaded file."""
        channel = channel or self.general
        cmd = next((c for c in self.commands if c["name"] == name), None)
        if cmd is None:
            raise AssertionError(
                f"/{name} was never registered; registered: {[c['name'] for c in self.commands]}"
            )
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": name,
            "type": 1,
            "options": [
                {"name": k, "type": 5 if isinstance(v, bool) else 3, "value": v}
                for k, v in options.items()
                if not isinstance(v, tuple)
            ],
        }
        uploads = {k: v for k, v in options.items() if isinstance(v, tuple)}  # (name, type, bytes)
        if uploads:
            attached = {k: self._attachment(channel, *v) for k, v in uploads.items()}
            data["options"] += [{"name": k, "type": 11, "value": a["id"]} for k, a in attached.items()]
            data["resolved"] = {"attachments": {a["id"]: a for a in attached.values()}}
        if channel.guild_id:
            data["guild_id"] = str(channel.guild_id)
        inter = self._new_interaction(2, channel, user or self.alice, data)
        await self._dispatch("INTERACTION_CREATE", self._interaction_json(inter), channel.guild_id)
        return inter

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close every gateway connection with `code` (4000: unknown error, resumable)."""
        for ws in list(self._sockets):
            self.gateway_closes.append(code)
            await ws.close(code=code)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT on every connection, as Discord does before a restart."""
        for ws in list(self._sockets):
            await ws.send_json({"op": 7, "d": None})

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until a bot identified and got READY + GUILD_CREATE."""
        await self.wait_for(
            lambda: any(s.ws is not None and s.seq >= 2 for s in self._sessions.values()),
            timeout,
            "the bot to identify and get READY",
        )

    # --- payloads --------------------------------------------------------------------------

    def _member_json(self, user: User) -> dict[str, Any]:
        return {
            "roles": [str(r) for r in self.roles.get(user.id, set())],
            "joined_at": _iso(time.time()),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "pending": False,
        }

    def _message_json(self, m: FakeMessage, *, member: bool = False, depth: int = 0) -> dict[str, Any]:
        mentions = [u.json() for u in (self.user(int(x)) for x in re.findall(r"<@!?(\d+)>", m.content)) if u]
        data: dict[str, Any] = {
            "id": str(m.id),
            "channel_id": str(m.channel_id),
            "author": m.author.json(),
            "content": m.content,
            "timestamp": _iso(m.created),
            "edited_timestamp": _iso(m.edited) if m.edited else None,
            "tts": False,
            "mention_everyone": "@everyone" in m.content,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": m.attachments,
            "embeds": [],
            "pinned": False,
            "type": 19 if m.reference else (20 if m.interaction_id else 0),
            "flags": m.flags,
            "components": m.components,
        }
        if m.guild_id:
            data["guild_id"] = str(m.guild_id)
            if member and not m.webhook_id:
                data["member"] = self._member_json(m.author)
        if m.webhook_id:
            data["webhook_id"] = str(m.webhook_id)
            data["application_id"] = str(self.app_id)
        if m.interaction_id and (inter := self.interactions.get(m.interaction_id)):
            owner = {"0": str(m.guild_id)} if m.guild_id else {"1": str(inter.user.id)}
            data["interaction_metadata"] = {
                "id": str(inter.id),
                "type": inter.type,
                "user": inter.user.json(),
                "authorizing_integration_owners": owner,
            }
            if inter.original is not None and inter.original is not m:  # a follow-up
                data["interaction_metadata"]["original_response_message_id"] = str(inter.original.id)
        if m.reference:
            ref = self.messages.get(m.reference)
            data["message_reference"] = {
                "type": 0,
                "message_id": str(m.reference),
                "channel_id": str(m.channel_id),
            }
            if m.guild_id:
                data["message_reference"]["guild_id"] = str(m.guild_id)
            if depth == 0:
                data["referenced_message"] = (
                    None if ref is None or ref.deleted else self._message_json(ref, depth=1)
                )
        return data

    def _guild_json(self) -> dict[str, Any]:
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": str(0x6_7FFF_FFFF),
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        member_role = everyone | {
            "id": str(self.member_role),
            "name": "member",
            "position": 1,
            "permissions": "0",
        }
        return {
            "id": str(self.guild_id),
            "name": "Fake Guild",
            "icon": None,
            "owner_id": str(self.alice.id),
            "region": "deprecated",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [everyone, member_role],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": _iso(time.time()),
            "large": False,
            "unavailable": False,
            "member_count": 4,
            "voice_states": [],
            "presences": [],
            "members": [self._member_json(self.bot) | {"user": self.bot.json()}],
            "channels": [c.json(self) for c in self.channels.values() if c.type == 0],
            "threads": [c.json(self) for c in self.channels.values() if c.type == 11],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _new_interaction(
        self, type_: int, channel: Channel, user: User, data: dict[str, Any]
    ) -> FakeInteraction:
        iid = self.snowflake()
        inter = FakeInteraction(iid, f"itoken-{iid}", type_, channel.id, user, data)
        self.interactions[iid] = inter
        return inter

    def _interaction_json(self, inter: FakeInteraction) -> dict[str, Any]:
        channel = self.channels[inter.channel_id]
        data: dict[str, Any] = {
            "id": str(inter.id),
            "application_id": str(self.app_id),
            "type": inter.type,
            "data": inter.data,
            "token": inter.token,
            "version": 1,
            "locale": "en-US",
            "channel_id": str(channel.id),
            "channel": channel.json(self),
            "app_permissions": "0",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0 if channel.guild_id else 1,
            "attachment_size_limit": 10_485_760,
        }
        if channel.guild_id:
            data["guild_id"] = str(channel.guild_id)
            data["guild_locale"] = "en-US"
            data["member"] = self._member_json(inter.user) | {"user": inter.user.json(), "permissions": "0"}
        else:
            data["user"] = inter.user.json()
        return data

    def _record(
        self,
        msg: FakeMessage,
        content: str,
        allowed: dict[str, Any] | None,
        components: list[dict[str, Any]],
        via: str,
    ) -> None:
        replied = None
        if via == "create" and msg.reference and (ref := self.messages.get(msg.reference)):
            replied = ref.author
        users = {u.id for u in (self.alice, self.bob, self.other_bot, self.bot)}
        pings = would_ping(content, allowed, replied, users, {self.member_role})
        msg.history.append(Revision(content, allowed, components, pings, time.monotonic(), via))

    # --- REST plumbing ---------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, Callable[..., Any], str, str]]:
        """(method, path, handler, bucket kind, major parameter) for every route."""
        c, e, w = "create", "edit", "webhook"
        return [
            ("GET", "/users/@me", self._get_me, "other", ""),
            ("GET", "/gateway", self._get_gateway, "other", ""),
            ("GET", "/gateway/bot", self._get_gateway_bot, "other", ""),
            ("GET", "/applications/@me", self._get_application, "other", ""),
            ("GET", "/oauth2/applications/@me", self._get_application, "other", ""),
            ("GET", "/channels/{channel_id}", self._get_channel, "other", "channel_id"),
            ("POST", "/channels/{channel_id}/messages", self._create_message, c, "channel_id"),
            ("GET", "/channels/{channel_id}/messages", self._get_messages, "other", "channel_id"),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, "other", "channel_id"),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message, e, "channel_id"),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._delete_message,
                "other",
                "channel_id",
            ),
            ("POST", "/channels/{channel_id}/typing", self._typing, "other", "channel_id"),
            (
                "PUT",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._add_reaction,
                "other",
                "channel_id",
            ),
            (
                "POST",
                "/channels/{channel_id}/messages/{message_id}/threads",
                self._start_thread,
                "other",
                "channel_id",
            ),
            ("POST", "/users/@me/channels", self._create_dm, "other", ""),
            ("GET", "/applications/{app_id}/commands", self._get_commands, "other", ""),
            ("PUT", "/applications/{app_id}/commands", self._put_commands, "other", ""),
            (
                "PUT",
                "/applications/{app_id}/guilds/{guild_id}/commands",
                self._put_commands,
                "other",
                "guild_id",
            ),
            (
                "POST",
                "/interactions/{interaction_id}/{token}/callback",
                self._interaction_callback,
                "none",
                "token",
            ),
            ("POST", "/webhooks/{app_id}/{token}", self._followup, w, "token"),
            (
                "GET",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self._get_webhook_message,
                w,
                "token",
            ),
            (
                "PATCH",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self._edit_webhook_message,
                w,
                "token",
            ),
            (
                "DELETE",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self._delete_webhook_message,
                w,
                "token",
            ),
        ]

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path == "/gateway" or request.path.startswith("/attachments/"):
            return await handler(request)
        now = time.monotonic()
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        template, kind, major = self._route_meta.get((request.method, canonical), ("", "", ""))
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = await request.text()
        headers = {"Via": "1.1 google", "Content-Type": "application/json"}  # discord.py needs Via on 429s
        webhookish = kind in ("webhook", "none")
        try:
            if not template:
                raise DiscordError(404, 0, "404: Not Found")
            if not webhookish and request.headers.get("Authorization") != f"Bot {self.token}":
                raise DiscordError(401, 0, "401: Unauthorized")
            if not webhookish and (wait := self._global.take(now)):
                return self._too_many(request, template, now, wait, headers, body, is_global=True)
            bucket = None
            if kind != "none":
                # Message creates and edits have a bucket each per channel (one if "shared");
                # other routes get their own. Bucket names are opaque hashes, as Discord's are.
                if kind in ("create", "edit") and self.message_buckets == "shared":
                    kind = "messages"
                name = kind if kind != "other" else "other-" + template
                name = hashlib.md5(name.encode()).hexdigest()
                key = (name, request.match_info.get(major, "") if major else "")
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = _Bucket(*self.limits[kind], name)
                if wait := bucket.take(now):
                    headers |= bucket.headers(now)
                    return self._too_many(request, template, now, wait, headers, body, is_global=False)
                headers |= bucket.headers(now)
            fault = None
            if kind in ("create", "edit", "messages", "webhook") and request.method in ("POST", "PATCH"):
                fault = self.faults.draw("post" if request.method == "POST" else "edit")
            if fault == "rate_limit":
                return self._too_many(
                    request, template, now, self.faults.wait(), headers, body, is_global=False, injected=True
                )
            if fault in ("error", "reset", "timeout"):
                return await self._fail(request, template, now, fault, headers, body)
            status, payload = await handler(request, body)
            if fault == "applied_error":
                return await self._fail(request, template, now, fault, headers, body)
        except DiscordError as exc:
            status = exc.status
            payload = {"message": exc.message, "code": exc.code}
            if exc.errors:
                payload["errors"] = exc.errors
        self.calls.append(Call(request.method, request.path, template, status, now, body))
        if status == 204:
            return web.Response(status=204, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        return self._json(status, payload, headers)

    @staticmethod
    def _json(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
        # Exactly "application/json", no charset: discord.py compares the header verbatim.
        return web.Response(status=status, body=json.dumps(payload).encode(), headers=headers)

    async def _fail(
        self, request: web.Request, template: str, now: float, fault: str, headers: dict[str, str], body: Any
    ) -> web.Response:
        """An injected failure: a connection reset (status 0 in `calls`), a late 504 or a 5xx."""
        if fault == "timeout":
            await asyncio.sleep(self.faults.timeout_after)
        status = {"reset": 0, "timeout": 504}.get(fault) or self.faults.status()
        self.calls.append(Call(request.method, request.path, template, status, now, body))
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
        return self._json(status or 500, {"message": f"{status}: Server Error", "code": 0}, headers)

    def _too_many(
        self,
        request: web.Request,
        template: str,
        now: float,
        wait: float,
        headers: dict[str, str],
        body: Any,
        *,
        is_global: bool,
        injected: bool = False,
    ) -> web.Response:
        """A 429; only the fake's own limits count in `throttled` (not injected storms)."""
        call = Call(request.method, request.path, template, 429, now, body)
        self.calls.append(call)
        if not injected:
            self.throttled.append(call)
        headers = headers | {
            "Retry-After": str(math.ceil(wait)),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        payload = {
            "message": "You are being rate limited.",
            "retry_after": round(wait, 3),
            "global": is_global,
            "code": 0,
        }
        return self._json(429, payload, headers)

    def _channel(self, request: web.Request) -> Channel:
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        return channel

    def _message(self, request: web.Request, channel_id: int | None = None) -> FakeMessage:
        msg = self.messages.get(int(request.match_info["message_id"]))
        if msg is None or msg.deleted or (channel_id is not None and msg.channel_id != channel_id):
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    @staticmethod
    def _check_content(body: dict[str, Any], *, creating: bool, current: FakeMessage | None = None) -> None:
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            content = str(content)
        if content is not None and len(content) > 2000:
            raise DiscordError(
                400,
                50035,
                "Invalid Form Body",
                {
                    "content": {
                        "_errors": [
                            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                        ]
                    }
                },
            )
        components = body.get("components")
        for row in components or []:
            for comp in row.get("components", []):
                if comp.get("type") == 2 and comp.get("style") != 5 and not comp.get("custom_id"):
                    raise DiscordError(
                        400,
                        50035,
                        "Invalid Form Body",
                        {
                            "components": {
                                "_errors": [
                                    {"code": "BASE_TYPE_REQUIRED", "message": "custom_id is required"}
                                ]
                            }
                        },
                    )
                if len(comp.get("custom_id", "")) > 100:
                    raise DiscordError(
                        400,
                        50035,
                        "Invalid Form Body",
                        {
                            "components": {
                                "_errors": [
                                    {
                                        "code": "BASE_TYPE_MAX_LENGTH",
                                        "message": "Must be 100 or fewer in length.",
                                    }
                                ]
                            }
                        },
                    )
        final_content = content if content is not None else (current.content if current else "")
        final_components = components if components is not None else (current.components if current else [])
        if (
            not final_content
            and not final_components
            and not body.get("embeds")
            and not body.get("attachments")
            and not body.get("sticker_ids")
        ):
            raise DiscordError(400, 50006, "Cannot send an empty message")

    def _create(
        self,
        channel: Channel,
        body: dict[str, Any],
        *,
        author: User | None = None,
        webhook: bool = False,
        interaction: FakeInteraction | None = None,
        via: str = "create",
    ) -> FakeMessage:
        self._check_content(body, creating=True)
        ref = None
        if reference := body.get("message_reference"):
            ref = int(reference["message_id"])
            target = self.messages.get(ref)
            if target is None or target.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise DiscordError(
                        400,
                        50035,
                        "Invalid Form Body",
                        {
                            "message_reference": {
                                "_errors": [{"code": "REPLIES_UNKNOWN_MESSAGE", "message": "Unknown message"}]
                            }
                        },
                    )
                ref = None
        msg = FakeMessage(
            self.snowflake(),
            channel.id,
            channel.guild_id,
            author or self.bot,
            body.get("content") or "",
            body.get("components") or [],
            ref,
            flags=int(body.get("flags") or 0),
            webhook_id=self.app_id if webhook else None,
            interaction_id=interaction.id if interaction else None,
        )
        self.messages[msg.id] = msg
        self._record(msg, msg.content, body.get("allowed_mentions"), msg.components, via)
        return msg

    def _apply_edit(self, msg: FakeMessage, body: dict[str, Any], via: str = "edit") -> None:
        self._check_content(body, creating=False, current=msg)
        if "content" in body:
            msg.content = body["content"] or ""
        if "components" in body:
            msg.components = body["components"] or []
        if "flags" in body and body["flags"] is not None:
            msg.flags = int(body["flags"]) & ~128  # editing ends the "thinking" state
        else:
            msg.flags &= ~128
        msg.edited = time.time()
        self._record(msg, msg.content, body.get("allowed_mentions"), msg.components, via)

    # --- REST handlers (each returns (status, json)) ---------------------------------------

    async def _get_me(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.bot.json() | {
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "locale": "en-US",
            "email": None,
        }

    async def _get_gateway(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 86_400_000,
                "max_concurrency": self.max_concurrency,
            },
        }

    async def _get_application(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, {
            "id": str(self.app_id),
            "name": "streambot",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.alice.json(),
            "verify_key": "0" * 64,
            "team": None,
            "summary": "",
            # GATEWAY_MESSAGE_CONTENT_LIMITED: the portal toggle of an unverified app
            "flags": (1 << 19) if self.message_content_intent else 0,
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
        }

    async def _get_channel(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._channel(request).json(self)

    async def _create_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        channel = self._channel(request)
        body = body or {}
        nonce = (channel.id, str(body["nonce"])) if body.get("enforce_nonce") and body.get("nonce") else None
        if nonce in self._nonces:  # a retry of a create that already happened
            return 200, self._message_json(self.messages[self._nonces[nonce]])
        msg = self._create(channel, body)
        if nonce:
            self._nonces[nonce] = msg.id
        await self._dispatch("MESSAGE_CREATE", self._message_json(msg, member=True), channel.guild_id)
        return 200, self._message_json(msg)

    async def _get_messages(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """A channel's history, newest first, as Discord answers it: `limit` (1-100, default
        50) messages before `before`, right after `after`, or the newest. Ephemeral ones are
        only ever seen by their user."""
        channel = self._channel(request)
        if channel.id in self.unreadable:
            raise DiscordError(403, 50001, "Missing Access")
        query = request.query
        limit = max(1, min(100, int(query.get("limit", 50))))
        found = sorted(
            (
                m
                for m in self.messages.values()
                if m.channel_id == channel.id and not m.deleted and not m.flags & 64
            ),
            key=lambda m: m.id,
        )
        if "after" in query:
            found = [m for m in found if m.id > int(query["after"])][:limit]
        elif "before" in query:
            found = [m for m in found if m.id < int(query["before"])][-limit:]
        else:
            found = found[-limit:]
        return 200, [self._message_json(m) for m in reversed(found)]

    async def _get_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        channel = self._channel(request)
        return 200, self._message_json(self._message(request, channel.id))

    async def _edit_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        channel = self._channel(request)
        msg = self._message(request, channel.id)
        if msg.author != self.bot:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        self._apply_edit(msg, body or {})
        data = self._message_json(msg)
        await self._dispatch(
            "MESSAGE_UPDATE",
            data | {"member": self._member_json(self.bot)} if msg.guild_id else data,
            channel.guild_id,
        )
        return 200, data

    async def _delete_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        channel = self._channel(request)
        await self.delete(self._message(request, channel.id))
        return 204, None

    async def _add_reaction(self, request: web.Request, body: Any) -> tuple[int, Any]:
        from urllib.parse import unquote

        msg = self._message(request, int(request.match_info["channel_id"]))
        msg.reactions.add(unquote(request.match_info["emoji"]))
        return 204, None

    async def _typing(self, request: web.Request, body: Any) -> tuple[int, Any]:
        self.typing.append((self._channel(request).id, time.monotonic()))
        return 204, None

    async def _start_thread(self, request: web.Request, body: Any) -> tuple[int, Any]:
        channel = self._channel(request)
        msg = self._message(request, channel.id)
        if channel.type != 0:
            raise DiscordError(400, 50024, "Cannot execute action on this channel type")
        if msg.id in self.channels:
            raise DiscordError(400, 160004, "A thread has already been created for this message")
        thread = self._add_channel(
            Channel(
                msg.id,
                11,
                (body or {}).get("name", "thread")[:100],
                channel.guild_id,
                channel.id,
                self.bot.id,
            )
        )
        data = thread.json(self)
        await self._dispatch("THREAD_CREATE", data | {"newly_created": True}, channel.guild_id)
        return 201, data

    async def _create_dm(self, request: web.Request, body: Any) -> tuple[int, Any]:
        user = self.user(int(body["recipient_id"]))
        if user is None:
            raise DiscordError(400, 50033, "Invalid Recipient(s)")
        return 200, self.dm_channel(user).json(self)

    async def _get_commands(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.commands

    async def _put_commands(self, request: web.Request, body: Any) -> tuple[int, Any]:
        self.commands = [
            c
            | {
                "id": str(self.snowflake()),
                "application_id": str(self.app_id),
                "version": "1",
                "default_member_permissions": c.get("default_member_permissions"),
                "type": c.get("type", 1),
            }
            for c in body or []
        ]
        return 200, self.commands

    def _interaction(self, request: web.Request) -> FakeInteraction:
        inter = next((i for i in self.interactions.values() if i.token == request.match_info["token"]), None)
        if inter is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        return inter

    async def _interaction_callback(self, request: web.Request, body: Any) -> tuple[int, Any]:
        inter = self._interaction(request)
        if str(inter.id) != request.match_info["interaction_id"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if inter.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        body = body or {}
        kind, data = body.get("type"), body.get("data") or {}
        channel = self.channels[inter.channel_id]
        message = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            message = inter.original = self._create(
                channel, data, interaction=inter, webhook=True, via="interaction"
            )
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "streambot is thinking..."
            message = FakeMessage(
                self.snowflake(),
                channel.id,
                channel.guild_id,
                self.bot,
                "",
                flags=128 | int(data.get("flags") or 0),
                webhook_id=self.app_id,
                interaction_id=inter.id,
            )
            self.messages[message.id] = inter.original = message
            self._record(message, "", None, [], "interaction")
        elif kind == 7:  # UPDATE_MESSAGE of the clicked message
            assert inter.message_id is not None
            message = self.messages[inter.message_id]
            self._apply_edit(message, data, via="interaction")
        elif kind == 9:  # MODAL: a form the user fills in (answered by a MODAL_SUBMIT interaction)
            if inter.type not in (2, 3) or not data.get("custom_id") or not data.get("title"):
                raise DiscordError(400, 50035, "Invalid Form Body")
            inter.modal = data
        elif kind != 6:  # 6 = DEFERRED_UPDATE_MESSAGE: nothing visible
            raise DiscordError(400, 50035, "Invalid Form Body")
        inter.callbacks.append(body)
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = self._message_json(message)
        return 200, {
            "interaction": {
                "id": str(inter.id),
                "type": inter.type,
                "response_message_id": str(message.id) if message else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": False,
            },
            "resource": resource,
        }

    def _webhook_message(self, request: web.Request, inter: FakeInteraction) -> FakeMessage:
        mid = request.match_info["message_id"]
        if mid == "@original":
            if inter.original is None or inter.original.deleted:
                raise DiscordError(404, 10008, "Unknown Message")
            return inter.original
        msg = self._message(request)
        if msg.interaction_id != inter.id:
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    async def _followup(self, request: web.Request, body: Any) -> tuple[int, Any]:
        inter = self._interaction(request)
        if not inter.acknowledged:
            raise DiscordError(404, 10015, "Unknown Webhook")
        msg = self._create(self.channels[inter.channel_id], body or {}, webhook=True, interaction=inter)
        inter.followups.append(msg)
        if request.query.get("wait", "false").lower() not in ("true", "1"):
            return 204, None
        return 200, self._message_json(msg)

    async def _get_webhook_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._message_json(self._webhook_message(request, self._interaction(request)))

    async def _edit_webhook_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        msg = self._webhook_message(request, self._interaction(request))
        self._apply_edit(msg, body or {})
        return 200, self._message_json(msg)

    async def _delete_webhook_message(self, request: web.Request, body: Any) -> tuple[int, Any]:
        await self.delete(self._webhook_message(request, self._interaction(request)))
        return 204, None

    # --- gateway ---------------------------------------------------------------------------

    def _shard_of(self, guild_id: int | None, count: int) -> int:
        return 0 if guild_id is None else (guild_id >> 22) % count

    async def _dispatch(self, event: str, data: dict[str, Any], guild_id: int | None) -> None:
        """Send a DISPATCH to every session whose shard owns `guild_id` (DMs: shard 0).

        Sessions whose socket is down keep the event so a RESUME replays it."""
        for session in list(self._sessions.values()):
            shard_id, count = session.shard
            if self._shard_of(guild_id, count) != shard_id:
                continue
            await self._send_event(session, event, data)

    async def _send_event(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        del session.events[:-1000]
        if session.ws is not None and not session.ws.closed:
            try:
                await session.ws.send_str(json.dumps(payload))
            except (ConnectionError, RuntimeError):
                pass

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            await ws.send_json({"op": 10, "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)}})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                packet = json.loads(msg.data)
                op, d = packet.get("op"), packet.get("d")
                if op == 1:
                    await ws.send_json({"op": 11})
                elif op == 2:
                    session = await self._identify(ws, d)
                    if session is None:
                        break
                elif op == 6:
                    session = await self._resume(ws, d)
                    if session is None:
                        continue
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _close(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        self.gateway_closes.append(code)
        await ws.close(code=code, message=reason.encode())

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> _Session | None:
        self.identifies.append({k: v for k, v in d.items() if k != "token"})
        self.identify_times.append((int((d.get("shard") or (0, 1))[0]), time.monotonic()))
        if d.get("token") != self.token:
            await self._close(ws, 4004, "Authentication failed.")
            return None
        intents = int(d.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.message_content_intent:
            await self._close(ws, 4014, "Disallowed intent(s).")
            return None
        shard = tuple(d.get("shard") or (0, 1))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            await self._close(ws, 4010, "Invalid shard.")
            return None
        session = _Session(f"session-{next(self._ids)}", (int(shard[0]), int(shard[1])), intents, ws=ws)
        self._sessions[session.id] = session
        mine = self._shard_of(self.guild_id, session.shard[1]) == session.shard[0]
        await self._send_event(
            session,
            "READY",
            {
                "v": API_VERSION,
                "user": self.bot.json() | {"verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(self.guild_id), "unavailable": True}] if mine else [],
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "shard": list(session.shard),
                "application": {"id": str(self.app_id), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "user_settings": {},
            },
        )
        if mine:
            await self._send_event(session, "GUILD_CREATE", self._guild_json())
        return session

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> _Session | None:
        session = self._sessions.get(d.get("session_id", ""))
        if session is None or d.get("token") != self.token:
            await ws.send_json({"op": 9, "d": False})
            return None
        self.resumes += 1
        session.ws = ws
        seq = int(d.get("seq") or 0)
        for payload in [p for p in session.events if p["s"] > seq]:
            await ws.send_str(json.dumps(payload))
        await self._send_event(session, "RESUMED", {})
        return session
