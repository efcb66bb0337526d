"""Knowledge search: index 10,000 generated documents, then search them; and recall@5 of the
committed questions over the example docs.

Reports: full index time and size, an incremental re-sync with nothing changed and with 1% of
the files edited, search latency p50/p99 over 1,000 queries, and recall@5 (the share of
benchmarks/kb_questions.toml whose answering heading is in the top five passages).

Run: .venv/bin/python benchmarks/kb_bench.py [--docs 10000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.knowledge import KnowledgeBase  # noqa: E402

# Technical words, then made-up ones, drawn with Zipf's law (the n-th most common word is n
# times rarer than the first) as words in real documentation are.
WORDS = (
    "account alert api backup billing cache certificate channel check cli cluster config deploy "
    "dns domain email endpoint error escalation export firewall header incident invoice key "
    "latency limit log login member metric monitor notification outage password payment plan "
    "policy port proxy quota region report request retry role scope secret session signature "
    "sso status subscription team timeout token trigger uptime user webhook window workspace"
).split()
SYLLABLES = "ka lo mi ne ru ta shi ven dor pel qua zin bro fex gal hum".split()
FILLER = "the a of to and in for with on is be by this that from when your you can it".split()


def vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    made_up = {"".join(rng.sample(SYLLABLES, rng.randint(2, 4))) for _ in range(size * 2)}
    return WORDS + sorted(made_up)[: size - len(WORDS)]


class Words:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = vocabulary(rng)
        self.weights = [1 / (n + 1) for n in range(len(self.words))]

    def some(self, k: int) -> list[str]:
        return self.rng.choices(self.words, self.weights, k=k)


def sentence(words: Words) -> str:
    rng = words.rng
    picked = [w if rng.random() < 0.4 else rng.choice(FILLER) for w in words.some(rng.randint(8, 18))]
    return " ".join(picked).capitalize() + "."


def document(words: Words, n: int) -> str:
    rng = words.rng
    parts = [f"# Guide {n}: {' '.join(words.some(2))}\n"]
    for _ in range(rng.randint(3, 6)):
        parts.append(f"## {' '.join(words.some(3)).capitalize()}\n")
        for _ in range(rng.randint(1, 3)):
            parts.append(" ".join(sentence(words) for _ in range(rng.randint(2, 5))) + "\n")
    return "\n".join(parts)


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def bench_index(docs: int, queries: int) -> None:
    rng = random.Random(10)
    words = Words(rng)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for n in range(docs):
            (folder / f"doc{n:05d}.md").write_text(document(words, n))
        source_bytes = sum(p.stat().st_size for p in folder.iterdir())
        db = Path(tmp) / "index.db"
        kb = KnowledgeBase(db, [folder], refresh=3600)
        report = kb.sync()
        size = db.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("index.db-*"))
        print(
            f"documents: {docs:,} ({source_bytes / 1e6:.1f} MB of Markdown, a 5,000-word Zipf "
            f"vocabulary), {report.passages:,} passages"
        )
        print(f"full index: {report.seconds:.2f} s, index file {size / 1e6:.1f} MB")
        quiet = kb.sync()
        print(f"re-sync, nothing changed: {quiet.seconds:.2f} s ({quiet.unchanged:,} unchanged)")
        for n in rng.sample(range(docs), docs // 100):
            path = folder / f"doc{n:05d}.md"
            path.write_text(document(words, n))
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        changed = kb.sync()
        print(f"re-sync, 1% edited: {changed.seconds:.2f} s ({changed.updated:,} updated)")
        latencies, empty = [], 0
        for _ in range(queries):
            query = " ".join(words.some(rng.randint(2, 4)))
            start = time.perf_counter()
            hits = kb.search(query)
            latencies.append((time.perf_counter() - start) * 1000)
            empty += not hits
        p50 = statistics.median(latencies)
        print(
            f"search ({queries:,} queries of 2-4 Zipf-drawn words): p50 {p50:.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms ({empty} found nothing relevant)"
        )
        kb.close()


def bench_recall() -> None:
    questions = tomllib.loads((ROOT / "benchmarks" / "kb_questions.toml").read_text())["question"]
    kb = KnowledgeBase(":memory:", [ROOT / "examples" / "support-desk" / "docs"])
    found = 0
    for q in questions:
        links = [hit.link for hit in kb.search(q["q"], 5)]
        hit = q["answer"] in links
        found += hit
        if not hit:
            print(f"  missed: {q['q']!r} -> {links[:3]}")
    print(f"recall@5 on the example docs: {found}/{len(questions)} = {found / len(questions):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    args = parser.parse_args()
    bench_recall()
    bench_index(args.docs, args.queries)


if __name__ == "__main__":
    main()
