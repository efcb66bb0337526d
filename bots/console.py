"""The terminal adapter: a reply is one block, edited in place, through the same relay and pacer.

On a terminal each message is a rich `Live` Markdown block; on a pipe only the new text of each
frame is written, so `streambot ask "…" | less` gets plain Markdown.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import Field
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from core.adapter import Adapter, AdapterSettings
from core.attachments import Attachment
from core.demo import DEMO_NOTICE
from core.host import Host, Question
from core.platform import Frame, Op, Rate, Target
from core.relay import Outcome

PIPE_PAGE = 1_000_000  # a pipe has no message size: never page
USER = "console"  # the one person at the terminal


class ConsoleTarget(Target):
    """Shows one reply in the terminal (or writes it to a pipe)."""

    platform = "console"

    def __init__(
        self, console: Console, page_limit: int, edits_per_second: float, plain: bool | None = None
    ) -> None:
        self.console = console
        self.plain = (not console.is_terminal) if plain is None else plain
        self.page_limit = PIPE_PAGE if self.plain else page_limit
        self._rate = Rate(max(1, round(edits_per_second)), 1.0)
        self._written: dict[int, str] = {}

    def budgets(self, op: Op) -> list[tuple[str, Rate]]:
        return [("console", self._rate)]

    def _view(self, frame: Frame) -> Any:
        body = Markdown(frame.text)
        return Group(Text("… continued", style="dim"), body) if frame.index else body

    async def post(self, frame: Frame) -> Any:
        if self.plain:
            self._write(frame)
            return frame.index
        live = Live(self._view(frame), console=self.console, auto_refresh=False, vertical_overflow="visible")
        live.start(refresh=True)
        if frame.final:
            live.stop()
        return live

    async def edit(self, handle: Any, frame: Frame) -> None:
        if self.plain:
            self._write(frame)
            return
        handle.update(self._view(frame), refresh=True)
        if frame.final:
            handle.stop()

    def _write(self, frame: Frame) -> None:
        """Append-only output: write what the page's source gained since last time."""
        done, new = self._written.get(frame.index, ""), frame.raw
        self.console.file.write(new[len(done) :] if new.startswith(done) else "\n" + new)
        if frame.final and not new.endswith("\n"):
            self.console.file.write("\n")
        self.console.file.flush()
        self._written[frame.index] = new


class ConsoleSettings(AdapterSettings):
    """`[console]`: `enabled` also opens the console beside chat adapters."""

    page_chars: int = Field(4000, ge=200)
    edits_per_second: float = Field(20.0, gt=0)


def make_question(prompt: str, conversation: str = "", files: tuple[Attachment, ...] = ()) -> Question:
    # The person at the terminal owns the bot: no per-person limits apply to them.
    return Question(
        uuid.uuid4().hex[:16], USER, "console", conversation, prompt, limited=False, attachments=files
    )


async def ask(
    host: Host, settings: ConsoleSettings, question: str, console: Console, files: tuple[Attachment, ...] = ()
) -> Outcome | None:
    """Stream one answer to the console (plain text when it is not a terminal), about `files`
    too when given."""
    target = ConsoleTarget(console, settings.page_chars, settings.edits_per_second)
    q = make_question(question, files=files)
    with _stop_on_ctrl_c(lambda: asyncio.ensure_future(host.stop(q.reply_id, USER))):
        return await host.answer(q, target)


class _stop_on_ctrl_c:
    """While a reply streams, Ctrl-C stops that reply instead of quitting."""

    def __init__(self, stop: Callable[[], object]) -> None:
        self.stop = stop
        self.installed = False

    def __enter__(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.stop)
            self.installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signal support: Ctrl-C keeps its default

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


async def _read_line(prompt: str) -> str:
    return await asyncio.to_thread(input, prompt)


async def chat(
    host: Host,
    settings: ConsoleSettings,
    console: Console,
    read: Callable[[str], Awaitable[str]] = _read_line,
) -> None:
    """Interactive multi-turn chat: earlier turns are remembered until /new or exit."""
    if getattr(host.brain, "demo", False):
        console.print(DEMO_NOTICE, style="yellow", markup=False)
    console.print(
        "[dim]Type a message. /new starts a new conversation, /quit (or Ctrl-D) exits; "
        "Ctrl-C stops a reply.[/dim]"
    )
    conversation = f"console:{uuid.uuid4().hex[:12]}"
    while True:
        try:
            line = (await read("you › ")).strip()
        except EOFError:
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/new":
            conversation = f"console:{uuid.uuid4().hex[:12]}"
            console.print("[dim]New conversation.[/dim]")
            continue
        q = make_question(line, conversation)
        target = ConsoleTarget(console, settings.page_chars, settings.edits_per_second)
        with _stop_on_ctrl_c(lambda q=q: asyncio.ensure_future(host.stop(q.reply_id, USER))):
            await host.answer(q, target)


async def serve(host: Host, settings: ConsoleSettings) -> None:
    """The console as a running adapter: chat until the person leaves, then shut down."""
    host.start()
    try:
        await chat(host, settings, Console())
    finally:
        await host.shutdown()


ADAPTER = Adapter("console", ConsoleSettings, serve, fallback=True)
