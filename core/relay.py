"""The relay: stream one model run into one platform reply.

It posts a placeholder at once, edits it as text arrives (only ever the newest frame, when the
pacer allows), continues in a new message when a page fills, and always finishes with the final
text: the partial text plus a marker when stopped, plus an error line when the model failed, and
an explicit note when the model said nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from core import metrics
from core.config import StreamConfig
from core.events import (
    Done,
    Failed,
    Handoff,
    HumanWanted,
    ModelRun,
    TextDelta,
    Thinking,
    ToolFinished,
    ToolStarted,
    Usage,
)
from core.pacing import ACK, NORMAL, SOON, Pacer
from core.paging import Pager
from core.platform import Frame, MessageGone, Op, RateLimited, Step, Target, TransientError
from core.state import ReplyRecord, StateStore
from core.tables import TableFormatter

log = logging.getLogger("streambot.relay")

Status = Literal["done", "stopped", "failed", "empty"]
EMPTY_NOTE = "⚠️ The model returned no text."
THOUGHT_NOTE = "💭 The model only thought and gave no answer (its thinking is not shown). Please ask again."
THINKING_STATUS = "💭 thinking…"
SLOW_STATUS = "⏳ The model is slow to answer…"
_TRANSIENT = (TransientError, TimeoutError, ConnectionError)
_PERMANENT_FINAL_TRIES = 3


@dataclass
class Outcome:
    """How a reply ended and what it cost."""

    status: Status
    text: str  # everything the reply shows, markers included, without cursor or status line
    pages: list[str]  # the final text of each message
    handles: list[Any] = field(default_factory=list)
    posts: int = 0
    edits: int = 0
    rate_limited: int = 0
    retries: int = 0
    failed_requests: int = 0
    delivered: bool = True  # False if the final text could not be shown (deadline passed)
    usage: Usage | None = None  # tokens the model reported for this reply
    placeholder_after: float | None = None  # seconds from the start until the first message showed
    first_text_after: float | None = None  # ... until the model's first text showed
    tools: list[str] = field(default_factory=list)  # the tools the model called, in order
    human: str | None = None  # the model asked for a person (the handoff tool), for this reason


class _Gone(Exception):
    """The reply's message no longer exists; nothing more can be shown."""


class Reply:
    """One model run streamed into one destination through the shared pacer."""

    def __init__(
        self,
        run: ModelRun,
        target: Target,
        pacer: Pacer,
        settings: StreamConfig | None = None,
        store: StateStore | None = None,
        *,
        reply_id: str | None = None,
        on_post: Callable[[int, Any], None] | None = None,
    ) -> None:
        self.id = reply_id or uuid.uuid4().hex[:16]
        self._on_post = on_post  # (message index, handle) of every message posted
        self.model = run
        self.target = target
        self.pacer = pacer
        self.settings = settings or StreamConfig()
        self.pager = Pager(target.page_limit, measure=target.measure)
        self._tables = TableFormatter(target.table_width) if target.render_tables else None
        self.handles: list[Any] = []
        self.status_line = ""
        self._tools: dict[str, str] = {}
        self._steps: dict[str, Step] = {}  # every tool call so far, for task lists
        self._end: Status | None = None
        self._changed = asyncio.Event()
        self._delivered: list[Frame] = []  # last frame each message shows
        self._consumer: asyncio.Task[None] | None = None
        self._store = store  # where the streaming message is recorded, for crash recovery
        self._last_event = 0.0  # clock time of the model's latest event (or of the start)
        self._heard = False  # the model has sent any event at all
        self._model_chars = 0  # characters of model text so far
        self._page_started = 0.0
        self._gone = False
        self._outcome = Outcome("done", "", [])
        self._started = 0.0  # clock time run() began: latencies count from here
        self._had_text = False  # the model said something before the reply ended
        self._forgotten: set[int] = set()  # messages deleted by someone: never edited again
        self._thought = False  # the model reasoned (its thoughts are never part of the text)
        self._thoughts = ""  # the end of its reasoning, for show_reasoning = "summary"

    @property
    def finished(self) -> bool:
        return self._end is not None

    def stop(self, marker: str | None = None) -> None:
        """Cancel the model run; the reply ends with the text so far and a visible marker."""
        if self._end is not None:
            return
        self.model.cancel()
        if self._consumer is not None:
            self._consumer.cancel()
        self._finish("stopped", marker or self.settings.stopped_marker)

    def forget(self, index: int) -> None:
        """Message `index` was deleted: no request goes to it again (the reply stops there)."""
        self._forgotten.add(index)

    async def run(self) -> Outcome:
        """Stream the whole reply; returns once the final text was delivered or given up on."""
        watchdog = None
        platform, self._started = self.target.platform, self.pacer.clock.now()
        self._last_event = self._started
        metrics.REPLIES_STARTED.labels(platform).inc()
        metrics.REPLIES_ACTIVE.labels(platform).inc()
        if self._end is None:  # a reply stopped before it started never runs the model
            self._consumer = asyncio.create_task(self._consume())
            watchdog = asyncio.create_task(self._watch())
        try:
            await self._deliver()
        except _Gone:
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
            metrics.REPLIES_ACTIVE.labels(platform).dec()
            if self._consumer is not None:
                if not self._consumer.done():
                    self.model.cancel()
                    self._consumer.cancel()
                await asyncio.gather(self._consumer, return_exceptions=True)
            if self._store is not None:
                await self._store.drop_reply(self.id)
            try:
                await self.target.close()
            except Exception:
                log.exception("closing the reply's target failed")
        if self._end is None:  # delivery ended early (message gone)
            self._finish("stopped", self.settings.stopped_marker)
        o = self._outcome
        o.status, o.text, o.handles = self._end or "stopped", self.pager.text, self.handles
        o.pages = [f.text for f in self._delivered]
        metrics.REPLIES_FINISHED.labels(platform, o.status).inc()
        if o.status in ("stopped", "failed"):
            try:
                await self.model.remember(o.text)
            except Exception:
                log.exception("could not store the partial reply in the conversation memory")
        return o

    def _finish(self, status: Status, note: str = "") -> None:
        if self._end is not None:
            return
        if self._tables is not None:
            self.pager.feed(self._tables.end())  # a table the answer ended in
        self._had_text = bool(self.pager.text.strip())
        if status == "failed":
            metrics.MODEL_ERRORS.labels(self.target.platform).inc()
        if status == "done" and not self.pager.text.strip():
            status, note = "empty", THOUGHT_NOTE if self._thought else EMPTY_NOTE
        if note:
            self.pager.feed(("\n\n" if self.pager.text.strip() else "") + note)
        self._end = status
        self.status_line = ""
        self._changed.set()

    async def _consume(self) -> None:
        """Fold the model's events into the pager and status line."""
        try:
            async for ev in self.model.events():
                self._last_event, self._heard = self.pacer.clock.now(), True
                if isinstance(ev, TextDelta):
                    if self._too_long(ev.text):
                        return
                    self._feed(ev.text)
                    if not self._tools:
                        self.status_line = ""
                elif isinstance(ev, Thinking):
                    self._think(ev.text)
                elif isinstance(ev, Usage):
                    self._outcome.usage = ev
                elif isinstance(ev, ToolStarted):
                    key = ev.call_id or ev.name
                    self._tools[key] = ev.name
                    self._steps[key] = Step(key, ev.name.replace("_", " "))
                    self._outcome.tools.append(ev.name)
                elif isinstance(ev, ToolFinished):
                    key = ev.call_id or ev.name
                    self._tools.pop(key, None)
                    step = self._steps.get(key) or Step(key, ev.name.replace("_", " "))
                    self._steps[key] = Step(step.id, step.title, "error" if ev.failed else "complete")
                elif isinstance(ev, HumanWanted):
                    if self._outcome.human is None:
                        self._outcome.human = ev.reason
                    self.target.human = False  # a person is being asked: no button for it
                elif isinstance(ev, Handoff):
                    self.status_line = f"↪️ {ev.agent} is taking over…"
                elif isinstance(ev, Failed):
                    self._finish("failed", f"⚠️ {ev.message}")
                    return
                elif isinstance(ev, Done):
                    break
                if self._tools:
                    name = list(self._tools.values())[-1]
                    self.status_line = f"🔧 {name.replace('_', ' ')}…"
                elif isinstance(ev, ToolFinished):  # a failure stays shown until the text goes on
                    self.status_line = f"⚠️ {ev.name.replace('_', ' ')} failed" if ev.failed else ""
                self._changed.set()
            self._finish("done")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken source must not leave a reply frozen mid-stream
            log.exception("model stream failed")
            self._finish("failed", f"⚠️ The model stream failed ({type(exc).__name__}).")

    def _feed(self, text: str) -> None:
        """Model text into the pager; tables, on platforms that need them rendered, once whole."""
        self.pager.feed(self._tables.feed(text) if self._tables is not None else text)

    def _pending(self) -> str:
        """A table still being received, rendered, to show after the text (half a page at most)."""
        if self._tables is None or self._end is not None:
            return ""
        return self._tables.preview(self.pager.limit // 2)

    def _think(self, text: str) -> None:
        """The model reasons: a status line until its next answer text, never text."""
        self._thought = True
        mode = self.settings.show_reasoning
        if mode == "off" or self._tools:
            return
        status = THINKING_STATUS
        if mode == "summary":
            room = self.pager.limit // 4 - len(status) - 1
            self._thoughts = " ".join((self._thoughts + text)[-4 * room :].split())
            if self._thoughts:
                tail = self._thoughts[-room:]
                status += " " + ("…" + tail[1:] if len(self._thoughts) > room else tail)
        self.status_line = status

    def _too_long(self, delta: str) -> bool:
        """Feed what fits under `max_reply_chars`; past it, cut the answer off with a note.
        (Counted as it arrives: measuring the pager's text would cost O(length) per delta.)"""
        cap = self.settings.max_reply_chars
        room = cap - self._model_chars
        self._model_chars += len(delta)
        if not cap or len(delta) <= room:
            return False
        self._feed(delta[: max(0, room)])
        self.model.cancel()
        self._finish("stopped", f"✂️ The answer was cut off at {cap:,} characters.")
        return True

    async def _watch(self) -> None:
        """Say when the model is slow, and give up when it is silent too long: before its first
        output (`first_token_timeout`) or in the middle of the answer (`stall_timeout`)."""
        s, clock = self.settings, self.pacer.clock
        while self._end is None:
            quiet = clock.now() - self._last_event
            if not self._heard:
                if quiet >= s.first_token_timeout:
                    note = (
                        f"⚠️ The model did not answer within {s.first_token_timeout:g} s: it "
                        "may be slow or unavailable. Please try again."
                    )
                    break
                if quiet >= s.slow_notice and not self.status_line:
                    self.status_line = SLOW_STATUS
                    self._changed.set()
                wait = (s.slow_notice if quiet < s.slow_notice else s.first_token_timeout) - quiet
            else:
                if quiet >= s.stall_timeout:
                    note = (
                        f"⚠️ The model stopped responding for {s.stall_timeout:g} s; the answer is incomplete."
                    )
                    break
                wait = s.stall_timeout - quiet
            await clock.sleep(wait)
        else:
            return
        log.warning("reply %s: %s", self.id, note)
        self.model.cancel()
        if self._consumer is not None:
            self._consumer.cancel()
        self._finish("failed", note)

    def _page_count(self) -> int:
        more = self.pager.tail.strip() or self._pending() or not self.pager.pages
        return len(self.pager.pages) + (1 if more else 0)

    def _frame(self, k: int) -> Frame:
        """The newest frame for message `k` (finishing full pages as a side effect)."""
        streaming = self._end is None
        status = self.status_line[: self.pager.limit // 4]
        cursor = self.settings.cursor
        steps = tuple(self._steps.values())
        pending = self._pending()
        if self.pager.empty and not pending:
            text = self.settings.placeholder + (cursor if streaming else "")
            text += f"\n{status}" if status else ""
            return Frame(0, text, "", not streaming, streaming, self._end or "", status, steps)
        last = self.pager.render(streaming=streaming, cursor=cursor, status=status, pending=pending)
        pages = self.pager.pages
        # the reply's last message carries how it ended (where feedback and handoff buttons go)
        ended = (self._end or "") if k == self._page_count() - 1 else ""
        if k < len(pages):
            return Frame(k, pages[k].text, pages[k].text, True, False, ended)
        raw = self.pager.source if streaming else last
        return Frame(k, last, raw, not streaming, streaming, ended, status, steps)

    async def _deliver(self) -> None:
        k = 0  # first message whose final form is not delivered yet
        while True:
            if self._gone:
                return
            self._maybe_roll_page(k)
            frame = self._frame(k)
            if k < len(self._delivered) and frame == self._delivered[k]:
                if frame.final and k + 1 < self._page_count():
                    k += 1
                    continue
                if frame.final and self._end is not None:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._send(k)

    def _maybe_roll_page(self, k: int) -> None:
        age = self.target.page_max_age
        if (
            age
            and self._end is None
            and k == len(self.pager.pages)
            and k < len(self.handles)
            and self.pacer.clock.now() - self._page_started >= age
        ):
            self.pager.break_page()

    async def _send(self, k: int) -> None:
        """Deliver the newest frame of message `k`, retrying as the error calls for."""
        op: Op = "post" if k >= len(self.handles) else "edit"
        budgets = self.target.budgets(op)
        # The placeholder tells the asker they were heard: it goes before other replies' edits;
        # then the first text and the final text, which people wait for; then progress.
        if op == "post" and k == 0:
            priority = ACK
        elif self._end is not None or self._outcome.first_text_after is None:
            priority = SOON
        else:
            priority = NORMAL
        clock, o = self.pacer.clock, self._outcome
        attempt, deadline = 0, None
        while True:
            await self.pacer.acquire(budgets, priority)
            if k in self._forgotten:  # deleted: no request at all, and the reply stops
                self._gone = True
                self.stop()
                raise _Gone
            frame = self._frame(k)
            if k < len(self._delivered) and frame == self._delivered[k]:
                return
            try:
                if op == "post":
                    self.handles.append(handle := await self.target.post(frame))
                    self._delivered.append(frame)
                    if self._on_post is not None:
                        self._on_post(k, handle)
                    self._page_started = clock.now()
                    o.posts += 1
                    await self._record(k, frame)
                else:
                    # recorded before it shows: after a kill -9 the record has at least the
                    # text on screen (written after, it could lag the screen by a batch)
                    await self._record(k, frame)
                    if (latest := self._frame(k)).final:  # the reply ended while recording:
                        frame = latest  # show its end, never a stale frame after it
                    await self.target.edit(self.handles[k], frame)
                    self._delivered[k] = frame
                    o.edits += 1
                self._shown(op, frame)
                return
            except RateLimited as exc:
                o.rate_limited += 1
                metrics.RATE_LIMITED.labels(self.target.platform).inc()
                if not exc.paused:  # (a limit of one bucket must not slow the others)
                    self.pacer.pause(budgets, exc.retry_after)
                if frame.final:  # a 429 storm must not hold the final text past the deadline
                    deadline = deadline or clock.now() + self.settings.final_deadline
                    if clock.now() >= deadline:
                        self._give_up(op, k, frame, exc)
                        return
                continue
            except MessageGone:
                self._gone = True
                self.stop()
                raise _Gone from None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                o.failed_requests += 1
                metrics.FAILED_REQUESTS.labels(self.target.platform, op).inc()
                transient = isinstance(exc, _TRANSIENT)
                if frame.final:
                    deadline = deadline or clock.now() + self.settings.final_deadline
                    give_up = clock.now() >= deadline or (not transient and attempt >= _PERMANENT_FINAL_TRIES)
                else:
                    give_up = not transient or attempt > self.settings.max_retries
                if give_up:
                    self._give_up(op, k, frame, exc)
                    return
                o.retries += 1
                log.info("%s of message %d failed (%s); retrying", op, k, exc)
                await clock.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2))

    async def _record(self, k: int, frame: Frame) -> None:
        """Note what message `k` should say if this process dies now (see core/state.py): the
        page's text so far, at least what `frame` shows. Written through (group commit)."""
        if self._store is None or frame.final or not (place := self.target.locate(self.handles[k])):
            return
        pages = self.pager.pages
        text = pages[k].text if k < len(pages) else self.pager.settled()
        record = ReplyRecord(self.id, self.target.platform, place, text)
        await self._store.save_reply(record, now=True)

    def _shown(self, op: str, frame: Frame) -> None:
        """Count a delivered request; note when the first message and the first text showed."""
        platform, o = self.target.platform, self._outcome
        metrics.MESSAGES_SENT.labels(platform, op).inc()
        since = self.pacer.clock.now() - self._started
        if o.placeholder_after is None:
            o.placeholder_after = since
            metrics.TIME_TO_PLACEHOLDER.labels(platform).observe(since)
        # before the end every non-blank page source is model text; after it, only if there was any
        if o.first_text_after is None and frame.raw.strip() and (self._end is None or self._had_text):
            o.first_text_after = since
            metrics.TIME_TO_FIRST_TEXT.labels(platform).observe(since)

    def _give_up(self, op: str, k: int, frame: Frame, exc: Exception) -> None:
        log.warning("giving up on %s of message %d: %s", op, k, exc)
        if op == "post":  # without the message there is nowhere to show the rest
            self._outcome.delivered = False
            self._gone = True
            self.stop()
            raise _Gone from exc
        if frame.final:
            self._outcome.delivered = False
        self._delivered[k] = frame  # skip this frame; a newer one will be tried when it exists
