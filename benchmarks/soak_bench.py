"""Soak and fault run: many replies streaming at once, the bot in this process, the fakes in another.

    .venv/bin/python benchmarks/soak_bench.py [--replies 1000] [--channels 100] [--faults]
    .venv/bin/python benchmarks/soak_bench.py --platform slack [--replies 100] [--channels 10]
                                              [--replicas 3]

The real Discord adapter (discord.py), relay, pacer and Agents SDK answer `--replies` questions
asked at once, spread evenly over `--channels` channels of the fake Discord, with the fake
OpenAI server streaming every answer. The fakes (Discord or Slack, and the model) run in a child
process of their own (this script with `--serve-fakes`, driven over its stdin/stdout), so the
event-loop lag, peak RSS and CPU time reported are the bot's alone, as in production.

Why Discord for the 1,000: its limits are per channel (5 creates and 5 edits per 5 s) plus 50
requests/s for the whole bot, so spreading 1,000 replies over 100 channels keeps every reply
streaming and the run takes about a minute at the global limit. Slack counts chat.update per
workspace (~50/min), so 1,000 edit-mode replies in one workspace would take ~20 minutes (native
streams are slower still: chat.startStream allows ~20/min); faking many workspaces would need an
app installed in many teams, which the Slack fake does not model. `--platform slack` therefore
runs 100 replies over 10 channels of one workspace, in edit mode, through bolt's Socket Mode;
with `--replicas N`, N bots in the bot's process share one redis-server (store, pacer, limits),
and the fake Slack hands events to their connections in turn.

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
Loop lag is the overshoot of a 10 ms ticker in the bot's process; peak RSS is its `ru_maxrss`;
CPU is its user + system time from the first question to the last answer, per reply. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

CHARS = 400  # per answer: one page, streamed over a few seconds
CHUNK = 8  # characters per model delta
DELAY = 0.05  # seconds between deltas
TICK = 0.01  # the lag ticker's period
CURSOR = "▌"


def answer(i: int) -> str:
    words = " ".join(f"r{i}w{j}" for j in range(CHARS // 5))
    return f"Answer {i}: {words}"[: CHARS - 6] + " (end)"


def chunks(text: str) -> list[str]:
    return [text[j : j + CHUNK] for j in range(0, len(text), CHUNK)]


def tally(seen: list[tuple[list[str], int, bool]], texts: list[str], stray: int) -> Counter[str]:
    """Sort every reply - (final text of each page, messages answering the question directly,
    finished) - into intact / lost / duplicated / unfinished / corrupted."""
    counts: Counter[str] = Counter({"stray messages": stray})
    left = Counter(texts)
    for pages, copies, finished in seen:
        shown = "".join(pages)
        if not pages:
            counts["lost"] += 1
        elif copies > 1 or (shown in left and left[shown] == 0):
            counts["duplicated"] += 1
        elif not finished or CURSOR in shown:
            counts["unfinished"] += 1
        elif left[shown] > 0:
            left[shown] -= 1
            counts["intact"] += 1
        else:
            counts["corrupted"] += 1
    return counts


# --- the fakes' process ------------------------------------------------------------------------


def fault_mix() -> Any:
    """5 % 5xx (a fifth applied before failing), 2 % 429s, 1 % connection resets."""
    from fakes.faults import Faults

    return Faults(
        error_rate=0.04,
        applied_error_rate=0.01,
        applied_error_posts=True,
        rate_limit_rate=0.02,
        reset_rate=0.01,
        seed=1,
    )


async def serve_fakes(platform: str, replies: int, channels: int) -> None:
    """Run the fakes; obey one JSON command per stdin line, answer one JSON line on stdout."""
    from fakes.discord_server import FakeDiscord
    from fakes.openai_server import FakeOpenAI
    from fakes.slack_server import FakeSlack, settled

    texts = [answer(i) for i in range(replies)]
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async with contextlib.AsyncExitStack() as stack:
        model = await stack.enter_async_context(FakeOpenAI())
        for text in texts:
            model.reply(chunks(text), delay=DELAY)
        if platform == "discord":
            fake = await stack.enter_async_context(FakeDiscord())
            places = [fake.add_text_channel(f"soak-{c}") for c in range(channels)]
            people = [fake.person(f"person{i}") for i in range(replies)]  # [limits]: one each
            questions: list[Any] = []
            say({"model": model.base_url, "api_base": fake.api_base, "token": fake.token})
        else:
            slack = await stack.enter_async_context(FakeSlack())
            spots = [f"C0SOAK{c}" for c in range(channels)]
            threads: list[tuple[str, str]] = []
            say({"model": model.base_url, "api_base": slack.base_url})
        connections = 0
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "ready":
                if platform == "discord":
                    await fake.wait_ready()
                else:
                    sockets = cmd.get("sockets", 1)
                    await slack.wait_for(lambda n=sockets: len(slack._open_sockets()) >= n, 60.0, "the bots")
                    connections = slack.connections
                    if sockets > 1:
                        slack.route = None  # deliveries take turns over the replicas' connections
                say({})
            elif op == "faults":
                mix = fault_mix()
                if platform == "discord":
                    fake.faults = mix
                else:
                    slack.faults = mix
                say({})
            elif op == "ask":
                ids = []
                for i in range(cmd["start"], cmd["stop"]):
                    if platform == "discord":
                        q = await fake.send(
                            f"<@{fake.bot.id}> question {i}", channel=places[i % channels], author=people[i]
                        )
                        questions.append(q)
                        ids.append(q.id)
                    else:
                        channel = spots[i % channels]
                        ts = await slack.mention(channel, f"question {i}", user=f"U0P{i}")
                        threads.append((channel, ts))
                say({"ids": ids})
            elif op == "drop":
                if platform == "discord":
                    await fake.drop_gateway(4000)
                else:
                    await slack.drop_socket()
                say({})
            elif op == "settled":  # Slack: how many replies are finished, as people see them
                say({"settled": sum(settled(slack, c, ts) for c, ts in threads)})
            elif op == "tally":
                if platform == "discord":
                    delivered = {int(k): v for k, v in cmd["delivered"].items()}
                    answers = Counter(m.reference for m in fake.bot_messages())
                    seen = []
                    for q in questions:
                        pages = fake.reply_pages(q)
                        seen.append(
                            (
                                [p.history[-1].content for p in pages],
                                answers[q.id],
                                delivered.get(q.id, False)
                                and not any(p.history[-1].components for p in pages),
                            )
                        )
                    stray = len(fake.bot_messages()) - sum(len(fake.reply_pages(q)) for q in questions)
                    requests = sum(1 for c in fake.calls if "/messages" in c.route)
                    failed = sum(
                        1
                        for c in fake.calls
                        if "/messages" in c.route and (c.status in (0, 429) or c.status >= 500)
                    )
                    throttled, injected, reconnects = len(fake.throttled), fake.faults.injected, fake.resumes
                else:
                    seen = [
                        (
                            [m.text for m in slack.bot_messages(c, ts)],
                            len(slack.bot_messages(c, ts)),
                            settled(slack, c, ts),
                        )
                        for c, ts in threads
                    ]
                    stray = len(slack.bot_messages()) - sum(len(s[0]) for s in seen)
                    requests = sum(1 for c in slack.calls if c.method.startswith("chat."))
                    throttled, injected = slack.total_429s, slack.faults.injected
                    reconnects = slack.connections - connections
                    failed = None
                    if slack.total_429s:
                        print(f"429s by method: {dict(slack.rate_limited)}", file=sys.stderr)
                say(
                    {
                        "counts": tally(seen, texts, stray),
                        "requests": requests,
                        "throttled": throttled,
                        "injected": injected,
                        "reconnects": reconnects,
                        "failed": failed,
                        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    }
                )
                return


class Fakes:
    """The fakes' process, seen from the bot's."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, platform: str, replies: int, channels: int) -> tuple[Fakes, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve-fakes",
            "--platform",
            platform,
            "--replies",
            str(replies),
            "--channels",
            str(channels),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        fakes = cls(proc)
        return fakes, await fakes._read()

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fakes' process ended")
        return json.loads(line)

    async def do(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


# --- the bot's process -------------------------------------------------------------------------


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
    cpu: float  # the bot's CPU seconds from the first question to the end
    wall: float
    requests: int
    throttled: int  # 429s from the fakes' real limits
    injected: Counter[str]
    reconnects: int
    fakes_rss_mib: float
    failed: tuple[int, int] | None = None  # failed message requests: at the fake, seen by the relay


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.asynccontextmanager
async def shared_backends(replicas: int) -> AsyncIterator[list[Any]]:
    """No backend for one bot; for `replicas` bots, a backend each on one real redis-server."""
    if replicas == 1:
        yield [None]
        return
    from harness import reserved_port

    from core.backend import open_backend
    from core.config import Config, MemoryConfig
    from fakes.redis_server import RedisServer

    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("--replicas needs redis-server (apt-get install redis-server)")
    with reserved_port() as port:
        server = RedisServer(executable, port)
        server.start()
    backends = [
        open_backend(Config(memory=MemoryConfig(backend="redis", url=server.url))) for _ in range(replicas)
    ]
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.store.close()
            await backend.redis.aclose()
        server.stop()


async def run(
    platform: str, replies: int, channels: int, faults: bool, timeout: float, replicas: int
) -> Result:
    from agents import set_tracing_disabled
    from discord_bench import Outcomes  # reply outcomes, from the host's hook
    from harness import wait_for

    from core.config import Config, MemoryConfig, ModelConfig
    from core.host import Host
    from core.pacing import Pacer
    from core.sources import build_brain

    set_tracing_disabled(True)
    fakes, where = await Fakes.start(platform, replies, channels)
    ticker = LagTicker()
    outcomes = Outcomes()
    tmp = tempfile.TemporaryDirectory()
    try:
        os.environ["OPENAI_API_KEY"] = "bench"
        memory = MemoryConfig(path=str(Path(tmp.name) / "memory.db"))
        if platform == "discord":
            from bots.discord_api import DiscordSettings
            from bots.discord_bot import serve

            os.environ["DISCORD_BOT_TOKEN"] = where["token"]
            config = Config(
                model=ModelConfig(base_url=where["model"]),
                memory=memory,
                discord=DiscordSettings(enabled=True, api_base=where["api_base"]),
            )
            settings: Any = config.discord
        else:
            from bots.slack_api import SlackSettings
            from bots.slack_bot import serve  # type: ignore[assignment]
            from fakes.slack_server import APP_TOKEN, BOT_TOKEN

            os.environ.update({"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN})
            config = Config(
                model=ModelConfig(base_url=where["model"]),
                memory=memory,
                slack=SlackSettings(enabled=True, api_base=where["api_base"], streaming="edit"),
            )
            settings = config.slack
        async with shared_backends(replicas) as backends:
            bots = []
            for backend in backends:
                if backend is None:
                    host = Host(config, build_brain(config), Pacer())
                else:  # a replica: store, pacer and limits shared through Redis
                    brain = build_brain(config, redis=backend.redis)
                    host = Host(config, brain, backend.pacer, backend.store, backend.gate)
                if platform == "discord":  # (Slack's replies are counted as people see them)
                    host.on_finished.append(outcomes)
                bots.append(asyncio.create_task(serve(host, settings)))
            tick = asyncio.create_task(ticker.run())
            try:
                await asyncio.wait_for(fakes.do("ready", sockets=replicas), 60)
                if faults:
                    await fakes.do("faults")
                start, cpu = time.monotonic(), cpu_seconds()
                early = replies - replies // 10 if faults else replies
                await fakes.do("ask", start=0, stop=early)

                async def finished() -> int:
                    if platform == "discord":
                        return len(outcomes.by_reply)
                    return (await fakes.do("settled"))["settled"]

                async def until(count: int, limit: float) -> None:
                    async def done() -> bool:
                        return await finished() >= count

                    await wait_for(done, limit, f"{count} replies", poll=0.25)

                if faults:  # drop the connection once a quarter of the replies are done
                    await until(replies // 4, timeout)
                    await fakes.do("drop")
                    await fakes.do("ask", start=early, stop=replies)
                with contextlib.suppress(AssertionError):  # timed out: counted as unfinished
                    await until(replies, timeout)
                wall, cpu = time.monotonic() - start, cpu_seconds() - cpu
            finally:
                tick.cancel()
                for bot in bots:
                    bot.cancel()
                await asyncio.gather(tick, *bots, return_exceptions=True)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        delivered = {k: o.delivered for k, o in outcomes.by_reply.items()}
        report = await fakes.do("tally", delivered=delivered)
    finally:
        await fakes.close()
        tmp.cleanup()
    label = "Discord" if platform == "discord" else "Slack (edit mode)"
    if replicas > 1:
        label += f", {replicas} replicas on Redis"
    relayed = sum(o.failed_requests + o.rate_limited for o in outcomes.by_reply.values())
    return Result(
        label,
        replies,
        channels,
        Counter(report["counts"]),
        ticker.lags,
        rss,
        cpu,
        wall,
        report["requests"],
        report["throttled"],
        Counter(report["injected"]),
        report["reconnects"],
        report["rss_mib"],
        None if report["failed"] is None else (report["failed"], relayed),
    )


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def table(r: Result, faults: bool) -> str:
    c = r.counts
    injected = ", ".join(f"{n} {k}" for k, n in sorted(r.injected.items())) or "none"
    return "\n".join(
        [
            "| platform | run | replies × channels | intact | lost | duplicated "
            "| unfinished | bot's loop lag p50 / p99 / max | bot's peak RSS | bot's CPU per reply | wall "
            "| message requests | 429s (limits / injected) "
            "| failed requests (at the fake / seen by the relay) | faults injected |",
            "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
            f"| {r.label} | {'faults' if faults else 'soak'} | {r.replies // r.channels} × {r.channels} "
            f"| {c['intact']} | {c['lost']} | {c['duplicated'] + c['stray messages']} "
            f"| {c['unfinished'] + c['corrupted']} "
            f"| {pct(r.lag, 50) * 1000:.1f} / {pct(r.lag, 99) * 1000:.1f} / {max(r.lag) * 1000:.0f} ms "
            f"| {r.rss_mib:.0f} MiB | {1000 * r.cpu / r.replies:.1f} ms | {r.wall:.0f} s "
            f"| {r.requests} | {r.throttled} / {r.injected['rate_limit']} "
            f"| {' / '.join(map(str, r.failed)) if r.failed else '–'} "
            f"| {injected}; {r.reconnects} reconnect(s) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=["discord", "slack"], default="discord")
    parser.add_argument("--replies", type=int, help="default: 1000 (Discord), 100 (Slack)")
    parser.add_argument("--channels", type=int, help="default: 100 (Discord), 10 (Slack)")
    parser.add_argument("--faults", action="store_true", help="the fault run (see above)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting after (s)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="Slack: run this many bots on one redis-server, taking turns"
    )
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    slack = args.platform == "slack"
    replies = args.replies or (100 if slack else 1000)
    channels = args.channels or (10 if slack else 100)
    if args.serve_fakes:
        asyncio.run(serve_fakes(args.platform, replies, channels))
        return
    result = asyncio.run(run(args.platform, replies, channels, args.faults, args.timeout, args.replicas))
    limits = (
        "fake Slack with its real limits (chat.postMessage ~1/s per channel, chat.update "
        "~50/min per workspace)"
        if slack
        else "fake Discord with its real limits (5 creates and 5 edits per 5 s per channel, 50 requests/s)"
    )
    print(
        f"Each answer: {CHARS} characters in {CHUNK}-character deltas every {DELAY * 1000:.0f} ms; "
        f"{limits}; the fakes in a process of their own ({result.fakes_rss_mib:.0f} MiB peak).\n"
    )
    print(table(result, args.faults))
    if result.counts["corrupted"] or result.counts["stray messages"]:
        print(f"\n{result.counts['corrupted']} corrupted, {result.counts['stray messages']} stray")


if __name__ == "__main__":
    main()
