"""The reply host on a virtual clock: admission, order within a conversation, who may stop,
stop on delete, shutdown with grace, crash repair, the outcome hook and what INFO logs hold."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from core.config import Config, LimitsConfig, StreamConfig
from core.events import Event
from core.host import RESTARTING, Finished, Host, Question
from core.pacing import Pacer
from core.platform import Rate
from core.state import LocalStore, ReplyRecord
from fakes.clock import FakeClock
from fakes.scripted import RecordingTarget, ScriptRun, deltas

INTERRUPTED = StreamConfig().interrupted_marker


class ScriptBrain:
    """Starts one scripted run per question; `starts` records (time, prompt, conversation)."""

    def __init__(self, clock: FakeClock, script: dict[str, list[tuple[float, Event]]]) -> None:
        self.clock, self.script = clock, script
        self.starts: list[tuple[float, str, str | None]] = []
        self.runs: dict[str, ScriptRun] = {}

    def start(self, prompt: str, conversation: str | None = None) -> ScriptRun:
        self.starts.append((self.clock.now(), prompt, conversation))
        run = self.runs[prompt] = ScriptRun(self.clock, self.script[prompt])
        return run


def make(script: dict[str, list[tuple[float, Event]]], **limits: int) -> tuple[Host, ScriptBrain, FakeClock]:
    clock = FakeClock()
    brain = ScriptBrain(clock, script)
    config = Config(limits=LimitsConfig(**limits))
    return Host(config, brain, Pacer(clock)), brain, clock


def question(
    n: int, *, user: str = "ann", conversation: str = "c1", prompt: str | None = None, channel: str = "room"
) -> Question:
    return Question(f"r{n}", user, channel, conversation, prompt or f"q{n}", message=f"m{n}")


async def test_turns_of_one_conversation_run_in_order_and_others_in_parallel() -> None:
    host, brain, clock = make(
        {p: deltas("answer " * 10, every=1.0) for p in ("a", "b", "c")}, user_concurrent=0
    )
    targets = [RecordingTarget(clock, limit=2000, rate=Rate(100, 1.0), key=f"t{i}") for i in range(3)]
    outcomes = await clock.run(
        asyncio.gather(
            host.answer(question(1, prompt="a", conversation="same"), targets[0]),
            host.answer(question(2, prompt="b", conversation="same"), targets[1]),
            host.answer(question(3, prompt="c", conversation="other"), targets[2]),
        )
    )
    assert [o.status for o in outcomes if o] == ["done"] * 3
    started = {prompt: t for t, prompt, _ in brain.starts}
    first_done = max(t for t, _, _ in targets[0].log)
    assert started["b"] >= first_done  # the second turn waited for the first to finish
    assert started["c"] < first_done  # another conversation did not wait
    assert started["a"] == 0.0


async def test_a_refused_question_gets_a_notice_and_never_runs_the_model() -> None:
    host, brain, clock = make({"q1": deltas("hi"), "q2": deltas("hi")}, max_prompt_chars=5)
    target = RecordingTarget(clock, limit=2000)
    assert await clock.run(host.answer(question(1, prompt="far too long"), target)) is None
    assert brain.starts == []
    assert len(target.messages) == 1 and "too long" in target.shown[0]
    assert target.messages[0][0].final and not target.messages[0][0].streaming
    assert host.running() == 0
    host.closing = True
    later = RecordingTarget(clock, limit=2000)
    assert await clock.run(host.answer(question(2, prompt="q2"), later)) is None
    assert later.shown == [RESTARTING] and brain.starts == []


async def test_slots_are_released_when_a_reply_ends() -> None:
    host, _, clock = make({"q1": deltas("one"), "q2": deltas("two")}, user_concurrent=1)
    first = await clock.run(host.answer(question(1, prompt="q1"), RecordingTarget(clock, limit=2000)))
    second = await clock.run(
        host.answer(question(2, prompt="q2", conversation="c2"), RecordingTarget(clock, limit=2000))
    )
    assert first and second and (first.status, second.status) == ("done", "done")


async def test_only_the_asker_or_a_moderator_may_stop_a_reply() -> None:
    host, brain, clock = make({"q1": deltas("word " * 200, every=0.5)})
    target = RecordingTarget(clock, limit=4000)
    task = asyncio.ensure_future(host.answer(question(1, prompt="q1"), target))

    async def press() -> Any:
        await clock.sleep(3.0)
        assert await host.stop("r1", "bob") == "not_yours"
        await clock.sleep(1.0)
        assert await host.stop("r1", "mallory", moderator=False) == "not_yours"
        assert await host.stop("r1", "ann") == "stopped"
        assert await host.stop("nope", "ann") == "unknown"
        return await task

    outcome = await clock.run(press())
    assert outcome.status == "stopped" and brain.runs["q1"].cancelled
    assert outcome.text.endswith(StreamConfig().stopped_marker)
    assert await host.stop("r1", "ann") == "unknown"  # finished replies are forgotten


async def test_a_moderator_may_stop_anyones_reply() -> None:
    host, _, clock = make({"q1": deltas("word " * 200, every=0.5)})
    task = asyncio.ensure_future(host.answer(question(1, prompt="q1"), RecordingTarget(clock, limit=4000)))

    async def press() -> Any:
        await clock.sleep(2.0)
        assert await host.stop("r1", "mod", moderator=True) == "stopped"
        return await task

    assert (await clock.run(press())).status == "stopped"


async def test_deleting_the_question_stops_the_reply() -> None:
    host, _, clock = make({"q1": deltas("word " * 200, every=0.5)})
    target = RecordingTarget(clock, limit=4000)
    task = asyncio.ensure_future(host.answer(question(1, prompt="q1"), target))

    async def delete() -> Any:
        await clock.sleep(2.0)
        assert not await host.deleted("someone else's message")
        assert await host.deleted("m1")
        return await task

    outcome = await clock.run(delete())
    assert outcome.status == "stopped"
    assert target.messages[0][-1].final  # the reply's own message still gets its final text


class KeyedTarget(RecordingTarget):
    """A RecordingTarget whose messages have platform ids, as deletions name them."""

    def message_key(self, handle: Any) -> str:
        return f"page{handle}"


async def test_deleting_a_page_stops_the_reply_and_sends_nothing_more_to_that_page() -> None:
    host, _, clock = make({"q1": deltas("word " * 300, every=0.2)})
    target = KeyedTarget(clock, limit=300)
    task = asyncio.ensure_future(host.answer(question(1, prompt="q1"), target))

    async def delete() -> Any:
        while len(target.messages) < 2:
            await clock.sleep(0.5)
        assert await host.deleted("page1")
        deleted_at = clock.now()
        outcome = await task
        return outcome, deleted_at

    outcome, deleted_at = await clock.run(delete())
    assert outcome.status == "stopped"
    assert not [op for t, op, k in target.log if k == 1 and t > deleted_at]  # page 1 left alone


async def test_a_reply_stopped_while_waiting_for_its_turn_never_runs() -> None:
    host, brain, clock = make({"a": deltas("first " * 20, every=0.5), "b": deltas("second")})
    first = asyncio.ensure_future(host.answer(question(1, prompt="a"), RecordingTarget(clock, limit=4000)))
    waiting = RecordingTarget(clock, limit=4000)
    second = asyncio.ensure_future(host.answer(question(2, prompt="b"), waiting))

    async def stop_second() -> Any:
        await clock.sleep(1.0)
        assert await host.stop("r2", "ann") == "stopped"
        return await asyncio.gather(first, second)

    done, skipped = await clock.run(stop_second())
    assert done.status == "done" and skipped is None
    assert [p for _, p, _ in brain.starts] == ["a"] and waiting.messages == [] and waiting.closed


async def test_shutdown_lets_quick_replies_finish_and_interrupts_the_rest() -> None:
    host, _, clock = make(
        {"quick": deltas("done soon", every=0.5), "slow": deltas("word " * 400, every=0.5)}, user_concurrent=0
    )
    quick_target, slow_target = RecordingTarget(clock, limit=4000), RecordingTarget(clock, limit=4000)
    quick = asyncio.ensure_future(host.answer(question(1, prompt="quick", conversation="a"), quick_target))
    slow = asyncio.ensure_future(host.answer(question(2, prompt="slow", conversation="b"), slow_target))

    async def shut() -> Any:
        await clock.sleep(1.0)
        await asyncio.gather(host.shutdown(), host.shutdown())  # every adapter calls it: once
        return await asyncio.gather(quick, slow)

    q, s = await clock.run(shut())
    assert q.status == "done" and q.text == "done soon"
    assert s.status == "stopped" and s.text.endswith(INTERRUPTED)
    assert slow_target.shown[-1].endswith(INTERRUPTED)
    assert clock.now() >= StreamConfig().shutdown_grace  # the slow one had its grace first
    late = RecordingTarget(clock, limit=4000)
    assert await clock.run(host.answer(question(3, prompt="quick", conversation="c"), late)) is None
    assert late.shown == [RESTARTING]


async def test_repair_finishes_orphans_with_the_marker_within_the_page() -> None:
    store = LocalStore("")
    clock = FakeClock()
    host = Host(Config(), ScriptBrain(clock, {}), Pacer(clock), store)
    await store._write({"dead": ReplyRecord("dead", "chat", {"message": 7}, "x" * 500, owner="gone")})
    finished: list[tuple[dict[str, Any], str]] = []
    done = asyncio.Event()

    async def finish(place: dict[str, Any], text: str) -> None:
        finished.append((place, text))
        done.set()

    host.repair("chat", finish, page_limit=200)
    await asyncio.wait_for(done.wait(), 10)
    await host.shutdown()
    [(place, text)] = finished
    assert place == {"message": 7} and text.endswith(f"\n\n{INTERRUPTED}") and len(text) <= 200
    assert text.startswith("x" * 100)
    await store.close()


async def test_the_outcome_hook_sees_every_reply_and_info_logs_hold_no_reply_text(caplog) -> None:
    secret = "zebra-quartz-4711"
    host, _, clock = make({"q1": deltas(f"the answer is {secret}")})
    seen: list[Finished] = []
    host.on_finished.append(seen.append)
    caplog.set_level(logging.DEBUG, logger="streambot")
    outcome = await clock.run(host.answer(question(1, prompt="q1"), RecordingTarget(clock, limit=2000)))
    assert [f.outcome for f in seen] == [outcome] and seen[0].question.reply_id == "r1"
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any(getattr(r, "reply_id", None) == "r1" and getattr(r, "status", None) == "done" for r in info)
    for r in info:
        assert secret not in r.getMessage()
        assert not any(secret in str(v) for v in vars(r).values()), f"reply text on {r.getMessage()!r}"


class FailingOpen(RecordingTarget):
    async def open(self) -> None:
        raise RuntimeError("typing indicator broke")


async def test_a_failing_acknowledgement_does_not_cost_the_answer() -> None:
    host, _, clock = make({"q1": deltas("still here")})
    outcome = await clock.run(host.answer(question(1, prompt="q1"), FailingOpen(clock, limit=2000)))
    assert outcome is not None and outcome.status == "done" and outcome.text == "still here"


@pytest.mark.parametrize("conversation", ["", "c1"])
async def test_a_reply_is_forgotten_after_it_ends(conversation: str) -> None:
    host, _, clock = make({"q1": deltas("bye")})
    await clock.run(
        host.answer(question(1, prompt="q1", conversation=conversation), RecordingTarget(clock, limit=2000))
    )
    assert host.running() == 0 and not host._messages and not host._turns
    assert not await host.deleted("m1")


async def test_the_same_question_delivered_twice_is_answered_once() -> None:
    host, brain, clock = make({"q1": deltas("once " * 20, every=0.5)})
    first, again = RecordingTarget(clock, limit=4000), RecordingTarget(clock, limit=4000)
    outcomes = await clock.run(
        asyncio.gather(
            host.answer(question(1, prompt="q1"), first), host.answer(question(1, prompt="q1"), again)
        )
    )
    assert outcomes[0] is not None and outcomes[0].status == "done" and outcomes[1] is None
    assert len(brain.starts) == 1 and again.messages == []
