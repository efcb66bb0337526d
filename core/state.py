"""What outlives one process: event de-duplication and records of replies still streaming.

A reply records where its message is and what it shows, so that if the process dies (kill -9,
a crash, a lost machine) the next start can finish that message with an "interrupted" marker
instead of leaving a cursor blinking forever. A record is written before the edit that shows
its text goes out (so it never holds less than the screen), and every record saved in the same
moment shares one write (a group commit): a thousand replies editing at once cost one write,
not a thousand. Dropping finished records is batched, at most every `FLUSH_EVERY` seconds.

`LocalStore` keeps records in a SQLite file beside the conversation memory (one process).
`RedisStore` (core/redis_state.py) shares everything between replicas; `core/backend.py` opens
the one `[memory] backend` names. Storage knows nothing of rendering: the host lays out a
record's text when it finishes an interrupted message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("streambot.state")

FLUSH_EVERY = 1.0  # seconds between batched writes of edited records
WRITE_WAIT = 1.0  # seconds an edit waits for its record to be written before it goes out anyway
ORPHAN_CHECK_EVERY = 30.0  # a dead replica's records become orphans when its lease runs out
DEDUP_TTL = 24 * 3600.0  # platforms redeliver for minutes, never for a day


@dataclass
class ReplyRecord:
    """One reply's message that is still streaming.

    `place` says where the message is, in the adapter's own JSON-able terms (channel and message
    ids). `text` is what the message should show if the reply ends now: the text so far with
    code fences closed, without cursor, status line or marker.
    """

    reply_id: str
    platform: str
    place: dict[str, Any]
    text: str
    owner: str = ""
    updated: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> ReplyRecord:
        return cls(**json.loads(data))


def new_owner_id() -> str:
    """Names this process in records: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StateStore(ABC):
    """The shared state of one process. Subclasses store; this class batches the writes."""

    def __init__(self) -> None:
        self.owner = new_owner_id()
        self._dirty: dict[str, ReplyRecord | None] = {}  # None: drop it
        self._flusher: asyncio.Task[None] | None = None
        self._joining: asyncio.Future[None] | None = None  # the write records now wait for
        self._failing = False  # the last write failed: write behind until one succeeds
        # Called when this process can no longer show that it is alive (its lease may run out):
        # its live replies must end before another replica takes them for orphans.
        self.on_lease_lost: Callable[[], None] | None = None

    # --- coordination between replicas (a single process has nothing to share) ------------------

    async def mark_live(self, reply_id: str, user: str) -> None:
        """Reply `reply_id`, asked by `user`, runs in this process (until `unmark_live`)."""

    async def unmark_live(self, reply_id: str) -> None:
        """Reply `reply_id` ended."""

    async def live_user(self, reply_id: str) -> str | None:
        """Who asked reply `reply_id`, if it runs in another live process; else None."""
        return None

    async def publish(self, signal: dict[str, Any]) -> None:
        """Tell every other process (see `listen`)."""

    async def listen(self, handle: Callable[[dict[str, Any]], None]) -> None:
        """Hand every other process's signal to `handle`, until cancelled."""
        await asyncio.Event().wait()

    def turn(self, conversation: str) -> AbstractAsyncContextManager[None]:
        """Held while a reply of `conversation` runs, so turns run one at a time everywhere."""
        return contextlib.nullcontext()

    # --- de-duplication ----------------------------------------------------------------------

    @abstractmethod
    async def first_time(self, key: str, ttl: float = DEDUP_TTL) -> bool:
        """True exactly once per key (across replicas, for shared stores) within `ttl`."""

    # --- reply records -----------------------------------------------------------------------

    async def save_reply(self, record: ReplyRecord, *, now: bool = False) -> None:
        """Record a streaming reply; `now` writes at once (before the edit that shows it), else
        batched. While the store is failing, every write is batched: a store that is down must
        not hold up each edit by its timeout."""
        record.owner, record.updated = self.owner, time.time()
        self._dirty[record.reply_id] = record
        if now and not self._failing:
            try:  # the write goes on if this times out; a slow store counts as failing
                await asyncio.wait_for(asyncio.shield(self._write_now()), WRITE_WAIT)
            except TimeoutError:
                self._failing = True
                self._start_flusher()
        else:
            self._start_flusher()

    async def _write_now(self) -> None:
        """Flush, in one write with every record saved in the same moment (a group commit):
        a thousand replies editing at once cost one write, not a thousand."""
        joining = self._joining
        if joining is not None:
            await asyncio.shield(joining)
            return
        joining = self._joining = asyncio.get_running_loop().create_future()
        try:
            await asyncio.sleep(0)  # the records other replies save in this moment join in
            self._joining = None
            await self.flush()
        finally:
            self._joining = None
            if not joining.done():
                joining.set_result(None)

    async def drop_reply(self, reply_id: str) -> None:
        """The reply finished: nothing is left to repair."""
        self._dirty[reply_id] = None
        self._start_flusher()

    async def flush(self) -> None:
        """Write every pending change now."""
        if not self._dirty:
            return
        batch, self._dirty = self._dirty, {}
        try:
            await self._write(batch)
        except Exception as exc:
            if not self._failing:  # once per outage, not once per edit
                log.warning(
                    "could not write %d reply record(s) (%s); retrying every %g s",
                    len(batch),
                    exc,
                    FLUSH_EVERY,
                )
            self._failing = True
            self._dirty = {**batch, **self._dirty}
            return
        if self._failing:
            log.warning("reply records are written again")
        self._failing = False

    @abstractmethod
    async def _write(self, batch: dict[str, ReplyRecord | None]) -> None:
        """Upsert the records, delete the ids mapped to None."""

    @abstractmethod
    async def claim_orphans(self, platform: str) -> list[ReplyRecord]:
        """Records of `platform` left by processes that are gone; each is handed to one caller
        only and removed from the store."""

    async def check(self) -> None:
        """At start-up: raise SetupError if the store cannot be used at all."""

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        while True:  # until a write goes through (a failed one keeps its records pending)
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()
            if not self._failing:
                return

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.flush()


class LocalStore(StateStore):
    """One process: de-duplication in memory, reply records in a SQLite file.

    Every record found at start-up was left by an earlier run of this bot, so all are orphans.
    Two processes must not share one file (use the Redis backend to run replicas).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path or ":memory:"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":  # the Agents SDK's sessions write to the same file
            self._db.execute("PRAGMA journal_mode=WAL")
            # a record is written before each edit: in WAL mode NORMAL still survives kill -9
            # (only a power cut can lose the last commits), without an fsync per write
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS streambot_replies ("
            "reply_id TEXT PRIMARY KEY, platform TEXT NOT NULL, owner TEXT NOT NULL, "
            "record TEXT NOT NULL)"
        )
        self._seen: dict[str, float] = {}

    async def first_time(self, key: str, ttl: float = DEDUP_TTL) -> bool:
        now = time.monotonic()
        if len(self._seen) > 50_000:  # forget expired keys now and then: memory stays bounded
            self._seen = {k: t for k, t in self._seen.items() if t > now}
        if self._seen.get(key, 0.0) > now:
            return False
        self._seen[key] = now + ttl
        return True

    async def _write(self, batch: dict[str, ReplyRecord | None]) -> None:
        with self._db:
            for reply_id, record in batch.items():
                if record is None:
                    self._db.execute("DELETE FROM streambot_replies WHERE reply_id = ?", (reply_id,))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO streambot_replies VALUES (?, ?, ?, ?)",
                        (reply_id, record.platform, record.owner, record.to_json()),
                    )

    async def claim_orphans(self, platform: str) -> list[ReplyRecord]:
        with self._db:
            rows = self._db.execute(
                "SELECT record FROM streambot_replies WHERE platform = ? AND owner != ?",
                (platform, self.owner),
            ).fetchall()
            self._db.execute(
                "DELETE FROM streambot_replies WHERE platform = ? AND owner != ?", (platform, self.owner)
            )
        return [ReplyRecord.from_json(r[0]) for r in rows]

    async def close(self) -> None:
        await super().close()
        self._db.close()


async def repair_orphans(
    store: StateStore, platform: str, repair: Callable[[ReplyRecord], Awaitable[None]]
) -> None:
    """Finish the replies dead processes left streaming: at start-up, then every
    `ORPHAN_CHECK_EVERY` seconds (a replica killed later is found once its lease expires)."""
    while True:
        try:
            records = await store.claim_orphans(platform)
        except Exception:
            log.exception("could not look for replies interrupted by a dead process")
            records = []
        if records:
            log.info("%s: finishing %d reply(s) interrupted by a dead process", platform, len(records))
            await asyncio.gather(*(repair(r) for r in records))
        await asyncio.sleep(ORPHAN_CHECK_EVERY)
