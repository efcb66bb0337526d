"""Human handoff: a person takes a conversation over, pinged exactly once.

Two ways in: the model calls the `request_human` tool (offered when the question's profile has
`handoff` configured), or someone clicks "Get a human" under an answer. Either way the host asks
`Handoffs.request`, which opens the conversation's handoff in the ledger; that is atomic, so of
any number of clicks, redelivered events and replicas exactly one caller wins and has the
adapter post the one ping (the only ping streambot ever makes). Until a person resolves it (the
"Resolved" button, or the word "resolved" addressed to the bot) the bot stays silent in that
conversation; its memory is kept, so answering resumes where it left off.

Core knows nothing of user groups or roles: the handoff settings are handed to the adapter's
`Target.hand_off`, which renders the ping its own way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from agents import FunctionTool, function_tool

from core import metrics
from core.ledger import HandoffFacts, Ledger

log = logging.getLogger("streambot.handoff")

HANDOFF_TOOL = "request_human"
ASKED = "A person from the team has been asked to join; they will follow up here."
RESOLVE_COMMAND = re.compile(r"^\s*[/!]?(resolved?|mark resolved)\s*[.!]?\s*$", re.I)


def is_resolve_command(prompt: str) -> bool:
    """`resolved` (or `/resolved`, `!resolve`, `mark resolved`) addressed to the bot."""
    return bool(RESOLVE_COMMAND.match(prompt))


def handoff_tool() -> FunctionTool:
    """The tool the model calls to hand the conversation to a person."""

    @function_tool(name_override=HANDOFF_TOOL)
    async def request_human(reason: str) -> str:
        """Hand this conversation to a person on the team. Use it when the user asks for a
        human, when the docs do not cover the question, or when an action needs a person.

        Args:
            reason: One short sentence for the team: what the user needs.
        """
        return ASKED + " Tell the user so in one sentence; do not answer further."

    return request_human


Announce = Callable[[HandoffFacts], Awaitable[dict[str, Any]]]  # posts the ping; where it went


class Handoffs:
    """Opening, checking and resolving handoffs (the ledger holds the state)."""

    def __init__(self, ledger: Callable[[], Ledger]) -> None:
        self._ledger = ledger

    async def request(self, facts: HandoffFacts, platform: str, announce: Announce) -> bool:
        """Open the handoff and have `announce` ping, once per conversation; False when one is
        open already (the caller says so quietly instead)."""
        ledger = self._ledger()
        if not await ledger.open_handoff(facts):
            log.info("conversation %s is handed off already; not pinging again", facts.conversation)
            return False
        try:
            facts.place = await announce(facts)
        except Exception:
            # Nobody was told: close it again, so the next request can ping (better late than never).
            log.exception("could not announce the handoff of %s", facts.conversation)
            await ledger.resolve_handoff(facts.conversation, "(ping failed)")
            raise
        metrics.HANDOFFS.labels(platform, facts.profile, "model" if facts.by == "model" else "person").inc()
        log.info("conversation %s handed off (%s): %s", facts.conversation, facts.by, facts.reason)
        return True

    async def held(self, conversation: str) -> bool:
        """A person has this conversation: the bot does not answer there."""
        return await self._ledger().handoff(conversation) is not None

    async def resolve(self, conversation: str, by: str) -> HandoffFacts | None:
        facts = await self._ledger().resolve_handoff(conversation, by)
        if facts is not None:
            log.info("conversation %s resolved by %s; answering again", conversation, by)
        return facts
