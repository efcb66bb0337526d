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
from urllib.parse import urlsplit

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
    COMMAND,
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
from core.attachments import Attachment, http_fetch
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
THREAD_PAGES = 5  # conversations.replies pages (200 messages each) read when joining a thread


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
        # since when the bot is part of a thread (a message ts), None: not part of it
        self._threads: Recent[tuple[str, str], str | None] = Recent(50_000)
        self._assistant_threads: Recent[tuple[str, str], bool] = Recent(10_000)  # still untitled?
        self._native_off: set[str] = set()
        self.no_end_blocks = False  # the workspace refused the 👍/👎 blocks: answers go without
        self._names: Recent[str, str] = Recent(10_000)  # user id -> display name
        self._last: Recent[tuple[str, str], str] = Recent(50_000)  # (channel, user) -> conversation
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
        self.app.command(COMMAND)(self.on_command)

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

    def _prompt(self, text: str, files: tuple[Attachment, ...] = ()) -> str:
        text = text.replace(f"<@{self.bot_user_id}>", "").strip() if self.bot_user_id else text
        return text or ("" if files else "Hello!")  # a picture alone is a question too

    def _files(self, event: dict[str, Any]) -> tuple[Attachment, ...]:
        """The files shared with a message; downloaded with the bot token (files:read) only
        from Slack's own hosts, and only when the question is answered."""
        files = event.get("files")
        found = []
        for f in files if isinstance(files, list) else []:
            if not isinstance(f, dict) or f.get("mode") == "tombstone":  # tombstone: deleted
                continue
            url = f.get("url_private_download") or f.get("url_private")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                continue
            mimetype = str(f.get("mimetype") or "")
            size = f.get("size")
            headers = {"Authorization": f"Bearer {self.client.token}"} if self._slack_host(url) else {}
            fetch = http_fetch(url, headers, reject_html=mimetype != "text/html")
            name = str(f.get("name") or f.get("title") or "file")
            found.append(Attachment(name, mimetype, size if isinstance(size, int) else 0, fetch))
        return tuple(found)

    def _slack_host(self, url: str) -> bool:
        """The bot token goes to Slack only: slack.com, its file hosts, or `[slack] api_base`."""
        host = (urlsplit(url).hostname or "").lower()
        base = urlsplit(self.settings.api_base).hostname if self.settings.api_base else None
        return (
            host == "slack.com" or host.endswith(".slack.com") or (base is not None and host == base.lower())
        )

    async def _name(self, user: str, event: dict[str, Any] | None = None) -> str:
        """A person's display name (users:read), cached; their id when Slack will not say."""
        profile = (event or {}).get("user_profile") or {}
        if name := profile.get("display_name") or profile.get("real_name"):
            return str(name)
        if user not in self._names:
            try:
                info = (await self.client.users_info(user=user)).get("user") or {}
            except SlackApiError as exc:  # e.g. missing_scope (no users:read): ask once, not per question
                log.info("could not look up the name of %s: %s", user, error_of(exc)[1])
                info = {}
            except (aiohttp.ClientError, TimeoutError) as exc:  # may work next time
                log.info("could not look up the name of %s: %s", user, exc)
                return user
            profile = info.get("profile") or {}
            self._names[user] = str(
                profile.get("display_name") or profile.get("real_name") or info.get("name") or user
            )
        return self._names[user]

    async def _thread_context(self, channel: str, thread_ts: str, ts: str) -> tuple[tuple[str, str], ...]:
        """Mentioned in a thread it has not been part of, the bot reads the thread from its
        start (`[memory] thread_messages` at most: the first and the latest) so "summarise
        this thread" works."""
        limit = self.host.config.memory.thread_messages
        if not limit:
            return ()
        messages: list[dict[str, Any]] = []
        cursor = None
        try:
            for _ in range(THREAD_PAGES):  # bounded: a huge thread costs at most a few calls
                resp = await self.client.conversations_replies(
                    channel=channel,
                    ts=thread_ts,
                    latest=ts,
                    limit=200,
                    **({"cursor": cursor} if cursor else {}),
                )
                messages += resp.get("messages", [])
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not (resp.get("has_more") and cursor):
                    break
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not read thread %s: %s", thread_ts, exc)
            return ()
        if any(m.get("user") == self.bot_user_id or m.get("bot_id") == self.bot_id for m in messages):
            return ()  # the bot answered here before: memory has the thread
        earlier = [
            m
            for m in messages
            if float(m.get("ts") or 0) < float(ts) and not self._from_bot(m) and m.get("text")
        ]
        if len(earlier) > limit:
            earlier = earlier[:1] + earlier[len(earlier) - limit + 1 :]
        return tuple([(await self._name(m["user"]), self._prompt(m["text"])) for m in earlier])

    async def ignore(self) -> None:
        """Events the bot receives but has nothing to do for."""

    async def on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        channel, user, ts = event.get("channel", ""), event.get("user", ""), event.get("ts", "")
        if not ts or self._from_bot(event) or not self._allowed(channel, user, dm=False):
            return  # (without ts there is no thread: the answer would land in the channel)
        if not await self._first_time(body.get("event_id"), f"msg:{channel}:{ts}"):
            return
        thread_ts = event.get("thread_ts") or ts
        known = self._threads.get((channel, thread_ts))
        joined = thread_ts != ts and known is None  # mentioned into a thread mid-way, maybe
        if known is None or float(ts) < float(known):
            self._threads[(channel, thread_ts)] = ts  # part of the thread from this message on
        place = Place(body.get("team_id") or self.team_id, channel, thread_ts, user, is_dm=False)
        files = self._files(event)
        self.host.spawn(
            self._mention(place, self._prompt(event.get("text", ""), files), ts, files, event, joined)
        )

    async def _mention(
        self,
        place: Place,
        prompt: str,
        ts: str,
        files: tuple[Attachment, ...],
        event: dict[str, Any],
        joined: bool,
    ) -> None:
        context = await self._thread_context(place.channel, place.thread_ts, ts) if joined else ()
        await self.answer(place, prompt, ts, files=files, event=event, context=context)

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
            files = self._files(event)
            self.host.spawn(
                self.answer(place, self._prompt(text, files), ts, assistant=bool(thread_ts), files=files)
            )
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
        self.host.spawn(self._follow_up(place, text, ts, event))

    async def _follow_up(self, place: Place, text: str, question_ts: str, event: dict[str, Any]) -> None:
        if await self._bot_in_thread(
            place.channel, place.thread_ts, event.get("parent_user_id"), question_ts
        ):
            files = self._files(event)
            await self.answer(place, self._prompt(text, files), question_ts, files=files, event=event)

    async def _bot_in_thread(self, channel: str, thread_ts: str, parent_user: str | None, ts: str) -> bool:
        """Was the bot part of the thread when message `ts` was posted? Known from this
        process's mentions, else asked once per thread (after a restart)."""
        key = (channel, thread_ts)
        if key not in self._threads:
            if parent_user and parent_user == self.bot_user_id:
                self._threads[key] = thread_ts
            else:
                try:
                    resp = await self.client.conversations_replies(channel=channel, ts=thread_ts, limit=200)
                except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.info("could not check thread %s for earlier replies: %s", thread_ts, exc)
                    return False
                ours = [
                    str(m.get("ts"))
                    for m in resp.get("messages", [])
                    if m.get("user") == self.bot_user_id or m.get("bot_id") == self.bot_id
                ]
                # a mention may have brought the bot in while we asked: the earlier time wins
                known = self._threads.get(key)
                self._threads[key] = min([*ours, *([known] if known else [])], key=float, default=None)
        joined = self._threads[key]
        return joined is not None and float(ts) > float(joined)

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

    async def answer(
        self,
        place: Place,
        prompt: str,
        question_ts: str,
        assistant: bool = False,
        *,
        files: tuple[Attachment, ...] = (),
        event: dict[str, Any] | None = None,
        context: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Stream one reply into `place`'s thread (the host keeps one per conversation at a time).
        Outside DMs the model is told who is asking."""
        reply_id = uuid.uuid4().hex[:16]
        target = SlackTarget(
            self, place, reply_id=reply_id, question_ts=question_ts, assistant=prompt if assistant else None
        )
        conversation = f"slack:{place.team}:{place.channel}:{place.thread_ts}"
        self._last[(place.channel, place.user)] = conversation
        await self.host.answer(
            Question(
                reply_id,
                place.user,
                place.channel,
                conversation,
                prompt,
                message=f"{place.channel}:{question_ts}",
                author="" if place.is_dm else await self._name(place.user, event),
                attachments=files,
                context=context,
                team=place.team,
                dm=place.is_dm,
            ),
            target,
        )

    async def on_command(self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
        """/streambot new: the conversation this person last had with the bot here starts
        over. (A new top-level message always starts a fresh one.)"""
        words = str(command.get("text", "")).split()
        if not words or words[0].lower() not in ("new", "forget", "reset"):
            await ack(f"`{COMMAND} new` starts our conversation here over; mention me to ask something.")
            return
        key = self._last.pop((command.get("channel_id", ""), command.get("user_id", "")), None)
        if key is None:
            await ack("Nothing to forget here: a new message (outside a thread) always starts fresh.")
        elif self.host.start_over(key):
            await ack("Done: I've forgotten our last conversation here. Your next question starts fresh.")
        else:
            await ack("I keep no memory of conversations, so there is nothing to forget.")

    async def thinking(self, place: Place, prompt: str) -> None:
        """Assistant threads: show "is thinking…" and name the thread after its first question."""
        await self.set_status(place, self.settings.thinking_status)
        thread = (place.channel, place.thread_ts)
        if self._assistant_threads.get(thread) and prompt.strip():  # a picture alone names nothing
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
