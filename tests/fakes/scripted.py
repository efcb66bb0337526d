"""In-memory stand-ins for a model run and a platform, for testing the relay on a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core.events import Done, Event, TextDelta
from core.platform import Frame, Op, Rate, Target
from fakes.clock import FakeClock


def deltas(text: str, size: int = 3, every: float = 0.05) -> list[tuple[float, Event]]:
    """`text` as a stream of small deltas, one every `every` seconds, then Done."""
    steps: list[tuple[float, Event]] = [
        (every, TextDelta(text[i : i + size])) for i in range(0, len(text), size)
    ]
    return steps + [(0.0, Done())]


class ScriptRun:
    """A model run that replays scripted events on the virtual clock."""

    def __init__(self, clock: FakeClock, steps: list[tuple[float, Event]]) -> None:
        self.clock, self.steps = clock, steps
        self.cancelled = False
        self.remembered: str | None = None

    async def events(self) -> AsyncIterator[Event]:
        for delay, event in self.steps:
            if delay:
                await self.clock.sleep(delay)
            yield event

    def cancel(self) -> None:
        self.cancelled = True

    async def remember(self, shown: str) -> None:
        self.remembered = shown


DISCORD_LIKE = Rate(5, 5.0)


class RecordingTarget(Target):
    """Records every request with its virtual time; can fail on demand; enforces page_limit.

    With `latency`, every request takes that long (virtual time) before it applies or fails.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        limit: int = 300,
        rate: Rate = DISCORD_LIKE,
        key: str = "channel",
        log: list[tuple[float, str, int]] | None = None,
        max_age: float | None = None,
        latency: float = 0.0,
    ) -> None:
        self.clock, self.page_limit, self.rate, self.key = clock, limit, rate, key
        self.page_max_age = max_age
        self.latency = latency
        self.messages: list[list[Frame]] = []
        self.log = log if log is not None else []  # (time, op, message index), maybe shared
        self.errors: list[Exception | None] = []  # raised by the next requests, in order
        self.closed = False

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        return [(self.key, self.rate)]

    async def _request(self, op: str, frame: Frame) -> None:
        assert len(frame.text) <= self.page_limit, "frame longer than the page limit"
        assert frame.text.strip(), "a message must never be empty"
        self.log.append((self.clock.now(), op, frame.index))
        if self.latency:
            await self.clock.sleep(self.latency)
        if self.errors and (error := self.errors.pop(0)) is not None:
            raise error

    async def post(self, frame: Frame) -> Any:
        await self._request("post", frame)
        self.messages.append([frame])
        return len(self.messages) - 1

    async def edit(self, handle: Any, frame: Frame) -> None:
        await self._request("edit", frame)
        self.messages[handle].append(frame)

    async def close(self) -> None:
        self.closed = True

    @property
    def shown(self) -> list[str]:
        """What each message shows now."""
        return [m[-1].text for m in self.messages]
