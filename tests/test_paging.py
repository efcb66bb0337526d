"""Paging and streaming Markdown: properties that must hold for any text and any page size."""

from __future__ import annotations

import regex
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.markdown import scan_fences, tidy_tail
from core.paging import Pager, is_grapheme_boundary

# Text that looks like model output: prose, Markdown, code fences, links, emoji, combining marks.
PIECES = st.sampled_from([
    "word ", "other ", "\n", "\n\n", "```", "```python\n", "~~~\n", "````\n", "`", "**", "~~",
    "[link](https://example.com/a_b) ", "| a | b |\n", "- item\n", "é", "e\u0301", "👍🏽",
    "👨‍👩‍👧", "🇫🇷", "中文字符", "x" * 40, "    code line\n", " ", "\t", "*",
])
MARKDOWN = st.lists(st.one_of(PIECES, st.text(max_size=12)), max_size=120).map("".join)


def stream(text: str, limit: int, chunk_sizes: list[int]) -> tuple[Pager, list[str]]:
    """Feed `text` in chunks, rendering a streaming frame after each; return pages as shown."""
    pager, frozen_seen = Pager(limit), []
    i, n = 0, 0
    while i < len(text):
        size = chunk_sizes[n % len(chunk_sizes)]
        pager.feed(text[i : i + size])
        i, n = i + size, n + 1
        frame = pager.render(streaming=True, cursor=" ▌", status="🔧 search docs…")
        assert len(frame) <= limit
        # finished pages never change again
        assert [p.text for p in pager.pages[: len(frozen_seen)]] == frozen_seen
        frozen_seen = [p.text for p in pager.pages]
    last = pager.render(streaming=False)
    assert [p.text for p in pager.pages[: len(frozen_seen)]] == frozen_seen
    return pager, [p.text for p in pager.pages] + ([last] if last else [])


def longest_cluster(text: str) -> int:
    return max((len(m) for m in regex.findall(r"\X", text)), default=0)


@settings(max_examples=300, deadline=None)
@given(MARKDOWN, st.integers(64, 400), st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_pages_fit_balance_and_rejoin(text: str, limit: int, chunks: list[int]) -> None:
    assume(longest_cluster(text) <= 16)
    pager, pages = stream(text, limit, chunks)
    assert all(len(p) <= limit for p in pages)
    # the bodies (pages minus reopened/closed fences) join back to the input exactly
    assert "".join(p.body for p in pager.pages) + pager.tail == text
    # every page renders with its code blocks closed
    for page in pages:
        assert scan_fences(page) is None, page
    # no cut splits a grapheme cluster
    pos = 0
    for page in pager.pages:
        pos += len(page.body)
        assert is_grapheme_boundary(text, pos)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["alpha ", "beta\n", "\n\n", "[a link](http://x.y/z) "]),
                max_size=200).map("".join), st.integers(64, 300))
def test_cuts_never_split_a_link(text: str, limit: int) -> None:
    pager, _ = stream(text, limit, [7])
    pos = 0
    spans = [m.span() for m in regex.finditer(r"\[[^\]\n]*\]\([^)\n]*\)", text)]
    for page in pager.pages:
        pos += len(page.body)
        assert not any(s < pos < e for s, e in spans)


def test_code_block_cut_closes_and_reopens_with_language() -> None:
    code = "```python\n" + "".join(f"print({i})\n" for i in range(100)) + "```\n"
    pager, pages = stream("Intro.\n\n" + code + "\nDone.", 200, [5])
    assert len(pages) > 3
    for page in pages[1:-1]:
        assert page.startswith("```python\n") and page.endswith("```")
    assert pages[0].rstrip().endswith("```")


def test_prefers_paragraph_then_line_boundaries() -> None:
    para = "Sentence number one is here. " * 3
    text = "\n\n".join([para] * 10)
    _, pages = stream(text, 300, [11])
    for page in pages[:-1]:
        assert page.endswith("\n\n")


def test_streaming_frame_closes_open_fence_and_shows_cursor() -> None:
    pager = Pager(500)
    pager.feed("Look:\n\n```js\nconst a = 1;")
    frame = pager.render(streaming=True, cursor=" ▌")
    assert frame == "Look:\n\n```js\nconst a = 1;\n```\n▌"
    assert pager.render(streaming=False) == "Look:\n\n```js\nconst a = 1;\n```"


def test_final_render_has_no_cursor_or_status() -> None:
    pager = Pager(500)
    pager.feed("Hello **world**")
    assert pager.render(streaming=True, cursor=" ▌", status="🔧 x…") == "Hello **world** ▌\n🔧 x…"
    assert pager.render(streaming=False) == "Hello **world**"


def test_tidy_tail_holds_back_or_closes_unfinished_markdown() -> None:
    assert tidy_tail("so **bold") == "so **bold**"
    assert tidy_tail("run `pip inst") == "run `pip inst`"
    assert tidy_tail("see [the docs](https://exa") == "see "
    assert tidy_tail("see [the do") == "see "
    assert tidy_tail("| a | b |\n| 1 | 2") == "| a | b |\n"
    assert tidy_tail("strike ~~this") == "strike ~~this~~"
    assert tidy_tail("trailing *") == "trailing "
    assert tidy_tail("* a bullet\n* another") == "* a bullet\n* another"
    assert tidy_tail("done [link](http://x) ok") == "done [link](http://x) ok"
    # code spans hide markers inside them
    assert tidy_tail("`a ** b` and") == "`a ** b` and"


def test_fence_scanning_rules() -> None:
    assert scan_fences("```py\ncode") is not None
    assert scan_fences("```py\ncode\n```") is None
    assert scan_fences("````\n```\nstill code") is not None  # a shorter run does not close
    assert scan_fences("~~~\n```\n~~~") is None
    assert scan_fences("text ``` not a fence") is None
    assert scan_fences("    ```indented code, not a fence") is None
