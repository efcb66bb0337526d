"""Slack adapter: answer mentions, DMs, thread follow-ups and assistant threads, streamed.

Thin by design (slack-bolt style): bolt receives and acknowledges events, this module decides
whether and where to answer and turns that into `host.answer/stop/deleted` calls; the host
(core/host.py) admits, runs, stops and shuts down replies. `SlackTarget` (bots/slack_target.py)
only posts and streams what the relay hands it; Web API conventions live in bots/slack_api.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    FEEDBACK_ACTION,
    HUMAN_ACTION,
    NATIVE_OFF_FOR_WORKSPACE,
    REASON_VIEW,
    RESOLVED_ACTION,
    SIGNING_SECRET,
    STOP_ACTION,
    STOP_CONTROL,
    UPDATE_RATE,
    SlackSettings,
    api_base_url,
    call,
    content,
    error_of,
    neutralize,
    quiet_token_notice,
    reason_view,
)
from bots.slack_http import screen
from bots.slack_target import Place, SlackTarget
from core.adapter import Adapter, Need
from core.config import env
from core.errors import SetupError
from core.host import Host, Question
from core.ops import register_ready
from core.platform import TransientError
from core.recent import Recent
from core.state import LocalStore
from core.webserver import GuardedSite

log = logging.getLogger("streambot.slack")

EVENTS_PATH = "/slack/events"
NO_HANDOFF = "Nobody is set up to take over here; please ask in the channel."


class SlackBot:
    """The bolt app: turns Slack events into host calls. One per process."""

    def __init__(
        self,
        host: Host,
        settings: SlackSettings,
        *,
        bot_token: str,
        app_token: str = "",
        signing_secret: str = "",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        # Event de-duplication; shared by replicas with the redis backend.
        self.store = host.store if host.store is not None else LocalStore("")
        self.app_token = app_token
        self.signing_secret = signing_secret
        base = api_base_url(settings.api_base)
        self.client = AsyncWebClient(
            token=bot_token,
            session=session,
            retry_handlers=[],  # the relay does the retrying
            **({"base_url": base} if base else {}),
        )
        bolt_log = logging.getLogger("streambot.slack.bolt")
        if quiet_token_notice not in bolt_log.filters:
            bolt_log.addFilter(quiet_token_notice)
        self.app = AsyncApp(
            client=self.client,
            signing_secret=signing_secret,
            request_verification_enabled=settings.mode == "http",
            ignoring_self_events_enabled=False,  # it would also drop "our reply was deleted"
            process_before_response=False,
            logger=bolt_log,
            authorize=lambda: self._authorize(),
        )  # from identify's auth.test, not one per event
        self.bot_user_id = ""
        self.bot_id = ""
        self.team_id = ""
        self._identity: AuthorizeResult | None = None
        self._threads: Recent[tuple[str, str], bool] = Recent(50_000)  # is the bot in the thread?
        self._assistant_threads: Recent[tuple[str, str], bool] = Recent(10_000)  # still untitled?
        self._native_off: set[str] = set()
        self.no_end_blocks = False  # the workspace refused the 👍/👎 blocks: answers go without
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
        self.app.action(FEEDBACK_ACTION)(self.on_feedback)
        self.app.view(REASON_VIEW)(self.on_reason)
        self.app.action(HUMAN_ACTION)(self.on_human)
        self.app.action(RESOLVED_ACTION)(self.on_resolved)

    async def identify(self) -> None:
        """Who the bot is (to ignore its own messages and spot its mentions)."""
        try:
            resp = await self.client.auth_test()
        except SlackApiError as exc:
            raise SetupError(
                f"Slack rejected SLACK_BOT_TOKEN ({error_of(exc)[1]}): check the "
                "bot token (xoxb-) of the installed app"
            ) from None
        self.bot_user_id = resp.get("user_id", "")
        self.bot_id = resp.get("bot_id", "")
        self.team_id = resp.get("team_id", "")
        self._identity = AuthorizeResult.from_auth_test_response(
            auth_test_response=resp, bot_token=self.client.token
        )

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
            raise SetupError(
                f"Slack rejected SLACK_APP_TOKEN ({error_of(exc)[1]}): it must be "
                "an app-level token (xapp-) with connections:write"
            ) from None
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
        """Receive events until cancelled; on the way out let the host stop every reply."""
        await self.identify()
        stop = await (self._serve_http() if self.settings.mode == "http" else self._socket_mode())
        log.info("Slack adapter connected (%s mode) as %s", self.settings.mode, self.bot_user_id)
        self.host.repair("slack", self._finish, self.settings.page_chars)
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await self.host.shutdown()
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

    async def _finish(self, place: dict[str, Any], text: str) -> None:
        """Finish a reply a crash or kill left streaming (the host wrote `text`)."""
        if place.get("native"):  # a stream left open: close it (it may have expired already)
            await self.best_effort(
                "chat.stopStream", self.client.chat_stopStream(channel=place["channel"], ts=place["ts"])
            )
        if place.get("stop"):  # the Stop button posted beside that stream
            await self.best_effort(
                "chat.delete", self.client.chat_delete(channel=place["channel"], ts=place["stop"])
            )
        await self.host.pacer.acquire([(f"slack:{self.team_id}:chat.update", UPDATE_RATE)])
        await call(
            "chat.update", self.client.chat_update(channel=place["channel"], ts=place["ts"], **content(text))
        )

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
        return bool(
            event.get("bot_id")
            or event.get("subtype") == "bot_message"
            or (self.bot_user_id and event.get("user") == self.bot_user_id)
            or not event.get("user")
        )

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
        self.host.spawn(self.answer(place, self._prompt(event.get("text", "")), ts))

    async def on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype == "message_deleted":
            await self.host.deleted(f"{event.get('channel', '')}:{event.get('deleted_ts', '')}")
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
            self.host.spawn(self.answer(place, self._prompt(text), ts, assistant=bool(thread_ts)))
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
        self.host.spawn(self._follow_up(place, self._prompt(text), ts, event.get("parent_user_id")))

    async def _follow_up(self, place: Place, prompt: str, question_ts: str, parent_user: str | None) -> None:
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
                    resp = await self.client.conversations_replies(channel=channel, ts=thread_ts, limit=200)
                except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.info("could not check thread %s for earlier replies: %s", thread_ts, exc)
                    return False
                self._threads[key] = any(
                    m.get("user") == self.bot_user_id or m.get("bot_id") == self.bot_id
                    for m in resp.get("messages", [])
                )
        return self._threads[key]

    async def on_assistant_thread(self, event: dict[str, Any]) -> None:
        thread = event.get("assistant_thread", {})
        channel, thread_ts = thread.get("channel_id", ""), thread.get("thread_ts", "")
        self._assistant_threads[(channel, thread_ts)] = True
        prompts = self.settings.suggested_prompts[:4]
        if prompts and self.settings.allow_dms:
            await self.best_effort(
                "assistant.threads.setSuggestedPrompts",
                self.client.assistant_threads_setSuggestedPrompts(
                    channel_id=channel,
                    thread_ts=thread_ts,
                    title="Try asking:",
                    prompts=[{"title": p, "message": p} for p in prompts],
                ),
            )

    async def on_stop(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        await ack()
        result = await self.host.stop(action.get("value", ""), body.get("user", {}).get("id", ""))
        container = body.get("container", {})
        if result == "unknown" and action.get("block_id") == STOP_CONTROL:
            # the Stop button of a stream that ended (its process died before deleting it)
            await self.best_effort(
                "chat.delete",
                self.client.chat_delete(
                    channel=container.get("channel_id", ""), ts=container.get("message_ts", "")
                ),
            )

    # --- the support desk: feedback, handoff ------------------------------------------------------

    async def on_feedback(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """👍/👎 (Slack's feedback buttons): store the click; a 👎 asks why, in a modal."""
        await ack()
        vote, _, reply_id = str(action.get("value", "")).partition(":")
        user = body.get("user", {}).get("id", "")
        if vote not in ("up", "down") or not reply_id or not user:
            return
        try:
            await self.host.feedback(reply_id, user, "up" if vote == "up" else "down", "slack")
        except Exception as exc:
            log.warning("could not store feedback on reply %s: %s", reply_id, exc)
            return
        if vote == "down" and body.get("trigger_id"):
            await self.best_effort(
                "views.open",
                self.client.views_open(trigger_id=body["trigger_id"], view=reason_view(reply_id)),
            )

    async def on_reason(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        await ack()
        reason = view.get("state", {}).get("values", {}).get("reason", {}).get("text", {}).get("value") or ""
        if reason.strip():
            try:
                await self.host.feedback_reason(
                    view.get("private_metadata", ""), body.get("user", {}).get("id", ""), reason
                )
            except Exception as exc:
                log.warning("could not store a feedback reason: %s", exc)

    async def on_human(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """ "Get a human" under an answer: ping the profile's group in the thread, once."""
        await ack()
        container = body.get("container", {})
        channel = container.get("channel_id", "")
        thread_ts = container.get("thread_ts") or container.get("message_ts", "")
        user = body.get("user", {}).get("id", "")
        team = body.get("team", {}).get("id") or self.team_id
        if not (channel and thread_ts and user):
            return
        reply_id = str(action.get("value", ""))
        try:
            answer = await self.host.ledger.answer(reply_id)
        except Exception as exc:
            log.warning("could not look up reply %s: %s", reply_id, exc)
            answer = None
        conversation = answer.conversation if answer else f"slack:{team}:{channel}:{thread_ts}"
        place = Place(team, channel, thread_ts, user, is_dm=channel.startswith("D"))
        target = SlackTarget(self, place, reply_id=reply_id)
        # the answer's profile; if its record is not written yet, the one the routes pick here
        where = Question(reply_id, user, channel, conversation, "", team=team, dm=place.is_dm)
        result = await self.host.request_human(
            conversation,
            answer.profile if answer else self.host.profile_for(where, "slack"),
            user,
            f"<@{user}> asked for a person",
            target,
        )
        notes = {"already": "A person has already been asked to help here.", "off": NO_HANDOFF}
        if result in notes:
            await self.best_effort(
                "chat.postEphemeral",
                self.client.chat_postEphemeral(
                    channel=channel, user=user, thread_ts=thread_ts, text=notes[result]
                ),
            )

    async def on_resolved(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """ "Resolved" on the handoff message: the bot answers in the thread again."""
        await ack()
        try:
            conversation = json.loads(action.get("value") or "{}").get("c", "")
        except ValueError:
            return
        container = body.get("container", {})
        channel, ts = container.get("channel_id", ""), container.get("message_ts", "")
        user = body.get("user", {}).get("id", "")
        if not conversation or not await self.host.resolve(conversation, user):
            return
        thread_ts = container.get("thread_ts")
        if thread_ts:
            await self.best_effort(
                "reactions.remove",
                self.client.reactions_remove(channel=channel, name="sos", timestamp=thread_ts),
            )
        text = "✅ Resolved: I'm answering in this thread again."
        await self.best_effort(
            "chat.update", self.client.chat_update(channel=channel, ts=ts, **content(text))
        )

    # --- answering -------------------------------------------------------------------------

    def native_for(self, place: Place) -> bool:
        mode = self.settings.streaming
        if mode != "auto":
            return mode == "native"
        return place.team not in self._native_off and f"{place.team}:{place.channel}" not in self._native_off

    def native_refused(self, place: Place, error: str) -> None:
        """Native streaming was refused: use edits from now on, in the workspace or channel."""
        self._native_off.add(
            place.team if error in NATIVE_OFF_FOR_WORKSPACE else f"{place.team}:{place.channel}"
        )

    async def answer(self, place: Place, prompt: str, question_ts: str, assistant: bool = False) -> None:
        """Stream one reply into `place`'s thread (the host keeps one per conversation at a time)."""
        reply_id = uuid.uuid4().hex[:16]
        target = SlackTarget(
            self, place, reply_id=reply_id, question_ts=question_ts, assistant=prompt if assistant else None
        )
        await self.host.answer(
            Question(
                reply_id,
                place.user,
                place.channel,
                f"slack:{place.team}:{place.channel}:{place.thread_ts}",
                prompt,
                message=f"{place.channel}:{question_ts}",
                team=place.team,
                dm=place.is_dm,
            ),
            target,
        )

    async def thinking(self, place: Place, prompt: str) -> None:
        """Assistant threads: show "is thinking…" and name the thread after its first question."""
        await self.set_status(place, self.settings.thinking_status)
        thread = (place.channel, place.thread_ts)
        if self._assistant_threads.get(thread):
            self._assistant_threads[thread] = False
            title = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            await self.best_effort(
                "assistant.threads.setTitle",
                self.client.assistant_threads_setTitle(
                    channel_id=place.channel, thread_ts=place.thread_ts, title=neutralize(title)
                ),
            )

    async def set_status(self, place: Place, status: str) -> None:
        """The thread's "is thinking…" status (with the loading messages while waiting for
        the first text); "" clears it. Slack clears it by itself when the reply is posted."""
        loading = self.settings.loading_messages if status == self.settings.thinking_status else []
        await self.best_effort(
            "assistant.threads.setStatus",
            self.client.assistant_threads_setStatus(
                channel_id=place.channel,
                thread_ts=place.thread_ts,
                status=status,
                loading_messages=loading or None,
            ),
        )

    async def best_effort(self, method: str, request: Awaitable[Any]) -> None:
        """Nice-to-have calls (status, title, prompts) never hold up or break a reply."""
        try:
            await call(method, request)
        except Exception as exc:
            log.info("%s failed: %s", method, exc)


async def serve(host: Host, settings: SlackSettings) -> None:
    """Run the Slack adapter until cancelled (tokens come from the environment).

    With a shared store (redis backend), replicas behind one load balancer answer each event once.
    """
    host.start()
    async with aiohttp.ClientSession() as session:
        bot = SlackBot(
            host,
            settings,
            bot_token=env(BOT_TOKEN),
            app_token=env(APP_TOKEN),
            signing_secret=env(SIGNING_SECRET),
            session=session,
        )
        register_ready("slack", bot.connected)
        await bot.run()


def _needs(settings: SlackSettings) -> list[Need]:
    if settings.mode == "socket":
        mode = Need(APP_TOKEN, "slack.mode", "Socket Mode needs an app-level token (xapp-)")
    else:
        mode = Need(SIGNING_SECRET, "slack.mode", "HTTP mode verifies requests with it")
    return [Need(BOT_TOKEN, "slack.enabled", "the Slack adapter needs a bot token (xoxb-)"), mode]


ADAPTER = Adapter("slack", SlackSettings, serve, needs=_needs, secrets=(BOT_TOKEN, APP_TOKEN, SIGNING_SECRET))
