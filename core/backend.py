"""What `[memory] backend` names, opened: the state store, a pacer whose windows live beside
it, the `[limits]` counters, the token usage totals, and the Redis client conversation memory
shares (None for SQLite).

Kept apart from core/state.py so that storage and its backends do not import each other.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from core.config import Config, redis_url
from core.errors import SetupError
from core.ledger import Ledger, SqliteLedger
from core.limits import Gate
from core.ops import register_ready
from core.pacing import Pacer
from core.state import LocalStore, StateStore
from core.usage import LocalUsage, UsageStore


@dataclass
class Backend:
    store: StateStore
    pacer: Pacer
    gate: Gate
    redis: Any = None  # redis.asyncio.Redis with the redis backend
    usage: UsageStore | None = None  # tokens per person, channel and profile (the gate reads it)


def open_store(config: Config) -> StateStore:
    """The store `[memory] backend` names (check_env has made sure a redis backend has a URL)."""
    if config.memory.backend == "redis":
        from core.redis_state import RedisStore  # only the redis backend needs the client loaded

        store = RedisStore.from_url(redis_url(config))
        register_ready("memory", store.reachable)  # /readyz fails while Redis is away
        return store
    try:
        return LocalStore(config.memory.path)
    except sqlite3.Error as exc:  # check_env looked, but the file may have changed since
        raise SetupError(
            f"memory.path: cannot open {config.memory.path} ({exc}): point it at a "
            "file SQLite can create or open read-write"
        ) from None


def open_ledger(config: Config) -> Ledger:
    """The desk's ledger where the bot keeps it (for `streambot report`, outside the bot)."""
    if config.memory.backend == "redis":
        from core.redis_ledger import RedisLedger
        from core.redis_state import connect

        return RedisLedger(connect(redis_url(config)), owns_client=True)
    try:
        return SqliteLedger(config.memory.path)
    except sqlite3.Error as exc:
        raise SetupError(
            f"memory.path: cannot open {config.memory.path} ({exc}): point it at the bot's memory file"
        ) from None


def open_usage(config: Config, redis: Any = None) -> UsageStore:
    """Where token usage is added up: the redis backend's Redis, else the SQLite file."""
    if redis is not None:
        from core.usage import RedisUsage

        return RedisUsage(redis)
    try:
        return LocalUsage(config.memory.path)
    except sqlite3.Error as exc:
        raise SetupError(
            f"memory.path: cannot open {config.memory.path} ({exc}): point it at a "
            "file SQLite can create or open read-write"
        ) from None


def open_backend(config: Config) -> Backend:
    store = open_store(config)
    if config.memory.backend != "redis":
        usage = open_usage(config)
        return Backend(store, Pacer(), Gate(config.limits, usage=usage), usage=usage)
    from core.redis_state import RedisGate, RedisStore, RedisWindows

    assert isinstance(store, RedisStore)
    gate = RedisGate(config.limits, store.redis)
    gate.usage = open_usage(config, store.redis)
    return Backend(store, Pacer(shared=RedisWindows(store.redis)), gate, store.redis, gate.usage)
