"""A hermetic fake Slack for end-to-end tests: Web API, Socket Mode and signed HTTP delivery.

The *real* slack_sdk / slack-bolt clients talk to this aiohttp server on 127.0.0.1, so the whole
path (HTTP, JSON, Socket Mode envelopes and acks, request signing, bolt's routing) runs as it
would against slack.com. What it models, because the adapter's behaviour depends on it:

* Web API methods the bot uses (auth.test, chat.postMessage/update/delete,
  chat.startStream/appendStream/stopStream, assistant.threads.*, conversations.replies,
  reactions.add, apps.connections.open), with Slack's error codes (invalid_auth, channel_not_found,
  message_not_found, msg_too_long, invalid_blocks, message_not_in_streaming_state,
  missing_recipient_user_id, ...).
* Rate limits per method per workspace (chat.postMessage: per channel), as token buckets with
  Slack's documented rates and bursts. Over the limit: HTTP 429, `Retry-After`, error
  "ratelimited"; every 429 is counted so tests can assert there were none.
* Socket Mode: `hello` on connect, `events_api` / `interactive` envelopes, acks, and
  redelivery (retry_attempt/retry_reason) of envelopes that are not acknowledged in time.
* HTTP mode: events and interactions POSTed to the app with `X-Slack-Signature`, retried with
  `X-Slack-Retry-Num` when the app does not answer 200 in time.
* Every message keeps the history of what users saw (`Message.history`), so tests assert on
  what a person would have read, not on the calls made.
* Switches to make native streams fail or expire mid-reply, or be unsupported.
* Platform failures at seeded rates: `faults = Faults(...)` (tests/fakes/faults.py) answers the
  message methods with 5xx, `ratelimited` 429s, connection resets or late 504s;
  `drop_socket()` cuts the Socket Mode connection (the client reconnects; unacknowledged
  envelopes are redelivered).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from harness import wait_for

from .faults import Faults

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM_ID = "T0FAKE"
APP_ID = "A0FAKE"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
MARKDOWN_LIMIT = 12_000  # markdown_text and markdown blocks
# The methods `faults` can fail, and whether each creates a message (a "post") or changes one.
FAULTED = {
    "chat.postMessage": "post",
    "chat.startStream": "post",
    "chat.update": "edit",
    "chat.appendStream": "edit",
    "chat.stopStream": "edit",
}
TEXT_LIMIT = 40_000
# Mentions that notify people: special mentions, user groups and users (not made inert).
PING = re.compile(r"<!(?:channel|here|everyone|subteam\^[A-Z0-9]+)[^>]*>|<@[UW][A-Z0-9]+>", re.I)

Scope = Literal["workspace", "channel"]


@dataclass(frozen=True)
class Limit:
    """A token bucket: `burst` requests at once, refilled at `per_minute` per minute."""

    per_minute: float
    burst: float
    scope: Scope = "workspace"


def tier(n: int) -> Limit:
    """Slack's documented tiers: 1+, 20+, 50+, 100+ per minute, with bursts."""
    per_minute = {1: 1.0, 2: 20.0, 3: 50.0, 4: 100.0}[n]
    return Limit(per_minute, max(3.0, per_minute))


DEFAULT_LIMITS: dict[str, Limit] = {
    "chat.postMessage": Limit(60.0, 3.0, "channel"),  # ~1 per second per channel, short bursts
    "chat.update": tier(3),
    "chat.delete": tier(3),
    "chat.startStream": tier(2),
    "chat.appendStream": tier(4),
    "chat.stopStream": tier(2),
    "assistant.threads.setStatus": tier(3),
    "assistant.threads.setTitle": tier(3),
    "assistant.threads.setSuggestedPrompts": tier(3),
    "reactions.add": tier(3),
    "reactions.remove": tier(3),
    "views.open": tier(4),
    "chat.postEphemeral": tier(4),
    "conversations.replies": tier(3),
    "auth.test": tier(4),
    "apps.connections.open": Limit(1.0, 5.0),
}


class _Bucket:
    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.tokens = limit.burst
        self.at = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if granted, else the seconds until one is available."""
        rate = self.limit.per_minute / 60.0
        self.tokens = min(self.limit.burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass
class Call:
    """One Web API request as the fake saw it."""

    at: float
    method: str
    args: dict[str, Any]
    status: int
    error: str | None
    retry_after: float | None = None


@dataclass
class Message:
    """A message in the fake workspace and everything users saw it show."""

    channel: str
    ts: str
    user: str
    text: str
    thread_ts: str | None = None
    bot_id: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # visible text after every change
    times: list[float] = field(default_factory=list)  # monotonic time of every change
    stream: Literal["streaming", "stopped", "failed"] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task chunks: id -> latest
    task_updates: list[dict[str, Any]] = field(default_factory=list)  # every task chunk, in order
    reactions: set[str] = field(default_factory=set)
    stream_started: float = 0.0
    appends: int = 0
    deleted: bool = False
    created: float = field(default_factory=time.monotonic)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Interactive elements currently shown (e.g. the Stop button)."""
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])]

    @property
    def is_control(self) -> bool:
        """The Stop button the bot posts beside a native stream (no part of the answer)."""
        return any(b.get("block_id") == "streambot_stop_control" for b in self.blocks)

    @property
    def stop_buttons(self) -> list[dict[str, Any]]:
        return [b for b in self.buttons if b.get("action_id") == "streambot_stop"]

    @property
    def feedback(self) -> dict[str, Any] | None:
        """Slack's native 👍/👎 (a feedback_buttons element in a context_actions block)."""
        for b in self.blocks:
            if b.get("type") == "context_actions":
                for e in b.get("elements", []):
                    if e.get("type") == "feedback_buttons":
                        return dict(e)
        return None

    @property
    def is_bot(self) -> bool:
        return self.bot_id is not None

    def show(self, text: str) -> None:
        self.text = text
        self.history.append(text)
        self.times.append(time.monotonic())

    def as_event_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts}
        if self.thread_ts:
            msg["thread_ts"] = self.thread_ts
        if self.bot_id:
            msg["bot_id"] = self.bot_id
        if self.blocks:
            msg["blocks"] = self.blocks
        return msg


@dataclass
class Delivery:
    """One event or interaction sent to the app, and when (if ever) it was acknowledged."""

    kind: Literal["events_api", "interactive", "slash_commands"]
    payload: dict[str, Any]
    sent: float
    attempts: int = 0
    acked: float | None = None
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)
    response: Any = None  # what the app answered in its acknowledgement (a slash command's reply)


def visible_text(text: str | None, blocks: list[dict[str, Any]] | None, markdown: str | None) -> str:
    """What a person sees: markdown_text, else the text of markdown/section blocks, else text."""
    if markdown is not None:
        return markdown
    parts: list[str] = []
    for block in blocks or []:
        if block.get("type") == "markdown":
            parts.append(block.get("text", ""))
        elif block.get("type") == "section" and isinstance(block.get("text"), dict):
            parts.append(block["text"].get("text", ""))
    if parts:
        return "\n".join(parts)
    return text or ""


def channel_type(channel: str) -> str:
    return {"D": "im", "G": "group", "M": "mpim"}.get(channel[:1], "channel")


class FakeSlack:
    """One fake workspace with one installed app. Use `async with FakeSlack() as slack:`."""

    def __init__(
        self,
        *,
        limits: dict[str, Limit] | None = None,
        ack_timeout: float = 3.0,
        max_retries: int = 3,
        echo_bot_events: bool = True,
        mode: Literal["socket", "http"] = "socket",
        signing_secret: str = SIGNING_SECRET,
    ) -> None:
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.ack_timeout = ack_timeout
        self.max_retries = max_retries
        self.echo_bot_events = echo_bot_events
        self.mode = mode
        self.signing_secret = signing_secret
        self.http_url: str | None = None  # where HTTP mode delivers (the app's /slack/events)

        # Switches for failure tests.
        self.native_streaming = True
        self.native_error = "unknown_method"  # answered by chat.startStream when switched off
        self.feedback_blocks = True  # False: refuse context_actions blocks like an older Slack
        self.stream_ttl: float | None = None  # streams expire this long after starting
        self.fail_streams_after: int | None = None  # appends before a stream breaks
        self.fail_next: dict[str, list[str | int]] = {}  # method -> errors (str) / statuses (int)
        self.faults = Faults()  # random failures of the message methods (none by default)

        self.calls: list[Call] = []
        self.rate_limited: Counter[str] = Counter()
        self.messages: dict[tuple[str, str], Message] = {}
        self.channels: set[str] = set()
        self.deliveries: dict[str, Delivery] = {}  # by envelope/delivery id
        self.suggested_prompts: list[dict[str, Any]] = []
        self.statuses: list[tuple[str, str, str]] = []  # (channel, thread_ts, status)
        self.loading_messages: list[list[str]] = []  # of every setStatus that had some
        self.views: list[dict[str, Any]] = []  # modals opened (views.open)
        self.ephemeral: list[dict[str, Any]] = []  # chat.postEphemeral messages
        self.pings: list[tuple[str, str, str]] = []  # (channel, ts, mention) that notify people
        self.titles: dict[tuple[str, str], str] = {}
        self.files: dict[str, tuple[str, str, bytes]] = {}  # file id -> (name, mimetype, bytes)
        self.downloads: list[tuple[str, bool]] = []  # (file id, with the bot token) per download
        self.names: dict[str, str] = {"U0HUMAN": "Sam", "U0OTHER": "Alex"}  # users.info display names
        self.replies_pages = 0  # conversations.replies pages served
        self.file_host = "127.0.0.1"  # where url_private points ("localhost": not the API's host)
        self.reactions: list[tuple[str, str, str, float]] = []  # (channel, ts, name, monotonic)

        self._buckets: dict[str, _Bucket] = {}
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_lock = asyncio.Lock()
        self.connections = 0  # Socket Mode connections ever opened
        # Which open Socket Mode connection gets the next delivery (replicas): an index, or
        # None to take turns, as Slack spreads events over an app's connections.
        self.route: int | None = -1
        self._turns = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The Web API base URL for slack_sdk (`base_url=`), ending in /api/."""
        if self._port is None:
            raise RuntimeError("FakeSlack is not running")
        return f"http://127.0.0.1:{self._port}/api/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{file_id}/{name}", self._file)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self._sockets):
            await ws.close()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- what tests do as Slack users ------------------------------------------------------

    def new_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.{next(self._ids):06d}"

    def add_channel(self, channel: str) -> str:
        self.channels.add(channel)
        return channel

    async def user_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U0HUMAN",
        thread_ts: str | None = None,
        deliver: bool = True,
        redeliver: int = 0,
        files: Iterable[tuple[str, str, bytes]] = (),
    ) -> str:
        """A person posts `text`; the app gets `message` (and `app_mention` if mentioned).
        `files` (name, mimetype, bytes) are shared with it: private, served only with the token."""
        self.add_channel(channel)
        ts = self.new_ts()
        shared = [self._share(*f) for f in files]
        msg = Message(channel, ts, user, text, thread_ts=thread_ts)
        msg.show(text)
        self.messages[(channel, ts)] = msg
        if deliver:
            event = {
                "type": "message",
                "channel": channel,
                "user": user,
                "text": text,
                "ts": ts,
                "event_ts": ts,
                "channel_type": channel_type(channel),
                "team": TEAM_ID,
                "client_msg_id": str(uuid.uuid4()),
            }
            if shared:
                event |= {"subtype": "file_share", "files": shared}
            if thread_ts:
                event["thread_ts"] = thread_ts
                root = self.messages.get((channel, thread_ts))
                event["parent_user_id"] = root.user if root else user
            await self.send_event(event, redeliver=redeliver)
            if f"<@{BOT_USER_ID}>" in text and channel_type(channel) != "im":
                mention = {
                    k: v for k, v in event.items() if k not in ("channel_type", "parent_user_id", "subtype")
                }
                mention["type"] = "app_mention"
                await self.send_event(mention, redeliver=redeliver)
        return ts

    def _share(self, name: str, mimetype: str, data: bytes) -> dict[str, Any]:
        fid = f"F{next(self._ids):08d}"
        self.files[fid] = (name, mimetype, data)
        url = f"http://{self.file_host}:{self._port}/files-pri/{fid}/{name}"
        return {
            "id": fid,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data),
            "mode": "hosted",
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    async def _file(self, request: web.Request) -> web.Response:
        """A private file: only with the bot token; without it Slack answers 200 with its
        sign-in page, which is what a bot missing files:read gets."""
        fid = request.match_info["file_id"]
        authed = request.headers.get("Authorization") == f"Bearer {BOT_TOKEN}"
        self.downloads.append((fid, authed))
        if fid not in self.files:
            return web.Response(status=404, text="file not found")
        if not authed:
            return web.Response(text="<html><body>Sign in to Slack</body></html>", content_type="text/html")
        _, mimetype, data = self.files[fid]
        return web.Response(body=data, headers={"Content-Type": mimetype})

    async def slash(self, command: str, text: str, channel: str, user: str = "U0HUMAN") -> Delivery:
        """A person runs `command text` in `channel`; the app's acknowledgement is `response`."""
        payload = {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": channel.lower(),
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": f"http://127.0.0.1:{self._port}/commands/{next(self._ids)}",
            "trigger_id": f"trigger.{next(self._ids)}",
        }
        return await self._deliver("slash_commands", payload)

    async def mention(self, channel: str, text: str, **kwargs: Any) -> str:
        """A person mentions the bot: `<@bot> text`."""
        return await self.user_message(channel, f"<@{BOT_USER_ID}> {text}", **kwargs)

    async def other_bot_message(self, channel: str, text: str, thread_ts: str | None = None) -> str:
        """Another app posts (with a bot_id): the bot must ignore it."""
        self.add_channel(channel)
        ts = self.new_ts()
        msg = Message(channel, ts, "U0OTHERBOT", text, thread_ts=thread_ts, bot_id="B0OTHER")
        msg.show(text)
        self.messages[(channel, ts)] = msg
        event = {
            "type": "message",
            "channel": channel,
            "user": "U0OTHERBOT",
            "bot_id": "B0OTHER",
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "channel_type": channel_type(channel),
            "team": TEAM_ID,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        await self.send_event(event)
        return ts

    async def start_assistant_thread(
        self, user: str = "U0HUMAN", channel: str = "D0ASSIST", context_channel: str | None = None
    ) -> tuple[str, str]:
        """A person opens the app's assistant pane: a new thread in the app's DM."""
        self.add_channel(channel)
        ts = self.new_ts()
        root = Message(channel, ts, BOT_USER_ID, "", bot_id=BOT_ID)
        self.messages[(channel, ts)] = root
        await self.send_event(
            {
                "type": "assistant_thread_started",
                "assistant_thread": {
                    "user_id": user,
                    "channel_id": channel,
                    "thread_ts": ts,
                    "context": {"channel_id": context_channel, "team_id": TEAM_ID, "enterprise_id": None},
                },
                "event_ts": self.new_ts(),
            }
        )
        return channel, ts

    async def delete_message(self, channel: str, ts: str) -> None:
        """A person deletes a message (theirs or the bot's): `message_deleted` is sent."""
        msg = self.messages[(channel, ts)]
        msg.deleted = True
        await self.send_event(
            {
                "type": "message",
                "subtype": "message_deleted",
                "hidden": True,
                "channel": channel,
                "ts": self.new_ts(),
                "deleted_ts": ts,
                "event_ts": self.new_ts(),
                "channel_type": channel_type(channel),
                "previous_message": msg.as_event_message(),
            }
        )

    async def click(
        self, message: Message, action_id: str, user: str = "U0HUMAN", *, redeliver: int = 0
    ) -> Delivery:
        """A person clicks the button `action_id` on `message`; `redeliver` delivers the same
        click that many more times (a lost ack)."""
        block_id, button = next(
            (b.get("block_id", "b"), e)
            for b in message.blocks
            if b.get("type") == "actions"
            for e in b.get("elements", [])
            if e.get("action_id") == action_id
        )
        payload = self._action_payload(message, user)
        payload |= {
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "type": "button",
                    "value": button.get("value", ""),
                    "text": button.get("text", {}),
                    "action_ts": self.new_ts(),
                }
            ],
        }
        delivery = await self._deliver("interactive", payload)
        for attempt in range(1, redeliver + 1):
            await self._deliver("interactive", payload, attempt=attempt, reason="timeout")
        return delivery

    async def click_feedback(
        self, message: Message, vote: Literal["up", "down"], user: str = "U0HUMAN", *, redeliver: int = 0
    ) -> Delivery:
        """A person clicks 👍 or 👎 (Slack's feedback buttons send the clicked button's value)."""
        element = message.feedback
        assert element is not None, "the message shows no feedback buttons"
        button = element["positive_button" if vote == "up" else "negative_button"]
        payload = self._action_payload(message, user)
        payload["actions"] = [
            {
                "type": "feedback_buttons",
                "action_id": element.get("action_id", ""),
                "block_id": "fb",
                "value": button["value"],
                "action_ts": self.new_ts(),
            }
        ]
        delivery = await self._deliver("interactive", payload)
        for attempt in range(1, redeliver + 1):
            await self._deliver("interactive", payload, attempt=attempt, reason="timeout")
        return delivery

    async def submit_view(
        self, view: dict[str, Any], values: dict[str, dict[str, Any]], user: str = "U0HUMAN"
    ) -> Delivery:
        """A person submits a modal the app opened (`values`: block id -> action id -> value)."""
        state = {
            block: {action: {"type": "plain_text_input", "value": v} for action, v in actions.items()}
            for block, actions in values.items()
        }
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "verification-token",
            "trigger_id": f"trigger.{next(self._ids)}",
            "view": {**view, "id": f"V{next(self._ids)}", "team_id": TEAM_ID, "state": {"values": state}},
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        return await self._deliver("interactive", payload)

    def _action_payload(self, message: Message, user: str) -> dict[str, Any]:
        return {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "verification-token",
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
                "thread_ts": message.thread_ts,
            },
            "trigger_id": f"trigger.{next(self._ids)}",
            "team": {"id": TEAM_ID, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": message.channel, "name": "channel"},
            "message": message.as_event_message(),
            "state": {"values": {}},
            "response_url": f"http://127.0.0.1:{self._port}/response/{next(self._ids)}",
        }

    async def send_event(
        self, event: dict[str, Any], *, redeliver: int = 0, event_id: str | None = None
    ) -> Delivery:
        """Wrap `event` in an event_callback and deliver it; `redeliver` sends it again that
        many more times (as Slack does when an ack got lost), with the same event_id."""
        body = {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"ctx-{next(self._ids)}",
        }
        delivery = await self._deliver("events_api", body)
        for attempt in range(1, redeliver + 1):
            await self._deliver("events_api", body, attempt=attempt, reason="timeout")
        return delivery

    # --- what tests look at ------------------------------------------------------------------

    def bot_messages(
        self, channel: str | None = None, thread_ts: str | None = None, *, controls: bool = False
    ) -> list[Message]:
        """The bot's messages people can see (in a channel / thread), oldest first; without
        `controls`, not the Stop buttons posted beside native streams."""
        out = [
            m
            for m in self.messages.values()
            if m.bot_id == BOT_ID
            and (controls or not m.is_control)
            and m.ts != m.thread_ts
            and not m.deleted
            and (channel is None or m.channel == channel)
            and (thread_ts is None or m.thread_ts == thread_ts)
            and m.history
        ]
        return sorted(out, key=lambda m: (m.channel, float(m.ts)))

    def reply_text(self, channel: str, thread_ts: str) -> str:
        """Everything the bot shows in a thread now, its messages joined."""
        return "".join(m.text for m in self.bot_messages(channel, thread_ts))

    def count(self, method: str, *, ok: bool | None = None) -> int:
        return sum(1 for c in self.calls if c.method == method and (ok is None or (c.error is None) == ok))

    @property
    def total_429s(self) -> int:
        return sum(self.rate_limited.values())

    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.error is not None]

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        """Wait until `predicate()` is truthy; return its value (`harness.wait_for`)."""
        return await wait_for(predicate, timeout, what)

    async def wait_connected(self, timeout: float = 15.0, *, more_than: int = 0) -> None:
        """Wait for an open Socket Mode connection (the `more_than`+1-th one ever made)."""
        await self.wait_for(
            lambda: self.connections > more_than and self._open_sockets(), timeout, "a Socket Mode connection"
        )

    async def drop_socket(self) -> None:
        """Cut every Socket Mode connection without warning, as a network failure would."""
        for ws in self._open_sockets():
            await ws.close(code=1006)

    def _open_sockets(self) -> list[web.WebSocketResponse]:
        return [ws for ws in self._sockets if not ws.closed]

    # --- delivery to the app --------------------------------------------------------------------

    async def _deliver(
        self,
        kind: Literal["events_api", "interactive", "slash_commands"],
        payload: dict[str, Any],
        *,
        attempt: int = 0,
        reason: str = "",
    ) -> Delivery:
        delivery = Delivery(kind, payload, time.monotonic())
        did = str(uuid.uuid4())
        self.deliveries[did] = delivery
        self._spawn(self._deliver_loop(did, delivery, attempt, reason))
        await asyncio.sleep(0)
        return delivery

    async def _deliver_loop(self, did: str, d: Delivery, attempt: int, reason: str) -> None:
        """Send until acknowledged within `ack_timeout`, at most `max_retries` redeliveries."""
        while True:
            d.attempts += 1
            if self.mode == "socket":
                await self._send_envelope(did, d, attempt, reason)
            else:
                self._spawn(self._post_http(did, d, attempt, reason))
            try:
                await asyncio.wait_for(d.ack_event.wait(), self.ack_timeout)
                return
            except TimeoutError:
                if attempt >= self.max_retries or d.kind != "events_api":
                    return
                attempt += 1
                reason = "timeout" if self.mode == "socket" else "http_timeout"

    async def _send_envelope(self, did: str, d: Delivery, attempt: int, reason: str) -> None:
        envelope: dict[str, Any] = {
            "envelope_id": did,
            "payload": d.payload,
            "type": d.kind,
            "accepts_response_payload": d.kind != "events_api",
        }
        if d.kind == "events_api":
            envelope["retry_attempt"] = attempt
            envelope["retry_reason"] = reason
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            await self.wait_connected(60.0)
            async with self._socket_lock:
                open_ = self._open_sockets()
                if open_:
                    try:
                        sock = (
                            open_[self.route]
                            if self.route is not None
                            else open_[next(self._turns) % len(open_)]
                        )
                        await sock.send_str(json.dumps(envelope))
                        return
                    except (ConnectionError, RuntimeError):
                        pass  # closing under us: wait for the next connection
            await asyncio.sleep(0.05)
        raise AssertionError(f"could not send envelope {did} on any Socket Mode connection in 60 s")

    async def _post_http(self, did: str, d: Delivery, attempt: int, reason: str) -> None:
        assert self.http_url, "set FakeSlack.http_url to the app's events URL for HTTP mode"
        if d.kind == "events_api":
            body = json.dumps(d.payload).encode()
            ctype = "application/json"
        elif d.kind == "slash_commands":  # a form, as Slack posts slash commands
            body = urlencode(d.payload).encode()
            ctype = "application/x-www-form-urlencoded"
        else:
            body = urlencode({"payload": json.dumps(d.payload)}).encode()
            ctype = "application/x-www-form-urlencoded"
        stamp = str(int(time.time()))
        sig = hmac.new(
            self.signing_secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": ctype,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": f"v0={sig}",
        }
        if attempt:
            headers["X-Slack-Retry-Num"] = str(attempt)
            headers["X-Slack-Retry-Reason"] = reason
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.post(
                self.http_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.ack_timeout),
            ) as r:
                answer = await r.read()
                if r.status == 200 and d.acked is None:
                    try:
                        d.response = json.loads(answer) if answer else None
                    except ValueError:  # a plain-text answer
                        d.response = answer.decode()
                    d.acked = time.monotonic()
                    d.ack_event.set()
        except (aiohttp.ClientError, TimeoutError):
            pass

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async with self._socket_lock:
            self._sockets.append(ws)
            self.connections += 1
            await ws.send_str(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": len(self._sockets),
                        "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                        "connection_info": {"app_id": APP_ID},
                    }
                )
            )
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                d = self.deliveries.get(data.get("envelope_id", ""))
                if d is not None and d.acked is None:
                    d.response = data.get("payload")
                    d.acked = time.monotonic()
                    d.ack_event.set()
        finally:
            async with self._socket_lock:
                self._sockets.remove(ws)
        return ws

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Web API ---------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        raw = await request.read()
        if raw:
            if request.content_type == "application/json":
                args.update(json.loads(raw))
            else:
                args.update(parse_qsl(raw.decode()))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token or str(args.pop("token", ""))
        args.pop("token", None)

        status, body, headers = 200, {"ok": True}, {}
        fault = None
        try:
            self._check_auth(method, token)
            wait = self._rate(method, args)
            if not wait and method in FAULTED:
                fault = self.faults.draw(FAULTED[method])
            if wait:
                self.rate_limited[method] += 1
                retry = max(1, math.ceil(wait))
                status, body, headers = (
                    429,
                    {"ok": False, "error": "ratelimited"},
                    {"Retry-After": str(retry)},
                )
            elif fault in ("error", "reset", "timeout", "rate_limit"):
                status, body, headers = await self._injected(request, fault)
            else:
                injected = self.fail_next.get(method)
                if injected:
                    err = injected.pop(0)
                    if isinstance(err, int):
                        status, body = err, {"ok": False, "error": "fatal_error"}
                        raise ApiError("fatal_error")
                    raise ApiError(err)
                handler = getattr(self, "_m_" + method.replace(".", "_"), None)
                if handler is None:
                    raise ApiError("unknown_method")
                body = {"ok": True, **(handler(args) or {})}
                if fault == "applied_error":  # done, yet the answer says otherwise
                    status, body = self.faults.status(), {"ok": False, "error": "fatal_error"}
        except ApiError as exc:
            body = {"ok": False, "error": exc.error, **exc.extra}
        self.calls.append(
            Call(
                time.monotonic(),
                method,
                args,
                status,
                None if body.get("ok") else body.get("error"),
                float(headers["Retry-After"]) if "Retry-After" in headers else None,
            )
        )
        if status >= 500:
            return web.Response(status=status, text="upstream error", content_type="text/html")
        return web.json_response(body, status=status, headers=headers)

    async def _injected(self, request: web.Request, fault: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A failure from `faults`, the request left unapplied (status 0: connection reset)."""
        if fault == "timeout":
            await asyncio.sleep(self.faults.timeout_after)
            return 504, {"ok": False, "error": "request_timeout"}, {}
        if fault == "rate_limit":
            retry = str(max(1, math.ceil(self.faults.wait())))  # Slack sends whole seconds
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": retry}
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            return 0, {"ok": False, "error": "connection_reset"}, {}
        return self.faults.status(), {"ok": False, "error": "fatal_error"}, {}

    def _check_auth(self, method: str, token: str) -> None:
        if not token:
            raise ApiError("not_authed")
        if method == "apps.connections.open":
            if token != APP_TOKEN:
                raise ApiError("invalid_auth")
        elif token != BOT_TOKEN:
            raise ApiError("not_allowed_token_type" if token == APP_TOKEN else "invalid_auth")

    def _rate(self, method: str, args: dict[str, Any]) -> float:
        limit = self.limits.get(method)
        if limit is None:
            return 0.0
        key = method + (
            ":" + str(args.get("channel") or args.get("channel_id") or "") if limit.scope == "channel" else ""
        )
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(limit, now))
        return bucket.take(now)

    # Each _m_<method> returns the extra response fields or raises ApiError.

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "streambot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self._port}/socket?ticket={uuid.uuid4()}"}

    def _channel(self, args: dict[str, Any], key: str = "channel") -> str:
        channel = str(args.get(key) or "")
        if channel not in self.channels:
            raise ApiError("channel_not_found")
        return channel

    def _message(self, channel: str, ts: Any) -> Message:
        msg = self.messages.get((channel, str(ts)))
        if msg is None or msg.deleted:
            raise ApiError("message_not_found")
        return msg

    def _blocks(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                raise ApiError("invalid_blocks_format") from None
        if blocks is None:
            return []
        if not isinstance(blocks, list) or len(blocks) > 50:
            raise ApiError("invalid_blocks")
        total = 0
        for b in blocks:
            if not isinstance(b, dict) or "type" not in b:
                raise ApiError("invalid_blocks")
            if b["type"] == "markdown":
                if not b.get("text"):
                    raise ApiError("invalid_blocks")
                total += len(b["text"])
            elif b["type"] == "context_actions" and not self.feedback_blocks:
                raise ApiError("invalid_blocks", errors=["unsupported block type: context_actions"])
            elif b["type"] == "actions":
                if not b.get("elements") or len(b["elements"]) > 25:
                    raise ApiError("invalid_blocks")
        if total > MARKDOWN_LIMIT:
            raise ApiError("invalid_blocks", errors=["markdown blocks exceed 12000 characters"])
        return blocks

    def _content(self, args: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str | None]:
        text, markdown = args.get("text"), args.get("markdown_text")
        blocks = self._blocks(args)
        if markdown is not None:
            if text is not None or blocks:
                raise ApiError("markdown_text_conflict")
            if len(markdown) > MARKDOWN_LIMIT:
                raise ApiError("msg_too_long")
        elif not text and not blocks:
            raise ApiError("no_text")
        if text is not None and len(text) > TEXT_LIMIT:
            raise ApiError("msg_too_long")
        return text or "", blocks, markdown

    def _echo(self, msg: Message, subtype: str | None = None) -> None:
        """Slack sends the app events about its own messages too; the app must ignore them."""
        if not self.echo_bot_events:
            return
        base = {
            "type": "message",
            "channel": msg.channel,
            "event_ts": self.new_ts(),
            "channel_type": channel_type(msg.channel),
        }
        if subtype is None:
            event = {**base, **msg.as_event_message()}
        else:
            event = {
                **base,
                "subtype": subtype,
                "hidden": True,
                "ts": self.new_ts(),
                "message": msg.as_event_message(),
            }
        self._spawn(self.send_event(event))

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        text, blocks, markdown = self._content(args)
        thread_ts = args.get("thread_ts")
        if thread_ts and (channel, str(thread_ts)) not in self.messages:
            raise ApiError("thread_not_found")
        msg = Message(
            channel, self.new_ts(), BOT_USER_ID, "", thread_ts=thread_ts, bot_id=BOT_ID, blocks=blocks
        )
        msg.show(visible_text(text, blocks, markdown))
        self.messages[(channel, msg.ts)] = msg
        # a new message notifies whoever its text mentions (edits notify nobody)
        for mention in PING.findall(text or markdown or ""):
            self.pings.append((channel, msg.ts, mention))
        self._echo(msg)
        return {"channel": channel, "ts": msg.ts, "message": msg.as_event_message()}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        msg = self._message(channel, args.get("ts"))
        if msg.bot_id != BOT_ID:
            raise ApiError("cant_update_message")
        if msg.stream == "streaming" and not self._expired(msg):
            raise ApiError("cant_update_message")  # finish the stream first
        text, blocks, markdown = self._content(args)
        msg.blocks = blocks
        msg.stream = None if msg.stream in ("streaming", "failed") else msg.stream
        msg.show(visible_text(text, blocks, markdown))
        self._echo(msg, "message_changed")
        return {"channel": channel, "ts": msg.ts, "text": msg.text}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        msg = self._message(channel, args.get("ts"))
        if msg.bot_id != BOT_ID:
            raise ApiError("cant_delete_message")
        msg.deleted = True
        return {"channel": channel, "ts": msg.ts}

    def _expired(self, msg: Message) -> bool:
        return self.stream_ttl is not None and time.monotonic() - msg.stream_started > self.stream_ttl

    def _m_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.native_streaming:
            raise ApiError(self.native_error)
        channel = self._channel(args)
        thread_ts = args.get("thread_ts")
        if not thread_ts:
            raise ApiError("invalid_arguments", response_metadata={"messages": ["thread_ts required"]})
        if (channel, str(thread_ts)) not in self.messages:
            raise ApiError("thread_not_found")
        if channel_type(channel) != "im":
            if not args.get("recipient_user_id"):
                raise ApiError("missing_recipient_user_id")
            if not args.get("recipient_team_id"):
                raise ApiError("missing_recipient_team_id")
        chunks = self._chunks(args)
        if args.get("task_display_mode") not in (None, "timeline", "plan"):
            raise ApiError("invalid_arguments")
        markdown = args.get("markdown_text") or ""
        if len(markdown) > MARKDOWN_LIMIT:
            raise ApiError("msg_too_long")
        msg = Message(
            channel,
            self.new_ts(),
            BOT_USER_ID,
            "",
            thread_ts=str(thread_ts),
            bot_id=BOT_ID,
            stream="streaming",
            stream_started=time.monotonic(),
        )
        msg.show(markdown + self._apply_chunks(msg, chunks))
        self.messages[(channel, msg.ts)] = msg
        self._echo(msg)
        return {"channel": channel, "ts": msg.ts}

    def _chunks(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """A stream request's `chunks` (markdown_text or chunks, not both), checked."""
        chunks = args.get("chunks")
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        if not chunks:
            return []
        if args.get("markdown_text"):
            raise ApiError("invalid_arguments", response_metadata={"messages": ["markdown_text and chunks"]})
        for c in chunks:
            kind = c.get("type")
            if kind == "task_update":
                if not c.get("id") or not c.get("title"):
                    raise ApiError("invalid_chunks")
                if c.get("status") not in ("pending", "in_progress", "complete", "error"):
                    raise ApiError("invalid_chunks")
            elif kind not in ("markdown_text", "plan_update", "blocks"):
                raise ApiError("invalid_chunks")
        return list(chunks)

    @staticmethod
    def _apply_chunks(msg: Message, chunks: list[dict[str, Any]]) -> str:
        """Record the task chunks on `msg`; the Markdown they add."""
        text = ""
        for c in chunks:
            if c["type"] == "markdown_text":
                text += c.get("text", "")
            elif c["type"] == "task_update":
                msg.tasks[c["id"]] = dict(c)
                msg.task_updates.append(dict(c))
        return text

    def _streaming(self, args: dict[str, Any]) -> Message:
        channel = self._channel(args)
        msg = self._message(channel, args.get("ts"))
        if msg.stream == "streaming" and self._expired(msg):
            msg.stream = "failed"
        if msg.stream != "streaming":
            raise ApiError("message_not_in_streaming_state")
        return msg

    def _m_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._streaming(args)
        chunks = self._chunks(args)
        markdown = args.get("markdown_text")
        if not markdown and not chunks:
            raise ApiError("no_text")
        if markdown and len(msg.text) + len(markdown) > MARKDOWN_LIMIT:
            raise ApiError("msg_too_long")  # a streamed message holds 12,000 characters in all
        if self.fail_streams_after is not None and msg.appends >= self.fail_streams_after:
            msg.stream = "failed"  # Slack shows "something went wrong"; the text stays
            raise ApiError("message_not_in_streaming_state")
        msg.appends += 1
        msg.show(msg.text + (markdown or "") + self._apply_chunks(msg, chunks))
        return {"channel": msg.channel, "ts": msg.ts}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._streaming(args)
        if self.fail_streams_after is not None and msg.appends >= self.fail_streams_after:
            msg.stream = "failed"
            raise ApiError("message_not_in_streaming_state")
        chunks = self._chunks(args)
        markdown = args.get("markdown_text") or ""
        if len(msg.text) + len(markdown) > MARKDOWN_LIMIT:
            raise ApiError("msg_too_long")
        msg.blocks = self._blocks(args)
        msg.stream = "stopped"
        msg.show(msg.text + markdown + self._apply_chunks(msg, chunks))
        self._echo(msg, "message_changed")
        return {"channel": msg.channel, "ts": msg.ts, "message": msg.as_event_message()}

    def _m_reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        msg = self._message(channel, args.get("timestamp"))
        name = str(args.get("name") or "")
        if not name:
            raise ApiError("invalid_name")
        if name in msg.reactions:
            raise ApiError("already_reacted")
        msg.reactions.add(name)  # what the message shows now
        self.reactions.append((channel, msg.ts, name, time.monotonic()))  # every one ever added
        return {}

    def _m_assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        # any thread since 2026-03 (chat:write); before, assistant threads (DMs) only
        channel = self._channel(args, "channel_id")
        self.statuses.append((channel, str(args.get("thread_ts")), str(args.get("status", ""))))
        loading = args.get("loading_messages")
        if isinstance(loading, str):
            loading = json.loads(loading)
        if loading:
            if len(loading) > 10:
                raise ApiError("invalid_arguments")
            self.loading_messages.append(list(loading))
        return {}

    def _m_reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._message(self._channel(args), args.get("timestamp"))
        name = str(args.get("name", ""))
        if name not in msg.reactions:
            raise ApiError("no_reaction")
        msg.reactions.discard(name)
        return {}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            raise ApiError("invalid_trigger_id")
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "modal" or not view.get("title"):
            raise ApiError("invalid_arguments")
        self.views.append(view)
        return {"view": {**view, "id": f"V{next(self._ids)}"}}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self._channel(args)
        if not args.get("user"):
            raise ApiError("user_not_in_channel")
        self.ephemeral.append(dict(args))
        return {"message_ts": self.new_ts()}

    def _m_assistant_threads_setTitle(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args, "channel_id")
        self.titles[(channel, str(args.get("thread_ts")))] = str(args.get("title", ""))
        return {}

    def _m_assistant_threads_setSuggestedPrompts(self, args: dict[str, Any]) -> dict[str, Any]:
        self._channel(args, "channel_id")
        prompts = args.get("prompts")
        if isinstance(prompts, str):
            prompts = json.loads(prompts)
        if not prompts or len(prompts) > 4:
            raise ApiError("invalid_arguments")
        self.suggested_prompts.append(
            {
                "channel_id": args.get("channel_id"),
                "thread_ts": args.get("thread_ts"),
                "title": args.get("title"),
                "prompts": prompts,
            }
        )
        return {}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = str(args.get("user", ""))
        if not user.startswith(("U", "W")):
            raise ApiError("user_not_found")
        name = self.names.get(user, user.lower())  # everyone has a profile; tests name a few
        return {
            "user": {"id": user, "name": name.lower(), "profile": {"display_name": name, "real_name": name}}
        }

    def _m_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        ts = str(args.get("ts"))
        root = self.messages.get((channel, ts))
        if root is None:
            raise ApiError("thread_not_found")
        thread = [
            m
            for m in self.messages.values()
            if m.channel == channel and (m.ts == ts or m.thread_ts == ts) and not m.deleted
        ]
        thread.sort(key=lambda m: float(m.ts))
        if "latest" in args:  # only what came before it (inclusive=false, Slack's default)
            thread = [m for m in thread if float(m.ts) < float(args["latest"])]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 1000)
        page, more = thread[start : start + limit], start + limit < len(thread)
        self.replies_pages += 1
        return {
            "messages": [m.as_event_message() for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }


def texts(messages: Iterable[Message]) -> list[str]:
    return [m.text for m in messages]


def settled(slack: FakeSlack, channel: str, thread_ts: str, *, pages: int = 1) -> bool:
    """The bot's reply in a thread is finished: `pages` messages, none streaming or with a
    Stop button, none showing the cursor."""
    msgs = slack.bot_messages(channel, thread_ts)
    if slack.bot_messages(channel, thread_ts, controls=True) != msgs:  # a Stop button is still up
        return False
    return len(msgs) >= pages and all(
        m.stream not in ("streaming", "failed") and not m.stop_buttons and "▌" not in m.text for m in msgs
    )
