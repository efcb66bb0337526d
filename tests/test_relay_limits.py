"""The relay when the model is slow, silent or too long, and the records that outlive a crash."""

from __future__ import annotations

import asyncio
from typing import Any

from core.config import StreamConfig
from core.events import TextDelta
from core.pacing import Pacer
from core.platform import Rate
from core.relay import SLOW_STATUS, Reply
from core.state import LocalStore
from fakes.clock import FakeClock
from fakes.scripted import RecordingTarget, ScriptRun, deltas

SETTINGS = StreamConfig(slow_notice=5, first_token_timeout=30, stall_timeout=20)


def setup(steps, settings=SETTINGS, store=None, target_cls=RecordingTarget):
    clock = FakeClock()
    run = ScriptRun(clock, steps)
    target = target_cls(clock, limit=500, rate=Rate(50, 1.0))
    return clock, run, target, Reply(run, target, Pacer(clock), settings, store)


async def test_a_slow_model_is_announced_then_given_up_on() -> None:
    clock, run, target, reply = setup(deltas("too late", 4, 100.0))
    outcome = await clock.run(reply.run())
    texts = [f.text for f in target.messages[0]]
    assert any(SLOW_STATUS in t for t in texts[:-1])  # the placeholder said so while waiting
    assert outcome.status == "failed" and run.cancelled
    assert "did not answer within 30 s" in target.shown[0]
    assert "too late" not in target.shown[0] and SLOW_STATUS not in target.shown[0]
    assert 30 <= clock.now() < 40


async def test_a_stall_mid_answer_keeps_the_text_and_says_it_is_incomplete() -> None:
    steps = deltas("Half an answer", 4, 0.1)[:-1] + [(500.0, TextDelta(" never"))]
    clock, run, target, reply = setup(steps)
    outcome = await clock.run(reply.run())
    assert outcome.status == "failed" and run.cancelled
    shown = target.shown[0]
    assert shown.startswith("Half an answer\n\n⚠️ The model stopped responding for 20 s")
    assert run.remembered == shown  # the next turn's history shows what the user saw


async def test_a_model_that_answers_in_time_is_not_cut() -> None:
    steps = [(25.0, TextDelta("slow start"))] + deltas(" then steady", 2, 15.0)
    clock, run, target, reply = setup(steps)
    outcome = await clock.run(reply.run())
    assert outcome.status == "done" and target.shown == ["slow start then steady"]


async def test_an_answer_past_max_reply_chars_is_cut_with_a_note() -> None:
    settings = StreamConfig(max_reply_chars=50)
    clock, run, target, reply = setup(deltas("abcdefghij" * 20, 7, 0.1), settings)
    outcome = await clock.run(reply.run())
    assert run.cancelled and outcome.status == "stopped"
    assert outcome.text == "abcdefghij" * 5 + "\n\n✂️ The answer was cut off at 50 characters."


class LocatedTarget(RecordingTarget):
    platform = "test"

    def locate(self, handle: Any) -> dict[str, Any]:
        return {"message": handle}


async def test_a_streaming_reply_is_recorded_for_crash_recovery_and_dropped_when_done(tmp_path) -> None:
    db = str(tmp_path / "state.db")
    store = LocalStore(db)
    text = "```python\nprint('hi')\n" + "x = 1\n" * 30
    clock, run, target, reply = setup(deltas(text, 5, 0.5), store=store, target_cls=LocatedTarget)
    task = asyncio.ensure_future(reply.run())
    await clock.run(clock.sleep(10.0))  # half way through the answer
    await store.flush()

    # another process (a restart after kill -9) finds the reply and what it should show
    restarted = LocalStore(db)
    (record,) = await restarted.claim_orphans("test")
    assert record.reply_id == reply.id and record.place == {"message": 0}
    assert record.text.startswith("```python\nprint('hi')\n") and record.text.endswith("```")
    assert "▌" not in record.text
    assert await restarted.claim_orphans("test") == []  # handed out once

    await clock.run(clock.sleep(5.0))
    await store.flush()  # still streaming: recorded again
    assert [r.reply_id for r in await LocalStore(db).claim_orphans("test")] == [reply.id]
    outcome = await clock.run(task)
    await store.flush()
    assert outcome.status == "done"
    assert await LocalStore(db).claim_orphans("test") == []  # finished replies leave nothing
