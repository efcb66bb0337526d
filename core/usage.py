"""Token usage: what each reply cost, added up per person, channel and profile, by UTC day.

The host records every reply the model reported usage for; `[limits] user_tokens_per_day` and
`channel_tokens_per_day` read today's totals (core/limits.py); `streambot usage` prints the top
people and channels for a period. `LocalUsage` keeps a table in the SQLite file beside the
conversation memory; `RedisUsage` keeps hashes by day, shared by every replica.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redis.asyncio import Redis

By = Literal["user", "channel", "profile"]
KEEP_DAYS = 400  # Redis keeps a day's hashes this long (SQLite rows stay until deleted)


def day_of(when: float | None = None) -> str:
    """The UTC day `when` (a Unix time; now by default) falls on, as YYYY-MM-DD."""
    return datetime.fromtimestamp(time.time() if when is None else when, UTC).strftime("%Y-%m-%d")


def first_day(days: int, today: str | None = None) -> str:
    """The first day of a period of `days` days ending today."""
    end = datetime.strptime(today or day_of(), "%Y-%m-%d")
    return (end - timedelta(days=max(1, days) - 1)).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Spent:
    """One reply's tokens and whom they count against."""

    user: str
    channel: str
    platform: str
    input_tokens: int
    output_tokens: int
    profile: str = "default"
    name: str = ""  # the person's display name, when the platform gave one


@dataclass
class Row:
    """Totals of one person, channel or profile over a period."""

    key: str
    platform: str = ""
    name: str = ""
    replies: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total_tokens = self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UsageStore(ABC):
    """Where usage is added up."""

    @abstractmethod
    async def record(self, spent: Spent, day: str | None = None) -> None:
        """Add one reply's tokens to its person's, channel's and profile's totals of `day`."""

    @abstractmethod
    async def used(self, by: By, key: str, day: str | None = None) -> int:
        """Tokens (input + output) `key` used on `day` (today by default)."""

    @abstractmethod
    async def top(self, by: By, days: int = 1, limit: int = 10, today: str | None = None) -> list[Row]:
        """The `limit` biggest users of tokens among people, channels or profiles over the last
        `days` days (today included), biggest first."""

    async def close(self) -> None:
        """Release what the store holds."""


class LocalUsage(UsageStore):
    """One process: a table in the SQLite file (its own connection, WAL like the rest)."""

    def __init__(self, path: str) -> None:
        self.path = path or ":memory:"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS streambot_usage ("
            " day TEXT NOT NULL, platform TEXT NOT NULL, user TEXT NOT NULL, channel TEXT NOT NULL,"
            " profile TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', replies INTEGER NOT NULL,"
            " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
            " PRIMARY KEY (day, platform, user, channel, profile));"
            "CREATE INDEX IF NOT EXISTS streambot_usage_user ON streambot_usage (user, day);"
            "CREATE INDEX IF NOT EXISTS streambot_usage_channel ON streambot_usage (channel, day);"
        )

    async def record(self, spent: Spent, day: str | None = None) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO streambot_usage VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (day, platform, user, channel, profile) DO UPDATE SET "
                " replies = replies + 1, input_tokens = input_tokens + excluded.input_tokens,"
                " output_tokens = output_tokens + excluded.output_tokens,"
                " name = CASE WHEN excluded.name != '' THEN excluded.name ELSE name END",
                (
                    day or day_of(),
                    spent.platform,
                    spent.user,
                    spent.channel,
                    spent.profile,
                    spent.name,
                    spent.input_tokens,
                    spent.output_tokens,
                ),
            )

    async def used(self, by: By, key: str, day: str | None = None) -> int:
        row = self._db.execute(
            f"SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM streambot_usage "
            f"WHERE {by} = ? AND day = ?",  # `by` is one of three column names, never input
            (key, day or day_of()),
        ).fetchone()
        return int(row[0])

    async def top(self, by: By, days: int = 1, limit: int = 10, today: str | None = None) -> list[Row]:
        rows = self._db.execute(
            f"SELECT {by}, MAX(platform), MAX(name), SUM(replies), SUM(input_tokens),"
            f" SUM(output_tokens) FROM streambot_usage WHERE day BETWEEN ? AND ? GROUP BY {by}"
            " ORDER BY SUM(input_tokens + output_tokens) DESC, 1 LIMIT ?",
            (first_day(days, today), today or day_of(), limit),
        ).fetchall()
        return [
            Row(r[0], r[1] if by != "profile" else "", r[2] if by == "user" else "", *r[3:]) for r in rows
        ]

    async def close(self) -> None:
        self._db.close()


class RedisUsage(UsageStore):
    """Every replica: per day and dimension a hash `streambot:usage:<day>:<by>` whose fields are
    `<key>|in`, `<key>|out`, `<key>|n` (replies), and `<key>|p`, `<key>|name` (platform, name)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def _key(day: str, by: By) -> str:
        return f"streambot:usage:{day}:{by}"

    async def record(self, spent: Spent, day: str | None = None) -> None:
        day = day or day_of()
        async with self.redis.pipeline(transaction=False) as pipe:
            keys: list[tuple[By, str]] = [
                ("user", spent.user),
                ("channel", spent.channel),
                ("profile", spent.profile),
            ]
            for by, key in keys:
                hash_ = self._key(day, by)
                pipe.hincrby(hash_, f"{key}|in", spent.input_tokens)
                pipe.hincrby(hash_, f"{key}|out", spent.output_tokens)
                pipe.hincrby(hash_, f"{key}|n", 1)
                if by != "profile":
                    pipe.hset(hash_, f"{key}|p", spent.platform)
                if by == "user" and spent.name:
                    pipe.hset(hash_, f"{key}|name", spent.name)
                pipe.expire(hash_, KEEP_DAYS * 86400)
            await pipe.execute()

    async def used(self, by: By, key: str, day: str | None = None) -> int:
        values = await self.redis.hmget(self._key(day or day_of(), by), [f"{key}|in", f"{key}|out"])
        return sum(int(v) for v in values if v is not None)

    async def top(self, by: By, days: int = 1, limit: int = 10, today: str | None = None) -> list[Row]:
        start = datetime.strptime(first_day(days, today), "%Y-%m-%d")
        n = (datetime.strptime(today or day_of(), "%Y-%m-%d") - start).days + 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.hgetall(self._key((start + timedelta(days=i)).strftime("%Y-%m-%d"), by))
            hashes = await pipe.execute()
        totals: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"in": 0, "out": 0, "n": 0, "p": "", "name": ""}
        )
        for fields in hashes:
            for raw, value in fields.items():
                key, _, what = _text(raw).rpartition("|")
                if what in ("in", "out", "n"):
                    totals[key][what] += int(value)
                else:
                    totals[key][what] = _text(value)
        rows = [Row(k, t["p"], t["name"], t["n"], t["in"], t["out"]) for k, t in totals.items()]
        rows.sort(key=lambda r: (-r.total_tokens, r.key))
        return rows[:limit]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
