"""`[memory] backend = "redis"`: state shared by every replica of the bot.

One Redis holds the event de-duplication keys (each platform event answered once, whichever
replica receives it), the records of replies still streaming, each process's lease, and the
pacing windows (core/pacing.py) so N replicas streaming into one channel stay under its limit.
Conversation memory lives there too, through the Agents SDK's RedisSession (core/sources.py).

Keys all start with `streambot:`. The URL may hold a password: only `redis_where(url)` is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from core.config import LimitsConfig, redis_where
from core.errors import SetupError
from core.limits import Gate, Slot, channel_busy, too_long, too_many_asked, too_many_running
from core.platform import Rate
from core.state import DEDUP_TTL, ReplyRecord, StateStore

log = logging.getLogger("streambot.state")

PREFIX = "streambot:"
REPLIES = PREFIX + "replies"  # hash: reply id -> ReplyRecord JSON
LIVE = PREFIX + "live"  # hash: reply id -> {"owner", "user"} while it streams
SIGNALS = PREFIX + "signals"  # pub/sub channel: stop and delete, for whichever replica runs it
LEASE_TTL = 30.0  # seconds a process counts as alive after its last lease refresh
TIMEOUT = 5.0  # seconds one Redis call may take: a partitioned Redis must not freeze replies
CHECK_TIMEOUT = 3.0  # seconds a PING may take at start-up and for readiness


def _where(redis: Redis) -> str:
    """host:port/db (or the socket's path) of a client, without user or password."""
    kw = redis.connection_pool.connection_kwargs
    return kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def connect(url: str) -> Redis:
    """A client for `url` (it connects on first use); no call waits longer than `TIMEOUT`."""
    log.info("using Redis at %s", redis_where(url))
    return Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


class RedisStore(StateStore):
    """De-duplication and reply records shared by every process using one Redis.

    A record is an orphan when its owner's lease (`streambot:alive:<owner>`) has expired: the
    owner refreshes it every `lease_ttl / 10` seconds while it has written records, and deletes
    it when it closes cleanly. Each orphan is claimed by HDEL, which only one caller can win.

    An owner that cannot refresh its lease for `lease_ttl / 3` calls `on_lease_lost`, so it ends
    its live replies well before the lease runs out and another replica repairs them: no reply
    is ever both streaming and repaired.
    """

    def __init__(self, redis: Redis, *, lease_ttl: float = LEASE_TTL, owns_client: bool = False) -> None:
        super().__init__()
        self.redis = redis
        self.lease_ttl = lease_ttl
        self._owns_client = owns_client
        self._lease: asyncio.Task[None] | None = None
        self._renewed = 0.0  # monotonic time of the last lease refresh that went through
        self._lost = False

    @classmethod
    def from_url(cls, url: str, *, lease_ttl: float = LEASE_TTL) -> RedisStore:
        """A store with its own client, closed with the store."""
        return cls(connect(url), lease_ttl=lease_ttl, owns_client=True)

    async def check(self) -> None:
        """At start-up: Redis answers, else SetupError (one line; the process does not start)."""
        try:
            await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SetupError(
                f"memory.url: cannot reach Redis at {_where(self.redis)} "
                f"({exc or 'timed out'}): "
                "start Redis, or fix [memory] url / REDIS_URL"
            ) from None

    async def reachable(self) -> bool:
        """Readiness: Redis answers a PING (what failed is in the log)."""
        try:
            await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "Redis is unreachable (%s): memory, de-duplication and reply records fail until it is back",
                exc or "timed out",
            )
            return False
        return True

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
        self._leased()

    def _leased(self) -> None:
        """The lease was just written: keep it alive from now on."""
        self._renewed = time.monotonic()
        if self._lease is None or self._lease.done():
            self._lease = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        # One attempt every tick, each given a tick: a lease that could not be refreshed for a
        # third of its life is given up at most two ticks later, leaving more than a quarter of
        # it (8 s of 30) for the replies to show their final text within the platform's limits.
        tick = self.lease_ttl / 10
        while True:
            await asyncio.sleep(tick)
            if time.monotonic() - self._renewed >= self.lease_ttl / 3 and not self._lost:
                self._lost = True
                log.error(
                    "cannot refresh this process's lease in Redis: ending its live replies "
                    "before another replica takes them for orphans"
                )
                if self.on_lease_lost is not None:
                    self.on_lease_lost()
            try:
                await asyncio.wait_for(
                    self.redis.set(self._alive_key(self.owner), 1, px=int(self.lease_ttl * 1000)), tick
                )
            except (RedisError, TimeoutError) as exc:
                log.warning("could not refresh this process's lease in Redis: %s", exc or "timeout")
                continue
            self._renewed = time.monotonic()
            if self._lost:
                self._lost = False
                log.warning("this process's lease in Redis is refreshed again")

    # --- coordination between replicas ---------------------------------------------------------

    async def mark_live(self, reply_id: str, user: str) -> None:
        async with self.redis.pipeline() as pipe:
            pipe.set(self._alive_key(self.owner), 1, px=int(self.lease_ttl * 1000))
            pipe.hset(LIVE, reply_id, json.dumps({"owner": self.owner, "user": user}))
            await pipe.execute()
        self._leased()

    async def unmark_live(self, reply_id: str) -> None:
        await self.redis.hdel(LIVE, reply_id)

    async def live_user(self, reply_id: str) -> str | None:
        raw = await self.redis.hget(LIVE, reply_id)
        if raw is None:
            return None
        entry = json.loads(raw)
        if not await self.redis.exists(self._alive_key(entry["owner"])):
            await self.redis.hdel(LIVE, reply_id)  # its process is gone: nothing to stop
            return None
        return str(entry["user"])

    async def publish(self, signal: dict[str, Any]) -> None:
        await self.redis.publish(SIGNALS, json.dumps({**signal, "from": self.owner}))

    async def listen(self, handle: Callable[[dict[str, Any]], None]) -> None:
        """Signals from other processes, reconnecting (with a warning) whenever Redis drops."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(SIGNALS)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        signal = json.loads(message["data"])
                        if signal.get("from") != self.owner:
                            handle(signal)
            except (RedisError, OSError, ValueError) as exc:
                log.warning("lost the Redis signal channel (%s); reconnecting", exc)
                await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def turn(self, conversation: str) -> AsyncIterator[None]:
        """A lock with a lease: a holder that dies releases it within `lease_ttl`."""
        lock = self.redis.lock(
            f"{PREFIX}turn:{conversation}", timeout=self.lease_ttl, sleep=0.05, thread_local=False
        )
        renew: asyncio.Task[None] | None = None
        try:
            await lock.acquire()
            renew = asyncio.create_task(self._hold(lock))
        except RedisError as exc:  # order within this process still holds
            log.warning("could not take the turn lock of %s in Redis (%s)", conversation, exc)
        try:
            yield
        finally:
            if renew is not None:
                renew.cancel()
                with contextlib.suppress(RedisError, LockError):
                    await lock.release()

    async def _hold(self, lock: Lock) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            with contextlib.suppress(RedisError, LockError):
                await lock.reacquire()

    async def claim_orphans(self, platform: str) -> list[ReplyRecord]:
        records = [ReplyRecord.from_json(v) for v in (await self.redis.hgetall(REPLIES)).values()]
        candidates = [r for r in records if r.platform == platform and r.owner != self.owner]
        owners = sorted({r.owner for r in candidates})
        if not owners:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(self._alive_key(owner))
            alive = dict(zip(owners, await pipe.execute(), strict=False))
        orphans = [r for r in candidates if not alive[r.owner]]
        if not orphans:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in orphans:
                pipe.hdel(REPLIES, record.reply_id)
            won = await pipe.execute()
        return [r for r, n in zip(orphans, won, strict=False) if n == 1]

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
                    args=[rate.burst, max(1.0, rate.per * 1000 / rate.count)],
                )
            else:
                wait_ms = await self._reserve(
                    keys=[f"{PREFIX}pace:{key}", f"{PREFIX}pause:{key}"],
                    args=[rate.count, max(1, round(rate.per * 1000)), uuid.uuid4().hex],
                )
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
            log.warning(
                "Redis is unreachable for shared pacing (%s): each process paces alone until it is back", exc
            )
        self._degraded = True

    def _found(self) -> None:
        if self._degraded:
            log.warning("Redis is back: pacing is shared again")
        self._degraded = False


# --- limits counted for every replica -----------------------------------------------------------

# KEYS: the person's running slots, the channel's running slots (ZSETs scored by lease expiry,
# ms), the person's questions of the last minute (ZSET scored by time asked).
# ARGV: per-person limit, per-channel limit, per-minute limit, lease ms, slot id.
# Returns {0} (admitted), {1, n} (person busy), {2, n} (channel busy), {3, n, wait ms}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
local mine = redis.call('ZCARD', KEYS[1])
local here = redis.call('ZCARD', KEYS[2])
local asked = redis.call('ZCARD', KEYS[3])
if tonumber(ARGV[1]) > 0 and mine >= tonumber(ARGV[1]) then return {1, mine} end
if tonumber(ARGV[2]) > 0 and here >= tonumber(ARGV[2]) then return {2, here} end
if tonumber(ARGV[3]) > 0 and asked >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {3, asked, tonumber(oldest[2]) + 60000 - now}
end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('ZADD', KEYS[3], now, ARGV[5])
for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], lease) end
redis.call('PEXPIRE', KEYS[3], 60000)
return {0}
"""


class RedisGate(Gate):
    """`[limits]` counted in Redis, so N replicas give each person the allowance once.

    A running reply's slot carries a lease that this process renews while the reply runs, so
    the slots of a replica that dies are freed within `lease_ttl`. If Redis cannot be reached,
    this process counts alone until it is back (answering beats refusing everyone).
    """

    def __init__(self, limits: LimitsConfig, redis: Redis, *, lease_ttl: float = LEASE_TTL) -> None:
        super().__init__(limits)
        self.redis = redis
        self.lease_ttl = lease_ttl
        self._admit = redis.register_script(_ADMIT)
        self._held: dict[str, Slot] = {}  # slot id -> slot, renewed while held
        self._local: set[str] = set()  # slots counted only here (Redis was down)
        self._renewer: asyncio.Task[None] | None = None

    def _keys(self, slot: Slot) -> tuple[str, str]:
        return f"{PREFIX}limit:user:{slot.user}", f"{PREFIX}limit:channel:{slot.channel}"

    async def admit(self, user: str, channel: str, prompt: str) -> Slot:
        lim = self.limits
        if lim.max_prompt_chars and len(prompt) > lim.max_prompt_chars:
            raise too_long(len(prompt), lim.max_prompt_chars)
        await self.check_tokens(user, channel)
        slot = Slot(user, channel)
        try:
            result = await self._admit(
                keys=[*self._keys(slot), f"{PREFIX}limit:asked:{user}"],
                args=[
                    lim.user_concurrent,
                    lim.channel_concurrent,
                    lim.user_per_minute,
                    max(1, round(self.lease_ttl * 1000)),
                    slot.id,
                ],
            )
        except RedisError as exc:
            log.warning("Redis is unreachable for [limits] (%s): counting in this process", exc)
            local = self.admit_here(user, channel, prompt)
            self._local.add(local.id)
            return local
        kind = int(result[0])
        if kind == 1:
            raise too_many_running(int(result[1]))
        if kind == 2:
            raise channel_busy()
        if kind == 3:
            raise too_many_asked(int(result[1]), int(result[2]) / 1000)
        self._held[slot.id] = slot
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew())
        return slot

    async def release(self, slot: Slot) -> None:
        if slot.id in self._local:
            self._local.discard(slot.id)
            self.release_here(slot)
            return
        self._held.pop(slot.id, None)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self._keys(slot):
                    pipe.zrem(key, slot.id)
                await pipe.execute()
        except RedisError as exc:  # the lease frees it soon enough
            log.warning("could not release a [limits] slot in Redis: %s", exc)

    async def _renew(self) -> None:
        """Push the lease of every slot still held forward, while any is held."""
        while self._held:
            await asyncio.sleep(self.lease_ttl / 3)
            ms = max(1, round(self.lease_ttl * 1000))
            try:
                now = await self.redis.time()
                expiry = now[0] * 1000 + now[1] // 1000 + ms
                async with self.redis.pipeline(transaction=False) as pipe:
                    for slot in list(self._held.values()):
                        for key in self._keys(slot):
                            pipe.zadd(key, {slot.id: expiry}, xx=True)
                            pipe.pexpire(key, ms)
                    await pipe.execute()
            except RedisError as exc:
                log.warning("could not renew [limits] slots in Redis: %s", exc)
