"""The desk's ledger (core/ledger.py) in Redis hashes, shared by every replica.

* `streambot:desk:answers`: reply id -> AnswerFacts JSON
* `streambot:desk:votes`: "<reply id> <user>" -> {"vote", "reason", "at"} (HSET: last write wins)
* `streambot:desk:handoffs`: conversation -> the open HandoffFacts (HSETNX: one replica wins)
* `streambot:desk:handoff_log`: "<conversation> <opened at>" -> HandoffFacts, every handoff
"""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from core.ledger import AnswerFacts, HandoffFacts, Ledger, Vote, VoteFacts

PREFIX = "streambot:desk:"
ANSWERS, VOTES = PREFIX + "answers", PREFIX + "votes"
OPEN, LOG = PREFIX + "handoffs", PREFIX + "handoff_log"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisLedger(Ledger):
    def __init__(self, redis: Redis, *, owns_client: bool = False) -> None:
        self.redis = redis
        self._owns_client = owns_client

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def record_answer(self, facts: AnswerFacts) -> None:
        await self.redis.hset(ANSWERS, facts.reply_id, facts.to_json())

    async def answer(self, reply_id: str) -> AnswerFacts | None:
        raw = await self.redis.hget(ANSWERS, reply_id)
        return AnswerFacts.from_json(raw) if raw else None

    async def vote(self, reply_id: str, user: str, vote: Vote) -> None:
        entry = {"vote": vote, "reason": "", "at": time.time()}
        await self.redis.hset(VOTES, f"{reply_id} {user}", json.dumps(entry))

    async def give_reason(self, reply_id: str, user: str, reason: str) -> None:
        key = f"{reply_id} {user}"
        raw = await self.redis.hget(VOTES, key)
        if raw:
            entry = json.loads(raw)
            entry["reason"] = reason
            await self.redis.hset(VOTES, key, json.dumps(entry))

    async def open_handoff(self, facts: HandoffFacts) -> bool:
        if not await self.redis.hsetnx(OPEN, facts.conversation, facts.to_json()):
            return False
        await self.redis.hset(LOG, f"{facts.conversation} {facts.at}", facts.to_json())
        return True

    async def handoff(self, conversation: str) -> HandoffFacts | None:
        raw = await self.redis.hget(OPEN, conversation)
        return HandoffFacts.from_json(raw) if raw else None

    async def resolve_handoff(self, conversation: str, by: str) -> HandoffFacts | None:
        raw = await self.redis.hget(OPEN, conversation)
        if not raw or not await self.redis.hdel(OPEN, conversation):  # another replica was first
            return None
        facts = HandoffFacts.from_json(raw)
        facts.resolved_by, facts.resolved_at = by, time.time()
        await self.redis.hset(LOG, f"{conversation} {facts.at}", facts.to_json())
        return facts

    async def everything(self) -> tuple[list[AnswerFacts], list[VoteFacts], list[HandoffFacts]]:
        answers = [AnswerFacts.from_json(v) for v in (await self.redis.hgetall(ANSWERS)).values()]
        votes = []
        for key, raw in (await self.redis.hgetall(VOTES)).items():
            reply_id, _, user = _text(key).partition(" ")
            entry = json.loads(raw)
            votes.append(
                VoteFacts(reply_id, user, entry["vote"], entry.get("reason", ""), entry.get("at", 0.0))
            )
        handoffs = [HandoffFacts.from_json(v) for v in (await self.redis.hgetall(LOG)).values()]
        return answers, votes, handoffs
