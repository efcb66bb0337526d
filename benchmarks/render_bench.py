"""What reasoning and table handling cost per delta (issue 11, items 4 and 5).

- think: `ThinkSplitter` over a reasoning model's output (long thoughts, then the answer) in
  3-character deltas;
- tables: `TableFormatter.feed` over an answer that is half tables, in 3-character deltas;
- table frames, worst case: a frame rendered after every delta (pager plus the rendered preview
  of the table still streaming), for an answer that is one long table.

Run: .venv/bin/python benchmarks/render_bench.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.paging import Pager  # noqa: E402
from core.tables import TableFormatter  # noqa: E402
from core.think import ThinkSplitter  # noqa: E402

PROSE = "The answer is a careful one, with **bold** words and `code`. " * 4 + "\n\n"
TABLE = "| name | value | note |\n|---|---:|---|\n" + "".join(
    f"| item {i} | {i * 37} | fine |\n" for i in range(20)
)


def deltas(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def timed(fn, pieces: list[str]) -> tuple[float, float]:
    start = time.process_time()
    fn(pieces)
    cpu = time.process_time() - start
    return cpu, cpu / len(pieces) * 1e6


def think(pieces: list[str]) -> None:
    split = ThinkSplitter()
    for piece in pieces:
        split.feed(piece)
    split.end()


def tables(pieces: list[str]) -> None:
    f = TableFormatter()
    for piece in pieces:
        f.feed(piece)
    f.end()


def table_frames(pieces: list[str]) -> None:
    f, pager = TableFormatter(), Pager(2000)
    for piece in pieces:
        pager.feed(f.feed(piece))
        pager.render(streaming=True, cursor=" ▌", pending=f.preview(1000))
    pager.feed(f.end())
    pager.render(streaming=False)


def main() -> None:
    print("| workload | chars | deltas | CPU | µs/delta |")
    print("|---|---:|---:|---:|---:|")
    for n in (25_000, 100_000):
        cases = [
            ("think: thoughts then answer", "<think>" + ("I consider it. " * n)[: n // 2] + "</think>\n\n"),
            ("tables: half prose, half tables", (PROSE + TABLE) * (n // len(PROSE + TABLE) + 1)),
            ("table frames: a frame per delta", "| n | square |\n|---|---|\n" + "".join(
                f"| {i} | {i * i} |\n" for i in range(n // 14))),
        ]  # fmt: skip
        fns = {"think": think, "tables": tables, "table frames": table_frames}
        for name, text in cases:
            text = text[:n] if not name.startswith("think") else text + PROSE * (n // 2 // len(PROSE))
            pieces = deltas(text)
            cpu, per = timed(fns[name.split(":")[0]], pieces)
            print(f"| {name} | {len(text):,} | {len(pieces):,} | {cpu:.2f} s | {per:.1f} |")


if __name__ == "__main__":
    main()
