"""Seeded platform failures for the fakes: 5xx, 429 storms, connection resets, timeouts.

Real chat platforms fail in a handful of ways that matter to a streaming bot. Each fake asks
`Faults.draw(op)` before applying a message create ("post") or edit ("edit") and acts on the
answer, so the same seed reproduces the same run of failures for the same request order:

* "error": HTTP 500/502/503 and the change is *not* applied, so a retry is what makes it land;
* "rate_limit": HTTP 429 with Retry-After, not applied (a storm the bot's pacing did not cause);
* "reset": the connection is closed without an answer, not applied;
* "timeout": no answer for `timeout_after` seconds, then 504 Gateway Timeout, not applied;
* "applied_error": the change *is* applied, then a 5xx is answered, as real platforms sometimes
  do. Edits are idempotent, so retrying them is harmless; a retried post may duplicate a
  message, so posts only draw this when `applied_error_posts` is set.

    fake.faults = Faults(error_rate=0.05, rate_limit_rate=0.02, seed=1)
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Fault = Literal["error", "rate_limit", "reset", "timeout", "applied_error"]
ERROR_STATUSES = (500, 502, 503)


@dataclass
class Faults:
    """How often each kind of failure happens (0..1 per request), reproducibly from `seed`."""

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    reset_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_after: float = 2.0
    applied_error_rate: float = 0.0
    applied_error_posts: bool = False
    retry_after: tuple[float, float] = (0.2, 1.0)  # seconds a 429 asks for, uniformly drawn
    seed: int = 0
    upcoming: list[Fault | None] = field(default_factory=list)
    """Answers for the next requests, in order, before any random draw (None: serve it)."""
    injected: Counter[str] = field(default_factory=Counter)
    """How many of each fault were answered: tests and benchmarks report them."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def draw(self, op: Literal["post", "edit"]) -> Fault | None:
        """The failure to answer this request with, or None to serve it normally."""
        if self.upcoming:
            fault = self.upcoming.pop(0)
            if fault:
                self.injected[fault] += 1
            return fault
        r = self._rng.random()
        applied = self.applied_error_rate if op == "edit" or self.applied_error_posts else 0.0
        for fault, rate in (
            ("error", self.error_rate),
            ("rate_limit", self.rate_limit_rate),
            ("reset", self.reset_rate),
            ("timeout", self.timeout_rate),
            ("applied_error", applied),
        ):
            if r < rate:
                self.injected[fault] += 1
                return fault  # type: ignore[return-value]
            r -= rate
        return None

    def status(self) -> int:
        return self._rng.choice(ERROR_STATUSES)

    def wait(self) -> float:
        return round(self._rng.uniform(*self.retry_after), 3)

    @property
    def total(self) -> int:
        return sum(self.injected.values())
