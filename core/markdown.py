"""Just enough Markdown awareness to stream text without broken rendering.

Two jobs: track fenced code blocks (so a page or a half-written reply can be closed and
reopened), and tidy the unfinished tail of streaming text (an unclosed `**`, a half-written link)
so what people see does not flicker between plain and formatted text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})([^\n]*)")
_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")


@dataclass(frozen=True, slots=True)
class Fence:
    """An open fenced code block: its marker (``` or ~~~~ …) and info string (language)."""

    marker: str
    info: str = ""

    @property
    def opener(self) -> str:
        """The line that reopens this block on a new page: the marker and the language tag."""
        lang = self.info.split()[0][:32] if self.info.strip() else ""
        return f"{self.marker[:16]}{lang}\n"

    def closes(self, line: str) -> bool:
        m = _CLOSE.fullmatch(line)
        return m is not None and m[1][0] == self.marker[0] and len(m[1]) >= len(self.marker)


def scan_fences(text: str, fence: Fence | None = None) -> Fence | None:
    """The fence still open at the end of `text`, given the one open at its start.

    `text` is read as a renderer reads a message: its first line starts a line, even when a page
    cut fell mid-line. A last line without a newline counts too: a half-written "```py" is open.
    """
    for line in text.split("\n"):
        if fence is not None:
            if fence.closes(line):
                fence = None
        else:
            m = _OPEN.fullmatch(line)
            if m and not (m[1][0] == "`" and "`" in m[2]):
                fence = Fence(m[1], m[2].strip())
    return fence


def closer(fence: Fence, text: str) -> str:
    """What to append to `text` to close `fence` on a line of its own."""
    return ("" if text.endswith("\n") or not text else "\n") + fence.marker


_LINK_TAIL = re.compile(r"!?\[[^\]\n]*(\](\([^)\n]*)?)?\Z")
_TRAILING_MARKS = re.compile(r"[*_~`]+\Z")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_BULLET = re.compile(r"^[ \t]*\* ", re.M)


def tidy_tail(text: str) -> str:
    """Make the unfinished end of streaming Markdown render cleanly.

    Held back: a half-written link or image, a half-written table row, trailing emphasis
    marks that may be the start of `**`. Closed: an open inline code span, `**` and `~~`.
    Only the last paragraph is looked at, so the cost does not grow with the reply.
    """
    start = text.rfind("\n\n") + 1
    fence_end = max(text.rfind("```"), text.rfind("~~~"))
    if fence_end >= start:  # look only after the last (closed) code block
        start = text.find("\n", fence_end) + 1 or len(text)
    para = text[start:]
    line_start = para.rfind("\n") + 1
    if para[line_start:].lstrip().startswith("|"):
        para = para[:line_start]  # a table row only renders once it is complete
    m = _LINK_TAIL.search(para)
    if m:
        para = para[: m.start()]
    para = _TRAILING_MARKS.sub("", para) if not para.endswith("```") else para
    spans_removed = _CODE_SPAN.sub("", para)
    suffix = ""
    ticks = re.findall(r"`+", spans_removed)
    if ticks:
        suffix += ticks[-1]  # an unclosed code span: close it with the same run of backticks
        spans_removed = spans_removed[: spans_removed.rfind(ticks[-1])]
    plain = _BULLET.sub("", spans_removed)
    for mark in ("**", "~~"):
        if plain.count(mark) % 2:
            suffix += mark
    if suffix and para.endswith((" ", "\n")):
        para = para.rstrip()  # "**bold **" does not render; close against the last word
    return text[:start] + para + suffix
