"""Soak and fault run: many replies streaming at once in one process, against local fakes.

    .venv/bin/python benchmarks/soak_bench.py [--replies 1000] [--channels 100] [--faults]
    .venv/bin/python benchmarks/soak_bench.py --platform slack [--replies 100] [--channels 10]

The real Discord adapter (discord.py), relay, pacer and Agents SDK answer `--replies` questions
asked at once, spread evenly over `--channels` channels of the fake Discord, with the fake
OpenAI server streaming every answer. Everything - bot, fakes, model - runs in this one process
and event loop, so the loop lag and memory figures include the fakes (an upper bound).

Why Discord for the 1,000: its limits are per channel (5 per 5 s) plus 50 requests/s for the
whole bot, so spreading 1,000 replies over 100 channels keeps every reply streaming and the run
takes about a minute at the global limit. Slack counts chat.update per workspace (~50/min), so
1,000 edit-mode replies in one workspace would take ~20 minutes (native streams are slower
still: chat.startStream allows ~20/min); faking many workspaces would need an app installed in
many teams, which the Slack fake does not model. `--platform slack` therefore runs 100 replies
over 10 channels of one workspace, in edit mode, through bolt's Socket Mode.

`--faults` is the fault run: message creates and edits fail at seeded rates (5 % 5xx - a fifth
of them applied before failing, as platforms sometimes do - 2 % 429 with Retry-After, 1 %
connection resets), and the gateway (Slack: the Socket Mode connection) is dropped once mid-run,
with the last tenth of the questions asked while it is down (they arrive through RESUME's
replay, or Slack's delivery once the app reconnects).

Failed message requests are counted twice: as the fake answered them (5xx, 429, reset) and as
the relay saw them (`Outcome.failed_requests` + `rate_limited`); the difference is requests
retried underneath the relay, outside its pacer (Discord only).

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
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

from agents import set_tracing_disabled  # noqa: E402
from discord_bench import Outcomes  # noqa: E402  (reply outcomes, from the host's hook)
from harness import running_slack_bot as running_bot  # noqa: E402

from bots.discord_api import DiscordSettings  # noqa: E402
from bots.discord_bot import serve  # noqa: E402
from core.backend import open_backend  # noqa: E402
from core.config import Config, MemoryConfig, ModelConfig  # noqa: E402
from core.host import Host  # noqa: E402
from core.pacing import Pacer  # noqa: E402
from core.sources import build_brain  # noqa: E402
from fakes.discord_server import FakeDiscord  # noqa: E402
from fakes.faults import Faults  # noqa: E402
from fakes.openai_server import FakeOpenAI  # noqa: E402
from fakes.redis_server import RedisServer  # noqa: E402
from fakes.slack_server import FakeSlack, settled  # noqa: E402

CHARS = 400  # per answer: one page, streamed over a few seconds
CHUNK = 8  # characters per model delta
DELAY = 0.05  # seconds between deltas
TICK = 0.01  # the lag ticker's period
CURSOR = "▌"


def answer(i: int) -> str:
    words = " ".join(f"r{i}w{j}" for j in range(CHARS // 5))
    return f"Answer {i}: {words}"[: CHARS - 6] + " (end)"


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
class Seen:
    """One question's answer as people see it."""

    pages: list[str]  # final text of each message of the reply
    copies: int  # messages that answer the question directly (1 unless duplicated)
    finished: bool  # no cursor or Stop button left, and the final text was delivered


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
    reconnects: int
    failed: tuple[int, int] | None = None  # failed message requests: at the fake, seen by the relay


def tally(seen: list[Seen], texts: list[str], stray: int) -> Counter[str]:
    """Sort every reply into intact / lost / duplicated / unfinished / corrupted."""
    counts: Counter[str] = Counter({"stray messages": stray})
    left = Counter(texts)
    for reply in seen:
        shown = "".join(reply.pages)
        if not reply.pages:
            counts["lost"] += 1
        elif reply.copies > 1 or (shown in left and left[shown] == 0):
            counts["duplicated"] += 1
        elif not reply.finished or CURSOR in shown:
            counts["unfinished"] += 1
        elif left[shown] > 0:
            left[shown] -= 1
            counts["intact"] += 1
        else:
            counts["corrupted"] += 1
    return counts


def chunks(text: str) -> list[str]:
    return [text[j : j + CHUNK] for j in range(0, len(text), CHUNK)]


def fault_mix() -> Faults:
    """5 % 5xx (a fifth applied before failing), 2 % 429s, 1 % connection resets."""
    return Faults(
        error_rate=0.04,
        applied_error_rate=0.01,
        applied_error_posts=True,
        rate_limit_rate=0.02,
        reset_rate=0.01,
        seed=1,
    )


async def run_discord(replies: int, channels: int, faults: bool, timeout: float) -> Result:
    texts = [answer(i) for i in range(replies)]
    ticker = LagTicker()
    async with FakeDiscord() as fake, FakeOpenAI() as model:
        places = [fake.add_text_channel(f"soak-{c}") for c in range(channels)]
        for text in texts:
            model.reply(chunks(text), delay=DELAY)
        os.environ["DISCORD_BOT_TOKEN"] = fake.token
        os.environ["OPENAI_API_KEY"] = "bench"
        with tempfile.TemporaryDirectory() as tmp:
            config = Config(
                model=ModelConfig(base_url=model.base_url),
                memory=MemoryConfig(path=str(Path(tmp) / "memory.db")),
                discord=DiscordSettings(enabled=True, api_base=fake.api_base),
            )
            outcomes = Outcomes()
            host = Host(config, build_brain(config), Pacer())
            host.on_finished.append(outcomes)
            bot = asyncio.create_task(serve(host, config.discord))
            tick = asyncio.create_task(ticker.run())
            try:
                await fake.wait_ready()
                if faults:
                    fake.faults = fault_mix()
                start = time.monotonic()
                early = replies - replies // 10 if faults else replies
                people = [fake.person(f"person{i}") for i in range(replies)]  # [limits]: one each
                questions = [
                    await fake.send(
                        f"<@{fake.bot.id}> question {i}", channel=places[i % channels], author=people[i]
                    )
                    for i in range(early)
                ]
                if faults:  # drop the gateway once a quarter of the replies are done
                    await fake.wait_for(lambda: len(outcomes.by_reply) >= replies // 4, timeout)
                    await fake.drop_gateway(4000)
                    questions += [
                        await fake.send(
                            f"<@{fake.bot.id}> question {i}", channel=places[i % channels], author=people[i]
                        )
                        for i in range(early, replies)
                    ]
                with contextlib.suppress(TimeoutError):
                    await fake.wait_for(lambda: all(q.id in outcomes.by_reply for q in questions), timeout)
                wall = time.monotonic() - start
            finally:
                tick.cancel()
                bot.cancel()
                await asyncio.gather(tick, bot, return_exceptions=True)
        answers = Counter(m.reference for m in fake.bot_messages())
        seen = []
        for q in questions:
            pages = fake.reply_pages(q)
            outcome = outcomes.by_reply.get(q.id)
            seen.append(
                Seen(
                    [p.history[-1].content for p in pages],
                    answers[q.id],
                    outcome is not None
                    and outcome.delivered
                    and not any(p.history[-1].components for p in pages),
                )
            )
        stray = len(fake.bot_messages()) - sum(len(fake.reply_pages(q)) for q in questions)
        requests = sum(1 for c in fake.calls if "/messages" in c.route)
        failed = sum(
            1 for c in fake.calls if "/messages" in c.route and (c.status in (0, 429) or c.status >= 500)
        )
        relayed = sum(o.failed_requests + o.rate_limited for o in outcomes.by_reply.values())
        return Result(
            "Discord",
            replies,
            channels,
            tally(seen, texts, stray),
            ticker.lags,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            wall,
            requests,
            len(fake.throttled),
            fake.faults.injected,
            fake.resumes,
            (failed, relayed),
        )


@contextlib.asynccontextmanager
async def slack_replicas(slack: FakeSlack, model: FakeOpenAI, tmp: str, replicas: int) -> AsyncIterator[None]:
    """One bot, or `replicas` bots on one real redis-server (each its own Socket Mode connection,
    store, pacer and limits), which the fake Slack hands events to in turn."""
    if replicas == 1:
        async with running_bot(
            slack, model_base_url=model.base_url, memory_path=str(Path(tmp) / "memory.db"), streaming="edit"
        ):
            yield
        return
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("--replicas needs redis-server (apt-get install redis-server)")
    server = RedisServer(executable)
    server.start()
    backends = [
        open_backend(Config(memory=MemoryConfig(backend="redis", url=server.url))) for _ in range(replicas)
    ]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for backend in backends:
                await stack.enter_async_context(
                    running_bot(
                        slack,
                        model_base_url=model.base_url,
                        memory_path=str(Path(tmp) / "memory.db"),
                        backend=backend,
                        streaming="edit",
                    )
                )
            slack.route = None  # deliveries take turns over the replicas' connections
            yield
    finally:
        for backend in backends:
            await backend.store.close()
            await backend.redis.aclose()
        server.stop()


async def run_slack(replies: int, channels: int, faults: bool, timeout: float, replicas: int = 1) -> Result:
    texts = [answer(i) for i in range(replies)]
    ticker = LagTicker()
    places = [f"C0SOAK{c}" for c in range(channels)]
    async with FakeSlack() as slack, FakeOpenAI() as model:
        for text in texts:
            model.reply(chunks(text), delay=DELAY)
        with tempfile.TemporaryDirectory() as tmp:
            async with slack_replicas(slack, model, tmp, replicas):
                tick = asyncio.create_task(ticker.run())
                connections = slack.connections
                if faults:
                    slack.faults = fault_mix()
                start = time.monotonic()
                early = replies - replies // 10 if faults else replies

                async def ask(i: int) -> tuple[str, str]:
                    channel = places[i % channels]
                    return channel, await slack.mention(channel, f"question {i}", user=f"U0P{i}")

                threads = [await ask(i) for i in range(early)]
                if faults:  # cut Socket Mode once a quarter of the replies are done
                    await slack.wait_for(
                        lambda: sum(settled(slack, c, ts) for c, ts in threads) >= replies // 4, timeout
                    )
                    await slack.drop_socket()
                    threads += [await ask(i) for i in range(early, replies)]
                with contextlib.suppress(AssertionError):  # timed out: counted as unfinished
                    await slack.wait_for(lambda: all(settled(slack, c, ts) for c, ts in threads), timeout)
                wall = time.monotonic() - start
                tick.cancel()
    seen = [
        Seen(
            [m.text for m in slack.bot_messages(c, ts)], len(slack.bot_messages(c, ts)), settled(slack, c, ts)
        )
        for c, ts in threads
    ]
    stray = len(slack.bot_messages()) - sum(len(r.pages) for r in seen)
    requests = sum(1 for c in slack.calls if c.method.startswith("chat."))
    if slack.total_429s:
        print(f"429s by method: {dict(slack.rate_limited)}")
    label = "Slack (edit mode)" + (f", {replicas} replicas on Redis" if replicas > 1 else "")
    return Result(
        label,
        replies,
        channels,
        tally(seen, texts, stray),
        ticker.lags,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        wall,
        requests,
        slack.total_429s,
        slack.faults.injected,
        slack.connections - connections,
    )


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def table(r: Result, faults: bool) -> str:
    c = r.counts
    injected = ", ".join(f"{n} {k}" for k, n in sorted(r.injected.items())) or "none"
    return "\n".join(
        [
            "| platform | run | replies × channels | intact | lost | duplicated | unfinished "
            "| loop lag p50 / p99 / max | peak RSS | wall | message requests "
            "| 429s (limits / injected) | failed requests (at the fake / seen by the relay) "
            "| faults injected |",
            "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|",
            f"| {r.label} | {'faults' if faults else 'soak'} | {r.replies // r.channels} × {r.channels} "
            f"| {c['intact']} | {c['lost']} | {c['duplicated'] + c['stray messages']} "
            f"| {c['unfinished'] + c['corrupted']} "
            f"| {pct(r.lag, 50) * 1000:.1f} / {pct(r.lag, 99) * 1000:.1f} / {max(r.lag) * 1000:.0f} ms "
            f"| {r.rss_mib:.0f} MiB | {r.wall:.0f} s | {r.requests} | {r.throttled} / "
            f"{r.injected['rate_limit']} | {' / '.join(map(str, r.failed)) if r.failed else '–'} "
            f"| {injected}; {r.reconnects} reconnect(s) |",
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=["discord", "slack"], default="discord")
    parser.add_argument("--replies", type=int, help="default: 1000 (Discord), 100 (Slack)")
    parser.add_argument("--channels", type=int, help="default: 100 (Discord), 10 (Slack)")
    parser.add_argument("--faults", action="store_true", help="the fault run (see above)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting after (s)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="Slack: run this many bots on one redis-server, taking turns"
    )
    args = parser.parse_args()
    set_tracing_disabled(True)
    logging.basicConfig(level=logging.ERROR)
    slack = args.platform == "slack"
    replies = args.replies or (100 if slack else 1000)
    channels = args.channels or (10 if slack else 100)
    if slack:
        result = await run_slack(replies, channels, args.faults, args.timeout, args.replicas)
    else:
        result = await run_discord(replies, channels, args.faults, args.timeout)
    limits = (
        "fake Slack with its real limits (chat.postMessage ~1/s per channel, chat.update "
        "~50/min per workspace)"
        if slack
        else "fake Discord with its real limits (5 per 5 s per channel, 50 requests/s)"
    )
    print(
        f"Each answer: {CHARS} characters in {CHUNK}-character deltas every {DELAY * 1000:.0f} ms; "
        f"{limits}; bot, fakes and model in one process.\n"
    )
    print(table(result, args.faults))
    if result.counts["corrupted"] or result.counts["stray messages"]:
        print(f"\n{result.counts['corrupted']} corrupted, {result.counts['stray messages']} stray")


if __name__ == "__main__":
    asyncio.run(main())
