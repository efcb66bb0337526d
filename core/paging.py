"""Split a growing reply into pages that fit a platform's message size, incrementally.

Finished pages never change again; only the last page is re-rendered as text arrives, so the
cost of a frame depends on the page size, not on the length of the reply. Cuts prefer paragraph,
then line, then word boundaries, never fall inside a grapheme cluster or a Markdown link, and a
cut inside a code block closes the fence on one page and reopens it on the next.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import regex

from core.markdown import Fence, closer, scan_fences, tidy_tail

_GRAPHEME = regex.compile(r"\X")
_LINK = re.compile(r"!?\[[^\]\n]*\]\([^)\n]*\)")
_BREAKS = (re.compile(r"\n\n"), re.compile(r"\n"), re.compile(r"\s"))
_FENCE_START = re.compile(r" {0,3}(```|~~~)")
_FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
_OPEN_LINK = re.compile(r"!?\[[^\]\n]*(\](\([^)\n]*)?)?\Z")


@dataclass(frozen=True, slots=True)
class Page:
    """One message's worth of the reply. Joining every page's `body` gives the reply back."""

    prefix: str  # a code fence reopened because the previous page ended inside it
    body: str
    suffix: str  # the fence closed because this page ends inside a code block

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


def _safe_cut(text: str, i: int) -> bool:
    """A cut keeps graphemes whole and does not put a mid-line ``` at the start of a page."""
    if 0 < i < len(text) and text[i - 1] != "\n" and _FENCE_START.match(text, i):
        return False
    return is_grapheme_boundary(text, i)


def is_grapheme_boundary(text: str, i: int) -> bool:
    """Whether cutting `text` at `i` keeps every user-perceived character whole."""
    if i <= 0 or i >= len(text) or text[i - 1] == "\n":
        return True  # nothing joins across a line feed (UAX #29, GB4)
    start = text.rfind("\n", 0, i) + 1
    for m in _GRAPHEME.finditer(text, start, min(len(text), i + 64)):
        if m.end() >= i:
            return bool(m.end() == i)
    return True


def _link_safe(text: str, cut: int, lookahead: int) -> int:
    """Move `cut` to the start of a Markdown link it would split (0 if that is the start).

    A link still being written at the end of `text` counts as running to the end.
    """
    for m in _LINK.finditer(text, 0, min(len(text), cut + lookahead)):
        if m.start() < cut < m.end():
            return m.start()
    open_link = _OPEN_LINK.search(text)
    return open_link.start() if open_link and open_link.start() < cut else cut


def best_cut(text: str, room: int, final: bool = True) -> int:
    """Where to end a page holding at most `room` characters of `text` (always >= 1).

    While streaming (`final` False) the end of `text` is not a safe cut: the next delta may
    continue the word, the grapheme cluster or the link that ends there.
    """
    end = len(text) if final else len(text) - 1
    window = text[: min(room, end)]
    if not window:
        return min(1, len(text))
    good = len(window) // 2
    late: list[int] = []
    early: list[int] = []
    for pattern in _BREAKS:
        ends = [m.end() for m in pattern.finditer(window)]
        late += [e for e in reversed(ends) if e >= good]
        early += [e for e in ends if e < good]
    for cut in late + sorted(early, reverse=True):
        cut = _link_safe(text, cut, room)
        if cut > 0 and _safe_cut(text, cut):
            return cut
    # No usable break: cut at the last whole grapheme that fits.
    start = window.rfind("\n") + 1
    cut = start
    for m in _GRAPHEME.finditer(text, start, min(len(text), room + 64)):
        if m.end() > len(window):
            break
        if _safe_cut(text, m.end()):
            cut = m.end()
    return cut if cut > 0 else max(1, len(window))


class Pager:
    """Pages of one reply. `feed` text as it arrives; `render` the last page when it is shown."""

    def __init__(self, limit: int, measure: Callable[[str], int] = len) -> None:
        """`measure` sizes a page as the platform will count it (e.g. after mentions are
        neutralized, which makes text longer); `limit` applies to that size."""
        if limit < 64:
            raise ValueError("page limit must be at least 64 characters")
        self.limit = limit
        self.measure = measure
        self.pages: list[Page] = []  # finished; never change again
        self._tail = ""  # text after the last finished page
        self._pending: list[str] = []
        self._fence: Fence | None = None  # code block open where the tail starts

    def feed(self, text: str) -> None:
        if text:
            self._pending.append(text)

    @property
    def tail(self) -> str:
        if self._pending:
            self._tail += "".join(self._pending)
            self._pending.clear()
        return self._tail

    @property
    def text(self) -> str:
        """The whole reply so far."""
        return "".join(p.body for p in self.pages) + self.tail

    @property
    def source(self) -> str:
        """The last page's own text so far: reopened fence plus tail, nothing temporary."""
        return (self._fence.opener if self._fence else "") + self.tail

    @property
    def empty(self) -> bool:
        return not self.pages and not self.tail

    def render(self, *, streaming: bool, cursor: str = "", status: str = "", pending: str = "") -> str:
        """The last page as it should look now, finishing full pages until it fits.

        `pending` is shown after the text while streaming, not part of it yet: a block still
        being received, rendered whole (a table: core/tables.py); it must fit a page."""
        while True:
            text = self._render(streaming, cursor, status, pending)
            if self.measure(text) <= self.limit:
                return text
            if not self.tail:  # nothing left to move on: drop the status line and cursor
                text = self._render(False, "", "")
                end = self.limit
                while end > 0 and self.measure(text[:end]) > self.limit:
                    end -= max(1, self.measure(text[:end]) - self.limit)
                return text[:end]
            self._finish_page(self.limit, final=not streaming)

    def settled(self) -> str:
        """The last page as it would end if the reply ended now (fences closed, no cursor)."""
        return self._render(False, "", "")

    def break_page(self) -> None:
        """Finish the current page early at its best boundary (e.g. before a stream expires)."""
        if self.tail:
            self._finish_page(len(self.tail), final=False)

    def _render(self, streaming: bool, cursor: str, status: str, pending: str = "") -> str:
        body = (self._fence.opener if self._fence else "") + self.tail
        fence = scan_fences(self.tail, self._fence)
        if not streaming:
            return body + (closer(fence, body) if fence else "")
        if fence:
            body += closer(fence, body) + "\n" + cursor.strip()
        elif pending:
            body = tidy_tail(body) + pending + cursor.strip()
        else:
            body = tidy_tail(body)
            # a block closed by the last line: "``` ▌" would not close it, so the cursor goes below
            closed = cursor and _FENCE_LINE.fullmatch(body, body.rfind("\n") + 1)
            body += "\n" + cursor.strip() if closed else cursor
        return body + (f"\n{status}" if status else "")

    def _finish_page(self, room_limit: int, final: bool) -> None:
        tail = self.tail
        prefix = self._fence.opener if self._fence else ""
        room = min(room_limit, self.limit - len(prefix) - 4)
        while True:
            cut = best_cut(tail, max(1, room), final)
            body = tail[:cut]
            fence = scan_fences(body, self._fence)
            suffix = closer(fence, prefix + body) if fence else ""
            over = self.measure(prefix + body + suffix) - self.limit
            if over <= 0 or cut <= 1:
                break
            room = cut - over
        self.pages.append(Page(prefix, body, suffix))
        self._tail = tail[cut:]
        self._fence = fence


def with_marker(text: str, marker: str, limit: int) -> str:
    """`text` ended by `marker` within `limit` characters: cut at a boundary, code fences
    closed, when both do not fit (how an interrupted reply's message is finished)."""
    text = text.rstrip()
    room = limit - len(marker) - 2
    if len(text) > room:
        cut = text[: best_cut(text, max(1, room - 8))]
        fence = scan_fences(cut)
        text = cut + (closer(fence, cut) if fence else "")
    return f"{text}\n\n{marker}" if text else marker
