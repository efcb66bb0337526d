"""Documents into passages: one per heading (long sections split at paragraphs), each with the
heading's text and the anchor a docs site gives it, so an answer can link to the exact place.

Markdown, plain text, HTML and PDF (via pypdf). Anchors follow GitHub's rule
(lowercase, punctuation dropped, spaces to hyphens, repeats numbered), which most static site
generators share; HTML keeps a heading's own `id`; PDF pages are `page=N`.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MAX_CHARS = 1500  # a passage: enough to answer from, small enough that five fit a prompt
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".rst": "text"}
SUFFIXES |= {".html": "html", ".htm": "html", ".pdf": "pdf"}

_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Passage:
    heading: str  # the section's heading ("" when the text comes before any heading)
    anchor: str  # its fragment id ("" for the top of the document)
    body: str


class Anchors:
    """GitHub-style heading slugs, numbered when a heading repeats in one document."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, heading: str) -> str:
        text = unicodedata.normalize("NFKC", heading).lower()
        text = re.sub(r"<[^>]+>|[`*_~]|\]\([^)]*\)|\[", "", text)  # markup, links' targets
        slug = re.sub(r"[^\w\- ]", "", text).strip().replace(" ", "-")
        n = self.seen.get(slug, 0)
        self.seen[slug] = n + 1
        return slug if n == 0 else f"{slug}-{n}"


def _split(heading: str, anchor: str, text: str) -> list[Passage]:
    """A section as passages of at most MAX_CHARS, cut between paragraphs where possible."""
    text = text.strip()
    if not text and not heading:
        return []
    parts: list[str] = []
    current = ""
    for para in re.split(r"\n\s*\n", text):
        while len(para) > MAX_CHARS:  # one huge paragraph: cut it hard
            parts.append(para[:MAX_CHARS])
            para = para[MAX_CHARS:]
        if current and len(current) + len(para) + 2 > MAX_CHARS:
            parts.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current or not parts:
        parts.append(current)
    return [Passage(heading, anchor, p) for p in parts]


def markdown(text: str) -> list[Passage]:
    passages: list[Passage] = []
    anchors = Anchors()
    heading = anchor = ""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        found = None if fenced else _ATX.match(line)
        if found:
            passages += _split(heading, anchor, "\n".join(lines))
            heading = found.group(2).strip()
            anchor, lines = anchors(heading), []
        else:
            lines.append(line)
    passages += _split(heading, anchor, "\n".join(lines))
    return passages


def plain(text: str) -> list[Passage]:
    return _split("", "", text)


class _Html(HTMLParser):
    """Text of an HTML page, cut at h1-h6; script, style and nav text are left out."""

    SKIP = {"script", "style", "nav", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, str, list[str]]] = [("", "", [])]
        self.anchors = Anchors()
        self.skipping = 0
        self.heading: list[str] | None = None
        self.heading_id = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag) and not self.skipping:
            self.heading, self.heading_id = [], dict(attrs).get("id") or ""
        elif tag in ("p", "br", "li", "div", "tr", "pre", "section"):
            self.sections[-1][2].append("\n\n" if tag in ("p", "div", "section", "pre") else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            title = " ".join("".join(self.heading).split())
            anchor = self.anchors(title)
            self.sections.append((title, self.heading_id or anchor, []))
            self.heading = None

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        (self.heading if self.heading is not None else self.sections[-1][2]).append(data)


def html(text: str) -> list[Passage]:
    parser = _Html()
    parser.feed(text)
    parser.close()
    passages: list[Passage] = []
    for heading, anchor, parts in parser.sections:
        body = re.sub(r"[ \t]+", " ", "".join(parts))
        passages += _split(heading, anchor, re.sub(r"\n\s*\n\s*", "\n\n", body))
    return passages


def pdf(data: bytes) -> list[Passage]:
    """One passage per page (split when long)."""
    from pypdf import PdfReader  # imported here: only PDFs pay for it

    passages: list[Passage] = []
    for n, page in enumerate(PdfReader(io.BytesIO(data)).pages, 1):
        passages += _split(f"page {n}", f"page={n}", page.extract_text() or "")
    return [p for p in passages if p.body]


def passages(path: Path, data: bytes) -> list[Passage]:
    """The passages of one file (its kind from its suffix); raises ValueError if it is not one
    of the kinds in SUFFIXES, UnicodeDecodeError if a text file is not UTF-8."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "pdf":
        return pdf(data)
    if kind is None:
        raise ValueError(f"not a document kind streambot indexes ({', '.join(sorted(SUFFIXES))})")
    text = data.decode("utf-8-sig")
    return {"markdown": markdown, "html": html, "text": plain}[kind](text)
