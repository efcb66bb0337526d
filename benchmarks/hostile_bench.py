"""Hostile-input benchmark (issue 13): what still works while the bot is being abused.

    .venv/bin/python benchmarks/hostile_bench.py [--nofile 256] [--idle 400] [--half 200]

Three scenes, all on 127.0.0.1 against the fakes, printed as a Markdown table:

* flood: `streambot run` in a subprocess limited to `--nofile` descriptors, with the ops
  endpoint and Slack's HTTP events endpoint; `--idle` silent and `--half` half-request sockets
  are held open to each. Reported: sockets held, the most descriptors the bot had open, whether
  the question asked meanwhile was answered and /healthz answered, how many flood sockets the
  bot closed by itself, and the lines and bytes of log it wrote.
* burst: 50 mentions in the first second after start-up, auth.test limited to a burst of 3:
  questions answered and auth.test calls made.
* mentions: a reply made of 3,000 user mentions, in both Slack modes: characters lost and
  refused requests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import running_slack_bot as running_bot  # noqa: E402

from bots.slack_api import ZWJ  # noqa: E402
from fakes.flood import flood  # noqa: E402
from fakes.openai_server import FakeOpenAI  # noqa: E402
from fakes.slack_server import DEFAULT_LIMITS, FakeSlack, Limit, settled  # noqa: E402

MENTIONS = "".join(f"<@U{i:05d}> " for i in range(3000))
NO_LIMITS = {"user_concurrent": 0, "user_per_minute": 0, "channel_concurrent": 0}


async def scene_flood(args: argparse.Namespace, tmp: Path) -> list[str]:
    async with FakeOpenAI() as model, FakeSlack(mode="http") as slack:
        model.reply("yes, still here")
        r = await flood(
            slack, model.base_url, tmp, nofile=args.nofile, idle=args.idle, half=args.half, wait=args.wait
        )
    return [
        f"| flood ({args.nofile} descriptors) | sockets held | {r.held} |",
        f"| | most descriptors open | {r.max_fds} |",
        f"| | question answered | {'yes' if r.answered else 'no'} |",
        f"| | /healthz | {r.healthz or 'no answer'} |",
        f"| | flood sockets closed by the bot | {r.closed_by_bot} |",
        f"| | log written | {r.log_lines} lines, {r.log_bytes:,} bytes |",
    ]


async def scene_burst(tmp: Path) -> list[str]:
    limits = {**DEFAULT_LIMITS, "auth.test": Limit(20.0, 3.0)}
    async with FakeOpenAI() as model, FakeSlack(limits=limits) as slack:
        for _ in range(50):
            model.reply("answered")
        async with running_bot(
            slack,
            model_base_url=model.base_url,
            memory_path=str(tmp / "burst.db"),
            streaming="edit",
            limits=NO_LIMITS,
        ):
            questions = await asyncio.gather(
                *(slack.mention(f"C0BURST{i:02d}", "a question", user=f"U0ASKER{i:02d}") for i in range(50))
            )
            try:
                await slack.wait_for(
                    lambda: all(settled(slack, f"C0BURST{i:02d}", ts) for i, ts in enumerate(questions)),
                    300.0,
                )
            except AssertionError:
                pass
            answered = sum(
                slack.reply_text(f"C0BURST{i:02d}", ts) == "answered" for i, ts in enumerate(questions)
            )
        return [
            f"| burst (50 mentions at start-up) | answered | {answered} |",
            f"| | auth.test calls | {slack.count('auth.test')} |",
        ]


async def scene_mentions(tmp: Path) -> list[str]:
    rows = []
    for mode in ("native", "edit"):
        async with FakeOpenAI() as model, FakeSlack() as slack:
            model.reply(MENTIONS)
            async with running_bot(
                slack,
                model_base_url=model.base_url,
                memory_path=str(tmp / f"{mode}.db"),
                streaming=mode,
                stream={"max_reply_chars": 0},
            ):
                ts = await slack.mention("C0MENTIONS", "mention everyone")
                try:
                    await slack.wait_for(
                        lambda ts=ts: (
                            settled(slack, "C0MENTIONS", ts, pages=3)
                            and "U02999" in slack.reply_text("C0MENTIONS", ts)
                        ),
                        120.0,
                    )
                except AssertionError:
                    pass
            shown = slack.reply_text("C0MENTIONS", ts).replace(ZWJ, "").rstrip()
            lost = len(MENTIONS.rstrip()) - len(shown)
            refused = [c.error for c in slack.errors() if c.error != "ratelimited"]
            rows.append(
                f"| 3,000 mentions ({mode}) | characters lost, refused requests | "
                f"{lost}, {len(refused)} {sorted(set(refused)) or ''} |"
            )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=256)
    parser.add_argument("--idle", type=int, default=400, help="silent sockets per server")
    parser.add_argument("--half", type=int, default=200, help="half-request sockets per server")
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the answer, /healthz and the closes"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    rows = ["| scene | what | figure |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        rows += await scene_flood(args, Path(tmp))
        rows += await scene_burst(Path(tmp))
        rows += await scene_mentions(Path(tmp))
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
