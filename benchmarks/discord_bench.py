"""How streaming into Discord feels, measured end to end against the local fakes.

The real discord.py client, relay, pacer and Agents SDK run against the fake Discord (with
Discord's real rate limits: 5 message creates and, as a separate bucket, 5 edits per 5 s per
channel, 50 requests/s, with X-RateLimit-* headers) and the fake OpenAI server streaming at a
steady model-like pace. Nothing leaves 127.0.0.1. (benchmarks/compare_bench.py puts these
numbers next to hand-written bots'.)

    .venv/bin/python benchmarks/discord_bench.py

Columns:
  placeholder      user's message -> the bot's first message is visible (median / worst)
  first text       user's message -> the first model text is visible (median / worst)
  p95 staleness    how long after the model produced a piece of text it became visible
  done             user's message -> the final text is visible (median / worst)
  calls/reply      message creates + edits per reply (typing and interaction callbacks apart)
  429s             rate-limit responses from the fake Discord
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

from agents import set_tracing_disabled  # noqa: E402

from bots.discord_api import DiscordSettings  # noqa: E402
from bots.discord_bot import serve  # noqa: E402
from core.config import Config, MemoryConfig, ModelConfig  # noqa: E402
from core.host import Finished, Host  # noqa: E402
from core.pacing import Pacer  # noqa: E402
from core.relay import Outcome  # noqa: E402
from core.sources import build_brain  # noqa: E402
from fakes.discord_server import FakeDiscord, FakeInteraction, FakeMessage  # noqa: E402
from fakes.openai_server import FakeOpenAI, TextReply  # noqa: E402

CHUNK = 3  # characters per model delta
CHUNK_DELAY = 0.015  # seconds between deltas: ~200 characters/s, a brisk model
TEXT_CHARS = 1200  # one Discord page


def answer(i: int) -> str:
    words = " ".join(f"word{i}.{j}" for j in range(400))
    return f"Answer {i}. {words}"[:TEXT_CHARS]


@dataclass
class Reply:
    asked: float
    produced: list[tuple[float, int]]  # (time a delta was sent, characters of text up to it)
    text: str = ""
    question: FakeMessage | None = None
    interaction: FakeInteraction | None = None
    pages: list[FakeMessage] | None = None
    outcome: Outcome | None = None


class Outcomes:
    """Reply outcomes by reply id, as the host's `on_finished` hook hands them over."""

    def __init__(self) -> None:
        self.by_reply: dict[int, Outcome] = {}

    def __call__(self, finished: Finished) -> None:
        self.by_reply[int(finished.question.reply_id)] = finished.outcome


def timed(script: TextReply, into: list[tuple[float, int]]) -> None:
    """Record when the fake model sends each delta."""
    original = script._before_chunk
    sizes = [len(c) for c in script.chunks]

    async def before(sent: int) -> None:
        await original(sent)
        into.append((time.monotonic(), sum(sizes[: sent + 1])))

    script._before_chunk = before  # type: ignore[method-assign]


def visible_over_time(pages: list[FakeMessage], text: str) -> list[tuple[float, int]]:
    """(time, characters of `text` visible) after every revision of every page."""
    starts, pos = [], 0
    for page in pages:
        final = page.history[-1].content
        starts.append(pos)
        body = final.split("\n", 1)[1] if final.startswith("```") and pos else final
        pos += _common_prefix(body, text[pos:])
    events = []
    for page, start in zip(pages, starts, strict=True):
        for rev in page.history:
            body = rev.content.split("\n", 1)[1] if rev.content.startswith("```") and start else rev.content
            events.append((rev.at, start + _common_prefix(body, text[start:])))
    events.sort()
    best, out = 0, []
    for at, upto in events:
        best = max(best, upto)
        out.append((at, best))
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


async def scenario(label: str, n: int, mode: str, **discord_options: Any) -> dict[str, Any]:
    async with FakeDiscord() as discord_fake, FakeOpenAI() as model:
        os.environ["DISCORD_BOT_TOKEN"] = discord_fake.token
        os.environ["OPENAI_API_KEY"] = "bench"
        with tempfile.TemporaryDirectory() as tmp:
            config = Config(
                model=ModelConfig(base_url=model.base_url),
                memory=MemoryConfig(path=str(Path(tmp) / "memory.db")),
                discord=DiscordSettings(enabled=True, api_base=discord_fake.api_base, **discord_options),
            )
            outcomes = Outcomes()
            host = Host(config, build_brain(config), Pacer())
            host.on_finished.append(outcomes)
            task = asyncio.create_task(serve(host, config.discord))
            try:
                await discord_fake.wait_ready()
                replies: list[tuple[int, Reply]] = []
                for i in range(n):
                    text = answer(i)
                    script = model.reply(
                        [text[j : j + CHUNK] for j in range(0, len(text), CHUNK)], delay=CHUNK_DELAY
                    )
                    reply = Reply(time.monotonic(), [], text)
                    timed(script, reply.produced)
                    if mode == "ask":
                        reply.interaction = await discord_fake.slash("ask", {"prompt": f"question {i}"})
                        replies.append((reply.interaction.id, reply))
                    else:
                        person = discord_fake.person(f"person{i}")  # as in a real channel
                        reply.question = await discord_fake.send(
                            f"<@{discord_fake.bot.id}> question {i}", author=person
                        )
                        reply.asked = reply.question.history[0].at
                        replies.append((reply.question.id, reply))
                for reply_id, reply in replies:
                    reply.outcome = await discord_fake.wait_for(
                        lambda r=reply_id: outcomes.by_reply.get(r), 300
                    )
                    if reply.interaction is not None:
                        assert reply.interaction.original is not None
                        reply.pages = [reply.interaction.original, *reply.interaction.followups]
                    else:
                        assert reply.question is not None
                        reply.pages = discord_fake.reply_pages(reply.question) or discord_fake.in_thread(
                            reply.question.id
                        )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        placeholder, first_text, done, staleness, calls = [], [], [], [], []
        for _, reply in replies:
            assert reply.pages and reply.outcome and reply.outcome.status == "done"
            # which scripted text went to which question is up to the order requests reach the model
            shown = "".join(p.history[-1].content for p in reply.pages)
            produced = next(r.produced for _, r in replies if r.text == shown)
            placeholder.append(reply.pages[0].history[0].at - reply.asked)
            seen = visible_over_time(reply.pages, shown)
            first_text.append(next(at for at, upto in seen if upto > 0) - reply.asked)
            done.append(seen[-1][0] - reply.asked)
            for at, upto in produced:
                visible_at = next(t for t, u in seen if u >= upto)
                staleness.append(max(0.0, visible_at - at))
            calls.append(reply.outcome.posts + reply.outcome.edits)
        return {
            "label": label,
            "placeholder": placeholder,
            "first_text": first_text,
            "done": done,
            "staleness": p95(staleness),
            "calls": statistics.mean(calls),
            "typing": len(discord_fake.typing),
            "throttled": len(discord_fake.throttled),
        }


def row(r: dict[str, Any]) -> str:
    def pair(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s / {max(values):.2f} s"

    return (
        f"| {r['label']} | {pair(r['placeholder'])} | {pair(r['first_text'])} | "
        f"{r['staleness']:.2f} s | {pair(r['done'])} | {r['calls']:.1f} | {r['throttled']} |"
    )


async def main() -> None:
    set_tracing_disabled(True)
    logging.basicConfig(level=logging.ERROR)
    results = [
        await scenario("1 reply (mention)", 1, "mention"),
        await scenario("10 concurrent replies, one channel", 10, "mention"),
        await scenario('10 concurrent, `open_threads = "auto"`', 10, "mention", open_threads="auto"),
        await scenario("1 reply (/ask)", 1, "ask"),
    ]
    print(
        f"Model: {TEXT_CHARS} characters in {CHUNK}-character deltas every {CHUNK_DELAY * 1000:.0f} ms "
        f"(~{TEXT_CHARS / CHUNK * CHUNK_DELAY:.1f} s per answer). Discord limits: 5 creates and 5 "
        "edits per 5 s per channel, 50/s global.\n"
    )
    print(
        "| scenario | placeholder (median / worst) | first text (median / worst) | p95 staleness "
        "| done (median / worst) | calls/reply | 429s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(row(r))


if __name__ == "__main__":
    asyncio.run(main())
