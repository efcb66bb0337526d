"""Markdown tables rendered for platforms that do not render them (Discord): the same result for
any split of the stream, code blocks and other text left alone, and pages that still fit, still
rejoin to the rendered text, and still balance their fences."""

from __future__ import annotations

from harness import assert_pages_are, final
from harness import running_discord_bot as discord_bot
from harness import slack_bot_for as slack_bot
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.config import StreamConfig
from core.events import TextDelta
from core.markdown import scan_fences
from core.pacing import Pacer
from core.relay import Reply
from core.tables import TableFormatter, cells, render
from fakes.clock import FakeClock
from fakes.scripted import RecordingTarget, ScriptRun
from fakes.slack_server import settled

TABLE = "| Name | Age | City |\n|---|---:|:---:|\n| Alice | 30 | Oslo |\n| Bob | 4 | Rome |\n"
RENDERED = "```\nName  | Age | City\n------|-----|-----\nAlice |  30 | Oslo\nBob   |   4 | Rome\n```\n"

PIECES = st.sampled_from(
    [
        TABLE,
        "| a | b |\n",
        "|---|---|\n",
        "| `x|y` | **bold** |\n",
        "| only a pipe line\n",
        "| wide " + "w" * 80 + " | cell |\n",
        "```\n",
        "```python\n",
        "text ",
        "\n",
        "\n\n",
        "   | indented |\n",
        "- item\n",
        "中文 | 👍 ",
        "|",
        " ",
    ]
)


def one_shot(text: str, width: int = 60) -> str:
    f = TableFormatter(width)
    return f.feed(text) + f.end()


def cuts(text: str, points: list[int]) -> list[str]:
    at = sorted({min(p, len(text)) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in zip(at, at[1:], strict=False)]


def test_a_table_becomes_an_aligned_monospace_block() -> None:
    assert one_shot("Ages:\n\n" + TABLE + "\nThat's all.") == "Ages:\n\n" + RENDERED + "\nThat's all."


def test_an_answer_ending_in_a_table_row_without_a_newline_keeps_the_row() -> None:
    assert one_shot(TABLE.rstrip("\n")) == RENDERED


def test_a_table_too_wide_for_the_width_becomes_a_list() -> None:
    wide = "| Name | Notes |\n|---|---|\n| Alice | " + "long " * 20 + "|\n| Bob | |\n"
    assert one_shot(wide) == "**Alice**\n- Notes: " + ("long " * 20).strip() + "\n\n**Bob**\n\n"


def test_cells_keep_escaped_pipes_and_code_and_drop_marks_that_would_not_render() -> None:
    assert cells(r"| a \| b | `c|d` | **e** [f](http://x) |") == ["a | b", "c|d", "e f"]
    assert (
        render(["| 中文 | x |", "|--|--|", "| a | 👍 |"], 60) == "```\n中文 | x\n-----|---\na    | 👍\n```\n"
    )


@given(st.lists(PIECES, max_size=12).map("".join), st.lists(st.integers(0, 400), max_size=25))
@example(TABLE, [3, 25, 26, 40])
def test_any_split_of_the_stream_gives_the_same_text(text: str, points: list[int]) -> None:
    f = TableFormatter()
    streamed = "".join(f.feed(piece) for piece in cuts(text, points)) + f.end()
    assert streamed == one_shot(text)


@given(
    st.lists(
        st.sampled_from(
            ["word ", "\n", "\n\n", "- item\n", "a | b\n", "```\n", "x|y ", "| lone\n", "| end", "  "]
        ),
        max_size=20,
    )
)
def test_text_without_tables_passes_through_unchanged(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert one_shot(text) == text


def test_a_table_inside_a_code_block_is_left_alone() -> None:
    text = "```markdown\n" + TABLE + "```\n" + TABLE
    assert one_shot(text) == "```markdown\n" + TABLE + "```\n" + RENDERED


def test_plain_text_passes_at_once_and_a_half_row_is_never_previewed() -> None:
    f = TableFormatter()
    assert f.feed("Hello wor") == "Hello wor"  # not held back for the end of the line
    assert f.feed("ld\n| Name | Age |\n|---|---|\n| Alice | 3") == "ld\n"
    assert f.preview(1000) == "```\nName | Age\n-----|----\n```\n"  # Alice's row is not complete
    assert f.feed("0 |\n") == ""
    assert "Alice |  30" not in f.preview(1000) and "Alice | 30" in f.preview(1000)
    assert f.feed("Done") == "```\nName  | Age\n------|----\nAlice | 30\n```\nDone"


def test_a_long_table_previews_its_latest_rows_within_the_room() -> None:
    f = TableFormatter()
    f.feed("| n | square |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(200)))
    preview = f.preview(300)
    assert len(preview) <= 300 and "⋮" in preview and "199 | 39601" in preview
    assert preview.startswith("```\nn ") and preview.endswith("```\n")


# --- through the relay: what a Discord-like target shows -----------------------------------------


class TableTarget(RecordingTarget):
    render_tables = True


async def relay(text: str, limit: int, size: int = 7, every: float = 0.05) -> TableTarget:
    clock = FakeClock()
    steps = [(every, TextDelta(text[i : i + size])) for i in range(0, len(text), size)]
    target = TableTarget(clock, limit=limit)
    reply = Reply(ScriptRun(clock, steps), target, Pacer(clock), StreamConfig())
    outcome = await clock.run(reply.run())
    assert outcome.status in ("done", "empty")
    return target


@settings(max_examples=40, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=12).map("".join), st.integers(80, 400), st.integers(1, 30))
async def test_pages_fit_rejoin_to_the_rendered_text_and_balance_fences(
    text: str, limit: int, size: int
) -> None:
    if not text.strip() or scan_fences(text) is not None:
        return  # (an answer ending inside a code block is closed on its page: another test's job)
    target = await relay(text, limit, size)
    # every frame fits (RecordingTarget checks each request) and leaves no fence open
    for message in target.messages:
        for frame in message:
            assert scan_fences(frame.text) is None, frame.text
    assert_pages_are(target.shown, one_shot(text), limit)


async def test_a_table_after_a_full_page_shows_on_the_next_page_while_it_streams() -> None:
    rows = "".join(f"| {i} | {i * i} |\n" for i in range(12))
    target = await relay("x" * 150 + "\n\n| n | square |\n|---|---|\n" + rows + "\nEnd.", 200, 5, 0.5)
    streaming = [f.text for f in target.messages[1] if f.streaming]
    assert any("square" in f and "11 | 121" not in f for f in streaming), streaming  # mid-table


async def test_the_table_shows_rendered_while_it_streams() -> None:
    target = await relay("Here:\n\n" + TABLE + "\nDone.", 2000, size=5)
    frames = [f.text for f in target.messages[0]]
    assert target.shown == ["Here:\n\n" + RENDERED + "\nDone."]
    assert not any("|---|" in f or "| Alice |" in f for f in frames)  # never the raw pipes
    assert any("Alice |  30" in f and "Bob" not in f for f in frames)  # rows appear as they come


# --- on the platforms ---------------------------------------------------------------------------


async def test_discord_renders_tables_and_slack_leaves_them_to_its_markdown(
    fake_discord, slack, fake_openai, tmp_path, monkeypatch
) -> None:
    answer = "Ages:\n\n" + TABLE + "\nThat's all."
    fake_openai.reply(answer, delay=0.005)
    async with discord_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as bot:
        await bot.ask("ages?")
        [message] = fake_discord.bot_messages()
        assert final(message) == "Ages:\n\n" + RENDERED + "\nThat's all."
        assert not any("| Alice |" in rev.content for rev in message.history)
    fake_openai.reply(answer, delay=0.005)
    async with slack_bot(slack, fake_openai, tmp_path, streaming="edit"):
        ts = await slack.mention("C0GENERAL", "ages?")
        await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), 30.0, "the reply")
        assert slack.reply_text("C0GENERAL", ts) == answer  # Slack's markdown renders tables


async def test_discord_table_width_zero_leaves_tables_alone(
    fake_discord, fake_openai, tmp_path, monkeypatch
) -> None:
    fake_openai.reply(TABLE)
    async with discord_bot(fake_discord, fake_openai, tmp_path, monkeypatch, table_width=0) as bot:
        await bot.ask("ages?")
        [message] = fake_discord.bot_messages()
        assert final(message) == TABLE
