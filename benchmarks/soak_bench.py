"""Soak and fault run: many replies streaming at once in one process, against local fakes.

    .venv/bin/python benchmarks/soak_bench.py [--replies 1000] [--channels 100] [--faults]

The real Discord adapter (discord.py), relay, pacer and Agents SDK answer `--replies` questions
asked at once, spread evenly over `--channels` channels of the fake Discord, with the fake
OpenAI server streaming every answer. Everything - bot, fakes, model - runs in this one process
and event loop, so the loop lag and memory figures include the fakes (an upper bound).

Why Discord: its limits are per channel (5 per 5 s) plus 50 requests/s for the whole bot, so
spreading 1,000 replies over 100 channels keeps every reply streaming and the run takes about a
minute at the global limit. Slack counts chat.update per workspace (~50/min), so 1,000 edit-mode
replies in one workspace would take ~20 minutes; faking many workspaces would need an app
installed in many teams, which the Slack fake does not model.

`--faults` is the fault run: message creates and edits fail at seeded rates (5 % 5xx - a fifth
of them applied before failing, as platforms sometimes do - 2 % 429 with Retry-After, 1 %
connection resets), and the gateway is dropped once mid-run, with the last tenth of the
questions asked while it is down (they arrive through RESUME's replay).

Every reply is then checked as a person would see it: complete and intact (its pages joined
are exactly one of the scripted answers, each answer shown once), lost (no reply), duplicated
(an answer or a message shown twice), unfinished (a cursor or Stop button left, or no outcome).
Loop lag is the overshoot of a 10 ms ticker; peak RSS is `ru_maxrss`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

from agents import set_tracing_disabled  # noqa: E402
from fakes.discord_server import FakeDiscord, FakeMessage  # noqa: E402
from fakes.faults import Faults  # noqa: E402
from fakes.openai_server import FakeOpenAI  # noqa: E402

from bots.discord_bot import serve  # noqa: E402
from core.config import Config, DiscordConfig, MemoryConfig, ModelConfig  # noqa: E402
from core.pacing import Pacer  # noqa: E402
from core.relay import Outcome  # noqa: E402
from core.sources import build_brain  # noqa: E402

CHARS = 400  # per answer: one page, streamed over a few seconds
CHUNK = 8  # characters per model delta
DELAY = 0.05  # seconds between deltas
TICK = 0.01  # the lag ticker's period
CURSOR = "▌"


def answer(i: int) -> str:
    words = " ".join(f"r{i}w{j}" for j in range(CHARS // 5))
    return f"Answer {i}: {words}"[:CHARS - 6] + " (end)"


class Outcomes(logging.Handler):
    """Reply outcomes, as the adapter logs them."""

    def __init__(self) -> None:
        super().__init__()
        self.by_reply: dict[int, Outcome] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(outcome := getattr(record, "outcome", None), Outcome):
            self.by_reply[record.reply_id] = outcome  # type: ignore[attr-defined]


@dataclass
class LagTicker:
    """How late a `TICK` sleep wakes up: the event loop's responsiveness under load."""

    lags: list[float] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            self.lags.append(max(0.0, time.perf_counter() - start - TICK))


@dataclass
class Result:
    label: str
    replies: int
    channels: int
    counts: Counter[str]
    lag: list[float]
    rss_mib: float
    wall: float
    requests: int
    throttled: int  # 429s from the fake's real limits
    injected: Counter[str]
    resumes: int


def check(fake: FakeDiscord, questions: list[FakeMessage], texts: list[str],
          outcomes: dict[int, Outcome]) -> Counter[str]:
    """Sort every reply into intact / lost / duplicated / unfinished, as a user would see it."""
    counts: Counter[str] = Counter()
    left = Counter(texts)
    answers: dict[int, list[FakeMessage]] = {}
    for m in fake.bot_messages():
        answers.setdefault(m.reference or 0, []).append(m)
    for q in questions:
        pages = fake.reply_pages(q)
        shown = "".join(p.history[-1].content for p in pages)
        outcome = outcomes.get(q.id)
        if not pages:
            counts["lost"] += 1
        elif len(answers.get(q.id, [])) > 1 or (shown in texts and left[shown] == 0):
            counts["duplicated"] += 1
        elif (outcome is None or not outcome.delivered or CURSOR in shown
              or any(p.history[-1].components for p in pages)):
            counts["unfinished"] += 1
        elif left[shown] > 0:
            left[shown] -= 1
            counts["intact"] += 1
        else:
            counts["corrupted"] += 1
    in_replies = sum(len(fake.reply_pages(q)) for q in questions)
    counts["stray messages"] = len(fake.bot_messages()) - in_replies
    return counts


async def run(replies: int, channels: int, faults: bool, timeout: float) -> Result:
    texts = [answer(i) for i in range(replies)]
    ticker = LagTicker()
    async with FakeDiscord() as fake, FakeOpenAI() as model:
        places = [fake.add_text_channel(f"soak-{c}") for c in range(channels)]
        for text in texts:
            model.reply([text[j:j + CHUNK] for j in range(0, len(text), CHUNK)], delay=DELAY)
        os.environ["DISCORD_BOT_TOKEN"] = fake.token
        os.environ["OPENAI_API_KEY"] = "bench"
        with tempfile.TemporaryDirectory() as tmp:
            config = Config(model=ModelConfig(base_url=model.base_url),
                            memory=MemoryConfig(path=str(Path(tmp) / "memory.db")),
                            discord=DiscordConfig(enabled=True, api_base=fake.api_base))
            outcomes = Outcomes()
            log = logging.getLogger("streambot.discord")
            log.addHandler(outcomes)
            log.setLevel(logging.INFO)
            log.propagate = False
            bot = asyncio.create_task(serve(config, build_brain(config), Pacer()))
            tick = asyncio.create_task(ticker.run())
            try:
                await fake.wait_ready()
                if faults:
                    fake.faults = Faults(error_rate=0.04, applied_error_rate=0.01,
                                         applied_error_posts=True, rate_limit_rate=0.02,
                                         reset_rate=0.01, seed=1)
                start = time.monotonic()
                early = replies - replies // 10 if faults else replies
                questions = [await fake.send(f"<@{fake.bot.id}> question {i}",
                                             channel=places[i % channels]) for i in range(early)]
                if faults:  # drop the gateway once a quarter of the replies are done
                    await fake.wait_for(lambda: len(outcomes.by_reply) >= replies // 4, timeout)
                    await fake.drop_gateway(4000)
                    questions += [await fake.send(f"<@{fake.bot.id}> question {i}",
                                                  channel=places[i % channels])
                                  for i in range(early, replies)]
                with contextlib.suppress(TimeoutError):
                    await fake.wait_for(lambda: all(q.id in outcomes.by_reply for q in questions),
                                        timeout)
                wall = time.monotonic() - start
            finally:
                tick.cancel()
                bot.cancel()
                await asyncio.gather(tick, bot, return_exceptions=True)
                log.removeHandler(outcomes)
        counts = check(fake, questions, texts, outcomes.by_reply)
        requests = sum(1 for c in fake.calls if "/messages" in c.route)
        return Result("fault run" if faults else "soak", replies, channels, counts, ticker.lags,
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, wall, requests,
                      len(fake.throttled), fake.faults.injected, fake.resumes)


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def table(r: Result) -> str:
    c = r.counts
    injected = ", ".join(f"{n} {k}" for k, n in sorted(r.injected.items())) or "none"
    rows = [
        "| run | replies × channels | intact | lost | duplicated | unfinished | loop lag p50 / p99 / max "
        "| peak RSS | wall | message requests | 429s (limits / injected) | faults injected |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|",
        f"| {r.label} | {r.replies // r.channels} × {r.channels} | {c['intact']} | {c['lost']} | "
        f"{c['duplicated'] + c['stray messages']} | {c['unfinished'] + c['corrupted']} | "
        f"{pct(r.lag, 50) * 1000:.1f} / {pct(r.lag, 99) * 1000:.1f} / {max(r.lag) * 1000:.0f} ms | "
        f"{r.rss_mib:.0f} MiB | {r.wall:.0f} s | {r.requests} | {r.throttled} / "
        f"{r.injected['rate_limit']} | {injected}; {r.resumes} gateway resume(s) |",
    ]
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--faults", action="store_true", help="the fault run (see above)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting after (s)")
    args = parser.parse_args()
    set_tracing_disabled(True)
    logging.basicConfig(level=logging.ERROR)
    result = await run(args.replies, args.channels, args.faults, args.timeout)
    print(f"Each answer: {CHARS} characters in {CHUNK}-character deltas every {DELAY * 1000:.0f} ms; "
          "fake Discord with its real limits (5 per 5 s per channel, 50 requests/s); bot, fakes "
          "and model in one process.\n")
    print(table(result))
    if result.counts["corrupted"] or result.counts["stray messages"]:
        print(f"\n{result.counts['corrupted']} corrupted, {result.counts['stray messages']} stray")


if __name__ == "__main__":
    asyncio.run(main())
