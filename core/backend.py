"""What `[memory] backend` names, opened: the state store, a pacer whose windows live beside
it, the `[limits]` counters, and the Redis client conversation memory shares (None for SQLite).

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


@dataclass
class Backend:
    store: StateStore
    pacer: Pacer
    gate: Gate
    redis: Any = None  # redis.asyncio.Redis with the redis backend


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


def open_backend(config: Config) -> Backend:
    store = open_store(config)
    if config.memory.backend != "redis":
        return Backend(store, Pacer(), Gate(config.limits))
    from core.redis_state import RedisGate, RedisStore, RedisWindows

    assert isinstance(store, RedisStore)
    return Backend(
        store, Pacer(shared=RedisWindows(store.redis)), RedisGate(config.limits, store.redis), store.redis
    )
