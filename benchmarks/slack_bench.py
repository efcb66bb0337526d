"""Slack streaming benchmark: the real adapter against local fakes with Slack's real limits.

    .venv/bin/python benchmarks/slack_bench.py [--chars 600] [--delay 0.02]

For native streams and for edit mode, with 1 and with 10 replies at once in one channel, it
measures what a person would notice: time from the event to the placeholder, to the first
visible model text, how stale the visible text is (p95 over every model chunk: from the moment
the model produced it to the moment Slack showed it), Web API calls per reply, and 429s.
Everything runs on 127.0.0.1; the model is the fake OpenAI server streaming ~3-character
chunks every `--delay` seconds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import running_slack_bot as running_bot  # noqa: E402

from bots.slack_api import ZWJ  # noqa: E402
from fakes.openai_server import FakeOpenAI, TextReply  # noqa: E402
from fakes.slack_server import FakeSlack, Message, settled  # noqa: E402

CHANNEL = "C0BENCH"
COUNTED = ("chat.", "assistant.", "conversations.")


@dataclass
class Result:
    mode: str
    replies: int
    to_placeholder: list[float]
    to_first_text: list[float]
    staleness: list[float]
    calls_per_reply: float
    rate_limited: int
    wall: float


def answer(i: int, chars: int) -> str:
    words, k = [], 0
    while sum(len(w) + 1 for w in words) < chars:
        words.append(f"r{i}w{k}")
        k += 1
    return " ".join(words)


def record_emissions(script: TextReply) -> list[float]:
    """When the fake model sent each chunk (monotonic seconds)."""
    times: list[float] = []
    before = script._before_chunk

    async def timed(sent: int) -> None:
        await before(sent)
        times.append(time.monotonic())

    script._before_chunk = timed  # type: ignore[method-assign]
    return times


def shown_at(msgs: list[Message], placeholder: str = "…") -> list[tuple[float, int]]:
    """(time, characters of model text visible) after every change of a one-message reply."""
    out = []
    for msg in msgs[:1]:
        for t, text in zip(msg.times, msg.history, strict=True):
            text = text.replace(ZWJ, "").replace("▌", "").strip()
            out.append((t, 0 if text in ("", placeholder) else len(text)))
    return out


async def scenario(mode: str, replies: int, chars: int, delay: float) -> Result:
    texts = [answer(i, chars) for i in range(replies)]
    async with FakeOpenAI() as model, FakeSlack() as slack:
        emitted = {}
        for text in texts:
            emitted[text] = record_emissions(model.reply(text, delay=delay))
        with tempfile.TemporaryDirectory() as tmp:
            async with running_bot(
                slack, model_base_url=model.base_url, memory_path=str(Path(tmp) / "m.db"), streaming=mode
            ):
                calls_before = len(slack.calls)
                start = time.monotonic()
                sent: dict[str, float] = {}

                async def ask(i: int) -> str:
                    sent_at = time.monotonic()
                    ts = await slack.mention(CHANNEL, f"question {i}", user=f"U0P{i}")
                    sent[ts] = sent_at
                    return ts

                questions = await asyncio.gather(*(ask(i) for i in range(replies)))
                await slack.wait_for(
                    lambda: all(settled(slack, CHANNEL, q) for q in questions), 300.0, "every reply"
                )
                wall = time.monotonic() - start
                calls = [c for c in slack.calls[calls_before:] if c.method.startswith(COUNTED)]

    to_placeholder, to_first, stale = [], [], []
    for q in questions:
        msgs = slack.bot_messages(CHANNEL, q)
        final = "".join(m.text for m in msgs)
        assert final in emitted, "a reply did not arrive intact"
        to_placeholder.append(msgs[0].created - sent[q])
        states = shown_at(msgs)
        to_first.append(next(t for t, n in states if n > 0) - sent[q])
        # Chunk k is visible once the message shows at least as many characters as the model
        # had produced up to and including it.
        produced = 0
        chunk = 3
        for k, t_emit in enumerate(emitted[final]):
            produced = min(len(final), (k + 1) * chunk)
            t_seen = next(t for t, n in states if n >= produced)
            stale.append(max(0.0, t_seen - t_emit))
    return Result(
        mode, replies, to_placeholder, to_first, stale, len(calls) / replies, slack.total_429s, wall
    )


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def table(results: list[Result]) -> str:
    rows = [
        "| streaming | replies at once | event → placeholder (p50 / max) | "
        "event → first text (p50 / max) | staleness p95 | API calls / reply | 429s | "
        "all done |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.mode} | {r.replies} | {statistics.median(r.to_placeholder):.2f} s / "
            f"{max(r.to_placeholder):.2f} s | {statistics.median(r.to_first_text):.2f} s / "
            f"{max(r.to_first_text):.2f} s | {pct(r.staleness, 95):.2f} s | "
            f"{r.calls_per_reply:.1f} | {r.rate_limited} | {r.wall:.1f} s |"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=600, help="characters per answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between model chunks")
    parser.add_argument("--replies", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for mode in ("native", "edit"):
        for n in args.replies:
            results.append(await scenario(mode, n, args.chars, args.delay))
            print(f"  {mode:6} x{n}: done in {results[-1].wall:.1f} s", file=sys.stderr)
    model_time = args.chars / 3 * args.delay
    print(
        f"\nEach answer: {args.chars} characters, 3 per chunk every {args.delay} s "
        f"(~{model_time:.1f} s of model output). Fake Slack limits: chat.postMessage ~1/s per "
        "channel, chat.update 50/min, chat.startStream 20/min, chat.appendStream 100/min, "
        "per workspace.\n"
    )
    print(table(results))


if __name__ == "__main__":
    asyncio.run(main())
