"""Shards run by several processes take turns to IDENTIFY through Redis.

Discord allows one IDENTIFY per `shard_id % max_concurrency` bucket every 5 s, counted over
every connection of the bot. Each client here is a separate DiscordBot with its own host, store
and Redis client (as separate processes would be), against one fake Discord and a real
redis-server. The assertion is on the protocol: when the fake received each IDENTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import bots.discord_api
from bots.discord_api import DiscordSettings, identify_key
from bots.discord_bot import serve
from core.config import Config, MemoryConfig
from core.host import Host
from core.pacing import Pacer
from core.redis_state import RedisStore
from core.sources import build_brain
from fakes.discord_server import FakeDiscord
from fakes.redis_server import redis_url  # noqa: F401  (the fixture)

WAIT = 60.0
EVERY = 1.0  # IDENTIFY_EVERY for these tests: Discord's 5 s would only make them slower


@contextlib.asynccontextmanager
async def shard_process(
    fake: FakeDiscord, url: str | None, shard_id: int, shard_count: int
) -> AsyncIterator[asyncio.Task[None]]:
    """One bot process running `shard_id` of `shard_count` (on the redis backend with `url`)."""
    store = RedisStore.from_url(url) if url else None
    host = Host(Config(), build_brain(Config(memory=MemoryConfig(path=""))), Pacer(), store)
    settings = DiscordSettings(
        enabled=True,
        api_base=fake.api_base,
        sync_commands=False,
        shard_count=shard_count,
        shard_ids=[shard_id],
    )
    task = asyncio.create_task(serve(host, settings))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if store is not None:
            await store.close()


def gaps(fake: FakeDiscord) -> list[float]:
    times = sorted(at for _, at in fake.identify_times)
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_processes_take_turns_to_identify_in_one_bucket(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: F811
    """Shards 0, 2 and 4 of 6 with max_concurrency 2 share bucket 0: three processes starting
    at once IDENTIFY at least IDENTIFY_EVERY apart, in whatever order they win."""
    monkeypatch.setattr(bots.discord_api, "IDENTIFY_EVERY", EVERY)
    async with FakeDiscord(max_concurrency=2) as fake:
        monkeypatch.setenv("DISCORD_BOT_TOKEN", fake.token)
        async with (
            shard_process(fake, redis_url, 0, 6),
            shard_process(fake, redis_url, 2, 6),
            shard_process(fake, redis_url, 4, 6),
        ):
            await fake.wait_for(lambda: len(fake.identify_times) >= 3, WAIT)
    assert sorted(shard for shard, _ in fake.identify_times) == [0, 2, 4]
    assert len(gaps(fake)) == 2 and min(gaps(fake)) >= EVERY, gaps(fake)


def test_identify_buckets_follow_max_concurrency() -> None:
    assert identify_key(7, 0, 2) == identify_key(7, 2, 2) == identify_key(7, 4, 2)
    assert identify_key(7, 1, 2) != identify_key(7, 0, 2)
    assert identify_key(7, 0, 1) == identify_key(7, 5, 1)  # one bucket: every shard waits
    assert identify_key(7, 0, 2) != identify_key(8, 0, 2)  # another bot's shards do not
