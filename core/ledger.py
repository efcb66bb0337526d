"""The support desk's ledger: what each answer was, how people rated it, and who asked for a person.

Three kinds of facts, written by the host and the adapters and read by `streambot report`:

* answers: one row per finished reply (its profile, question, how it ended, whether it cited
  sources or found nothing in the docs);
* votes: 👍/👎 per reply and person, last write wins (a person who changes their mind counts
  once, with their latest vote), with an optional reason for a 👎;
* handoffs: at most one open handoff per conversation (opening it is atomic: two clicks, a
  redelivered event or two replicas ping once), closed when a person resolves it; every
  handoff is kept for the report.

`SqliteLedger` keeps them in the memory file (the sqlite backend); `RedisLedger`
(core/redis_ledger.py) in Redis hashes, shared by every replica.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Vote = Literal["up", "down"]


@dataclass
class AnswerFacts:
    """One finished reply, as the report counts it."""

    reply_id: str
    profile: str
    platform: str
    conversation: str
    question: str
    status: str  # done, stopped, failed, empty
    cited: bool = False  # the answer links at least one source
    not_in_docs: bool = False  # the knowledge search found nothing relevant
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> AnswerFacts:
        return cls(**json.loads(data))


@dataclass
class VoteFacts:
    reply_id: str
    user: str
    vote: Vote
    reason: str = ""
    at: float = field(default_factory=time.time)


@dataclass
class HandoffFacts:
    """One request for a person in one conversation."""

    conversation: str
    profile: str
    reason: str
    by: str  # who asked: a user id, or "model" when the model asked
    place: dict[str, Any] = field(default_factory=dict)  # where the adapter posted the ping
    at: float = field(default_factory=time.time)
    resolved_by: str = ""
    resolved_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> HandoffFacts:
        return cls(**json.loads(data))


class Ledger(ABC):
    """Where the desk's facts live (see the module docstring)."""

    @abstractmethod
    async def record_answer(self, facts: AnswerFacts) -> None: ...

    @abstractmethod
    async def answer(self, reply_id: str) -> AnswerFacts | None: ...

    @abstractmethod
    async def vote(self, reply_id: str, user: str, vote: Vote) -> None:
        """Store `user`'s latest vote on a reply (replacing an earlier one and its reason)."""

    @abstractmethod
    async def give_reason(self, reply_id: str, user: str, reason: str) -> None:
        """Attach a reason to `user`'s vote on a reply (a 👎 asks for one)."""

    @abstractmethod
    async def open_handoff(self, facts: HandoffFacts) -> bool:
        """Open a handoff for `facts.conversation`: True only for the first caller while none
        is open (atomic, across processes for shared ledgers)."""

    @abstractmethod
    async def handoff(self, conversation: str) -> HandoffFacts | None:
        """The open handoff of a conversation, if any."""

    @abstractmethod
    async def resolve_handoff(self, conversation: str, by: str) -> HandoffFacts | None:
        """Close the open handoff; the closed one, or None if there was none."""

    @abstractmethod
    async def everything(self) -> tuple[list[AnswerFacts], list[VoteFacts], list[HandoffFacts]]:
        """All answers, votes and handoffs (open and resolved), for the report."""

    async def close(self) -> None:
        """Release connections."""


class SqliteLedger(Ledger):
    """The ledger in a SQLite file (the memory file of the sqlite backend)."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")  # the bot and `streambot report` share it
        if path and path != ":memory:":  # WAL (set by the state store on the same file) makes
            self._db.execute("PRAGMA synchronous=NORMAL")  # this safe but for a power cut
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS streambot_answers "
                "(reply_id TEXT PRIMARY KEY, facts TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS streambot_votes (reply_id TEXT NOT NULL, user TEXT NOT NULL, "
                "vote TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', at REAL NOT NULL, "
                "PRIMARY KEY (reply_id, user))"
            )
            # open = 1 for the conversation's one open handoff; the unique index makes opening
            # atomic between processes sharing the file
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS streambot_handoffs (id INTEGER PRIMARY KEY, "
                "conversation TEXT NOT NULL, open INTEGER, facts TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS streambot_handoffs_open "
                "ON streambot_handoffs (conversation, open)"
            )

    async def record_answer(self, facts: AnswerFacts) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO streambot_answers VALUES (?, ?)", (facts.reply_id, facts.to_json())
            )

    async def answer(self, reply_id: str) -> AnswerFacts | None:
        row = self._db.execute(
            "SELECT facts FROM streambot_answers WHERE reply_id = ?", (reply_id,)
        ).fetchone()
        return AnswerFacts.from_json(row[0]) if row else None

    async def vote(self, reply_id: str, user: str, vote: Vote) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO streambot_votes VALUES (?, ?, ?, '', ?)",
                (reply_id, user, vote, time.time()),
            )

    async def give_reason(self, reply_id: str, user: str, reason: str) -> None:
        with self._db:
            self._db.execute(
                "UPDATE streambot_votes SET reason = ? WHERE reply_id = ? AND user = ?",
                (reason, reply_id, user),
            )

    async def open_handoff(self, facts: HandoffFacts) -> bool:
        try:
            with self._db:
                self._db.execute(
                    "INSERT INTO streambot_handoffs (conversation, open, facts) VALUES (?, 1, ?)",
                    (facts.conversation, facts.to_json()),
                )
        except sqlite3.IntegrityError:  # one is open already
            return False
        return True

    async def handoff(self, conversation: str) -> HandoffFacts | None:
        row = self._db.execute(
            "SELECT facts FROM streambot_handoffs WHERE conversation = ? AND open = 1", (conversation,)
        ).fetchone()
        return HandoffFacts.from_json(row[0]) if row else None

    async def resolve_handoff(self, conversation: str, by: str) -> HandoffFacts | None:
        with self._db:
            row = self._db.execute(
                "SELECT id, facts FROM streambot_handoffs WHERE conversation = ? AND open = 1",
                (conversation,),
            ).fetchone()
            if row is None:
                return None
            facts = HandoffFacts.from_json(row[1])
            facts.resolved_by, facts.resolved_at = by, time.time()
            self._db.execute(
                "UPDATE streambot_handoffs SET open = NULL, facts = ? WHERE id = ?", (facts.to_json(), row[0])
            )
        return facts

    async def everything(self) -> tuple[list[AnswerFacts], list[VoteFacts], list[HandoffFacts]]:
        answers = [
            AnswerFacts.from_json(r[0]) for r in self._db.execute("SELECT facts FROM streambot_answers")
        ]
        votes = [
            VoteFacts(*r)
            for r in self._db.execute("SELECT reply_id, user, vote, reason, at FROM streambot_votes")
        ]
        handoffs = [
            HandoffFacts.from_json(r[0]) for r in self._db.execute("SELECT facts FROM streambot_handoffs")
        ]
        return answers, votes, handoffs

    async def close(self) -> None:
        self._db.close()
