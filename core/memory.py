"""Conversation memory: the Agents SDK sessions, keeping references instead of pictures, and
the `[memory] ttl_days` retention.

A picture is sent to the model once, with the turn that carries it; what memory keeps of that
turn is its text and a "[image: name]" marker (core/attachments.py puts one before every
picture), so a session never grows by megabytes of base64 and later turns never re-send it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, cast

from agents.items import TResponseInputItem
from agents.memory import Session, SQLiteSession

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("streambot.memory")
BLOB_PARTS = {"input_image", "input_file", "input_audio"}


def for_memory(item: TResponseInputItem) -> TResponseInputItem:
    """`item` as memory keeps it: a user message without its pictures (their markers stay)."""
    raw: Any = item
    if not isinstance(raw, dict) or raw.get("role") != "user" or not isinstance(raw.get("content"), list):
        return item
    parts = [p for p in raw["content"] if not (isinstance(p, dict) and p.get("type") in BLOB_PARTS)]
    if all(isinstance(p, dict) and p.get("type") == "input_text" for p in parts):
        return cast(TResponseInputItem, {**raw, "content": "\n".join(str(p.get("text", "")) for p in parts)})
    return cast(TResponseInputItem, {**raw, "content": parts})


class _Counted:
    """What a session added during one run, so a retry can take it back."""

    added = 0
    added_user = False

    def _count(self, items: Sequence[TResponseInputItem]) -> list[TResponseInputItem]:
        kept = [for_memory(i) for i in items]
        self.added += len(kept)
        self.added_user = self.added_user or any(
            isinstance(i, dict) and i.get("role") == "user" for i in kept
        )
        return kept


class SQLiteMemory(_Counted, SQLiteSession):
    async def add_items(self, items: list[TResponseInputItem]) -> None:
        await super().add_items(self._count(items))


def redis_memory(
    conversation: str, redis: Redis, ttl_days: float, settings: dict[str, Any] | None
) -> Session:
    """A RedisSession that keeps references; with `ttl_days`, a conversation expires that long
    after its last message (the SDK sets the TTL on every write)."""
    from agents.extensions.memory.redis_session import RedisSession

    class RedisMemory(_Counted, RedisSession):
        async def add_items(self, items: list[TResponseInputItem]) -> None:
            await super().add_items(self._count(items))

    return RedisMemory(
        conversation,
        redis_client=redis,
        key_prefix="streambot:session",
        ttl=max(1, round(ttl_days * 86400)) if ttl_days else None,
        session_settings=settings,
    )


async def undo(session: Session) -> None:
    """Take back what `session` stored during a run that is about to be retried."""
    if isinstance(session, _Counted):
        for _ in range(session.added):
            await session.pop_item()
        session.added, session.added_user = 0, False


def prune_sqlite(path: str, ttl_days: float, table: str = "agent_messages") -> int:
    """Delete memory items older than `ttl_days` from the SQLite file at `path`, and the
    conversations left empty. Returns how many items went. Blocking: run it in a thread."""
    if not ttl_days or not path or path == ":memory:":
        return 0
    age = f"-{round(ttl_days * 86400)} seconds"
    try:
        with closing(sqlite3.connect(path, timeout=10.0)) as db:
            deleted = db.execute(
                f"DELETE FROM {table} WHERE created_at < datetime('now', ?)", (age,)
            ).rowcount
            db.execute(
                "DELETE FROM agent_sessions WHERE updated_at < datetime('now', ?) AND session_id NOT IN "
                f"(SELECT DISTINCT session_id FROM {table})",
                (age,),
            )
            db.commit()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # nothing remembered yet
            return 0
        raise
    if deleted:
        log.info("memory: forgot %d item(s) older than %g day(s)", deleted, ttl_days)
    return deleted
