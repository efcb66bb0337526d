"""`[memory] backend = "redis"`: state shared by every replica of the bot.

One Redis holds the event de-duplication keys (each platform event answered once, whichever
replica receives it), the records of replies still streaming, each process's lease, and the
pacing windows (core/pacing.py) so N replicas streaming into one channel stay under its limit.
Conversation memory lives there too, through the Agents SDK's RedisSession (core/sources.py).

Keys all start with `streambot:`. The URL may hold a password: only `redis_where(url)` is logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.config import redis_where
from core.platform import Rate
from core.state import DEDUP_TTL, ReplyRecord, StateStore

log = logging.getLogger("streambot.state")

PREFIX = "streambot:"
REPLIES = PREFIX + "replies"  # hash: reply id -> ReplyRecord JSON
LEASE_TTL = 30.0  # seconds a process counts as alive after its last lease refresh


def connect(url: str) -> Redis:
    """A client for `url` (it connects on first use)."""
    log.info("using Redis at %s", redis_where(url))
    return Redis.from_url(url)


class RedisStore(StateStore):
    """De-duplication and reply records shared by every process using one Redis.

    A record is an orphan when its owner's lease (`streambot:alive:<owner>`) has expired: the
    owner refreshes it every `lease_ttl / 3` seconds while it has written records, and deletes it
    when it closes cleanly. Each orphan is claimed by HDEL, which only one caller can win.
    """

    def __init__(self, redis: Redis, *, lease_ttl: float = LEASE_TTL, owns_client: bool = False) -> None:
        super().__init__()
        self.redis = redis
        self.lease_ttl = lease_ttl
        self._owns_client = owns_client
        self._lease: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, lease_ttl: float = LEASE_TTL) -> RedisStore:
        """A store with its own client, closed with the store."""
        return cls(connect(url), lease_ttl=lease_ttl, owns_client=True)

    def _alive_key(self, owner: str) -> str:
        return f"{PREFIX}alive:{owner}"

    async def first_time(self, key: str, ttl: float = DEDUP_TTL) -> bool:
        # SET NX is atomic: of two replicas receiving one event, exactly one sets the key.
        return bool(await self.redis.set(f"{PREFIX}seen:{key}", 1, nx=True, px=max(1, int(ttl * 1000))))

    async def _write(self, batch: dict[str, ReplyRecord | None]) -> None:
        async with self.redis.pipeline() as pipe:
            # The lease goes first, in the same transaction: no replica can see a record of ours
            # without our lease and take it for an orphan.
            pipe.set(self._alive_key(self.owner), 1, px=int(self.lease_ttl * 1000))
            for reply_id, record in batch.items():
                if record is None:
                    pipe.hdel(REPLIES, reply_id)
                else:
                    pipe.hset(REPLIES, reply_id, record.to_json())
            await pipe.execute()
        if self._lease is None or self._lease.done():
            self._lease = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self.redis.set(self._alive_key(self.owner), 1, px=int(self.lease_ttl * 1000))
            except RedisError as exc:
                log.warning("could not refresh this process's lease in Redis: %s", exc)

    async def claim_orphans(self, platform: str) -> list[ReplyRecord]:
        records = [ReplyRecord.from_json(v) for v in (await self.redis.hgetall(REPLIES)).values()]
        candidates = [r for r in records if r.platform == platform and r.owner != self.owner]
        owners = sorted({r.owner for r in candidates})
        if not owners:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(self._alive_key(owner))
            alive = dict(zip(owners, await pipe.execute()))
        orphans = [r for r in candidates if not alive[r.owner]]
        if not orphans:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in orphans:
                pipe.hdel(REPLIES, record.reply_id)
            won = await pipe.execute()
        return [r for r, n in zip(orphans, won) if n == 1]

    async def close(self) -> None:
        await super().close()
        if self._lease is not None:
            self._lease.cancel()
            try:  # gone cleanly: whatever records are left can be repaired by another replica now
                await self.redis.delete(self._alive_key(self.owner))
            except RedisError as exc:
                log.warning("could not end this process's lease in Redis: %s", exc)
        if self._owns_client:
            await self.redis.aclose()


# KEYS[1]: the window (a ZSET of grant times in ms), KEYS[2]: the pause key.
# ARGV: limit, window in ms, a unique member. Returns 0 (a slot was taken) or ms to wait.
# Server time (TIME) is the only clock, so the processes' clocks never matter.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


# The same for a token bucket (a Rate with a burst): KEYS[1] holds "tokens time_ms", KEYS[2]
# the pause key. ARGV: burst, refill interval in ms per token. Returns 0 or ms to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused end
local burst, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, at = burst, now
local kept = redis.call('GET', KEYS[1])
if kept then
  local sep = string.find(kept, ' ')
  tokens, at = tonumber(string.sub(kept, 1, sep - 1)), tonumber(string.sub(kept, sep + 1))
  tokens = math.min(burst, tokens + (now - at) / interval)
end
if tokens >= 1 then
  redis.call('SET', KEYS[1], (tokens - 1) .. ' ' .. now, 'PX', math.ceil(burst * interval) + 1000)
  return 0
end
return math.max(1, math.ceil((1 - tokens) * interval))
"""


class RedisWindows:
    """Pacing budgets shared by every process (core.pacing.SharedBudgets) in one Redis.

    If Redis cannot be reached, pacing falls back to each process's own budget (a warning says
    so): replies go on, and the platform's 429s still slow them down.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._take = redis.register_script(_TAKE)
        self._degraded = False

    async def reserve(self, key: str, rate: Rate) -> float:
        try:
            if rate.burst:
                wait_ms = await self._take(
                    keys=[f"{PREFIX}bucket:{key}", f"{PREFIX}pause:{key}"],
                    args=[rate.burst, max(1.0, rate.per * 1000 / rate.count)])
            else:
                wait_ms = await self._reserve(
                    keys=[f"{PREFIX}pace:{key}", f"{PREFIX}pause:{key}"],
                    args=[rate.count, max(1, round(rate.per * 1000)), uuid.uuid4().hex])
        except RedisError as exc:
            self._lost(exc)
            return 0.0
        self._found()
        return int(wait_ms) / 1000

    async def pause(self, key: str, seconds: float) -> None:
        name, ms = f"{PREFIX}pause:{key}", max(1, math.ceil(seconds * 1000))
        try:
            async with self.redis.pipeline() as pipe:  # a pause only ever grows
                pipe.set(name, 1, nx=True, px=ms)
                pipe.pexpire(name, ms, gt=True)
                await pipe.execute()
        except RedisError as exc:
            self._lost(exc)

    def _lost(self, exc: RedisError) -> None:
        if not self._degraded:
            log.warning("Redis is unreachable for shared pacing (%s): each process paces alone "
                        "until it is back", exc)
        self._degraded = True

    def _found(self) -> None:
        if self._degraded:
            log.warning("Redis is back: pacing is shared again")
        self._degraded = False
