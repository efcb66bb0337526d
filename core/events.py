"""Plain, typed events every model source is normalized into.

The relay only understands these; sources (the Agents SDK, a test script, the demo model) only
produce them. A stream is any number of TextDelta/Thinking/ToolStarted/ToolFinished/Searched/
Handoff/HumanWanted events, at most one Usage, followed by exactly one Done or Failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TextDelta:
    """More answer text, to append to what is shown."""

    text: str


@dataclass(frozen=True, slots=True)
class Thinking:
    """The model is reasoning: never part of the answer, shown (if at all) as a status line.
    `text` is more of its reasoning (a summary or raw thoughts); it may be empty."""

    text: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the run used so far (sent once, before Done or Failed, when the model said)."""

    input_tokens: int
    output_tokens: int
    requests: int = 1


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """A function tool began running; shown as a status line until it finishes."""

    name: str
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A function tool returned; its status line goes away (or says it failed)."""

    name: str
    call_id: str = ""
    failed: bool = False  # it raised (or could not start): the model carries on without it


@dataclass(frozen=True, slots=True)
class Searched:
    """The knowledge search ran: what was asked and the links of the passages found (none:
    the docs do not cover it). Shown nowhere; reports and citations use it."""

    query: str
    hits: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Handoff:
    """Another agent took over the conversation."""

    agent: str


@dataclass(frozen=True, slots=True)
class HumanWanted:
    """The model asked for a person to take over (the handoff tool); the host pings once."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The model run failed; the text so far is kept and this message is shown after it."""

    message: str


@dataclass(frozen=True, slots=True)
class Done:
    """The model finished normally."""


Event = (
    TextDelta
    | Thinking
    | Usage
    | ToolStarted
    | ToolFinished
    | Searched
    | Handoff
    | HumanWanted
    | Failed
    | Done
)


class ModelRun(Protocol):
    """One model answer in progress, as the relay consumes it."""

    def events(self) -> AsyncIterator[Event]:
        """The normalized event stream; ends after Done or Failed."""
        ...

    def cancel(self) -> None:
        """Stop the model run now (Stop button, deleted message, shutdown)."""
        ...

    async def remember(self, shown: str) -> None:
        """Store what the user saw when the run did not complete, so history stays honest."""
        ...
