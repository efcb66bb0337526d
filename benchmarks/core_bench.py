"""Core cost: render + page + pace a long reply arriving in 2-character deltas.

Two measurements per reply length, to show the cost grows linearly with length:
- worst case: the pager renders a streaming frame after *every* delta (no coalescing at all);
- relay: the real Reply + Pacer on the real clock, deltas as fast as the event loop turns, a
  budget of 100 requests/s and an in-memory platform: CPU time of the whole reply.
Peak memory is taken in a second run under tracemalloc (which slows Python down).

Run: .venv/bin/python benchmarks/core_bench.py
"""

from __future__ import annotations

import asyncio
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from core.config import StreamConfig  # noqa: E402
from core.events import Done, TextDelta  # noqa: E402
from core.pacing import Pacer  # noqa: E402
from core.paging import Pager  # noqa: E402
from core.platform import Rate  # noqa: E402
from core.relay import Reply  # noqa: E402
from fakes.scripted import RecordingTarget  # noqa: E402

PARAGRAPH = (
    "Streaming replies grow in place. **Bold** and `code` appear, with a [link](https://example.com). "
) * 3 + "\n\n"
CODE = "```python\n" + "".join(f"result_{i} = compute({i})\n" for i in range(30)) + "```\n\n"


def reply_text(n: int) -> str:
    block = PARAGRAPH * 4 + CODE
    return (block * (n // len(block) + 1))[:n]


def measured(fn, *args):
    """Run `fn` twice: once for CPU time, once under tracemalloc for peak memory."""
    start = time.process_time()
    result = fn(*args)
    elapsed = time.process_time() - start
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak, result


def worst_case(text: str) -> int:
    pager = Pager(2000)
    for i in range(0, len(text), 2):
        pager.feed(text[i : i + 2])
        pager.render(streaming=True, cursor=" ▌")
    pager.render(streaming=False)
    assert "".join(p.body for p in pager.pages) + pager.tail == text
    return len(pager.pages) + 1


class FastRun:
    """Deltas as fast as the event loop turns: the relay, not the model, is what is timed."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def events(self):
        for i in range(0, len(self.text), 2):
            await asyncio.sleep(0)
            yield TextDelta(self.text[i : i + 2])
        yield Done()

    def cancel(self) -> None: ...

    async def remember(self, shown: str) -> None: ...


def relay(text: str) -> int:
    async def main() -> int:
        pacer = Pacer()
        target = RecordingTarget(pacer.clock, limit=2000, rate=Rate(100, 1.0))
        # no reply cap: the benchmark measures cost by length
        outcome = await Reply(FastRun(text), target, pacer, StreamConfig(max_reply_chars=0)).run()
        assert outcome.text == text
        return outcome.posts + outcome.edits

    return asyncio.run(main())


def main() -> None:
    print(
        "| reply chars | deltas | pager, a frame per delta: CPU | µs/delta | peak MiB "
        "| relay + pacer: CPU | µs/delta | peak MiB | requests |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (25_000, 50_000, 100_000, 200_000):
        text = reply_text(n)
        w_time, w_peak, _ = measured(worst_case, text)
        r_time, r_peak, requests = measured(relay, text)
        d = n // 2
        print(
            f"| {n:,} | {d:,} | {w_time:.2f} s | {w_time / d * 1e6:.0f} | {w_peak / 2**20:.2f} "
            f"| {r_time:.2f} s | {r_time / d * 1e6:.0f} | {r_peak / 2**20:.2f} | {requests} |"
        )


if __name__ == "__main__":
    main()
