"""The contract between the core relay and a platform adapter.

An adapter implements `Target` for one reply's destination (a channel, thread, DM, terminal).
The relay decides *what* to show and *when*; the target only posts and edits. Errors are
reported with the exceptions below so the relay can back off, retry or stop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["post", "edit", "notice"]  # a notice: a finished message that is no reply


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` requests in any window of `per` seconds; or, with `burst`, a token
    bucket: up to `burst` requests at once, refilled at `count` per `per` seconds (for
    platforms that welcome short bursts)."""

    count: int
    per: float
    burst: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    """One tool call of a reply, as a task list shows it."""

    id: str
    title: str
    status: Literal["in_progress", "complete", "error"] = "in_progress"


@dataclass(frozen=True, slots=True)
class Frame:
    """What one message of a reply should show now.

    `text` is rendered for display: fences temporarily closed, a cursor and status line while
    streaming, never longer than the target's `page_limit` as its `measure` counts. `raw` is the
    page's own source text so far (no cursor, no temporary closers): while the page streams it only grows, so
    append-only transports (a pipe, a platform's native text streams) can send `raw[len(already_sent):]`.
    One exception: when a full page is cut, its final frame's `raw` ends at the cut and the text
    after it moves to the next message, so `raw` may be shorter than what was streamed; an
    append-only transport must then replace the message's text with the final `text`.
    """

    index: int  # which message of the reply: 0 is the first, later ones are continuations
    text: str
    raw: str
    final: bool  # this message will not change again
    streaming: bool  # the reply as a whole is still being written (show a Stop button)
    # The reply ended and this is its last message: where 👍/👎 and "Get a human" go ("" while
    # streaming or on an earlier page; else how it ended: done, stopped, failed, empty).
    ended: str = ""
    # What `text` shows below the answer while it streams (⏳ slow, 🔧 tool, ↪️ handoff): for
    # transports that cannot show it inside the text (native streams show it their own way).
    status: str = ""
    steps: tuple[Step, ...] = ()  # the tool calls so far, in order, for transports with task lists


class RateLimited(Exception):
    """The platform said 429: wait `retry_after` seconds before this budget is used again.

    `paused`: the adapter has already paused the budgets the 429 applies to (it could tell which
    from the answer); otherwise the relay pauses every budget of the request."""

    def __init__(self, retry_after: float, message: str = "rate limited", *, paused: bool = False) -> None:
        super().__init__(f"{message} (retry after {retry_after:.2f}s)")
        self.retry_after = max(0.0, float(retry_after))
        self.paused = paused


class TransientError(Exception):
    """A 5xx, timeout or dropped connection: the same request may succeed if retried."""


class MessageGone(Exception):
    """The message or its channel was deleted: the reply is cancelled, nothing is retried."""


class Target(ABC):
    """Where one reply is streamed to. One instance per reply.

    `page_limit` is the most characters one message may hold. `budgets(op)` names the shared
    allowances a request uses, as (key, rate) pairs: every reply whose target returns the same
    key shares that budget, e.g. ("chat:channel:42", Rate(5, 5.0)). `page_max_age`, when set,
    makes the relay continue in a new message once a page has been streaming that long (for
    transports whose messages expire while streaming). `render_tables` asks for Markdown tables
    rendered (see core/tables.py).
    """

    platform: str = "console"  # names the adapter in metrics, logs and reply records
    page_limit: int = 2000
    page_max_age: float | None = None
    # Set by the host before the reply starts: what the reply's last message offers once it
    # ended (a frame with `ended`): 👍/👎 buttons, and a "Get a human" button.
    feedback: bool = False
    human: bool = False
    # The platform does not render Markdown tables: the relay shows them as aligned monospace
    # blocks at most `table_width` characters wide, as lists when wider (core/tables.py).
    render_tables: bool = False
    table_width: int = 60

    def measure(self, text: str) -> int:
        """How many characters `text` takes once sent, as the platform counts them against
        `page_limit` (a target that rewrites text before sending it counts the result)."""
        return len(text)

    def locate(self, handle: Any) -> dict[str, Any] | None:
        """Where the message behind `handle` is, as JSON-able data the adapter can find it by
        after a restart (to finish a reply a crash cut off); None: not recoverable."""
        return None

    def message_key(self, handle: Any) -> str | None:
        """The platform's id of the message behind `handle`, as the adapter reports deletions
        to `Host.deleted`; None: deletions of it are not tracked."""
        return None

    @abstractmethod
    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        """The budgets one `op` request draws from."""

    @abstractmethod
    async def post(self, frame: Frame) -> Any:
        """Send a new message showing `frame`; return a handle that `edit` accepts."""

    @abstractmethod
    async def edit(self, handle: Any, frame: Frame) -> None:
        """Make the message behind `handle` show `frame`."""

    async def notice(self, text: str) -> None:
        """Show a short message that is not a model reply (a refusal, a hint) where the reply
        would have gone. By default: post it as a finished message."""
        await self.post(Frame(0, text, text, final=True, streaming=False))

    async def hand_off(self, settings: Any, facts: Any) -> dict[str, Any]:
        """Post the one handoff message where the reply went: ping the people `settings` (the
        profile's `handoff` section) names, say why (`facts`, a ledger.HandoffFacts), offer a
        "Resolved" button and mark the conversation as handed off. Returns where it posted
        (JSON-able). By default: a notice without a ping."""
        await self.notice(f"🆘 A person from the team has been asked to help: {facts.reason}")
        return {}

    async def resolved(self) -> None:
        """The conversation's handoff was resolved by a command: take the handoff mark off."""

    async def open(self) -> None:
        """Called once the question is admitted, before the reply starts: acknowledge it (a
        typing indicator, a status). If this fails the reply still runs."""

    async def close(self) -> None:
        """Called once after the reply's last frame was delivered (or given up on)."""
