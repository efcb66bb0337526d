"""`streambot report`: what the desk did, per profile, from the ledger (core/ledger.py).

Per profile: questions answered, answers with citations, "not in the docs", handoffs, 👍/👎
(each person's last vote per answer), and the questions most often left unanswered (nothing in
the docs, a failure or an empty answer), grouped by their wording.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from core.ledger import AnswerFacts, HandoffFacts, VoteFacts

TOP_UNANSWERED = 5


@dataclass
class ProfileReport:
    profile: str
    questions: int = 0
    cited: int = 0
    not_in_docs: int = 0
    handed_off: int = 0
    up: int = 0
    down: int = 0
    unanswered: list[dict[str, Any]] = field(default_factory=list)  # [{"question", "count"}]


def _wording(question: str) -> str:
    """Questions that differ only in case, spacing or end punctuation count as one."""
    return re.sub(r"\s+", " ", question).strip().rstrip("?!. ").lower()


def unanswered(facts: AnswerFacts) -> bool:
    return facts.not_in_docs or facts.status in ("failed", "empty")


def build(
    answers: list[AnswerFacts],
    votes: list[VoteFacts],
    handoffs: list[HandoffFacts],
    top: int = TOP_UNANSWERED,
) -> list[ProfileReport]:
    """One report per profile that has any facts, sorted by name."""
    reports: dict[str, ProfileReport] = {}

    def of(profile: str) -> ProfileReport:
        return reports.setdefault(profile, ProfileReport(profile))

    profile_of: dict[str, str] = {}
    missed: dict[str, Counter[str]] = {}
    shown: dict[tuple[str, str], str] = {}  # (profile, wording) -> the latest question so worded
    for a in sorted(answers, key=lambda a: a.at):
        r = of(a.profile)
        profile_of[a.reply_id] = a.profile
        r.questions += 1
        r.cited += a.cited
        r.not_in_docs += a.not_in_docs
        if unanswered(a):
            key = _wording(a.question)
            missed.setdefault(a.profile, Counter())[key] += 1
            shown[(a.profile, key)] = a.question.strip()
    for v in votes:
        r = of(profile_of.get(v.reply_id, "(unknown)"))
        if v.vote == "up":
            r.up += 1
        else:
            r.down += 1
    for h in handoffs:
        of(h.profile).handed_off += 1
    for profile, counts in missed.items():
        reports[profile].unanswered = [
            {"question": shown[(profile, key)], "count": n}
            for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        ]
    return [reports[name] for name in sorted(reports)]


def as_json(reports: list[ProfileReport]) -> dict[str, Any]:
    return {"profiles": [asdict(r) for r in reports]}
