"""The think-tag splitter: any split of a stream into deltas gives the same answer and thoughts,
and no part of a tag ever reaches the answer."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from core.events import TextDelta, Thinking
from core.think import ThinkSplitter

PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<thinking>",
        "</thinking>",
        "<",
        "</",
        "<th",
        "ink>",
        ">",
        "think",
        " ",
        "\n",
        "a",
    ]
    + ["answer ", "x < y ", "`<think>` ", "<b>", "\n\n"]
)


def run(deltas: list[str]) -> tuple[str, str, ThinkSplitter]:
    """(answer, thoughts) of `deltas` fed one by one, then ended."""
    split = ThinkSplitter()
    answer, thoughts = [], []
    for event in [e for d in deltas for e in split.feed(d)] + split.end():
        (answer if isinstance(event, TextDelta) else thoughts).append(event.text)
    return "".join(answer), "".join(thoughts), split


def cuts(text: str, points: list[int]) -> list[str]:
    """`text` cut at `points` (any positions, in any order)."""
    at = sorted({min(p, len(text)) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in zip(at, at[1:], strict=False)]


@given(st.lists(PIECES, max_size=20).map("".join), st.lists(st.integers(0, 200), max_size=30))
@example("<think>plan</think>\n\nThe answer.", [3, 9, 14])  # a tag cut `<th` + `ink>`
@example("  <thinking>a</think>b", [5, 16])
def test_any_split_gives_the_same_answer_and_thoughts(text: str, points: list[int]) -> None:
    whole = run([text])
    split = run(cuts(text, points))
    assert split[:2] == whole[:2]
    assert split[2].thought == whole[2].thought


@given(
    st.text(st.characters(exclude_characters="<"), max_size=40),  # the thoughts
    st.text(max_size=40).filter(lambda s: not s.strip().startswith("<")),  # the answer
    st.lists(st.integers(0, 120), max_size=20),
    st.sampled_from(["", " ", "\n"]),
)
def test_thoughts_never_reach_the_answer(thoughts: str, answer: str, points: list[int], lead: str) -> None:
    text = f"{lead}<think>{thoughts}</think>\n\n{answer}"
    shown, hidden, split = run(cuts(text, points))
    assert shown == answer.lstrip()
    assert hidden == thoughts
    assert split.thought


def test_each_answer_delta_goes_out_as_soon_as_it_cannot_be_a_tag() -> None:
    split = ThinkSplitter()
    assert split.feed("<th") == []  # may still become <think>
    assert split.feed("ink>") == [Thinking("")]  # the status can show at once
    assert split.feed("step one</th") == [Thinking("step one")]
    assert split.feed("ink>Hi") == [TextDelta("Hi")]
    assert split.feed(" there <think>") == [TextDelta(" there <think>")]  # an answer may name the tag


def test_an_unclosed_think_block_is_all_thinking() -> None:
    shown, hidden, split = run(["<think>I wonder", " and wonder"])
    assert (shown, hidden) == ("", "I wonder and wonder")
    assert split.thinking and split.thought


def test_text_that_only_looks_like_a_tag_is_answer() -> None:
    assert run(["<thi", "s is fine"])[:2] == ("<this is fine", "")
    assert run(["<thin"])[:2] == ("<thin", "")  # the stream ended before it became a tag
    assert run(["x</think>y"])[:2] == ("x</think>y", "")  # no think block was open
    assert run(["  indented"])[:2] == ("  indented", "")  # whitespace kept without a think block
