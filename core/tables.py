"""Render Markdown tables for platforms that show them as a mess of pipes, while they stream.

A table (a `|` header line followed by a `|---|` delimiter line, then `|` rows) is held back
from the text until it ends, then given to the pager as an aligned monospace block in a code
fence, or as a list when that block would be wider than `width` characters. While it streams,
`preview()` shows the rows received so far rendered the same way (never a half-received row).
Everything else passes through at once, and a table inside a code block is left alone.
"""

from __future__ import annotations

import re
import unicodedata

from core.markdown import Fence, scan_fences

_DELIMITER = re.compile(r"\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_MARKS = re.compile(r"\*\*|__|`")


class TableFormatter:
    """Markdown text in, the same text with its tables rendered out (`feed`, then `end`)."""

    def __init__(self, width: int = 60) -> None:
        self.width = width
        self._line = ""  # the current line so far
        self._passing = False  # the current line is plain text, passed on as it arrives
        self._fence: Fence | None = None  # code block open in the text passed on
        self._rows: list[str] = []  # a possible header, or a table's lines so far
        self._cells: list[list[str]] = []  # the cells of each of `_rows` once it is a table
        self._table = False  # `_rows` is a table (its delimiter line arrived)
        self._preview: tuple[int, int, str] = (-1, 0, "")  # (rows, room, text) last previewed

    def feed(self, text: str) -> str:
        """Text that is settled now: plain text as it arrives, a table once it has ended."""
        out: list[str] = []
        while text:
            nl = text.find("\n")
            piece, text = (text, "") if nl < 0 else (text[:nl], text[nl + 1 :])
            self._line += piece
            if not self._passing and self._plain(self._line):
                out.append(self._close())
                self._passing = True
                out.append(self._line)
            elif self._passing:
                out.append(piece)
            if nl >= 0:
                out.append(self._end_line())
        return "".join(out)

    def end(self) -> str:
        """The text ended: the table in progress (a last row without newline counts whole), or
        what was held back, as it was."""
        held = self._line if not self._passing else ""
        self._line, self._passing = "", False
        if self._table and held.strip():
            self._rows.append(held)
            held = ""
        return self._close() + held

    def preview(self, room: int) -> str:
        """The table being received, as it will look, in at most `room` characters: its
        complete rows (the latest ones if they do not all fit); '' when none is streaming."""
        if not self._table:
            return ""
        if self._preview[:2] == (len(self._rows), room):
            return self._preview[2]
        rows = self._rows[2:]
        while len(self._cells) < len(self._rows):  # each line is split into cells once
            self._cells.append(cells(self._rows[len(self._cells)]))
        header, parsed = self._cells[:2], self._cells[2:]
        shown, size, text = 0, 0, ""
        for line in reversed(rows):  # at most what could fit: the cost stays that of a page
            size += len(line)
            if size > 2 * room:
                break
            shown += 1
        while True:
            text = render_cells(header + parsed[len(parsed) - shown :], self.width, len(rows) - shown)
            if len(text) <= room or shown == 0:
                break
            shown = max(0, min(shown - 1, shown * room // len(text)))
        text = text if len(text) <= room else ""
        self._preview = (len(self._rows), room, text)
        return text

    def _plain(self, line: str) -> bool:
        """Whether `line` (so far) is decided not to be a table line."""
        if self._fence is not None:
            return True
        stripped = line.lstrip(" ")
        if not stripped:
            return False  # a blank start: wait for the first character
        return len(line) - len(stripped) > 3 or not stripped.startswith("|")

    def _end_line(self) -> str:
        """A newline arrived: file the line as plain text or as a table line."""
        line, passing = self._line, self._passing
        self._line, self._passing = "", False
        if passing:
            self._fence = scan_fences(line, self._fence)
            return "\n"
        if not line.strip():  # a blank line: ends any table
            return self._close() + line + "\n"
        if self._table:
            self._rows.append(line)
            return ""
        if len(self._rows) == 1 and _DELIMITER.fullmatch(line) and line.count("-"):
            self._rows.append(line)
            self._table = True
            return ""
        out = self._close()  # a lone `|` line before this one was no header
        self._rows = [line]
        return out

    def _close(self) -> str:
        """End what `_rows` holds: a table rendered, a lone header line as it was."""
        rows, table = self._rows, self._table
        self._rows, self._cells, self._table = [], [], False
        if not rows:
            return ""
        return render(rows, self.width) if table else "".join(r + "\n" for r in rows)


def render(lines: list[str], width: int, skipped: int = 0) -> str:
    """A Markdown table's lines (header, delimiter, rows) as a monospace code block, or as a
    list when the block would be wider than `width`. `skipped` rows left out are shown as ⋮."""
    return render_cells([cells(line) for line in lines], width, skipped)


def render_cells(parsed: list[list[str]], width: int, skipped: int = 0) -> str:
    """`render` for lines already split into cells."""
    header, aligns, rows = list(parsed[0]), [_align(c) for c in parsed[1]], parsed[2:]
    n = max([len(header), *map(len, rows)])
    header += [""] * (n - len(header))
    rows = [r + [""] * (n - len(r)) for r in rows]
    aligns = (aligns + ["<"] * n)[:n]  # a delimiter line may have more or fewer cells
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(n)]
    if sum(widths) + 3 * (n - 1) > width:
        return _as_list(header, rows, skipped)
    out = ["```", _row(header, widths, aligns), "-|-".join("-" * w for w in widths)]
    out += ["⋮"] if skipped else []
    out += [_row(r, widths, aligns) for r in rows]
    return "\n".join([*out, "```"]) + "\n"


def cells(line: str) -> list[str]:
    """The cells of a table line: split on `|` outside code spans, `\\|` kept as a pipe."""
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    out, cell, code = [], "", False
    for i, ch in enumerate(line):
        if ch == "`":
            code = not code
        if ch == "|" and not code and (i == 0 or line[i - 1] != "\\"):
            out.append(cell)
            cell = ""
        else:
            cell += ch
    out.append(cell)
    return [_plain(c) for c in out]


def _plain(cell: str) -> str:
    """A cell's text as a monospace block shows it: no Markdown marks that would not render."""
    cell = _LINK.sub(r"\1", cell.replace("\\|", "|"))
    return " ".join(_MARKS.sub("", cell).split())


def _align(delimiter: str) -> str:
    d = delimiter.strip()
    if d.startswith(":") and d.endswith(":"):
        return "^"
    return ">" if d.endswith(":") else "<"


def _width(text: str) -> int:
    """Columns `text` takes in a monospace font: wide (CJK, most emoji) 2, combining marks 0."""
    return sum(
        0
        if unicodedata.combining(ch) or ch in "\u200d\ufe0f"
        else 2
        if unicodedata.east_asian_width(ch) in "WF"
        else 1
        for ch in text
    )


def _row(row: list[str], widths: list[int], aligns: list[str]) -> str:
    parts = []
    for text, w, align in zip(row, widths, aligns, strict=True):
        pad = w - _width(text)
        left = pad // 2 if align == "^" else pad if align == ">" else 0
        parts.append(" " * left + text + " " * (pad - left))
    return " | ".join(parts).rstrip()


def _as_list(header: list[str], rows: list[list[str]], skipped: int) -> str:
    """Each row as a bold title (its first cell) and a bullet per other cell: `header: value`."""
    out = ["⋮\n"] if skipped else []
    for row in rows:
        title, rest = row[0], [(h, v) for h, v in zip(header[1:], row[1:], strict=True) if v]
        lines = [f"**{title}**"] if title else []
        lines += [f"- {h}: {v}" if h else f"- {v}" for h, v in rest]
        out.append("\n".join(lines) + "\n\n")
    return "".join(out) or "\n"
