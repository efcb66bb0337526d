"""Slack adapter: answer mentions, DMs, thread follow-ups and assistant threads, streamed.

Thin by design (slack-bolt style): bolt receives and acknowledges events, this module decides
whether and where to answer, and `SlackTarget` only posts and edits what the core relay hands
it. Two ways to stream, chosen by `[slack] streaming`:

* native: chat.startStream / appendStream / stopStream. Slack renders Markdown and shows text
  as it arrives; we append `frame.raw` deltas, paced by the core pacer (by time, not by size
  like slack_sdk's helper). Streams die a few minutes after they start, so pages roll over
  after `NATIVE_PAGE_AGE`; a stream that breaks anyway is finished with chat.update and the
  reply continues in edit mode.
* edit: a placeholder chat.postMessage edited with chat.update. The text goes in a `markdown`
  block (standard Markdown, 12,000 characters) because the Stop button needs blocks beside it,
  and markdown_text cannot be combined with blocks.

Every request maps Slack's answers onto the core's errors: 429 -> RateLimited(Retry-After),
5xx/timeouts -> TransientError, deleted message/channel -> MessageGone.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack_http import screen
from core.config import Config, SlackConfig, env
from core.errors import SetupError
from core.limits import FINAL_GRACE, RESTARTING, Gate, Refused
from core.logs import tag_reply
from core.ops import register_ready
from core.pacing import Pacer
from core.platform import Frame, MessageGone, Op, Rate, RateLimited, Target, TransientError
from core.relay import Reply
from core.sources import Brain
from core.state import LocalStore, ReplyRecord, StateStore, repair_orphans
from core.webserver import GuardedSite

log = logging.getLogger("streambot.slack")

# What manifest.yml must grant, and why (tests/test_slack_units.py keeps the two in step).
BOT_SCOPES = {
    "app_mentions:read": "app_mention events",
    "assistant:write": "assistant.threads.setStatus / setSuggestedPrompts / setTitle",
    "channels:history": "thread follow-ups in public channels; conversations.replies",
    "chat:write": "chat.postMessage / update / delete / startStream / appendStream / stopStream",
    "groups:history": "thread follow-ups in private channels",
    "im:history": "direct messages and assistant threads",
    "mpim:history": "thread follow-ups in group DMs",
}
BOT_EVENTS = {"app_mention", "assistant_thread_started", "message.channels", "message.groups",
              "message.im", "message.mpim"}

STOP_ACTION = "streambot_stop"
EVENTS_PATH = "/slack/events"
NATIVE_PAGE_AGE = 240.0  # native streams expire ~5 minutes after they start
MARKDOWN_LIMIT = 12_000  # markdown blocks, markdown_text
FALLBACK_CHARS = 3_000  # plain `text` beside blocks: notifications and screen readers

# Slack evaluates limits per method per workspace (chat.postMessage: per channel). These stay a
# little under the documented rates so the pacer's clock and Slack's never disagree into a 429.
# The frequent methods get one request per window, i.e. evenly spaced requests: a window of a
# minute would let one reply spend the whole allowance in a burst and then freeze every reply
# (and a burst of a few followed by a gap only makes the text jerkier).
POST_RATE = Rate(1, 1.0)  # chat.postMessage: about one per second per channel
UPDATE_RATE = Rate(1, 1.4)  # chat.update: Tier 3, 50+ per minute (this is ~43)
START_RATE = Rate(18, 60.0)  # chat.startStream: Tier 2, 20+ per minute; rare, so let it burst
APPEND_RATE = Rate(1, 0.7)  # chat.appendStream: Tier 4, 100+ per minute (this is ~86)

GONE_ERRORS = {"message_not_found", "channel_not_found", "thread_not_found", "is_archived"}
TRANSIENT_ERRORS = {"fatal_error", "internal_error", "service_unavailable", "request_timeout",
                    "team_added_to_org", "org_login_required"}
STREAM_LOST = "message_not_in_streaming_state"
# startStream refusals that mean "not for this whole workspace/app" rather than "not here".
NATIVE_OFF_FOR_WORKSPACE = {"unknown_method", "method_deprecated", "deprecated_endpoint",
                            "missing_scope", "not_allowed_token_type", "feature_not_enabled",
                            "not_allowed", "access_denied"}

ZWJ = "\u200d"
# Model output must never ping anyone: break @channel/@here/@everyone, <!channel>-style special
# mentions, user-group and user mentions by putting an invisible joiner after the sigil.
# Special mentions in any case (<!HERE>, @Channel): Slack honours those too.
_PING = re.compile(
    r"<(?=!(?i:channel|here|everyone|subteam\^))|<(?=@[UWB][A-Z0-9])"
    r"|(?<![\w.])@(?=(?i:channel|here|everyone)\b)")
# The end of a half-streamed text that might still become a mention: held back while streaming
# natively, because text appended to a stream can never be changed afterwards.
_PARTIAL_PING = re.compile(r"[<@][^\s<>@]{0,10}\Z")
# A fence closer on the last line, which the core adds while a code block is still open.
_TRAILING_CLOSER = re.compile(r"\n? {0,3}(?:`{3,}|~{3,})[ \t]*\Z")


def neutralize(text: str) -> str:
    """`text` with every mention made inert (still readable, never a notification)."""
    return _PING.sub(lambda m: m.group(0) + ZWJ, text)


def stable_prefix(raw: str) -> str:
    """The part of a still-growing page that can be appended to a stream for good: without a
    temporary fence closer and without a possible mention that is not finished yet."""
    raw = _TRAILING_CLOSER.sub("", raw)
    m = _PARTIAL_PING.search(raw)
    return raw[: m.start()] if m else raw


def plain_fallback(text: str) -> str:
    """The notification text beside blocks: escaped as Slack's `text` field requires."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text if len(text) <= FALLBACK_CHARS else text[: FALLBACK_CHARS - 1] + "…"


def content(text: str, stop_id: str | None = None) -> dict[str, Any]:
    """A message's text as a markdown block (plus a Stop button for reply `stop_id`)."""
    text = neutralize(text)[:MARKDOWN_LIMIT]
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": text}]
    if stop_id:
        blocks.append(stop_block(stop_id))
    return {"text": plain_fallback(text), "blocks": blocks}


def stop_block(reply_id: str) -> dict[str, Any]:
    return {"type": "actions", "elements": [{
        "type": "button", "action_id": STOP_ACTION, "value": reply_id, "style": "danger",
        "text": {"type": "plain_text", "text": "Stop", "emoji": True}}]}


class SlackCallError(Exception):
    """Slack refused a request for good (an `error` code that retrying will not fix)."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method} failed: {error}")
        self.method = method
        self.error = error


class _StreamLost(Exception):
    """The native stream behind a message ended under us (expired or failed)."""


def _error_of(exc: SlackApiError) -> tuple[int | None, str, Any]:
    resp = exc.response
    status = getattr(resp, "status_code", None) or getattr(resp, "status", None)
    error = ""
    data = getattr(resp, "data", None)
    if isinstance(data, dict):
        error = str(data.get("error", ""))
    headers = getattr(resp, "headers", None) or {}
    return status, error, headers


def _retry_after(headers: Any) -> float:
    for key in ("Retry-After", "retry-after"):
        try:
            value = headers.get(key)
        except AttributeError:
            value = None
        if value is not None:
            try:
                return float(value[0] if isinstance(value, list) else value)
            except (TypeError, ValueError):
                break
    return 1.0


async def call(method: str, request: Awaitable[Any]) -> Any:
    """Run one Web API request, translating failures into the core's error types."""
    try:
        return await request
    except SlackApiError as exc:
        status, error, headers = _error_of(exc)
        if status == 429 or error == "ratelimited":
            raise RateLimited(_retry_after(headers), f"{method} rate limited") from None
        if (status or 0) >= 500 or error in TRANSIENT_ERRORS:
            raise TransientError(f"{method}: {error or status}") from None
        if error in GONE_ERRORS:
            raise MessageGone(f"{method}: {error}") from None
        if error == STREAM_LOST:
            raise _StreamLost(method) from None
        raise SlackCallError(method, error or f"HTTP {status}") from None
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise TransientError(f"{method}: {type(exc).__name__}") from None


@dataclass
class SlackMessage:
    """The handle of one message of a reply."""

    channel: str
    ts: str
    native: bool
    sent: str = ""  # native: the (neutralized) Markdown appended so far
    rewrite: bool = False  # native: the stream diverged from the page; rewrite it when final


@dataclass
class Place:
    """Where a reply goes and who asked: enough to post, stream and pace it."""

    team: str
    channel: str
    thread_ts: str
    user: str
    is_dm: bool


class SlackTarget(Target):
    """One reply in one Slack thread, natively streamed or edited in place."""

    platform = "slack"

    def __init__(self, client: AsyncWebClient, place: Place, *, native: bool, page_chars: int,
                 reply_id: str, on_post: Callable[[str], None] | None = None,
                 on_native_refused: Callable[[str], None] | None = None,
                 can_fall_back: bool = True, question_ts: str = "", bot_user: str = "") -> None:
        self.client = client
        self.place = place
        self.native = native
        self.page_limit = page_chars
        self.page_max_age = NATIVE_PAGE_AGE if native else None
        self.reply_id = reply_id
        self._on_post = on_post
        self._on_native_refused = on_native_refused
        self._can_fall_back = can_fall_back
        self._question_ts = question_ts
        self._bot_user = bot_user
        self._posted_ts: list[str] = []
        self._unsure = False  # a post failed in a way that may have posted it all the same

    # --- the core's questions --------------------------------------------------------------

    def measure(self, text: str) -> int:
        return len(neutralize(text))  # what Slack counts: the text with mentions made inert

    def locate(self, handle: SlackMessage) -> dict[str, Any]:
        return {"channel": handle.channel, "ts": handle.ts, "native": handle.native}

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        team = self.place.team
        if self.native:
            if op == "post":
                return [(f"slack:{team}:chat.startStream", START_RATE)]
            return [(f"slack:{team}:chat.appendStream", APPEND_RATE)]
        if op == "post":
            return [(f"slack:{team}:chat.postMessage:{self.place.channel}", POST_RATE)]
        return [(f"slack:{team}:chat.update", UPDATE_RATE)]

    async def post(self, frame: Frame) -> SlackMessage:
        if self._unsure:
            await self._remove_strays()
        try:
            return await self._post(frame)
        except TransientError:
            self._unsure = True
            raise

    async def _remove_strays(self) -> None:
        """Delete what an earlier failed post left in the thread after all.

        Slack sometimes posts a message and still answers 5xx or drops the connection, and
        chat.postMessage / startStream have no idempotency key: the retry would show the reply
        twice, the first copy stuck with a cursor (or streaming) for good. Replies in one thread
        take turns, so any message of ours after the question and this reply's own messages is
        such a stray."""
        if not (self._bot_user and self._question_ts):
            return
        try:
            resp = await call("conversations.replies", self.client.conversations_replies(
                channel=self.place.channel, ts=self.place.thread_ts, limit=200))
            after = float(self._posted_ts[-1] if self._posted_ts else self._question_ts)
            for m in resp.get("messages", []):
                if m.get("user") == self._bot_user and float(m["ts"]) > after:
                    log.info("removing %s, left by a post that failed yet went through", m["ts"])
                    await call("chat.delete", self.client.chat_delete(channel=self.place.channel,
                                                                      ts=m["ts"]))
        except SlackCallError as exc:  # a refusal must not cost the reply itself
            log.warning("could not check thread %s for a stray message: %s", self.place.thread_ts, exc)
        self._unsure = False

    async def _post(self, frame: Frame) -> SlackMessage:
        if self.native and not frame.final:
            try:
                handle = await self._start_stream(frame)
            except SlackCallError as exc:
                if not self._can_fall_back:
                    raise
                log.info("native streaming refused (%s); using chat.update instead", exc.error)
                if self._on_native_refused:
                    self._on_native_refused(exc.error)
                self._edit_mode()
            else:
                self._posted(handle)
                return handle
        # A first frame that is already final needs no stream: post it whole.
        resp = await call("chat.postMessage", self.client.chat_postMessage(
            channel=self.place.channel, thread_ts=self.place.thread_ts, **self._content(frame)))
        handle = SlackMessage(self.place.channel, resp["ts"], native=False)
        self._posted(handle)
        return handle

    async def edit(self, handle: SlackMessage, frame: Frame) -> None:
        if handle.native:
            try:
                await self._stream(handle, frame)
                return
            except _StreamLost:
                log.info("native stream %s ended early; finishing it with chat.update", handle.ts)
                handle.native = False
                self._edit_mode()
        await self._update(handle, frame)

    # --- native streams --------------------------------------------------------------------

    async def _start_stream(self, frame: Frame) -> SlackMessage:
        first = neutralize(stable_prefix(frame.raw))
        kwargs: dict[str, Any] = {}
        if not self.place.is_dm:  # Slack needs the reader's identity to stream into a channel
            kwargs = {"recipient_user_id": self.place.user, "recipient_team_id": self.place.team}
        resp = await call("chat.startStream", self.client.chat_startStream(
            channel=self.place.channel, thread_ts=self.place.thread_ts,
            markdown_text=first or None, **kwargs))
        return SlackMessage(self.place.channel, resp["ts"], native=True, sent=first)

    async def _stream(self, handle: SlackMessage, frame: Frame) -> None:
        want = neutralize(frame.text if frame.final else stable_prefix(frame.raw))
        if not want.startswith(handle.sent):
            handle.rewrite = True  # appended text cannot be taken back: fix it when final
            want = handle.sent
        delta = want[len(handle.sent):]
        if frame.final:
            await call("chat.stopStream", self.client.chat_stopStream(
                channel=handle.channel, ts=handle.ts, markdown_text=delta or None))
            handle.sent = want
            handle.native = False
            if handle.rewrite:
                await self._update(handle, frame)
        elif delta:
            try:
                await call("chat.appendStream", self.client.chat_appendStream(
                    channel=handle.channel, ts=handle.ts, markdown_text=delta))
            except TransientError:
                handle.rewrite = True  # it may have been appended after all: fix it when final
                raise
            handle.sent = want

    def _edit_mode(self) -> None:
        """Continue this reply with chat.postMessage/chat.update (and no stream expiry)."""
        self.native = False
        self.page_max_age = None

    # --- edit mode -------------------------------------------------------------------------

    def _content(self, frame: Frame) -> dict[str, Any]:
        return content(frame.text, self.reply_id if frame.streaming and not frame.final else None)

    async def _update(self, handle: SlackMessage, frame: Frame) -> None:
        await call("chat.update", self.client.chat_update(
            channel=handle.channel, ts=handle.ts, **self._content(frame)))

    def _posted(self, handle: SlackMessage) -> None:
        self._posted_ts.append(handle.ts)
        if self._on_post:
            self._on_post(handle.ts)


@dataclass
class Running:
    """A reply in progress, findable by its question, its messages and its Stop button."""

    reply: Reply | None
    user: str
    channel: str
    question_ts: str
    message_ts: set[str] = field(default_factory=set)
    cancelled: bool = False

    def stop(self, marker: str | None = None) -> None:
        self.cancelled = True
        if self.reply is not None:
            self.reply.stop(marker)


class Recent(OrderedDict[Any, Any]):
    """A dict that forgets its oldest entries past `size`: memory stays bounded for months."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _quiet_token_notice(record: logging.LogRecord) -> bool:
    """bolt warns that SLACK_BOT_TOKEN is unused when given a client: we built that client."""
    message = record.getMessage()
    return "`token` will be unused" not in message and "`token` (or SLACK_BOT_TOKEN" not in message


def api_base_url(api_base: str) -> str | None:
    """`[slack] api_base` as slack_sdk wants it (ending in a slash), or None for slack.com."""
    base = api_base.strip()
    if not base:
        return None
    return base if base.endswith("/") else base + "/"


class SlackBot:
    """The bolt app and the replies it runs. One per process."""

    def __init__(self, config: Config, brain: Brain, pacer: Pacer, *, bot_token: str,
                 app_token: str = "", signing_secret: str = "",
                 session: aiohttp.ClientSession | None = None, store: StateStore | None = None,
                 gate: Gate | None = None) -> None:
        self.config = config
        self.settings: SlackConfig = config.slack
        # Event de-duplication and reply records; shared by replicas with the redis backend.
        self.store = store if store is not None else LocalStore("")
        self.gate = gate or Gate(config.limits)
        self.brain = brain
        self.pacer = pacer
        self.app_token = app_token
        self.signing_secret = signing_secret
        base = api_base_url(self.settings.api_base)
        self.client = AsyncWebClient(
            token=bot_token, session=session, retry_handlers=[],  # the relay does the retrying
            **({"base_url": base} if base else {}))
        bolt_log = logging.getLogger("streambot.slack.bolt")
        if _quiet_token_notice not in bolt_log.filters:
            bolt_log.addFilter(_quiet_token_notice)
        self.app = AsyncApp(
            client=self.client, signing_secret=signing_secret,
            request_verification_enabled=self.settings.mode == "http",
            ignoring_self_events_enabled=False,  # it would also drop "our reply was deleted"
            process_before_response=False, logger=bolt_log,
            authorize=lambda: self._authorize())  # from identify's auth.test, not one per event
        self.bot_user_id = ""
        self.bot_id = ""
        self.team_id = ""
        self._identity: AuthorizeResult | None = None
        self._running: dict[str, Running] = {}
        self._by_message: dict[tuple[str, str], str] = {}  # question or reply message -> reply id
        self._threads = Recent(50_000)  # (channel, thread_ts) -> is the bot part of it?
        self._assistant_threads = Recent(10_000)  # (channel, thread_ts) -> still untitled?
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # per conversation, with users
        self._native_off: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._socket: AsyncSocketModeHandler | None = None
        self._listening = False  # HTTP mode: the events endpoint is up
        self._register()

    # --- wiring ----------------------------------------------------------------------------

    def _register(self) -> None:
        self.app.event("app_mention")(self.on_mention)
        self.app.event("message")(self.on_message)
        self.app.event("assistant_thread_started")(self.on_assistant_thread)
        self.app.event("assistant_thread_context_changed")(self.ignore)
        self.app.action(STOP_ACTION)(self.on_stop)

    async def identify(self) -> None:
        """Who the bot is (to ignore its own messages and spot its mentions)."""
        try:
            resp = await self.client.auth_test()
        except SlackApiError as exc:
            raise SetupError(f"Slack rejected SLACK_BOT_TOKEN ({_error_of(exc)[1]}): check the "
                               "bot token (xoxb-) of the installed app") from None
        self.bot_user_id = resp.get("user_id", "")
        self.bot_id = resp.get("bot_id", "")
        self.team_id = resp.get("team_id", "")
        self._identity = AuthorizeResult.from_auth_test_response(
            auth_test_response=resp, bot_token=self.client.token)

    async def _authorize(self) -> AuthorizeResult:
        """bolt's authorization of each event: who we are, known since start-up. (bolt's own
        single-workspace authorization calls auth.test per event until the first call returns:
        a burst got 429s, and bolt acknowledged those events unanswered.)"""
        if self._identity is None:  # a 500, not an ack: Slack delivers the event again
            raise TransientError("the bot has not identified itself to Slack yet")
        return self._identity

    async def _socket_mode(self) -> Callable[[], Awaitable[None]]:
        handler = AsyncSocketModeHandler(self.app, self.app_token)
        try:  # slack_sdk would retry a bad app token forever: check it once, loudly
            resp = await self.client.apps_connections_open(app_token=self.app_token)
        except SlackApiError as exc:
            await handler.close_async()
            raise SetupError(f"Slack rejected SLACK_APP_TOKEN ({_error_of(exc)[1]}): it must be "
                               "an app-level token (xapp-) with connections:write") from None
        handler.client.wss_uri = resp["url"]
        await handler.connect_async()
        self._socket = handler
        return handler.close_async

    async def connected(self) -> bool:
        """Readiness: Socket Mode's websocket is up, or HTTP mode's endpoint is listening."""
        if self._socket is not None:
            return await self._socket.client.is_connected()
        return self._listening

    async def run(self) -> None:
        """Receive events until cancelled; on the way out stop every reply cleanly."""
        await self.identify()
        stop = await (self._serve_http() if self.settings.mode == "http" else self._socket_mode())
        log.info("Slack adapter connected (%s mode) as %s", self.settings.mode, self.bot_user_id)
        recovery = asyncio.create_task(repair_orphans(self.store, "slack", self._repair))
        try:
            await asyncio.Event().wait()
        finally:
            recovery.cancel()
            try:
                await self.shutdown()
            finally:  # even when a second Ctrl-C cuts the grace period short
                await stop()

    async def _serve_http(self) -> Callable[[], Awaitable[None]]:
        async def handle(request: web.Request) -> web.Response:
            refused = screen(await request.read(), request.headers, self.signing_secret, time.time())
            if refused:  # before bolt, which would parse an unsigned body and fail with a 500
                return web.json_response({"error": "invalid request"}, status=refused)
            resp = await self.app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(resp)

        web_app = web.Application()
        web_app.router.add_post(EVENTS_PATH, handle)
        site = GuardedSite(web_app, self.settings.host, self.settings.port)  # deadlines, a cap
        await site.start()
        self._listening = True

        async def stop() -> None:
            self._listening = False
            await site.stop()

        return stop

    async def shutdown(self) -> None:
        """Take no new questions, give running replies `shutdown_grace` seconds to finish, then
        stop the rest with the interrupted marker (their text kept) and let them show it."""
        self._closing = True
        if self._tasks:
            log.info("shutting down; waiting for %d reply(s)", len(self._running))
            await asyncio.wait(set(self._tasks), timeout=self.config.stream.shutdown_grace)
        for running in list(self._running.values()):
            running.stop(self.config.stream.interrupted_marker)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=FINAL_GRACE)

    async def _repair(self, record: ReplyRecord) -> None:
        """Finish a reply a crash or kill left streaming, with the interrupted marker."""
        place = record.place
        text = record.final_text(self.config.stream.interrupted_marker, self.settings.page_chars)
        team = self.team_id
        try:
            if place.get("native"):  # a stream left open: close it (it may have expired already)
                await self._best_effort("chat.stopStream", self.client.chat_stopStream(
                    channel=place["channel"], ts=place["ts"]))
            await self.pacer.acquire([(f"slack:{team}:chat.update", UPDATE_RATE)])
            await call("chat.update", self.client.chat_update(
                channel=place["channel"], ts=place["ts"], **content(text)))
        except Exception as exc:
            log.warning("could not finish interrupted reply %s: %s", record.reply_id, exc)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- deciding whether to answer --------------------------------------------------------

    async def _first_time(self, *keys: str | None) -> bool:
        """False if any key was seen before (Slack redelivers; app_mention + message twin)."""
        # Keys are taken one by one, always in this order, stopping at the first one seen: of
        # two deliveries sharing a key, exactly one takes them all (taking every key regardless
        # could let each win one key and neither answer).
        for k in filter(None, keys):
            try:
                if not await self.store.first_time(f"slack:{k}"):
                    return False
            except Exception as exc:  # a shared store that is down: better twice than never
                log.warning("could not check event %s for redelivery (%s); answering it", k, exc)
        return True

    def _from_bot(self, event: dict[str, Any]) -> bool:
        return bool(event.get("bot_id") or event.get("subtype") == "bot_message"
                    or (self.bot_user_id and event.get("user") == self.bot_user_id)
                    or not event.get("user"))

    def _allowed(self, channel: str, user: str, *, dm: bool) -> bool:
        s = self.settings
        if s.user_ids and user not in s.user_ids:
            return False
        if dm:
            return s.allow_dms
        return not s.channel_ids or channel in s.channel_ids

    def _prompt(self, text: str) -> str:
        text = text.replace(f"<@{self.bot_user_id}>", "").strip() if self.bot_user_id else text
        return text or "Hello!"

    async def ignore(self) -> None:
        """Events the bot receives but has nothing to do for."""

    async def on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        channel, user, ts = event.get("channel", ""), event.get("user", ""), event.get("ts", "")
        if not ts or self._from_bot(event) or not self._allowed(channel, user, dm=False):
            return  # (without ts there is no thread: the answer would land in the channel)
        if not await self._first_time(body.get("event_id"), f"msg:{channel}:{ts}"):
            return
        thread_ts = event.get("thread_ts") or ts
        self._threads[(channel, thread_ts)] = True
        place = Place(body.get("team_id") or self.team_id, channel, thread_ts, user, is_dm=False)
        self._spawn(self.answer(place, self._prompt(event.get("text", "")), ts))

    async def on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype == "message_deleted":
            self._deleted(event.get("channel", ""), event.get("deleted_ts", ""))
            return
        if subtype not in (None, "file_share", "thread_broadcast") or self._from_bot(event):
            return
        channel, user, ts = event.get("channel", ""), event.get("user", ""), event.get("ts", "")
        if not ts:  # no thread to answer in: the answer would land at the top level
            return
        text, thread_ts = event.get("text", ""), event.get("thread_ts")
        team = body.get("team_id") or self.team_id
        if event.get("channel_type") == "im":
            if not self._allowed(channel, user, dm=True):
                return
            if not await self._first_time(body.get("event_id"), f"msg:{channel}:{ts}"):
                return
            place = Place(team, channel, thread_ts or ts, user, is_dm=True)
            self._spawn(self.answer(place, self._prompt(text), ts, assistant=bool(thread_ts)))
            return
        # In channels, mentions are answered via app_mention; other messages only in threads
        # the bot is part of.
        if not thread_ts or (self.bot_user_id and f"<@{self.bot_user_id}>" in text):
            return
        if not self._allowed(channel, user, dm=False):
            return
        if not await self._first_time(body.get("event_id"), f"msg:{channel}:{ts}"):
            return
        place = Place(team, channel, thread_ts, user, is_dm=False)
        self._spawn(self._follow_up(place, self._prompt(text), ts, event.get("parent_user_id")))

    async def _follow_up(self, place: Place, prompt: str, question_ts: str,
                         parent_user: str | None) -> None:
        if await self._bot_in_thread(place.channel, place.thread_ts, parent_user):
            await self.answer(place, prompt, question_ts)

    async def _bot_in_thread(self, channel: str, thread_ts: str, parent_user: str | None) -> bool:
        """Known from this process's replies, else asked once per thread (after a restart)."""
        key = (channel, thread_ts)
        if key not in self._threads:
            if parent_user and parent_user == self.bot_user_id:
                self._threads[key] = True
            else:
                try:
                    resp = await self.client.conversations_replies(channel=channel, ts=thread_ts,
                                                                   limit=200)
                except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.info("could not check thread %s for earlier replies: %s", thread_ts, exc)
                    return False
                self._threads[key] = any(
                    m.get("user") == self.bot_user_id or m.get("bot_id") == self.bot_id
                    for m in resp.get("messages", []))
        return self._threads[key]

    async def on_assistant_thread(self, event: dict[str, Any]) -> None:
        thread = event.get("assistant_thread", {})
        channel, thread_ts = thread.get("channel_id", ""), thread.get("thread_ts", "")
        self._assistant_threads[(channel, thread_ts)] = True
        prompts = self.settings.suggested_prompts[:4]
        if prompts and self.settings.allow_dms:
            await self._best_effort("assistant.threads.setSuggestedPrompts",
                                    self.client.assistant_threads_setSuggestedPrompts(
                                        channel_id=channel, thread_ts=thread_ts, title="Try asking:",
                                        prompts=[{"title": p, "message": p} for p in prompts]))

    async def on_stop(self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any],
                      action: dict[str, Any]) -> None:
        await ack()
        running = self._running.get(action.get("value", ""))
        user = body.get("user", {}).get("id")
        if running is None:
            return
        if user != running.user:  # only the person who asked may stop the answer
            log.info("ignoring Stop from %s on a reply to %s", user, running.user)
            return
        running.stop()

    def _deleted(self, channel: str, ts: str) -> None:
        reply_id = self._by_message.get((channel, ts))
        if reply_id and reply_id in self._running:
            self._running[reply_id].stop()

    # --- answering -------------------------------------------------------------------------

    def _native_for(self, place: Place) -> bool:
        mode = self.settings.streaming
        if mode != "auto":
            return mode == "native"
        return place.team not in self._native_off and f"{place.team}:{place.channel}" not in self._native_off

    async def answer(self, place: Place, prompt: str, question_ts: str, assistant: bool = False) -> None:
        """Stream one reply into `place`'s thread, one reply per conversation at a time."""
        try:
            if self._closing:
                raise Refused(RESTARTING)
            slot = self.gate.admit(place.user, place.channel, prompt)
        except Refused as exc:
            await self._say(place, str(exc))
            return
        try:
            await self._answer(place, prompt, question_ts, assistant)
        finally:
            self.gate.release(slot)

    async def _say(self, place: Place, text: str) -> None:
        """A short message in the thread that is not a model reply (a refusal)."""
        await self.pacer.acquire([(f"slack:{place.team}:chat.postMessage:{place.channel}", POST_RATE)])
        await self._best_effort("chat.postMessage", self.client.chat_postMessage(
            channel=place.channel, thread_ts=place.thread_ts, **content(text)))

    async def _answer(self, place: Place, prompt: str, question_ts: str, assistant: bool) -> None:
        reply_id = uuid.uuid4().hex[:16]
        running = Running(None, place.user, place.channel, question_ts)
        self._running[reply_id] = running
        self._by_message[(place.channel, question_ts)] = reply_id
        conversation = f"slack:{place.team}:{place.channel}:{place.thread_ts}"
        tag_reply(reply_id=reply_id, conversation=conversation, platform="slack")
        lock, users = self._locks.get(conversation, (asyncio.Lock(), 0))
        self._locks[conversation] = (lock, users + 1)
        thread = (place.channel, place.thread_ts)
        try:
            async with lock:
                if running.cancelled:
                    return

                def posted(ts: str) -> None:
                    running.message_ts.add(ts)
                    self._by_message[(place.channel, ts)] = reply_id

                def refused(error: str) -> None:
                    scope = place.team if error in NATIVE_OFF_FOR_WORKSPACE else f"{place.team}:{place.channel}"
                    self._native_off.add(scope)

                target = SlackTarget(
                    self.client, place, native=self._native_for(place),
                    page_chars=self.settings.page_chars, reply_id=reply_id, on_post=posted,
                    on_native_refused=refused, can_fall_back=self.settings.streaming == "auto",
                    question_ts=question_ts, bot_user=self.bot_user_id)
                if assistant:
                    await self._thinking(place, prompt, thread)
                reply = Reply(self.brain.start(prompt, conversation), target, self.pacer,
                              self.config.stream, self.store)
                running.reply = reply
                outcome = await reply.run()
                log.info("reply %s in %s: %s, %d message(s), %d post(s), %d edit(s), %d 429(s)",
                         reply_id, place.channel, outcome.status, len(outcome.pages), outcome.posts,
                         outcome.edits, outcome.rate_limited,
                         extra={"reply_id": reply_id, "conversation": conversation,
                                "status": outcome.status,
                                "placeholder_after": outcome.placeholder_after,
                                "first_text_after": outcome.first_text_after})
                if assistant:
                    await self._best_effort("assistant.threads.setStatus",
                                            self.client.assistant_threads_setStatus(
                                                channel_id=place.channel, thread_ts=place.thread_ts,
                                                status=""))
        except Exception:
            log.exception("reply %s in %s failed", reply_id, place.channel)
        finally:
            self._running.pop(reply_id, None)
            for ts in running.message_ts | {question_ts}:
                self._by_message.pop((place.channel, ts), None)
            lock, users = self._locks[conversation]
            if users <= 1:
                del self._locks[conversation]
            else:
                self._locks[conversation] = (lock, users - 1)

    async def _thinking(self, place: Place, prompt: str, thread: tuple[str, str]) -> None:
        """Assistant threads: show "is thinking…" and name the thread after its first question."""
        await self._best_effort("assistant.threads.setStatus", self.client.assistant_threads_setStatus(
            channel_id=place.channel, thread_ts=place.thread_ts, status=self.settings.thinking_status))
        if self._assistant_threads.get(thread):
            self._assistant_threads[thread] = False
            title = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            await self._best_effort("assistant.threads.setTitle", self.client.assistant_threads_setTitle(
                channel_id=place.channel, thread_ts=place.thread_ts, title=neutralize(title)))

    async def _best_effort(self, method: str, request: Awaitable[Any]) -> None:
        """Nice-to-have calls (status, title, prompts) never hold up or break a reply."""
        try:
            await call(method, request)
        except Exception as exc:
            log.info("%s failed: %s", method, exc)


async def serve(config: Config, brain: Brain, pacer: Pacer, store: StateStore | None = None,
                gate: Gate | None = None) -> None:
    """Run the Slack adapter until cancelled (tokens come from the environment).

    With a shared `store` (redis backend), replicas behind one load balancer answer each event once.
    """
    bot_token = env("SLACK_BOT_TOKEN")
    if not bot_token:
        raise SetupError("SLACK_BOT_TOKEN is not set: export the app's bot token (xoxb-...)")
    app_token, secret = env("SLACK_APP_TOKEN"), env("SLACK_SIGNING_SECRET")
    if config.slack.mode == "socket" and not app_token:
        raise SetupError("SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token (xapp-...)")
    if config.slack.mode == "http" and not secret:
        raise SetupError("SLACK_SIGNING_SECRET is not set: HTTP mode verifies requests with it")
    async with aiohttp.ClientSession() as session:
        bot = SlackBot(config, brain, pacer, bot_token=bot_token, app_token=app_token,
                       signing_secret=secret, session=session, store=store, gate=gate)
        register_ready("slack", bot.connected)
        await bot.run()
