"""The relay on a virtual clock: placeholder first, newest frame only, paging, errors, stop."""

from __future__ import annotations

import asyncio

from core.config import StreamConfig
from core.events import Done, Failed, Searched, TextDelta, ToolFinished, ToolStarted
from core.markdown import scan_fences
from core.pacing import Pacer
from core.platform import MessageGone, Rate, RateLimited, TransientError
from core.relay import EMPTY_NOTE, Reply
from fakes.clock import FakeClock
from fakes.scripted import RecordingTarget, ScriptRun, deltas

SETTINGS = StreamConfig()
TEXT = "Streaming answers grow in place. " * 20


def setup(steps, **target_args):
    clock = FakeClock()
    run = ScriptRun(clock, steps)
    target = RecordingTarget(clock, **target_args)
    return clock, run, target, Reply(run, target, Pacer(clock), SETTINGS)


def window_max(times: list[float], per: float) -> int:
    return max((sum(1 for u in times if t <= u < t + per) for t in times), default=0)


async def test_placeholder_is_posted_before_the_first_token_and_final_text_arrives() -> None:
    clock, run, target, reply = setup([(3.0, TextDelta("Hello"))] + deltas(" world", 2), limit=2000)
    outcome = await clock.run(reply.run())
    first = target.messages[0][0]
    assert target.log[0] == (0.0, "post", 0)  # at once, not after the 3 s the model took
    assert first.text.startswith(SETTINGS.placeholder) and first.streaming
    assert outcome.status == "done"
    assert target.shown == ["Hello world"]
    last = target.messages[0][-1]
    assert last.final and not last.streaming and last.raw == "Hello world"
    assert target.closed


async def test_only_the_newest_frame_is_sent_and_the_rate_is_kept() -> None:
    text = "word " * 400  # 2,000 characters over 40 s of virtual time
    clock, run, target, reply = setup(deltas(text, 5, 0.1), limit=4000, rate=Rate(1, 1.0))
    outcome = await clock.run(reply.run())
    times = [t for t, _, _ in target.log]
    assert window_max(times, 1.0) <= 1
    assert len(target.log) <= 45  # ~one per second, not one per delta (400 deltas)
    assert outcome.edits + outcome.posts == len(target.log)
    assert target.shown == [text]
    # every frame shows a longer prefix of the text than the one before (no stale frames)
    shown = [f.raw for f in target.messages[0]]
    assert all(len(a) <= len(b) for a, b in zip(shown, shown[1:], strict=False))


async def test_long_reply_continues_in_new_messages_with_code_fences_reopened() -> None:
    code = "```python\n" + "".join(f"value_{i} = compute({i})\n" for i in range(80)) + "```\n"
    text = "Intro paragraph.\n\n" + code + "\nThat is all.\n"
    clock, run, target, reply = setup(deltas(text, 7, 0.02), limit=400)
    outcome = await clock.run(reply.run())
    assert len(target.messages) >= 5
    assert all(len(page) <= 400 for page in outcome.pages)
    assert all(scan_fences(page) is None for page in outcome.pages)
    assert all(page.startswith("```python\n") for page in outcome.pages[1:-1])
    assert outcome.text == text
    # every message ends final; only the newest carries the Stop button while streaming
    assert all(m[-1].final and not m[-1].streaming for m in target.messages)


async def test_ten_replies_share_one_channel_budget_and_all_complete() -> None:
    clock, pacer, log = FakeClock(), None, []
    pacer = Pacer(clock)
    replies, targets = [], []
    for n in range(10):
        target = RecordingTarget(clock, limit=2000, rate=Rate(5, 5.0), key="chan", log=log)
        text = f"Reply {n}: " + "lorem ipsum " * 30
        replies.append(Reply(ScriptRun(clock, deltas(text, 4, 0.05)), target, pacer, SETTINGS))
        targets.append((target, text))
    outcomes = await clock.run(asyncio.gather(*(r.run() for r in replies)))
    assert window_max([t for t, _, _ in log], 5.0) <= 5
    for (target, text), outcome in zip(targets, outcomes, strict=False):
        assert outcome.status == "done" and target.shown == [text]


async def test_429_pauses_the_budget_for_retry_after_then_delivers() -> None:
    clock, run, target, reply = setup(deltas("abc def ghi", 3, 1.0), limit=500, rate=Rate(10, 1.0))
    target.errors = [None, RateLimited(4.0)]  # the post works, the first edit gets a 429
    outcome = await clock.run(reply.run())
    (t_429, _, _), (t_next, _, _) = target.log[1], target.log[2]
    assert t_next - t_429 >= 4.0
    assert outcome.rate_limited == 1
    assert target.shown == ["abc def ghi"]


async def test_failed_final_edits_are_retried_until_the_text_arrives() -> None:
    clock, run, target, reply = setup(deltas("final words", 20, 0.1), limit=500)
    target.errors = [None] + [TransientError("502")] * 6
    outcome = await clock.run(reply.run())
    assert target.shown == ["final words"]
    assert outcome.retries == 6 and outcome.delivered


async def test_final_frame_gives_up_after_the_deadline() -> None:
    clock, run, target, reply = setup(deltas("never shown", 20, 0.1), limit=500)
    reply.settings = StreamConfig(final_deadline=60)
    target.errors = [None] + [TransientError("down")] * 1000
    outcome = await clock.run(reply.run())
    assert not outcome.delivered
    assert 60 <= clock.now() <= 120


async def test_a_deleted_message_cancels_the_run_and_stops_sending() -> None:
    clock, run, target, reply = setup(deltas("x " * 200, 2, 0.1), limit=2000, rate=Rate(10, 1.0))
    target.errors = [None, None, MessageGone("10008 Unknown Message")]
    outcome = await clock.run(reply.run())
    assert run.cancelled and outcome.status == "stopped"
    assert len(target.log) == 3  # nothing after the 404
    assert run.remembered is not None and run.remembered.endswith(SETTINGS.stopped_marker)


async def test_stop_keeps_partial_text_with_marker_and_remembers_it() -> None:
    clock, run, target, reply = setup(deltas("one two three four five six", 4, 1.0), limit=500)

    async def press_stop() -> None:
        await clock.sleep(3.5)
        reply.stop()

    outcome, _ = await clock.run(asyncio.gather(reply.run(), press_stop()))
    assert run.cancelled and outcome.status == "stopped"
    final = target.shown[0]
    assert final.startswith("one two thre") and final.endswith(SETTINGS.stopped_marker)
    assert "five" not in final and "▌" not in final
    assert run.remembered == outcome.text == final


async def test_model_error_mid_stream_keeps_partial_text_and_says_what_failed() -> None:
    steps = deltas("Partial answer", 4, 0.1)[:-1] + [(0.1, Failed("Model error — 500 boom"))]
    clock, run, target, reply = setup(steps, limit=500)
    outcome = await clock.run(reply.run())
    assert outcome.status == "failed"
    assert target.shown == ["Partial answer\n\n⚠️ Model error — 500 boom"]
    assert run.remembered == target.shown[0]


async def test_empty_stream_never_becomes_an_empty_message() -> None:
    clock, run, target, reply = setup([(0.5, Done())])
    outcome = await clock.run(reply.run())
    assert outcome.status == "empty"
    assert target.shown == [EMPTY_NOTE]


async def test_whitespace_only_stream_counts_as_empty() -> None:
    clock, run, target, reply = setup([(0.1, TextDelta("  \n")), (0.1, Done())])
    outcome = await clock.run(reply.run())
    assert outcome.status == "empty" and EMPTY_NOTE in target.shown[0]


async def test_tool_status_line_shows_while_the_tool_runs() -> None:
    steps = [
        (0.1, TextDelta("Let me check.")),
        (0.1, ToolStarted("search_docs", "c1")),
        (5.0, ToolFinished("search_docs", "c1")),
        (0.1, TextDelta(" Found it.")),
        (0.1, Done()),
    ]
    clock, run, target, reply = setup(steps, limit=500, rate=Rate(100, 1.0))
    await clock.run(reply.run())
    texts = [f.text for f in target.messages[0]]
    assert any("🔧 search docs…" in t for t in texts)
    assert "🔧" not in texts[-1] and texts[-1] == "Let me check. Found it."


async def test_a_failed_tool_shows_one_line_until_the_answer_goes_on() -> None:
    steps = [
        (0.1, ToolStarted("lookup_order", "c1")),
        (2.0, ToolFinished("lookup_order", "c1", failed=True)),
        (5.0, Searched("orders", ())),  # a search shows nothing of its own
        (5.0, TextDelta("I could not look that up.")),
        (0.1, Done()),
    ]
    clock, run, target, reply = setup(steps, limit=500, rate=Rate(100, 1.0))
    outcome = await clock.run(reply.run())
    texts = [f.text for f in target.messages[0]]
    assert any(t.endswith("⚠️ lookup order failed") for t in texts)
    assert outcome.status == "done" and texts[-1] == "I could not look that up."


async def test_pages_roll_over_when_a_message_has_streamed_for_too_long() -> None:
    text = "".join(f"Paragraph {i} is here.\n\n" for i in range(30))
    clock, run, target, reply = setup(deltas(text, 4, 0.5), limit=5000, max_age=30.0)
    outcome = await clock.run(reply.run())
    assert len(target.messages) >= 3
    assert outcome.text == text
    assert all(page.endswith("\n\n") for page in outcome.pages[:-1])  # cut at paragraphs


async def test_a_reply_stopped_before_it_starts_never_runs_the_model() -> None:
    clock, run, target, reply = setup(deltas("never", 2, 0.1))
    reply.stop()
    outcome = await clock.run(reply.run())
    assert outcome.status == "stopped" and target.shown == [SETTINGS.stopped_marker]
    assert run.cancelled


async def test_text_waiting_for_the_pacer_is_sent_when_a_slot_frees_without_a_new_chunk() -> None:
    """The relay flushes on time, not only on chunks: text that arrived while a request was in
    flight or while the budget was used up goes out as soon as the pacer allows, even when the
    model then says nothing for a long time (a tool running, a slow model)."""
    before = "Text that arrived in a burst. "
    steps = [(0.05, TextDelta(before[i : i + 6])) for i in range(0, len(before), 6)]
    steps += [(30.0, TextDelta("And the rest.")), (0.0, Done())]  # 30 s of silence first
    clock, run, target, reply = setup(steps, limit=500, rate=Rate(1, 1.0), latency=0.3)
    task = asyncio.ensure_future(reply.run())
    # The burst (0.05 to 0.25 s) arrives while the placeholder's post (0 to 0.3 s) is in flight,
    # and the next slot of the 1-per-second budget is at 1 s: the edit is due by 1.3 s.
    await clock.run(clock.sleep(2.0))
    assert target.log[0] == (0.0, "post", 0)
    assert [(t, op) for t, op, _ in target.log[1:]] == [(1.0, "edit")]
    shown = target.messages[0][-1]
    assert shown.raw == before and shown.streaming and not shown.final
    await clock.run(clock.sleep(27.0))  # still silent: nothing new to send, nothing sent
    assert len(target.log) == 2
    outcome = await clock.run(task)
    assert outcome.status == "done" and target.shown == [before + "And the rest."]
