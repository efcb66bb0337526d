"""Where one Slack reply goes: a thread, natively streamed or edited in place.

Two ways to stream, chosen by `[slack] streaming`:

* native: chat.startStream / appendStream / stopStream. Slack renders Markdown and shows text
  as it arrives; we append `frame.raw` deltas, paced by the core pacer (by time, not by size
  like slack_sdk's helper). Streams die a few minutes after they start, so pages roll over
  after `NATIVE_PAGE_AGE`; a stream that breaks anyway is finished with chat.update and the
  reply continues in edit mode.
* edit: a placeholder chat.postMessage edited with chat.update. The text goes in a `markdown`
  block (standard Markdown, 12,000 characters) because the Stop button needs blocks beside it,
  and markdown_text cannot be combined with blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bots.slack_api import (
    ACK_EMOJI,
    APPEND_RATE,
    APPEND_SPACING,
    POST_RATE,
    REACTION_RATE,
    START_RATE,
    STOP_RATE,
    UPDATE_RATE,
    UPDATE_SPACING,
    SlackCallError,
    StreamLost,
    call,
    content,
    neutralize,
    stable_prefix,
)
from core.pacing import ACK
from core.platform import Frame, Op, Rate, RateLimited, Target, TransientError

if TYPE_CHECKING:
    from bots.slack_bot import SlackBot

log = logging.getLogger("streambot.slack")

NATIVE_PAGE_AGE = 240.0  # native streams expire ~5 minutes after they start
# A question whose placeholder has not appeared this long after it was admitted, or will wait
# longer than this behind the placeholders queued before it (chat.postMessage allows about one
# message per second per channel), gets a 👀 reaction: it was heard.
ACK_AFTER = 1.0


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

    def __init__(
        self,
        bot: SlackBot,
        place: Place,
        *,
        reply_id: str,
        question_ts: str = "",
        assistant: str | None = None,
    ) -> None:
        self.bot = bot
        self.client = bot.client
        self.place = place
        self.native = bot.native_for(place)
        self.page_limit = bot.settings.page_chars
        self.page_max_age = NATIVE_PAGE_AGE if self.native else None
        self.reply_id = reply_id
        self._question_ts = question_ts
        self._assistant = assistant  # in an assistant thread: the question, to title it with
        self._posted_ts: list[str] = []
        self._unsure = False  # a post failed in a way that may have posted it all the same
        self._ack: asyncio.Task[None] | None = None

    # --- the core's questions --------------------------------------------------------------

    def measure(self, text: str) -> int:
        return len(neutralize(text))  # what Slack counts: the text with mentions made inert

    def locate(self, handle: SlackMessage) -> dict[str, Any]:
        return {"channel": handle.channel, "ts": handle.ts, "native": handle.native}

    def message_key(self, handle: SlackMessage) -> str:
        return f"{handle.channel}:{handle.ts}"

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        team = self.place.team
        if self.native and op != "notice":
            if op == "post":
                return [(f"slack:{team}:chat.startStream", START_RATE)]
            return [
                (f"slack:reply:{self.reply_id}", Rate(1, APPEND_SPACING)),
                (f"slack:{team}:chat.appendStream", APPEND_RATE),
            ]
        if op != "edit":
            return [(f"slack:{team}:chat.postMessage:{self.place.channel}", POST_RATE)]
        return [
            (f"slack:reply:{self.reply_id}", Rate(1, UPDATE_SPACING)),
            (f"slack:{team}:chat.update", UPDATE_RATE),
        ]

    async def open(self) -> None:
        if self._assistant is not None:  # assistant threads: "is thinking…" and a title
            await self.bot.thinking(self.place, self._assistant)
        elif self._question_ts:
            # the placeholders queued before this one, as things stand now (before it queues)
            held_up = self.bot.host.pacer.backlog(self.budgets("post")[0][0]) > ACK_AFTER
            self._ack = asyncio.create_task(self._acknowledge_if_slow(held_up))

    async def _acknowledge_if_slow(self, held_up: bool) -> None:
        """👀 on the question if its placeholder waits for chat.postMessage's limit: at once if
        the placeholders queued before it hold it up longer than ACK_AFTER, else if it has not
        appeared by then."""
        pacer = self.bot.host.pacer
        if not held_up:
            await pacer.clock.sleep(ACK_AFTER)
            if self._posted_ts:
                return
        await pacer.acquire([(f"slack:{self.place.team}:reactions.add", REACTION_RATE)], ACK)
        if not self._posted_ts:
            await self.bot.best_effort(
                "reactions.add",
                self.client.reactions_add(
                    channel=self.place.channel, timestamp=self._question_ts, name=ACK_EMOJI
                ),
            )

    async def close(self) -> None:
        if self._ack is not None:
            self._ack.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack
        if self._assistant is not None:
            await self.bot.best_effort(
                "assistant.threads.setStatus",
                self.client.assistant_threads_setStatus(
                    channel_id=self.place.channel, thread_ts=self.place.thread_ts, status=""
                ),
            )

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
        if not (self.bot.bot_user_id and self._question_ts):
            return
        try:
            resp = await call(
                "conversations.replies",
                self.client.conversations_replies(
                    channel=self.place.channel, ts=self.place.thread_ts, limit=200
                ),
            )
            after = float(self._posted_ts[-1] if self._posted_ts else self._question_ts)
            for m in resp.get("messages", []):
                if m.get("user") == self.bot.bot_user_id and float(m["ts"]) > after:
                    log.info("removing %s, left by a post that failed yet went through", m["ts"])
                    await call("chat.delete", self.client.chat_delete(channel=self.place.channel, ts=m["ts"]))
        except SlackCallError as exc:  # a refusal must not cost the reply itself
            log.warning("could not check thread %s for a stray message: %s", self.place.thread_ts, exc)
        self._unsure = False

    async def _post(self, frame: Frame) -> SlackMessage:
        if self.native and not frame.final:
            try:
                handle = await self._start_stream(frame)
            except SlackCallError as exc:
                if self.bot.settings.streaming != "auto":
                    raise
                log.info("native streaming refused (%s); using chat.update instead", exc.error)
                self.bot.native_refused(self.place, exc.error)
                self._edit_mode()
            else:
                self._posted(handle)
                return handle
        # A first frame that is already final needs no stream: post it whole.
        resp = await call(
            "chat.postMessage",
            self.client.chat_postMessage(
                channel=self.place.channel, thread_ts=self.place.thread_ts, **self._content(frame)
            ),
        )
        handle = SlackMessage(self.place.channel, resp["ts"], native=False)
        self._posted(handle)
        return handle

    async def edit(self, handle: SlackMessage, frame: Frame) -> None:
        if handle.native:
            try:
                await self._stream(handle, frame)
                return
            except StreamLost:
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
        resp = await call(
            "chat.startStream",
            self.client.chat_startStream(
                channel=self.place.channel,
                thread_ts=self.place.thread_ts,
                markdown_text=first or None,
                **kwargs,
            ),
        )
        return SlackMessage(self.place.channel, resp["ts"], native=True, sent=first)

    async def _stream(self, handle: SlackMessage, frame: Frame) -> None:
        want = neutralize(frame.text if frame.final else stable_prefix(frame.raw))
        if not want.startswith(handle.sent):
            handle.rewrite = True  # appended text cannot be taken back: fix it when final
            want = handle.sent
        delta = want[len(handle.sent) :]
        if frame.final:
            stop = [(f"slack:{self.place.team}:chat.stopStream", STOP_RATE)]
            pacer = self.bot.host.pacer
            await pacer.acquire(stop)
            try:
                await call(
                    "chat.stopStream",
                    self.client.chat_stopStream(
                        channel=handle.channel, ts=handle.ts, markdown_text=delta or None
                    ),
                )
            except RateLimited as exc:
                pacer.pause(stop, exc.retry_after)
                raise
            handle.sent = want
            handle.native = False
            if handle.rewrite:
                await self._update(handle, frame)
        elif delta:
            try:
                await call(
                    "chat.appendStream",
                    self.client.chat_appendStream(channel=handle.channel, ts=handle.ts, markdown_text=delta),
                )
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
        await call(
            "chat.update",
            self.client.chat_update(channel=handle.channel, ts=handle.ts, **self._content(frame)),
        )

    def _posted(self, handle: SlackMessage) -> None:
        self._posted_ts.append(handle.ts)
