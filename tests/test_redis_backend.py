"""`[memory] backend = "redis"` against a real redis-server: what N replicas share.

Each "replica" or "process" is its own store, pacer or bot with its own Redis client; the crashed
owner is a real subprocess killed with SIGKILL. No Redis mocks: the atomicity is the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from redis.asyncio import Redis

from bots.slack_api import SlackSettings
from bots.slack_bot import SlackBot
from core.backend import open_store
from core.config import Config, MemoryConfig, ModelConfig, check_env
from core.host import Host
from core.pacing import Pacer
from core.platform import Rate
from core.redis_state import REPLIES, RedisStore, RedisWindows, connect
from core.sources import answer, build_brain
from core.state import ReplyRecord
from fakes.openai_server import FakeOpenAI
from fakes.redis_server import redis_executable, redis_url  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


def redis_config(url: str, **memory: Any) -> Config:
    return Config(memory=MemoryConfig(backend="redis", url=url, **memory))


# --- redis-server itself ----------------------------------------------------------------------


def test_without_redis_server_a_developer_skips_but_ci_fails(monkeypatch) -> None:
    import fakes.redis_server

    def outcome() -> BaseException:  # caught here: a skip must not skip this test itself
        try:
            redis_executable()
        except BaseException as exc:  # noqa: BLE001 - pytest's skip and fail are BaseExceptions
            return exc
        raise AssertionError("redis_executable() found a redis-server that is not there")

    monkeypatch.setattr(fakes.redis_server.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    assert isinstance(outcome(), pytest.skip.Exception)
    monkeypatch.setenv("CI", "true")  # .ci/run installs redis-server: missing there is a failure
    failure = outcome()
    assert isinstance(failure, pytest.fail.Exception), repr(failure)
    assert "redis-server is missing in CI" in str(failure)


# --- config ------------------------------------------------------------------------------------


def test_redis_backend_needs_a_url_and_keeps_passwords_out_of_the_file(monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = Config(memory=MemoryConfig(backend="redis"))
    assert [str(p) for p in check_env(config, "config.toml")] == [
        "config.toml: memory.url: the redis backend needs a Redis URL: set [memory] url = "
        '"redis://host:6379/0" or export REDIS_URL=...'
    ]
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@127.0.0.1:6379/0")
    assert check_env(config, "config.toml") == []
    in_file = Config(memory=MemoryConfig(backend="redis", url="redis://:s3cret@127.0.0.1:6379/0"))
    problems = [str(p) for p in check_env(in_file, "config.toml")]
    assert len(problems) == 1 and "REDIS_URL" in problems[0] and "s3cret" not in problems[0]


def test_check_config_shows_where_redis_is_but_never_the_password(tmp_path, monkeypatch, capsys) -> None:
    from bots.cli import check_config

    monkeypatch.setenv("REDIS_URL", "redis://user:s3cret@10.1.2.3:6380/2")
    (tmp_path / "config.toml").write_text('[memory]\nbackend = "redis"\n')
    assert check_config(str(tmp_path / "config.toml")) == 0
    out = capsys.readouterr().out
    assert "memory: redis at 10.1.2.3:6380/2" in out and "s3cret" not in out and "user" not in out


def test_ask_names_a_missing_redis_url(tmp_path, monkeypatch, capsys) -> None:
    from bots.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    (tmp_path / "config.toml").write_text('[memory]\nbackend = "redis"\n')
    assert main(["ask", "--config", str(tmp_path / "config.toml"), "hi"]) == 1
    assert "config.toml: memory.url: the redis backend needs a Redis URL" in capsys.readouterr().err


# --- de-duplication ----------------------------------------------------------------------------


async def test_first_time_is_true_once_across_replicas(redis_url: str) -> None:
    a, b = open_store(redis_config(redis_url)), open_store(redis_config(redis_url))
    assert isinstance(a, RedisStore)
    try:
        answers = await asyncio.gather(*(s.first_time("slack:Ev1") for s in (a, b, a, b, a, b)))
        assert sorted(answers) == [False] * 5 + [True]
        assert await b.first_time("slack:Ev2")
        assert await a.first_time("short", ttl=0.05)
        await asyncio.sleep(0.2)
        assert await b.first_time("short", ttl=0.05)  # forgotten after its ttl
    finally:
        await a.close()
        await b.close()


async def test_slack_replicas_answer_a_redelivered_event_once(redis_url: str) -> None:
    """Slack redelivers to whichever replica the load balancer picks, plus the message twin."""
    answered: list[tuple[str, str]] = []
    bots, stores = [], []
    for name in ("replica-a", "replica-b"):
        store = RedisStore.from_url(redis_url)
        host = Host(Config(), build_brain(Config(memory=MemoryConfig(path=""))), Pacer(), store)
        bot = SlackBot(host, SlackSettings(), bot_token="xoxb-test")
        bot.bot_user_id = "UBOT"

        async def record(place: Any, prompt: str, ts: str, *, name: str = name, **_: Any) -> None:
            answered.append((name, prompt))

        bot.answer = record  # type: ignore[method-assign]
        bots.append(bot)
        stores.append(store)
    event = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "ts": "1700000000.000100",
        "text": "<@UBOT> hello",
    }
    body = {"event_id": "Ev1", "team_id": "T1"}
    dm = {
        "type": "message",
        "channel": "D1",
        "channel_type": "im",
        "user": "U1",
        "ts": "1700000002.000100",
        "text": "in private",
    }
    try:
        await asyncio.gather(*(bot.on_mention(body, event) for bot in bots * 3))
        # one message under two event ids (each replica gets one): still one answer
        await asyncio.gather(
            bots[0].on_message({**body, "event_id": "Ev2"}, dm),
            bots[1].on_message({**body, "event_id": "Ev3"}, dm),
        )
        # a new message is answered
        await bots[1].on_mention({**body, "event_id": "Ev4"}, {**event, "ts": "1700000003.000100"})
        for bot in bots:
            await bot.host.shutdown()  # waits for the answers it started
        assert sorted(prompt for _, prompt in answered) == ["hello", "hello", "in private"], answered
    finally:
        for store in stores:
            await store.close()


# --- reply records -----------------------------------------------------------------------------

DEAD_OWNER = """
import asyncio, sys
from core.redis_state import RedisStore
from core.state import ReplyRecord

async def main() -> None:
    store = RedisStore.from_url(sys.argv[1], lease_ttl=2.0)
    for i in range(20):
        await store.save_reply(ReplyRecord(f"s{i}", "slack", {"channel": "C1", "ts": str(i)}, "half"))
    await store.save_reply(ReplyRecord("d1", "discord", {"channel": 1}, "half"), now=True)
    print("saved", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_orphans_of_a_killed_owner_are_claimed_once_and_live_ones_never(redis_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DEAD_OWNER,
        redis_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"saved\n"
    live = RedisStore.from_url(redis_url)
    a, b = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    raw: Redis = connect(redis_url)
    try:
        await live.save_reply(ReplyRecord("live1", "slack", {"channel": "C2"}, "streaming"), now=True)
        # While the owner runs (its lease is refreshed), nothing of it is an orphan.
        assert await live.claim_orphans("slack") == []
        proc.kill()  # kill -9: no clean close, the lease just stops being refreshed
        await proc.wait()
        records = [json.loads(v) for v in (await raw.hgetall(REPLIES)).values()]
        (dead,) = {r["owner"] for r in records} - {live.owner}
        await wait_for(lambda: _gone(raw, f"streambot:alive:{dead}"), 20.0, "the lease to expire")

        # a and b have not connected yet: their claims run side by side, as at two start-ups
        got_a, got_b = await asyncio.gather(a.claim_orphans("slack"), b.claim_orphans("slack"))
        ids_a, ids_b = {r.reply_id for r in got_a}, {r.reply_id for r in got_b}
        assert ids_a.isdisjoint(ids_b)
        assert ids_a | ids_b == {f"s{i}" for i in range(20)}
        assert all(r.text == "half" and r.place["channel"] == "C1" for r in got_a + got_b)
        assert await a.claim_orphans("slack") == [] and await b.claim_orphans("slack") == []
        assert [r.reply_id for r in await b.claim_orphans("discord")] == ["d1"]
        assert set(await raw.hkeys(REPLIES)) == {b"live1"}  # the live owner's record stays
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for store in (live, a, b):
            await store.close()
        await raw.aclose()


async def _gone(raw: Redis, key: str) -> bool:
    return not await raw.exists(key)


async def test_a_cleanly_closed_owner_leaves_nothing_behind(redis_url: str) -> None:
    store, other = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    await store.save_reply(ReplyRecord("r1", "slack", {}, "text"), now=True)
    await store.drop_reply("r1")
    await store.close()
    raw = connect(redis_url)
    try:
        assert await raw.hlen(REPLIES) == 0
        assert await raw.keys("streambot:alive:*") == []
        assert await other.claim_orphans("slack") == []
    finally:
        await raw.aclose()
        await other.close()


# --- conversation memory -----------------------------------------------------------------------


async def test_conversation_memory_is_shared_through_redis(
    fake_openai: FakeOpenAI, redis_url: str, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-123456")
    config = Config(
        model=ModelConfig(base_url=fake_openai.base_url),
        memory=MemoryConfig(backend="redis", url=redis_url, max_items=2),
    )
    first, second = build_brain(config), build_brain(config)  # two replicas, two clients
    try:
        fake_openai.reply("Paris is the capital of France.")
        await answer(first, "capital of France?", "chat-1")
        fake_openai.reply("It has about 2 million people.")
        await answer(second, "population?", "chat-1")  # the other replica answers the next turn
        sent = str(fake_openai.requests_to("/v1/responses")[-1].body["input"])
        assert "capital of France?" in sent and "Paris is the capital of France." in sent
        fake_openai.reply("ok")
        await answer(first, "and Berlin?", "chat-1")
        sent = str(fake_openai.requests_to("/v1/responses")[-1].body["input"])
        # max_items = 2: only the last exchange goes with the new question
        assert "population?" in sent and "about 2 million" in sent and "and Berlin?" in sent
        assert "capital of France?" not in sent
        fake_openai.reply("hi")
        await answer(second, "hello", "chat-2")
        assert "Paris" not in str(fake_openai.requests_to("/v1/responses")[-1].body["input"])
    finally:
        for brain in (first, second):
            assert brain.redis is not None
            await brain.redis.aclose()


# --- shared pacing -----------------------------------------------------------------------------


def max_in_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + per) for t in times), default=0)


async def test_two_processes_share_one_budget(redis_url: str) -> None:
    clients = [connect(redis_url), connect(redis_url)]
    pacers = [Pacer(shared=RedisWindows(c)) for c in clients]
    grants: list[float] = []

    async def user(pacer: Pacer) -> None:
        for _ in range(3):
            await pacer.acquire([("slack:T1:chat.update", Rate(5, 1.0))])
            grants.append(time.monotonic())

    try:
        await asyncio.gather(*(user(p) for p in pacers for _ in range(2)))
    finally:
        for c in clients:
            await c.aclose()
    assert len(grants) == 12
    # Redis grants at most 5 per second by its own clock; a grant is seen here a little later,
    # so windows are counted 0.2 s short to leave room for that delay on a busy machine.
    # (Two unshared pacers would grant 10 at once.)
    assert max_in_window(grants, 0.8) <= 5


async def test_a_pause_in_one_process_holds_the_other(redis_url: str) -> None:
    clients = [connect(redis_url), connect(redis_url)]
    first, second = (Pacer(shared=RedisWindows(c)) for c in clients)
    budget = [("discord:channel:42", Rate(100, 1.0))]
    try:
        await second.acquire(budget)
        start = time.monotonic()
        first.pause(budget, 0.5)  # a 429 with Retry-After 0.5 s seen by the first process
        await wait_for(
            lambda: _present(clients[1], "streambot:pause:discord:channel:42"),
            20.0,
            "the pause to reach Redis",
        )
        await second.acquire(budget)
        assert time.monotonic() - start >= 0.49  # it waited for the pause (ms rounding aside)
    finally:
        for c in clients:
            await c.aclose()


async def _present(raw: Redis, key: str) -> bool:
    return bool(await raw.exists(key))


# --- the command ---------------------------------------------------------------------------------


async def test_streambot_runs_on_the_redis_backend(redis_url: str, tmp_path: Path) -> None:
    """`streambot` with backend = "redis": the console's turns are remembered in Redis."""
    (tmp_path / "config.toml").write_text('[memory]\nbackend = "redis"\n')
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "streambot"),
        "--log-level",
        "INFO",
        cwd=tmp_path,
        env={**os.environ, "REDIS_URL": redis_url.replace("redis://", "redis://:hunter2@")},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"hello bot\n/quit\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert "offline demo model" in out.decode()
    assert b"using Redis at 127.0.0.1:" in err and b"hunter2" not in out + err  # never the password
    assert not (tmp_path / "streambot.db").exists()  # nothing went to SQLite
    raw = connect(redis_url)
    try:
        (key,) = await raw.keys("streambot:session:console:*:messages")
        assert "hello bot" in str(await raw.lrange(key, 0, -1))
    finally:
        await raw.aclose()


async def test_redis_memory_expires_keeps_markers_and_forgets(
    fake_openai: FakeOpenAI, redis_url: str, monkeypatch
) -> None:
    from test_attachments import PNG

    from core.attachments import Attachment, Turn
    from fakes.openai_server import images_in

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    config = Config(
        model=ModelConfig(base_url=fake_openai.base_url),
        memory=MemoryConfig(backend="redis", url=redis_url, ttl_days=2),
    )
    brain = build_brain(config)
    raw = connect(redis_url)
    try:
        await answer(brain, Turn("look", "Sam", (Attachment("a.png", "image/png", data=PNG),)), "ttl-1")
        assert images_in(fake_openai.requests[-1].body)
        key = "streambot:session:ttl-1:messages"
        assert 0 < await raw.ttl(key) <= 2 * 86400  # [memory] ttl_days as the session's TTL
        stored = str(await raw.lrange(key, 0, -1))
        assert "[image: a.png]" in stored and "base64" not in stored
        assert await host_forgets(config, brain, "ttl-1")
        assert await raw.exists(key) == 0
    finally:
        await raw.aclose()
        if brain.redis is not None:
            await brain.redis.aclose()


async def host_forgets(config: Config, brain: Any, conversation: str) -> bool:
    return await Host(config, brain, Pacer()).forget(conversation)
