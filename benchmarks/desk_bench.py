"""The support desk's ledger: what it costs per answer and per question.

Every finished answer writes one line (`record_answer`); every question in a profile with
`handoff` checks whether a person has the conversation (`handoff`) before it is answered; every
👍/👎 is one `vote`; `streambot report` reads everything. Measured on the SQLite ledger (the
memory file, WAL as the bot opens it) and, when redis-server is installed, the Redis ledger.

Run: .venv/bin/python benchmarks/desk_bench.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.ledger import AnswerFacts, Ledger, SqliteLedger  # noqa: E402
from core.report import build  # noqa: E402


def ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:.3f} ms, p99 {q[98] * 1000:.3f} ms"


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return samples


async def measure(name: str, ledger: Ledger, n: int) -> None:
    record = await timed(
        n,
        lambda i: ledger.record_answer(
            AnswerFacts(f"r{i}", "support", "slack", f"c{i}", f"question {i % 50}", "done", cited=i % 2 == 0)
        ),
    )
    check = await timed(n, lambda i: ledger.handoff(f"c{i}"))
    vote = await timed(n, lambda i: ledger.vote(f"r{i}", f"u{i % 7}", "up" if i % 3 else "down"))
    start = time.perf_counter()
    answers, votes, handoffs = await ledger.everything()
    build(answers, votes, handoffs)
    report = time.perf_counter() - start
    print(f"{name}: record an answer {ms(record)}; handoff check {ms(check)}; vote {ms(vote)}")
    print(f"{name}: report over {len(answers)} answers and {len(votes)} votes: {report * 1000:.1f} ms")


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "memory.db")
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")  # as core/state.py's LocalStore opens the memory file
        db.close()
        ledger = SqliteLedger(path)
        await measure("sqlite", ledger, n)
        await ledger.close()
    server = shutil.which("redis-server")
    if server is None:
        print("redis: redis-server is not installed; skipped")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        server, "--port", str(port), "--save", "", "--appendonly", "no", stdout=asyncio.subprocess.DEVNULL
    )
    try:
        from core.redis_ledger import RedisLedger
        from core.redis_state import connect

        client = connect(f"redis://127.0.0.1:{port}/0")
        for _ in range(100):
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        ledger = RedisLedger(client, owns_client=True)
        await measure("redis (localhost)", ledger, n)
        await ledger.close()
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    asyncio.run(main(parser.parse_args().n))
