"""Token usage: recorded per reply from the Agents SDK, added up per person, channel and profile
(SQLite and Redis), counted in Prometheus, limited per day, and reported by `streambot usage`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import GUARD, Bot, final
from harness import running_discord_bot as discord_bot
from harness import slack_bot_for as slack_bot
from prometheus_client import REGISTRY

from bots.cli import main
from core.backend import open_backend
from core.config import Config, LimitsConfig, MemoryConfig
from core.limits import Gate, Refused
from core.redis_state import connect
from core.usage import LocalUsage, RedisUsage, Spent, UsageStore, day_of
from fakes.discord_server import FakeDiscord
from fakes.openai_server import FakeOpenAI
from fakes.redis_server import redis_executable, redis_url  # noqa: F401  (the fixture)
from fakes.slack_server import FakeSlack, settled

DAY, YESTERDAY, LONG_AGO = "2026-11-29", "2026-11-28", "2026-11-01"


def tokens(platform: str, kind: str) -> float:
    return REGISTRY.get_sample_value("streambot_tokens_total", {"platform": platform, "kind": kind}) or 0.0


async def fill(store: UsageStore) -> None:
    await store.record(Spent("ann", "c1", "slack", 100, 10, name="Ann"), DAY)
    await store.record(Spent("ann", "c2", "slack", 50, 5, profile="support"), DAY)
    await store.record(Spent("bob", "c1", "discord", 300, 30), YESTERDAY)
    await store.record(Spent("cid", "c3", "discord", 9000, 900), LONG_AGO)


async def check_store(store: UsageStore) -> None:
    await fill(store)
    assert await store.used("user", "ann", DAY) == 165
    assert await store.used("channel", "c1", DAY) == 110
    assert await store.used("user", "bob", DAY) == 0  # another day
    assert await store.used("user", "nobody", DAY) == 0
    [ann] = await store.top("user", 1, 10, DAY)
    assert (ann.key, ann.name, ann.platform, ann.replies) == ("ann", "Ann", "slack", 2)
    assert (ann.input_tokens, ann.output_tokens, ann.total_tokens) == (150, 15, 165)
    people = await store.top("user", 2, 10, DAY)
    assert [r.key for r in people] == ["bob", "ann"]  # the biggest first
    assert [r.key for r in await store.top("user", 2, 1, DAY)] == ["bob"]  # at most `limit`
    channels = await store.top("channel", 2, 10, DAY)
    assert [(r.key, r.total_tokens) for r in channels] == [("c1", 440), ("c2", 55)]
    profiles = await store.top("profile", 60, 10, DAY)
    assert [(r.key, r.replies) for r in profiles] == [("default", 3), ("support", 1)]


async def test_sqlite_adds_usage_up_by_person_channel_profile_and_day(tmp_path: Path) -> None:
    store = LocalUsage(str(tmp_path / "memory.db"))
    await check_store(store)
    await store.close()
    again = LocalUsage(str(tmp_path / "memory.db"))  # it is kept in the file
    assert await again.used("user", "ann", DAY) == 165
    await again.close()


async def test_redis_adds_usage_up_the_same_way(redis_url: str) -> None:  # noqa: F811
    redis = connect(redis_url)
    try:
        await check_store(RedisUsage(redis))
        assert 0 < await redis.ttl(f"streambot:usage:{DAY}:user") <= 400 * 86400
    finally:
        await redis.aclose()


async def test_the_gate_refuses_people_and_channels_over_their_daily_tokens(tmp_path: Path) -> None:
    store = LocalUsage(str(tmp_path / "memory.db"))
    gate = Gate(LimitsConfig(user_tokens_per_day=100, channel_tokens_per_day=200), usage=store)
    await gate.release(await gate.admit("ann", "c1", "q"))  # nothing used yet
    await store.record(Spent("ann", "c1", "slack", 90, 10))
    with pytest.raises(Refused, match=r"You've used your 100 tokens for today\. .* midnight \(UTC\)"):
        await gate.admit("ann", "c1", "q")
    await gate.release(await gate.admit("bob", "c1", "q"))  # others may still ask
    await store.record(Spent("bob", "c1", "slack", 99, 1))
    with pytest.raises(Refused, match="This channel has used its 200 tokens for today"):
        await gate.admit("cid", "c1", "q")
    await gate.release(await gate.admit("cid", "c2", "q"))  # other channels may still ask
    gate.limits.user_tokens_per_day = gate.limits.channel_tokens_per_day = 0  # 0: off
    await gate.release(await gate.admit("ann", "c1", "q"))
    await store.close()


async def test_a_usage_store_that_fails_refuses_no_one(tmp_path: Path) -> None:
    store = LocalUsage(str(tmp_path / "memory.db"))
    await store.close()  # every read now fails
    gate = Gate(LimitsConfig(user_tokens_per_day=1), usage=store)
    await gate.release(await gate.admit("ann", "c1", "q"))


async def test_discord_records_usage_counts_tokens_and_refuses_past_the_limit(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_in, before_out = tokens("discord", "input"), tokens("discord", "output")
    fake_openai.reply(["Fo", "ur."])
    async with discord_bot(fake_discord, fake_openai, tmp_path, monkeypatch) as bot:
        bot: Bot
        bot.config.limits.user_tokens_per_day = 1  # the first question passes: nothing used yet
        question, outcome = await bot.ask("2+2?")
        assert outcome.usage is not None and outcome.usage.output_tokens == 2
        store = LocalUsage(bot.config.memory.path)
        [person] = await store.top("user", 1)
        assert person.key == str(question.author.id) and person.platform == "discord"
        assert (person.replies, person.output_tokens) == (1, 2)
        assert person.input_tokens == outcome.usage.input_tokens > 0
        [channel] = await store.top("channel", 1)
        assert channel.key == str(question.channel_id) and channel.total_tokens == person.total_tokens
        await store.close()
        assert tokens("discord", "output") == before_out + 2
        assert tokens("discord", "input") == before_in + outcome.usage.input_tokens

        late = await fake_discord.send(f"<@{fake_discord.bot.id}> and 3+3?")
        [notice] = await fake_discord.wait_for(lambda: fake_discord.reply_pages(late), GUARD)
        assert "You've used your 1 tokens for today" in final(notice)
        assert len(fake_openai.requests) == 1  # the refused question never reached the model


async def test_slack_usage_is_shared_through_the_backend_with_a_channel_limit(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    limits = {"channel_tokens_per_day": 1}
    config = Config(memory=MemoryConfig(path=str(tmp_path / "memory.db")), limits=LimitsConfig(**limits))
    backend = open_backend(config)  # as `streambot run` opens it: the gate reads the usage store
    before = tokens("slack", "output")
    fake_openai.reply("Four.")
    try:
        async with slack_bot(slack, fake_openai, tmp_path, streaming="edit", limits=limits, backend=backend):
            ts = await slack.mention("C0GENERAL", "2+2?")
            await slack.wait_for(lambda: settled(slack, "C0GENERAL", ts), 30.0, "the reply")
            late = await slack.mention("C0GENERAL", "and 3+3?")
            await slack.wait_for(lambda: settled(slack, "C0GENERAL", late), 30.0, "the refusal")
            assert "This channel has used its 1 tokens for today" in slack.reply_text("C0GENERAL", late)
        assert await backend.usage.used("channel", "C0GENERAL") > 0
        [person] = await backend.usage.top("user", 1)
        assert person.key == "U0HUMAN" and person.name  # the display name the question carried
        assert tokens("slack", "output") == before + 2
        assert len(fake_openai.requests) == 1
    finally:
        await backend.store.close()
        await backend.usage.close()


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[memory]\npath = "{tmp_path / "memory.db"}"\n')
    return path


async def test_streambot_usage_prints_the_top_people_and_channels(tmp_path: Path, capsys) -> None:
    store = LocalUsage(str(tmp_path / "memory.db"))
    today = day_of()
    await store.record(Spent("U1", "C1", "slack", 1000, 234, name="Sam"), today)
    await store.record(Spent("U2", "C1", "discord", 10, 1), today)
    await store.record(Spent("U3", "C9", "slack", 99999, 1), "2000-01-01")  # outside the period
    await store.close()
    config = write_config(tmp_path)

    assert await run_cli(["usage", "--config", str(config), "--days", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(p["key"], p["name"], p["total_tokens"]) for p in data["people"]] == [
        ("U1", "Sam", 1234),
        ("U2", "", 11),
    ]
    assert [(c["key"], c["replies"]) for c in data["channels"]] == [("C1", 2)]
    assert data["until"] == today and data["days"] == 3

    assert await run_cli(["usage", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f" to {today} (UTC)" in out  # the last 7 days by default
    assert "Top people" in out and "Sam (U1)" in out and "1,234" in out
    assert "Top channels" in out and "C1" in out and "U3" not in out


async def test_streambot_usage_explains_a_missing_memory_file(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    assert await run_cli(["usage", "--config", str(config), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["people"] == []
    assert "memory.db does not exist yet" in captured.err
    assert not (tmp_path / "memory.db").exists()  # a report creates no database
    assert await run_cli(["usage", "--days", "0"]) == 2  # a bad flag is one line


async def run_cli(argv: list[str]) -> int:
    """`streambot …` in a thread: it runs its own event loop."""
    import asyncio

    try:
        return await asyncio.to_thread(main, argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def test_the_redis_gate_refuses_past_the_daily_tokens_too(redis_url: str) -> None:  # noqa: F811
    from core.redis_state import RedisGate

    redis = connect(redis_url)
    try:
        gate = RedisGate(LimitsConfig(user_tokens_per_day=10), redis)
        gate.usage = RedisUsage(redis)
        await gate.release(await gate.admit("ann", "c1", "q"))
        await gate.usage.record(Spent("ann", "c1", "slack", 8, 2))
        with pytest.raises(Refused, match="You've used your 10 tokens for today"):
            await gate.admit("ann", "c1", "q")
    finally:
        await redis.aclose()


async def test_streambot_usage_reads_the_redis_backend(tmp_path: Path, redis_url: str, capsys) -> None:  # noqa: F811
    redis = connect(redis_url)
    try:
        await RedisUsage(redis).record(Spent("U7", "C7", "slack", 40, 2, name="Kim"))
    finally:
        await redis.aclose()
    config = tmp_path / "config.toml"
    config.write_text(f'[memory]\nbackend = "redis"\nurl = "{redis_url}"\n')
    assert await run_cli(["usage", "--config", str(config), "--days", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(p["key"], p["name"], p["total_tokens"]) for p in data["people"]] == [("U7", "Kim", 42)]
