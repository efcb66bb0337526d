"""Where one Slack reply goes: a thread, natively streamed or edited in place.

Two ways to stream, chosen by `[slack] streaming`:

* native: chat.startStream / appendStream / stopStream. Slack renders Markdown and shows text
  as it arrives; we append `frame.raw` deltas, paced by the core pacer (by time, not by size
  like slack_sdk's helper). Streams die a few minutes after they start, so pages roll over
  after `NATIVE_PAGE_AGE`; a stream that breaks anyway is finished with chat.update and the
  reply continues in edit mode. What edit mode shows inside the text, native mode shows Slack's
  way: the thread's "is thinking…" status (assistant.threads.setStatus, with loading messages)
  stands in for the placeholder and the ⏳ line, and the stream starts with the first text or
  tool step; each tool call is a task chunk (`TaskUpdateChunk`) in the streamed message; a
  Stop button is posted beside the stream while it runs and deleted when it ends; 👍/👎 and
  "Get a human" go in chat.stopStream's `blocks`.
* edit: a placeholder chat.postMessage edited with chat.update. The text goes in a `markdown`
  block (standard Markdown, 12,000 characters) because the Stop button needs blocks beside it,
  and markdown_text cannot be combined with blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slack_sdk.models.messages.chunk import Chunk, MarkdownTextChunk, TaskUpdateChunk

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
    end_blocks,
    handoff_message,
    neutralize,
    stable_prefix,
    stop_control,
)
from core.pacing import ACK
from core.platform import Frame, Op, Rate, RateLimited, Step, Target, TransientError

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
    ts: str  # "": a native stream not started yet (nothing to show but the thread's status)
    native: bool
    sent: str = ""  # native: the (neutralized) Markdown appended so far
    rewrite: bool = False  # native: the stream diverged from the page; rewrite it when final
    steps: dict[str, Step] = field(default_factory=dict)  # native: task chunks as last sent


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
        self._status = ""  # native: the status line last shown as the thread's status
        self._waiting = False  # native: a stream is waiting for its first text (starts next)
        self._stop_control: asyncio.Task[str | None] | None = None  # the Stop button's message
        self._ack: asyncio.Task[None] | None = None

    # --- the core's questions --------------------------------------------------------------

    def measure(self, text: str) -> int:
        return len(neutralize(text))  # what Slack counts: the text with mentions made inert

    def locate(self, handle: SlackMessage) -> dict[str, Any] | None:
        if not handle.ts:  # not started: nothing to finish after a crash
            return None
        place = {"channel": handle.channel, "ts": handle.ts, "native": handle.native}
        control = self._stop_control
        if handle.native and control is not None and control.done() and not control.cancelled():
            place["stop"] = control.result()  # the Stop button beside it, deleted on repair
        return place

    def message_key(self, handle: SlackMessage) -> str | None:
        return f"{handle.channel}:{handle.ts}" if handle.ts else None

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        team = self.place.team
        if self.native and op != "notice":
            if op == "post" or self._waiting:  # the edit that starts a waiting stream
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
        elif self.native:  # the placeholder of native streams (no 👀 needed: it shows at once)
            await self.bot.set_status(self.place, self.bot.settings.thinking_status)
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
        if self._stop_control is not None:
            ts = await self._stop_control
            if ts:
                await self.bot.best_effort(
                    "chat.delete", self.client.chat_delete(channel=self.place.channel, ts=ts)
                )
        if self._assistant is not None or self._status:  # (posting clears the thinking status)
            await self.bot.set_status(self.place, "")

    async def resolved(self) -> None:
        await self.bot.best_effort(
            "reactions.remove",
            self.client.reactions_remove(
                channel=self.place.channel, name="sos", timestamp=self.place.thread_ts
            ),
        )

    async def hand_off(self, settings: Any, facts: Any) -> dict[str, Any]:
        """Ping the profile's user group once in the thread, with a Resolved button, and mark
        the thread with 🆘."""
        resolve = json.dumps({"c": facts.conversation, "p": facts.profile})
        message = handoff_message(getattr(settings, "slack_group", "") or "", facts.reason, resolve)
        resp = await call(
            "chat.postMessage",
            self.client.chat_postMessage(
                channel=self.place.channel, thread_ts=self.place.thread_ts, **message
            ),
        )
        await self.bot.host.pacer.acquire([(f"slack:{self.place.team}:reactions.add", REACTION_RATE)])
        await self.bot.best_effort(
            "reactions.add",
            self.client.reactions_add(channel=self.place.channel, name="sos", timestamp=self.place.thread_ts),
        )
        return {"channel": self.place.channel, "ts": resp["ts"]}

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
            if not (stable_prefix(frame.raw) or frame.steps):
                # Nothing to stream yet: the thread's status says the bot is on it. The stream
                # starts with the first text or tool step (an edit of this handle).
                self._waiting = True
                await self._show_status(frame)
                return SlackMessage(self.place.channel, "", native=True)
            return await self._stream_or_post(frame)
        # A first frame that is already final needs no stream: post it whole.
        resp = await self._ending(
            frame,
            lambda end: call(
                "chat.postMessage",
                self.client.chat_postMessage(
                    channel=self.place.channel, thread_ts=self.place.thread_ts, **self._content(frame, end)
                ),
            ),
        )
        handle = SlackMessage(self.place.channel, resp["ts"], native=False)
        self._posted(handle)
        return handle

    async def edit(self, handle: SlackMessage, frame: Frame) -> None:
        if not handle.ts:  # a native stream waiting for its first text
            if not (frame.final or stable_prefix(frame.raw) or frame.steps):
                await self._show_status(frame)
                return
            if self._unsure:
                await self._remove_strays()
            try:
                started = await self._post(frame) if frame.final else await self._stream_or_post(frame)
            except TransientError:
                self._unsure = True
                raise
            handle.ts, handle.native, handle.sent, handle.steps = (
                started.ts,
                started.native,
                started.sent,
                started.steps,
            )
            self._waiting = False
            return
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

    async def _stream_or_post(self, frame: Frame) -> SlackMessage:
        """Start a native stream with `frame` (or post it, if native streaming is refused)."""
        try:
            handle = await self._start_stream(frame)
        except SlackCallError as exc:
            if self.bot.settings.streaming != "auto":
                raise
            log.info("native streaming refused (%s); using chat.update instead", exc.error)
            self.bot.native_refused(self.place, exc.error)
            self._edit_mode()
            return await self._post(frame)
        self._posted(handle)
        return handle

    async def _start_stream(self, frame: Frame) -> SlackMessage:
        first = neutralize(stable_prefix(frame.raw))
        kwargs: dict[str, Any] = {}
        if not self.place.is_dm:  # Slack needs the reader's identity to stream into a channel
            kwargs = {"recipient_user_id": self.place.user, "recipient_team_id": self.place.team}
        handle = SlackMessage(self.place.channel, "", native=True, sent=first)
        chunks = self._chunks(handle, frame, first)
        if chunks:
            kwargs |= {"chunks": chunks, "task_display_mode": "timeline"}
        else:
            kwargs["markdown_text"] = first or None
        resp = await call(
            "chat.startStream",
            self.client.chat_startStream(
                channel=self.place.channel, thread_ts=self.place.thread_ts, **kwargs
            ),
        )
        handle.ts = resp["ts"]
        if self.bot.settings.native_stop_button and self._stop_control is None and not frame.final:
            self._stop_control = asyncio.ensure_future(self._post_stop_control())
        return handle

    def _chunks(self, handle: SlackMessage, frame: Frame, text: str) -> list[Chunk]:
        """Task chunks for the tool steps that changed since `handle` last showed them, then
        `text` as a Markdown chunk; [] when no step changed (plain markdown_text will do)."""
        changed = [s for s in frame.steps if handle.steps.get(s.id) != s]
        if not changed:
            return []
        handle.steps.update((s.id, s) for s in changed)
        chunks: list[Chunk] = [TaskUpdateChunk(id=s.id, title=s.title, status=s.status) for s in changed]
        if text:
            chunks.append(MarkdownTextChunk(text=text))
        return chunks

    async def _post_stop_control(self) -> str | None:
        """Post the Stop button beside the stream (a stream holds no buttons); its ts."""
        try:
            await self.bot.host.pacer.acquire(self.budgets("notice"))
            resp = await call(
                "chat.postMessage",
                self.client.chat_postMessage(
                    channel=self.place.channel, thread_ts=self.place.thread_ts, **stop_control(self.reply_id)
                ),
            )
        except Exception as exc:  # the answer streams on without it
            log.info("could not post the Stop button beside stream %s: %s", self.reply_id, exc)
            return None
        return str(resp["ts"])

    async def _show_status(self, frame: Frame) -> None:
        """Native streams show the status line (⏳ slow, ↪️ handoff) as the thread's status."""
        status = frame.status if not frame.status.startswith("🔧") else ""  # tools: task chunks
        if status and status != self._status:
            self._status = status
            await self.bot.set_status(self.place, status)

    async def _stream(self, handle: SlackMessage, frame: Frame) -> None:
        want = neutralize(frame.text if frame.final else stable_prefix(frame.raw))
        if not want.startswith(handle.sent):
            handle.rewrite = True  # appended text cannot be taken back: fix it when final
            want = handle.sent
        delta = want[len(handle.sent) :]
        chunks = self._chunks(handle, frame, delta)
        text: dict[str, Any] = {"chunks": chunks} if chunks else {"markdown_text": delta or None}
        if frame.final:
            stop = [(f"slack:{self.place.team}:chat.stopStream", STOP_RATE)]
            pacer = self.bot.host.pacer
            await pacer.acquire(stop)
            try:
                await self._ending(
                    frame,
                    lambda end: call(
                        "chat.stopStream",
                        self.client.chat_stopStream(
                            channel=handle.channel, ts=handle.ts, blocks=end or None, **text
                        ),
                    ),
                )
            except RateLimited as exc:
                pacer.pause(stop, exc.retry_after)
                raise
            handle.sent = want
            handle.native = False
            if handle.rewrite:
                await self._update(handle, frame)
        elif delta or chunks:
            if not frame.status.startswith("🔧"):
                await self._show_status(frame)
            try:
                await call(
                    "chat.appendStream",
                    self.client.chat_appendStream(channel=handle.channel, ts=handle.ts, **text),
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

    def _content(self, frame: Frame, end: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        message = content(frame.text, self.reply_id if frame.streaming and not frame.final else None)
        message["blocks"] += end or []
        return message

    def _end_blocks(self, frame: Frame) -> list[dict[str, Any]]:
        """👍/👎 and "Get a human" under the reply's last message once it ended (not when the
        asker stopped it)."""
        if not frame.final or frame.ended in ("", "stopped") or self.bot.no_end_blocks:
            return []
        return end_blocks(self.reply_id, feedback=self.feedback, human=self.human)

    async def _ending(self, frame: Frame, send: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> Any:
        """`send` the frame with its end blocks; a workspace that refuses them (an older Slack
        without feedback buttons) gets the answer without them, from then on."""
        end = self._end_blocks(frame)
        try:
            return await send(end)
        except SlackCallError as exc:
            if not end or not exc.error.startswith("invalid_blocks"):
                raise
            log.warning("Slack refused the 👍/👎 and handoff buttons (%s); answering without them", exc.error)
            self.bot.no_end_blocks = True
            return await send([])

    async def _update(self, handle: SlackMessage, frame: Frame) -> None:
        await self._ending(
            frame,
            lambda end: call(
                "chat.update",
                self.client.chat_update(channel=handle.channel, ts=handle.ts, **self._content(frame, end)),
            ),
        )

    def _posted(self, handle: SlackMessage) -> None:
        self._posted_ts.append(handle.ts)
