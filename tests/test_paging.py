"""Paging and streaming Markdown: properties that must hold for any text and any page size."""

from __future__ import annotations

import regex
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from core.markdown import Fence, scan_fences, tidy_tail
from core.paging import Pager, is_grapheme_boundary

# Text that looks like model output: prose, Markdown, code fences, links, emoji, combining marks.
PIECES = st.sampled_from(
    [
        "word ",
        "other ",
        "\n",
        "\n\n",
        "```",
        "```python\n",
        "~~~\n",
        "````\n",
        "`",
        "**",
        "~~",
        "[link](https://example.com/a_b) ",
        "| a | b |\n",
        "- item\n",
        "é",
        "e\u0301",
        "👍🏽",
        "👨‍👩‍👧",
        "🇫🇷",
        "中文字符",
        "x" * 40,
        "    code line\n",
        " ",
        "\t",
        "*",
    ]
)
# Whole code blocks, long enough to span pages: any fence, any info string.
CODE_LINE = st.text(st.sampled_from("abc xyz=()[]:;,.'\"_019é👍`~\t"), max_size=30).map(lambda t: t + "\n")
CODE_BLOCK = st.builds(
    lambda marker, info, lines: f"{marker}{info}\n{''.join(lines)}{marker}\n",
    st.sampled_from(["```", "~~~", "````", "~~~~~"]),
    st.sampled_from(["", "python", "js", "c++", " rust", 'ts title="a b.ts"', "py {linenos=true}", "x" * 40]),
    st.lists(CODE_LINE, min_size=3, max_size=60),
)
MARKDOWN = st.lists(st.one_of(PIECES, st.text(max_size=12), CODE_BLOCK), max_size=120).map("".join)


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
        check_settled(pager)
    last = pager.render(streaming=False)
    assert [p.text for p in pager.pages[: len(frozen_seen)]] == frozen_seen
    return pager, [p.text for p in pager.pages] + ([last] if last else [])


def reopener(fence: Fence | None) -> str:
    """The line a continuation page starts with when the page before it ended inside `fence`:
    the same marker and the same language (the info string's first word), nothing else."""
    if fence is None:
        return ""
    words = fence.info.split()
    return f"{fence.marker[:16]}{words[0][:32] if words else ''}\n"


def check_settled(pager: Pager) -> None:
    """`settled()` is the last page's own text with an open code block closed: no cursor, no
    status line, no held-back or tidied Markdown, and no side effect on the pages."""
    pages = list(pager.pages)
    source, settled = pager.source, pager.settled()
    assert pager.pages == pages
    assert settled.startswith(source), (source, settled)
    fence = scan_fences(source)
    # an open block is closed with its own marker, on a line of its own
    closer = "" if fence is None else ("" if source.endswith("\n") else "\n") + fence.marker
    assert settled == source + closer, (source, settled)


def longest_cluster(text: str) -> int:
    return max((len(m) for m in regex.findall(r"\X", text)), default=0)


@settings(max_examples=300, deadline=None)
@given(MARKDOWN, st.integers(64, 400), st.lists(st.integers(1, 50), min_size=1, max_size=8))
@example("Intro.\n\n```python\n" + "x = 1\n" * 40 + "```\nDone.", 100, [7])
@example('~~~~ ts title="a.ts"\n' + "let a = 1;\n" * 30, 64, [50, 3])
def test_pages_fit_balance_and_rejoin(text: str, limit: int, chunks: list[int]) -> None:
    assume(longest_cluster(text) <= 16)
    pager, pages = stream(text, limit, chunks)
    assert all(len(p) <= limit for p in pages)
    # the bodies (pages minus reopened/closed fences) join back to the input exactly
    assert "".join(p.body for p in pager.pages) + pager.tail == text
    # every page renders with its code blocks closed
    for page in pages:
        assert scan_fences(page) is None, page
    # a page that ends inside a code block closes it, and the next page reopens that block with
    # the same fence and language; a page that does not, is followed by one that reopens nothing
    open_fence = None
    for i, page in enumerate(pager.pages):
        assert page.prefix == reopener(open_fence), (i, page, open_fence)
        open_fence = scan_fences(page.prefix + page.body)
        assert bool(page.suffix) == (open_fence is not None), (i, page)
    if len(pages) > len(pager.pages):  # the last page, rendered from the tail
        assert pages[-1].startswith(reopener(open_fence)), (pages[-1], open_fence)
    # no cut splits a grapheme cluster
    pos = 0
    for page in pager.pages:
        pos += len(page.body)
        assert is_grapheme_boundary(text, pos)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["alpha ", "beta\n", "\n\n", "[a link](http://x.y/z) "]), max_size=200).map(
        "".join
    ),
    st.integers(64, 300),
)
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


def test_settled_closes_the_open_block_without_cursor_or_tidying() -> None:
    pager = Pager(500)
    assert pager.settled() == ""
    pager.feed("Look:\n\n```js\nconst a = 1;")
    assert pager.settled() == "Look:\n\n```js\nconst a = 1;\n```"
    pager.feed("\n```\nThen **bold and [a li")
    # as the reply would end now: unfinished Markdown stays as written (no tidying, no cursor)
    assert pager.settled() == "Look:\n\n```js\nconst a = 1;\n```\nThen **bold and [a li"


def test_settled_is_the_last_page_only_and_finishes_no_page() -> None:
    pager = Pager(64)
    pager.feed("```python\n" + "".join(f"x_{i} = {i}\n" for i in range(20)))
    pager.render(streaming=True, cursor=" ▌")  # finishes the full pages
    finished = list(pager.pages)
    assert len(finished) >= 2
    settled = pager.settled()
    assert settled == "```python\n" + pager.tail + "```"  # the reopened block, closed again
    pager.feed("more text, still inside the block " * 5)  # longer than a page, not cut by settled()
    assert pager.settled() == "```python\n" + pager.tail + "\n```"
    assert pager.pages == finished


def test_break_page_finishes_the_page_at_its_best_boundary() -> None:
    pager = Pager(500)
    pager.break_page()  # nothing to finish
    assert pager.pages == [] and pager.empty
    first = "A first paragraph, long enough.\n\n"
    pager.feed(first + "Then a line\nand more wor")
    pager.break_page()
    # a paragraph break, not the end: the last word may still be growing
    assert [p.text for p in pager.pages] == [first]
    assert pager.tail == "Then a line\nand more wor"
    pager.break_page()  # then a line break, then a space
    assert [p.text for p in pager.pages] == [first, "Then a line\n"]
    pager.break_page()
    assert pager.pages[-1].text == "and more " and pager.tail == "wor"
    pager.feed("ds.")
    assert pager.render(streaming=False) == "words."
    assert pager.text == first + "Then a line\nand more words."


def test_break_page_inside_a_code_block_closes_and_reopens_it() -> None:
    pager = Pager(500)
    pager.feed("Code:\n\n```python title=x.py\nx = 1\ny = 2\nz = 3")
    pager.break_page()
    assert [p.text for p in pager.pages] == ["Code:\n\n```python title=x.py\nx = 1\ny = 2\n```"]
    assert pager.tail == "z = 3"
    assert pager.render(streaming=False) == "```python\nz = 3\n```"


def test_break_page_never_cuts_where_the_next_delta_may_continue() -> None:
    pager = Pager(500)
    pager.feed("https://example.com/a-long-url-without-any-space-e")
    pager.break_page()
    pager.feed("\u0301tc")  # a combining accent: it belongs to the "e" before it
    [page] = pager.pages
    assert is_grapheme_boundary(pager.text, len(page.body))
    assert pager.text == "https://example.com/a-long-url-without-any-space-e\u0301tc"


def test_the_cursor_goes_below_a_code_block_the_model_just_closed() -> None:
    pager = Pager(2000)
    pager.feed("Run:\n\n```sh\nmake\n```")
    assert pager.render(streaming=True, cursor=" ▌") == "Run:\n\n```sh\nmake\n```\n▌"  # not "``` ▌"
    assert scan_fences(pager.render(streaming=True, cursor=" ▌")) is None
