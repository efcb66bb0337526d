"""streambot side by side with the streaming loops people write by hand, on the same fakes.

    .venv/bin/python benchmarks/compare_bench.py [--platform discord slack] [--replies 1 10]
                                                 [--strategies streambot timer every-20 queue]

One run of this script starts, for every scenario, a fresh fake Discord or fake Slack (both
enforce the platforms' real limits: Discord 5 message creates and, as a separate bucket, 5
edits per 5 s per channel and 50 requests/s with `X-RateLimit-*` headers; Slack per-method,
per-workspace token buckets by tier, 429 + Retry-After) and the fake OpenAI server streaming
every answer at 50 tokens/s (4-character deltas every 20 ms). Then 1 or 10 people ask at once in
one channel, and each bot answers:

  streambot   the real adapter (discord.py / slack-bolt), relay and pacer
  timer       llmcord style: post a placeholder, edit with all the text so far whenever 1 s has
              passed since the last edit (each edit awaited), a last edit at the end
  every-20    ChatGPT-in-Slack style: the same, but edit every 20 model chunks
  queue       discord.py's own queueing, no coalescing: an edit every 20 chunks, each fired
              without waiting, so discord.py's bucket queue holds them (Discord only)

With more than one reply, streambot also runs on Discord with `open_threads = "auto"` (answers
move to a thread of their own while the channel is busy).

The hand-written bots use the same clients (discord.py with its built-in 429 handling;
slack_sdk with its default retry handlers, which do not retry 429s) and the Chat Completions
stream of the same fake model. On Slack they stream natively (startStream/appendStream/
stopStream) or edit (postMessage/update), as streambot does in each mode.

Reported per scenario, from what a person would see in the fake's message histories:
placeholder = question -> the bot's first message (median / worst); first text = question -> the
first model text visible (worst), and `+first token` = the worst over replies of (first text
shown - first model chunk sent); staleness p50/p95 = for every model chunk, how long after the
model sent it the text on screen included it; 429s = rate-limit answers of the fake's own limits;
calls/1k chars = message create/edit requests (every attempt) per 1,000 characters answered;
intact = replies whose final text is exactly the model's answer. A scenario is cut off after
`--cap` seconds; text never shown by then counts as shown at the cap (staleness is then a lower
bound, marked ≥).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import discord  # noqa: E402
from agents import set_tracing_disabled  # noqa: E402
from harness import running_slack_bot  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler  # noqa: E402
from slack_bolt.app.async_app import AsyncApp  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402

from bots.discord_api import DiscordSettings, RebasedHTTP  # noqa: E402
from bots.discord_bot import serve as serve_discord  # noqa: E402
from core.config import Config, MemoryConfig, ModelConfig  # noqa: E402
from core.host import Host  # noqa: E402
from core.pacing import Pacer  # noqa: E402
from core.sources import answer as answer_once  # noqa: E402
from core.sources import build_brain  # noqa: E402
from fakes.discord_server import FakeDiscord, FakeMessage  # noqa: E402
from fakes.openai_server import FakeOpenAI, TextReply  # noqa: E402
from fakes.slack_server import APP_TOKEN, BOT_TOKEN, BOT_USER_ID, FakeSlack  # noqa: E402

CHUNK = 4  # characters per model delta: about one token
DELAY = 0.02  # seconds between deltas: 50 tokens/s
CHARS = 1000  # per answer, with a code block: one message on both platforms
LONG = 7000  # --long: four Discord pages
EVERY = 20  # chunks between edits of the every-20 and queue strategies
TIMER = 1.0  # seconds between edits of the timer strategy
CURSOR = "▌"
ZWJ = "\u200d"
MESSAGE_ROUTES = (
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
)
SLACK_MESSAGE_METHODS = (
    "chat.postMessage",
    "chat.update",
    "chat.startStream",
    "chat.appendStream",
    "chat.stopStream",
)


def answer(i: int, chars: int = CHARS) -> str:
    """An answer with prose, a code block and more prose (in paragraphs), `chars` long."""
    code = "\n".join(f"    total += item_{i}_{k} * {k}  # step {k}" for k in range(8))
    head = (
        f"Answer {i}. Sum the items like this:\n\n```python\ndef total_{i}(items):\n"
        f"    total = 0\n{code}\n    return total\n```\n\n"
    )
    words, k = [], 0
    while len(head) + sum(len(w) + 1 for w in words) < chars:
        words.append(f"w{i}.{k}" + (".\n\n" if k % 40 == 39 else ""))
        k += 1
    return (head + " ".join(words).replace("\n\n ", "\n\n"))[:chars].rstrip()


def chunks(text: str) -> list[str]:
    return [text[j : j + CHUNK] for j in range(0, len(text), CHUNK)]


@dataclass
class Script:
    """One scripted answer and when the fake model sent each of its chunks."""

    text: str
    sent: list[tuple[float, int]] = field(default_factory=list)  # (time, characters so far)


def scripted(model: FakeOpenAI, text: str) -> Script:
    script = Script(text)
    reply: TextReply = model.reply(chunks(text), delay=DELAY)
    original, sizes = reply._before_chunk, [len(c) for c in reply.chunks]

    async def before(n: int) -> None:
        await original(n)
        script.sent.append((time.monotonic(), sum(sizes[: n + 1])))

    reply._before_chunk = before  # type: ignore[method-assign]
    return script


@dataclass
class Seen:
    """One question and what its asker saw: (time, text) of every state of the reply."""

    asked: float
    states: list[tuple[float, str]]
    placeholder: float | None  # when the reply's first message appeared
    heard: float | None = None  # when the question was acknowledged (placeholder or reaction)


@dataclass
class Result:
    platform: str
    mode: str
    strategy: str
    replies: int
    heard: list[float]
    placeholder: list[float]
    first_text: list[float]
    after_first_token: list[float]
    staleness: list[float]
    capped: bool
    throttled: int
    calls: int
    chars: int
    intact: int
    wall: float


def clean(text: str) -> str:
    """Text as compared with the answer: no cursor or invisible joiners, whitespace runs as one
    space (pages of a long answer are joined with a newline where one was cut)."""
    return re.sub(r"\s+", " ", text.replace(ZWJ, "").replace(CURSOR, ""))


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def measure(
    platform: str,
    mode: str,
    strategy: str,
    seen: list[Seen],
    scripts: list[Script],
    cap_at: float,
    throttled: int,
    calls: int,
    wall: float,
) -> Result:
    heard, placeholder, first_text, after_token, staleness = [], [], [], [], []
    intact, capped, left = 0, False, list(scripts)
    for s in seen:
        final = clean(max(s.states)[1]).strip() if s.states else ""
        # which script answered which question is up to the order requests reached the model
        script = next((x for x in left if clean(x.text).strip() == final), None)
        if script is not None:
            intact += 1
        else:  # not intact: match by the longest common prefix with what it showed
            script = max(left, key=lambda x: common_prefix(final, clean(x.text)), default=None)
        if script is None:
            continue
        left.remove(script)
        if s.placeholder is not None:
            placeholder.append(s.placeholder - s.asked)
        if (first_seen := min(filter(None, (s.placeholder, s.heard)), default=None)) is not None:
            heard.append(first_seen - s.asked)
        shown = []  # (time, characters of the answer visible), non-decreasing
        best, answer_text = 0, clean(script.text)
        for at, text in sorted(s.states):
            best = max(best, common_prefix(clean(text), answer_text))
            shown.append((at, best))
        first = next((at for at, n in shown if n > 0), None)
        if first is not None:
            first_text.append(first - s.asked)
            if script.sent:
                after_token.append(first - script.sent[0][0])
        for at, upto in script.sent:
            upto = len(clean(script.text[:upto]).rstrip())
            visible = next((t for t, n in shown if n >= upto), None)
            if visible is None:
                capped, visible = True, cap_at
            staleness.append(max(0.0, visible - at))
    chars = sum(len(x.text) for x in scripts)
    return Result(
        platform,
        mode,
        strategy,
        len(seen),
        heard,
        placeholder,
        first_text,
        after_token,
        staleness,
        capped,
        throttled,
        calls,
        chars,
        intact,
        wall,
    )


# --- Discord ---------------------------------------------------------------------------------


class NaiveDiscordBot(discord.Client):
    """A hand-written streaming bot: placeholder, then edits by a fixed rule, no pacer."""

    def __init__(self, strategy: str, api_base: str, model_url: str) -> None:
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.http = self._connection.http = RebasedHTTP(api_base, self.http)
        self.strategy = strategy
        self.model = AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0)
        self.tasks: set[asyncio.Task[Any]] = set()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.user is None or self.user not in message.mentions:
            return
        task = asyncio.create_task(self.answer(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await super().close()

    async def answer(self, question: discord.Message) -> None:
        reply = await question.reply("…", mention_author=False)

        async def edit(text: str) -> None:
            await reply.edit(content=text)

        await naive_stream(self.model, self.strategy, question.content, edit, edit)


async def naive_stream(
    model: AsyncOpenAI,
    strategy: str,
    prompt: str,
    edit: Callable[[str], Awaitable[None]],
    final: Callable[[str], Awaitable[None]],
) -> None:
    """Read the model's stream and call `edit` by the strategy's rule, then `final`."""
    stream = await model.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": prompt}], stream=True
    )
    text, n, last = "", 0, time.monotonic()
    fired: list[asyncio.Task[None]] = []
    async for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if not delta:
            continue
        text, n = text + delta, n + 1
        try:
            if strategy == "timer" and time.monotonic() - last >= TIMER:
                await edit(text)
                last = time.monotonic()
            elif strategy == "every-20" and n % EVERY == 0:
                await edit(text)
            elif strategy == "queue" and n % EVERY == 0:
                fired.append(asyncio.create_task(edit(text)))
        except Exception as exc:  # a hand-written bot logs and carries on
            logging.getLogger("naive").info("edit failed: %s", exc)
    if fired:
        await asyncio.gather(*fired, return_exceptions=True)
    await final(text)


async def discord_scenario(strategy: str, n: int, cap: float, chars: int = CHARS, **settings: Any) -> Result:
    async with FakeDiscord() as fake, FakeOpenAI() as model:
        scripts = [scripted(model, answer(i, chars)) for i in range(n)]
        os.environ["DISCORD_BOT_TOKEN"] = fake.token
        os.environ["OPENAI_API_KEY"] = "bench"
        with tempfile.TemporaryDirectory() as tmp:
            if strategy == "streambot":
                config = Config(
                    model=ModelConfig(base_url=model.base_url, api="chat_completions"),
                    memory=MemoryConfig(path=str(Path(tmp) / "memory.db")),
                    discord=DiscordSettings(enabled=True, api_base=fake.api_base, **settings),
                )
                bot_task = asyncio.create_task(
                    serve_discord(Host(config, build_brain(config), Pacer()), config.discord)
                )
            else:
                naive = NaiveDiscordBot(strategy, fake.api_base, model.base_url)
                bot_task = asyncio.create_task(naive.start(fake.token))
            try:
                await fake.wait_ready()
                start = time.monotonic()
                questions = [
                    await fake.send(f"<@{fake.bot.id}> question {i}", author=fake.person(f"person{i}"))
                    for i in range(n)
                ]
                with contextlib.suppress(AssertionError):  # cut off at the cap
                    await fake.wait_for(lambda: _discord_all_final(fake, questions, scripts), cap)
                await asyncio.sleep(0.5)  # let trailing edits land
                wall = time.monotonic() - start
            finally:
                bot_task.cancel()
                await asyncio.gather(bot_task, return_exceptions=True)
                if strategy != "streambot":
                    await naive.close()
        seen = []
        for q in questions:
            pages = _discord_pages(fake, q)
            states = [(r.at, "\n".join(_page_text(p, r.at) for p in pages)) for p in pages for r in p.history]
            seen.append(Seen(q.history[0].at, states, pages[0].history[0].at if pages else None))
        calls = sum(1 for c in fake.calls if c.route in MESSAGE_ROUTES)
        mode = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in settings.items())
        return measure(
            "Discord", mode, strategy, seen, scripts, start + cap, len(fake.throttled), calls, wall
        )


def _discord_pages(fake: FakeDiscord, question: FakeMessage) -> list[FakeMessage]:
    """The reply's messages: replies to the question, or the messages in its thread."""
    return fake.reply_pages(question) or fake.in_thread(question.id)


def _page_text(page: FakeMessage, at: float) -> str:
    """What `page` showed at time `at` ("" before it existed)."""
    text = ""
    for r in page.history:
        if r.at > at:
            break
        text = r.content
    return text


def _discord_all_final(fake: FakeDiscord, questions: list[FakeMessage], scripts: list[Script]) -> bool:
    texts = {clean(s.text).strip() for s in scripts}
    shown = {clean("\n".join(p.content for p in _discord_pages(fake, q))).strip() for q in questions}
    return texts <= shown


# --- Slack -----------------------------------------------------------------------------------


class NaiveSlackBot:
    """A hand-written bolt app: placeholder (or stream) in the thread, updates by a fixed rule."""

    def __init__(self, slack: FakeSlack, strategy: str, mode: str, model_url: str) -> None:
        self.slack, self.strategy, self.mode = slack, strategy, mode
        self.client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.base_url)  # default retries
        self.app = AsyncApp(client=self.client, request_verification_enabled=False)
        self.app.event("app_mention")(self.on_mention)
        self.model = AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0)
        self.handler: AsyncSocketModeHandler | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.handler = AsyncSocketModeHandler(self.app, APP_TOKEN)
        resp = await self.client.apps_connections_open(app_token=APP_TOKEN)
        self.handler.client.wss_uri = resp["url"]
        await self.handler.connect_async()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.handler is not None:
            await self.handler.close_async()

    async def on_mention(self, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self.answer(event))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, event: dict[str, Any]) -> None:
        channel, thread = event["channel"], event.get("thread_ts") or event["ts"]
        prompt = event.get("text", "").replace(f"<@{BOT_USER_ID}>", "").strip()
        try:
            if self.mode == "native":
                started = await self.client.chat_startStream(
                    channel=channel,
                    thread_ts=thread,
                    recipient_user_id=event["user"],
                    recipient_team_id=event.get("team", "T0FAKE"),
                )
                ts, sent = started["ts"], [""]

                async def edit(text: str) -> None:
                    delta = text[len(sent[0]) :]
                    if delta:
                        await self.client.chat_appendStream(channel=channel, ts=ts, markdown_text=delta)
                        sent[0] = text

                async def final(text: str) -> None:
                    await self.client.chat_stopStream(
                        channel=channel, ts=ts, markdown_text=text[len(sent[0]) :] or None
                    )
            else:
                posted = await self.client.chat_postMessage(channel=channel, thread_ts=thread, text="…")
                ts = posted["ts"]

                async def edit(text: str) -> None:
                    await self.client.chat_update(channel=channel, ts=ts, text=text)

                final = edit
            await naive_stream(self.model, self.strategy, prompt, edit, final)
        except Exception as exc:  # the reply is lost; a hand-written bot logs it
            logging.getLogger("naive").info("reply failed: %s", exc)


async def slack_scenario(strategy: str, mode: str, n: int, cap: float, chars: int = CHARS) -> Result:
    async with FakeSlack() as slack, FakeOpenAI() as model, contextlib.AsyncExitStack() as stack:
        scripts = [scripted(model, answer(i, chars)) for i in range(n)]
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if strategy == "streambot":
            await stack.enter_async_context(
                running_slack_bot(
                    slack, model_base_url=model.base_url, memory_path=str(Path(tmp) / "m.db"), streaming=mode
                )
            )
        else:
            naive = NaiveSlackBot(slack, strategy, mode, model.base_url)
            await naive.start()
            stack.push_async_callback(naive.stop)
        return await slack_run(slack, scripts, strategy, mode, n, cap)


async def slack_run(
    slack: FakeSlack, scripts: list[Script], strategy: str, mode: str, n: int, cap: float
) -> Result:
    channel = "C0BENCH"
    calls_before = len(slack.calls)
    start = time.monotonic()
    asked: dict[str, float] = {}

    async def ask(i: int) -> str:
        at = time.monotonic()
        ts = await slack.mention(channel, f"question {i}", user=f"U0P{i}")
        asked[ts] = at
        return ts

    questions = await asyncio.gather(*(ask(i) for i in range(n)))
    texts = {clean(s.text).strip() for s in scripts}
    with contextlib.suppress(AssertionError):
        await slack.wait_for(
            lambda: texts <= {_slack_final(slack, channel, q) for q in questions}, cap, "every reply"
        )
    await asyncio.sleep(0.5)
    wall = time.monotonic() - start
    calls = sum(1 for c in slack.calls[calls_before:] if c.method in SLACK_MESSAGE_METHODS)
    throttled = sum(1 for c in slack.calls[calls_before:] if c.status == 429)
    seen = []
    for q in questions:
        msgs = slack.bot_messages(channel, q)
        states = [(t, "\n".join(_message_text(m, t) for m in msgs)) for m in msgs for t in m.times]
        reacted = [at for channel_, ts, _, at in slack.reactions if (channel_, ts) == (channel, q)]
        seen.append(Seen(asked[q], states, msgs[0].created if msgs else None, min(reacted, default=None)))
    return measure("Slack", mode, strategy, seen, scripts, start + cap, throttled, calls, wall)


def _message_text(message: Any, at: float) -> str:
    """What a Slack message showed at time `at` ("" before it existed)."""
    text = ""
    for t, shown in zip(message.times, message.history, strict=True):
        if t > at:
            break
        text = shown
    return text


def _slack_final(slack: FakeSlack, channel: str, thread: str) -> str:
    msgs = slack.bot_messages(channel, thread)
    if not msgs or any(m.stream == "streaming" or m.buttons for m in msgs):
        return ""
    return clean("\n".join(m.text for m in msgs)).strip()


async def warm_up() -> None:
    """One answer through each client stack before measuring: the first use of the Agents SDK
    and the openai client in a process costs ~0.2 s once (imports, model classes), which a
    running bot has long paid."""
    async with FakeOpenAI() as model:
        model.reply(chunks("warm"))
        model.reply(chunks("warm"))
        os.environ["OPENAI_API_KEY"] = "bench"
        config = Config(
            model=ModelConfig(base_url=model.base_url, api="chat_completions"),
            memory=MemoryConfig(path=":memory:"),
        )
        await answer_once(build_brain(config), "warm up")
        client = AsyncOpenAI(base_url=model.base_url, api_key="bench", max_retries=0)
        async for _ in await client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass


# --- report ----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def row(r: Result) -> str:
    ge = "≥" if r.capped else ""
    if r.platform == "Discord":
        scenario = f"Discord, {r.replies} at once{f' (`{r.mode}`)' if r.mode else ''}"
    else:
        scenario = f"{r.platform} {r.mode}, {r.replies} at once"
    if (each := r.chars // r.replies) > 1.5 * CHARS:
        scenario += f", {each:,} characters"
    ph = f"{statistics.median(r.placeholder):.2f} / {max(r.placeholder):.2f} s" if r.placeholder else "–"
    if r.heard and max(r.heard) < max(r.placeholder, default=0) - 0.05:  # a reaction came first
        ph += f" (👀 by {max(r.heard):.2f} s)"
    ft = f"{max(r.first_text):.2f} s" if r.first_text else "–"
    tok = f"{max(r.after_first_token):+.2f} s" if r.after_first_token else "–"
    return (
        f"| {scenario} | {r.strategy} | {ph} | {ft} ({tok}) | {ge}{pct(r.staleness, 50):.2f} / "
        f"{ge}{pct(r.staleness, 95):.2f} s | {r.throttled} | {1000 * r.calls / r.chars:.1f} | "
        f"{r.intact}/{r.replies} | {r.wall:.0f} s |"
    )


HEADER = (
    "| scenario | bot | placeholder, median / worst | first text, worst (vs first token) "
    "| staleness p50 / p95 | 429s | calls / 1k chars | intact | wall |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", nargs="+", default=["discord", "slack"], choices=["discord", "slack"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["native", "edit"],
        choices=["native", "edit"],
        help="Slack streaming modes",
    )
    parser.add_argument("--replies", type=int, nargs="+", default=[1, 10])
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["streambot", "timer", "every-20", "queue"],
        choices=["streambot", "timer", "every-20", "queue"],
    )
    parser.add_argument("--cap", type=float, default=60.0, help="seconds after which a scenario is cut off")
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"instead: one {LONG:,}-character answer (4 Discord pages), streambot "
        "on Discord and Slack native",
    )
    parser.add_argument(
        "--no-threads",
        action="store_true",
        help='skip the Discord run of streambot with open_threads = "auto"',
    )
    args = parser.parse_args()
    set_tracing_disabled(True)
    logging.basicConfig(level=logging.ERROR)
    await warm_up()
    if args.long:
        print(
            f"One {LONG:,}-character answer, {CHUNK} characters every {DELAY * 1000:.0f} ms "
            f"(~{LONG / CHUNK * DELAY:.0f} s).\n"
        )
        print(HEADER)
        print(row(await discord_scenario("streambot", 1, args.cap, LONG)), flush=True)
        print(row(await slack_scenario("streambot", "native", 1, args.cap, LONG)), flush=True)
        return
    print(
        f"Model: {CHARS}-character answers with a code block, {CHUNK} characters every "
        f"{DELAY * 1000:.0f} ms (50 tokens/s, ~{CHARS / CHUNK * DELAY:.0f} s per answer); "
        "everyone asks in one channel at once.\n"
    )
    print(HEADER, flush=True)
    for platform in args.platform:
        for n in args.replies:
            for mode in args.modes if platform == "slack" else [""]:
                for strategy in args.strategies:
                    if platform == "slack" and strategy == "queue":
                        continue  # slack_sdk has no request queue of its own
                    began = time.monotonic()
                    if platform == "discord":
                        r = await discord_scenario(strategy, n, args.cap)
                    else:
                        r = await slack_scenario(strategy, mode, n, args.cap)
                    print(row(r), flush=True)
                    print(
                        f"  {platform} {mode} x{n} {strategy}: {time.monotonic() - began:.0f} s",
                        file=sys.stderr,
                    )
            if (
                platform == "discord" and n > 1 and "streambot" in args.strategies and not args.no_threads
            ):  # busy channel: answers move to threads
                print(row(await discord_scenario("streambot", n, args.cap, open_threads="auto")), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
