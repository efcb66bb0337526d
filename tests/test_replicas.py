"""Replicas that act as one, against a real redis-server.

Each replica is its own Host, store, pacer, `[limits]` gate and Redis client; the Slack ones
also have their own bolt app and Socket Mode connection to the one fake Slack, which delivers
each event to the connection a test picks (`slack.route`), as Slack spreads events over an
app's connections. A partitioned replica reaches Redis through a TCP proxy that cuts the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import slack_bot_for as bot_for
from harness import start_streambot

import core.state
from bots.slack_api import STOP_ACTION
from core.backend import Backend, open_backend
from core.config import Config, LimitsConfig, MemoryConfig, StreamConfig
from core.host import Host, Question
from core.pacing import Pacer, RealClock
from core.platform import Rate
from core.redis_state import LIVE, REPLIES, RedisGate, RedisStore, connect
from fakes.openai_server import FakeOpenAI
from fakes.redis_server import redis_url  # noqa: F401  (the fixture)
from fakes.scripted import RecordingTarget, ScriptRun, deltas
from fakes.slack_server import FakeSlack, settled
from fakes.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "C0GENERAL"
WAIT = 30.0
INTERRUPTED = StreamConfig().interrupted_marker


@contextlib.asynccontextmanager
async def replica(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, url: str, **settings: Any
) -> AsyncIterator[Backend]:
    """One Slack replica on the redis backend, connected after the ones before it."""
    backend = open_backend(
        Config(
            memory=MemoryConfig(backend="redis", url=url), limits=LimitsConfig(**settings.pop("limits", {}))
        )
    )
    try:
        async with bot_for(
            slack,
            fake_openai,
            tmp_path,
            backend=backend,
            streaming="edit",
            limits=backend.gate.limits.model_dump(),
            **settings,
        ):
            yield backend
    finally:
        await backend.store.close()
        await backend.redis.aclose()


@contextlib.asynccontextmanager
async def two_replicas(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, url: str, **settings: Any
) -> AsyncIterator[None]:
    async with (
        replica(slack, fake_openai, tmp_path, url, **settings),
        replica(slack, fake_openai, tmp_path, url, **settings),
    ):
        assert len(slack._open_sockets()) == 2
        yield


def button_message(slack: FakeSlack, ts: str, word: str) -> Any:
    return next((m for m in slack.bot_messages(CHANNEL, ts) if word in m.text and m.buttons), None)


async def stop_on_the_other_replica(slack: FakeSlack, script: Any) -> str:
    """Ask on replica A (an "alpha…" answer held mid-stream), click its Stop button on
    replica B, wait for the reply to settle; the question's ts."""
    slack.route = 0
    ts = await slack.mention(CHANNEL, "a long one")
    await script.wait_held()
    msg = await slack.wait_for(lambda: button_message(slack, ts, "alpha"), WAIT)
    slack.route = 1
    await slack.click(msg, STOP_ACTION)
    await slack.wait_for(lambda: settled(slack, CHANNEL, ts), WAIT, "the reply to stop")
    return ts


async def test_a_stop_click_on_the_other_replica_stops_the_reply(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    first = fake_openai.reply("beta " * 40, delay=0.005, hold_after=10)
    script = fake_openai.reply("alpha " * 300, delay=0.005, hold_after=10)
    async with two_replicas(slack, fake_openai, tmp_path, redis_url):
        # Someone else's click, forwarded by the other replica, does nothing.
        slack.route = 0  # replica A answers
        ts1 = await slack.mention(CHANNEL, "a short one")
        await first.wait_held()
        msg = await slack.wait_for(lambda: button_message(slack, ts1, "beta"), WAIT)
        slack.route = 1  # the click reaches replica B
        ignored = await slack.click(msg, STOP_ACTION, user="U0SOMEONEELSE")
        await slack.wait_for(lambda: ignored.acked, WAIT)
        await asyncio.sleep(0.5)  # time for a wrongly forwarded stop to arrive
        first.release()
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts1), WAIT)
        assert slack.reply_text(CHANNEL, ts1) == "beta " * 40

        # The asker's click on replica B stops the reply replica A streams.
        ts = await stop_on_the_other_replica(slack, script)
        await slack.wait_for(lambda: fake_openai.disconnects >= 1, WAIT, "the model run to end")
    shown = slack.reply_text(CHANNEL, ts)
    assert shown.startswith("alpha") and shown.endswith("⏹ stopped") and shown.count("alpha") < 300


async def test_deleting_the_question_on_the_other_replica_stops_the_reply(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    script = fake_openai.reply("gamma " * 300, delay=0.005, hold_after=10)
    async with two_replicas(slack, fake_openai, tmp_path, redis_url):
        slack.route = 0
        ts = await slack.mention(CHANNEL, "question")
        await script.wait_held()
        await slack.wait_for(lambda: button_message(slack, ts, "gamma"), WAIT)
        slack.route = 1
        await slack.delete_message(CHANNEL, ts)
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts), WAIT, "the reply to stop")
    assert slack.reply_text(CHANNEL, ts).endswith("⏹ stopped")


async def test_two_questions_in_one_thread_on_two_replicas_answer_in_order(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    first = fake_openai.reply("The capital of Norway is Oslo.", delay=0.01, hold_after=2)
    fake_openai.reply("It has about 700,000 people.")
    async with two_replicas(slack, fake_openai, tmp_path, redis_url):
        slack.route = 0
        ts = await slack.mention(CHANNEL, "What is the capital of Norway?")
        await first.wait_held()
        await slack.wait_for(lambda: slack.bot_messages(CHANNEL, ts), WAIT)
        slack.route = 1  # the follow-up in the thread reaches replica B while A still answers
        await slack.user_message(CHANNEL, "How many people live there?", thread_ts=ts)
        await asyncio.sleep(1.0)  # B has the question; it must wait for A's turn to end
        assert len(fake_openai.requests) == 1, "the second turn started before the first ended"
        first.release()
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts, pages=2), WAIT, "both replies")
    assert [m.text for m in slack.bot_messages(CHANNEL, ts)] == [
        "The capital of Norway is Oslo.",
        "It has about 700,000 people.",
    ]
    second = str(fake_openai.requests[1].body)
    assert "The capital of Norway is Oslo." in second  # B saw A's answer in the shared memory


async def test_one_persons_per_minute_limit_holds_across_replicas(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    for n in range(2):
        fake_openai.reply(f"answer {n}")
    async with two_replicas(
        slack, fake_openai, tmp_path, redis_url, limits={"user_per_minute": 2, "user_concurrent": 0}
    ):
        threads = []
        for n, route in enumerate((0, 1, 0)):
            slack.route = route
            threads.append(await slack.mention(CHANNEL, f"question {n}"))
            await slack.wait_for(lambda t=threads[-1]: settled(slack, CHANNEL, t), WAIT)
    assert [slack.reply_text(CHANNEL, t) for t in threads[:2]] == ["answer 0", "answer 1"]
    refusal = slack.reply_text(CHANNEL, threads[2])
    assert "2 questions in the last minute" in refusal, refusal
    assert len(fake_openai.requests) == 2


async def test_a_dead_replicas_limit_slots_are_freed_after_its_lease(redis_url: str) -> None:
    limits = LimitsConfig(user_concurrent=1, user_per_minute=0)
    dead_client, live_client = connect(redis_url), connect(redis_url)
    dead, live = RedisGate(limits, dead_client, lease_ttl=1.0), RedisGate(limits, live_client, lease_ttl=1.0)
    try:
        held = await dead.admit("ann", "c1", "q")
        with pytest.raises(Exception, match="already have 1 answer"):
            await live.admit("ann", "c2", "q")
        await asyncio.sleep(1.5)  # still held: the holder renews its lease
        with pytest.raises(Exception, match="already have 1 answer"):
            await live.admit("ann", "c2", "q")
        assert dead._renewer is not None
        dead._renewer.cancel()  # the holder dies without releasing
        deadline = time.monotonic() + 10
        while True:
            try:
                slot = await live.admit("ann", "c2", "q")
                break
            except Exception:
                assert time.monotonic() < deadline, "the dead replica's slot was never freed"
                await asyncio.sleep(0.2)
        await live.release(slot)
        del held
    finally:
        await dead_client.aclose()
        await live_client.aclose()


class Brain:
    def start(self, prompt: str, conversation: str | None = None) -> ScriptRun:
        return ScriptRun(RealClock(), deltas("word " * 2000, size=5, every=0.05))  # ~100 s


class Recorded(RecordingTarget):
    """Records frames with real time; its messages can be found again after a crash."""

    platform = "chat"

    def locate(self, handle: Any) -> dict[str, Any]:
        return {"message": handle}


async def test_a_replica_cut_off_from_redis_ends_its_replies_before_another_repairs_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.state, "ORPHAN_CHECK_EVERY", 0.2)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await TcpProxy(port).start()
    cut_off = RedisStore(connect(f"redis://127.0.0.1:{proxy.port}/0"), lease_ttl=3.0, owns_client=True)
    other = RedisStore(connect(redis_url), lease_ttl=3.0, owns_client=True)
    raw = connect(redis_url)
    host_a = Host(Config(), Brain(), Pacer(), cut_off)
    host_b = Host(Config(), Brain(), Pacer(), other)
    # Everything is scaled down 10x from production (a 30 s lease, Discord's 5 edits per 5 s).
    target = Recorded(RealClock(), limit=50_000, key="chat", rate=Rate(5, 0.5))  # type: ignore[arg-type]
    repaired: list[tuple[float, str]] = []

    async def finish(place: dict[str, Any], text: str) -> None:
        repaired.append((time.monotonic(), text))

    try:
        host_a.start()
        host_b.start()
        answering = asyncio.create_task(
            host_a.answer(Question("r1", "ann", "c1", "", "tell me everything"), target)
        )
        deadline = time.monotonic() + WAIT
        while not (await raw.hexists(REPLIES, "r1") and await raw.hexists(LIVE, "r1")):
            assert time.monotonic() < deadline, "the reply was never recorded"
            await asyncio.sleep(0.1)
        host_b.repair("chat", finish, page_limit=50_000)
        await asyncio.sleep(1.0)
        assert repaired == []  # a live replica's reply is not an orphan
        proxy.partition()
        outcome = await asyncio.wait_for(answering, WAIT)
        deadline = time.monotonic() + WAIT
        while not repaired:
            assert time.monotonic() < deadline, "the orphan was never repaired"
            await asyncio.sleep(0.1)
    finally:
        proxy.heal()
        await host_a.shutdown()
        await host_b.shutdown()
        for store in (cut_off, other):
            await store.close()
        await raw.aclose()
        await proxy.close()
    assert outcome is not None and outcome.status == "stopped" and outcome.text.endswith(INTERRUPTED)
    last_frame_at = max(t for t, _, _ in target.log)
    ((repaired_at, text),) = repaired
    assert last_frame_at < repaired_at, "the reply was still streaming when it was repaired"
    assert text.endswith(INTERRUPTED) and text.startswith("word word")


async def test_two_streambot_processes_share_stop_and_limits(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    """The same, as production runs it: two `streambot run` processes on one Redis."""
    from fakes.slack_server import APP_TOKEN, BOT_TOKEN

    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbase_url = "{fake_openai.base_url}"\n'
        f'[memory]\nbackend = "redis"\nurl = "{redis_url}"\n'
        "[limits]\nuser_per_minute = 2\n"
        f'[slack]\nenabled = true\napi_base = "{slack.base_url}"\nstreaming = "edit"\n'
    )
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "OPENAI_API_KEY": "test"}
    script = fake_openai.reply("alpha " * 300, delay=0.005, hold_after=10)
    fake_openai.reply("second answer")
    procs = []
    try:
        for n in range(2):
            procs.append(await start_streambot(config, env, tmp_path / f"replica{n}.log"))
            await slack.wait_connected(WAIT, more_than=n)
        ts = await stop_on_the_other_replica(slack, script)
        assert slack.reply_text(CHANNEL, ts).endswith("⏹ stopped")
        second = await slack.mention(CHANNEL, "again")  # replica B: the person's 2nd question
        await slack.wait_for(lambda: settled(slack, CHANNEL, second), WAIT)
        slack.route = 0
        third = await slack.mention(CHANNEL, "and again")  # replica A: the 3rd in a minute
        await slack.wait_for(lambda: settled(slack, CHANNEL, third), WAIT)
        assert slack.reply_text(CHANNEL, second) == "second answer"
        assert "2 questions in the last minute" in slack.reply_text(CHANNEL, third)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), WAIT)


async def test_get_a_human_on_two_replicas_pings_once(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, redis_url: str
) -> None:
    from bots.slack_api import HUMAN_ACTION

    fake_openai.reply("Try turning it off and on.")
    desk = {
        "profiles": {"support": {"handoff": {"slack_group": "S0ONCALL"}}},
        "routes": [{"platform": "slack", "profile": "support"}],
    }
    async with two_replicas(slack, fake_openai, tmp_path, redis_url, **desk):
        slack.route = 0
        ts = await slack.mention(CHANNEL, "broken")
        await slack.wait_for(lambda: settled(slack, CHANNEL, ts), WAIT, "the answer")
        [answer] = slack.bot_messages(CHANNEL, ts)
        slack.route = None  # the clicks take turns between the replicas
        for user in ("U0ANN", "U0ANN", "U0BOB", "U0BOB"):
            await slack.click(answer, HUMAN_ACTION, user=user)
        await slack.wait_for(
            lambda: slack.pings and len(slack.ephemeral) >= 3, WAIT, "one ping and three 'already' notes"
        )
        assert [p[2] for p in slack.pings] == ["<!subteam^S0ONCALL>"]
        await slack.wait_for(lambda: slack.messages[(CHANNEL, ts)].reactions == {"sos"}, WAIT, "the 🆘")
