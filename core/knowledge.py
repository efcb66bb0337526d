"""Knowledge search: a profile's documents in an embedded SQLite FTS5 index, ranked by BM25.

Files are cut into passages at headings (core/chunking.py). `sync()` re-indexes incrementally:
a file whose size and mtime are unchanged is skipped, one whose content hash is unchanged only
gets its new mtime, and a file that is gone takes its passages with it. `search()` returns the
best passages with a link to their exact heading. One file per profile; the interface (`sync`,
`search`, `Hit`) is what a bigger search service (Postgres full text, OpenSearch) would
implement in its place.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.chunking import SUFFIXES, passages

log = logging.getLogger("streambot.knowledge")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, heading TEXT NOT NULL, anchor TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    heading, body, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO passages(rowid, heading, body) VALUES (new.id, new.heading, new.body);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO passages(passages, rowid, heading, body) VALUES ('delete', old.id, old.heading, old.body);
END;
"""
HEADING_WEIGHT = 4.0  # a query word in a heading counts this many times one in the text
# A hit must hold half the query's words, or two of them for a long question: one word in
# common with a five-word question is noise ("not in the docs"), two are evidence.
MIN_COVERAGE = 0.5
MIN_SHARED = 2
# Words that say nothing about a topic: without them "how do I rotate a key" matches every page.
STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below between
    both but by can could did do does doing down during each few for from further get got had has
    have having he her here hers him his how i if in into is it its itself just let me more most
    my no nor not now of off on once only or other our ours out over own please same she should so
    some such than that the their theirs them then there these they this those through to too
    under until up us very was we were what when where which while who whom why will with would
    you your yours""".split()
)


@dataclass(frozen=True)
class Hit:
    """One passage found: where it is (`link`), under which heading, and its text."""

    path: str  # the file, relative to its knowledge folder's parent (as configured)
    heading: str
    anchor: str
    body: str
    link: str  # path#anchor, or the page URL under the profile's docs_url
    score: float  # BM25 (lower is better, as SQLite reports it)


class Searcher(Protocol):
    """What the bot's search tool needs: a KnowledgeBase, or a client of a search service."""

    def search(self, query: str, limit: int = 5) -> list[Hit]: ...


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0  # files that could not be read or parsed (each logged)
    passages: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.removed} removed, "
            f"{self.unchanged} unchanged, {self.skipped} skipped; {self.passages} passages "
            f"in {self.seconds:.2f} s"
        )


def terms(query: str) -> list[str]:
    """The query's words worth searching for, lowercased, each once, in order."""
    words = re.findall(r"\w+", query.lower())
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS and len(w) > 1 or w.isdigit()))


def _match(words: Iterable[str]) -> str:
    """An FTS5 query matching any of `words` (each quoted: no operator injection)."""
    return " OR ".join(f'"{w}"' for w in words)


class KnowledgeBase:
    """The index of one profile's `knowledge` sources, kept in the SQLite file `db`."""

    def __init__(
        self, db: Path | str, sources: Iterable[Path], *, docs_url: str = "", refresh: float = 30.0
    ) -> None:
        self.db = str(db)
        self.sources = [Path(s) for s in sources]
        self.docs_url = docs_url.rstrip("/")
        self.refresh = refresh  # searches re-check the files at most this often (seconds)
        self._synced_at: float | None = None
        self.last_sync = SyncReport()
        self._lock = threading.Lock()  # one connection, used from worker threads in turn
        if self.db != ":memory:":
            Path(self.db).parent.mkdir(parents=True, exist_ok=True)
        # WAL: processes sharing one index file read while one of them re-indexes
        self._conn = sqlite3.connect(self.db, check_same_thread=False, timeout=30.0)
        if self.db != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- indexing ---------------------------------------------------------------------------

    def files(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every document under the sources; the name is what citations show:
        the path relative to the source folder's parent (`docs/keys.md` for source `docs/`)."""
        for source in self.sources:
            if source.is_file():
                yield source.name, source
            elif source.is_dir():
                for path in sorted(source.rglob("*")):
                    if path.is_file() and path.suffix.lower() in SUFFIXES and not _hidden(path, source):
                        yield path.relative_to(source.parent).as_posix(), path
            else:
                log.warning("knowledge source %s does not exist", source)

    def sync(self) -> SyncReport:
        """Bring the index up to date with the files; only what changed is re-read."""
        started = time.perf_counter()
        report = SyncReport()
        with self._lock, self._conn:
            known = {
                row[0]: (row[1], row[2], row[3])
                for row in self._conn.execute("SELECT path, size, mtime_ns, sha256 FROM files")
            }
            seen: set[str] = set()
            for name, path in self.files():
                seen.add(name)
                try:
                    stat = path.stat()
                    old = known.get(name)
                    if old and old[:2] == (stat.st_size, stat.st_mtime_ns):
                        report.unchanged += 1
                        continue
                    data = path.read_bytes()
                    digest = hashlib.sha256(data).hexdigest()
                    if old and old[2] == digest:  # touched, not changed
                        self._conn.execute(
                            "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                            (stat.st_size, stat.st_mtime_ns, name),
                        )
                        report.unchanged += 1
                        continue
                    found = passages(path, data)
                except Exception as exc:  # one bad file must not cost the rest of the index
                    log.warning("cannot index %s: %s: %s", path, type(exc).__name__, exc)
                    report.skipped += 1
                    seen.discard(name)  # a file that became unreadable loses its old passages
                    continue
                self._conn.execute("DELETE FROM chunks WHERE path = ?", (name,))
                self._conn.executemany(
                    "INSERT INTO chunks(path, heading, anchor, body) VALUES (?, ?, ?, ?)",
                    [(name, p.heading, p.anchor, p.body) for p in found],
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO files(path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                    (name, stat.st_size, stat.st_mtime_ns, digest),
                )
                if old:
                    report.updated += 1
                else:
                    report.added += 1
            for name in known.keys() - seen:
                self._conn.execute("DELETE FROM chunks WHERE path = ?", (name,))
                self._conn.execute("DELETE FROM files WHERE path = ?", (name,))
                report.removed += 1
            report.passages = self._conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        self._synced_at = time.monotonic()
        report.seconds = time.perf_counter() - started
        self.last_sync = report
        return report

    # --- searching --------------------------------------------------------------------------

    def link(self, path: str, anchor: str) -> str:
        """Where a passage lives: `path#anchor`, or its page under `docs_url` (the source folder
        and a .md/.html suffix dropped, as static site generators publish them)."""
        target = path
        if self.docs_url:
            page = path.split("/", 1)[1] if "/" in path else path
            page = re.sub(r"(/?index)?\.(md|markdown|html?)$", "", page)
            target = f"{self.docs_url}/{page}" if page else self.docs_url
        return f"{target}#{anchor}" if anchor else target

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        """The best passages for `query`, best first; [] when none is relevant enough (the
        question is not covered by the docs). Re-checks the files first when `refresh` passed."""
        if self._synced_at is None or time.monotonic() - self._synced_at > self.refresh:
            self.sync()
        words = terms(query)
        if not words:
            return []
        with self._lock:
            rows = self._conn.execute(  # rank in the index alone, then fetch only the best
                "SELECT chunks.id, chunks.path, chunks.heading, chunks.anchor, chunks.body, top.score "
                f"FROM (SELECT rowid, bm25(passages, {HEADING_WEIGHT}, 1.0) AS score FROM passages "
                "WHERE passages MATCH ? ORDER BY score LIMIT ?) AS top "
                "JOIN chunks ON chunks.id = top.rowid ORDER BY top.score",
                (_match(words), limit * 4),
            ).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            matched: dict[int, int] = dict.fromkeys(ids, 0)
            for word in words:  # which hits hold which words: a hit on one word of five is noise
                for (rowid,) in self._conn.execute(
                    f"SELECT rowid FROM passages WHERE passages MATCH ? AND rowid IN ({marks})",
                    (_match([word]), *ids),
                ):
                    matched[rowid] += 1
        need = min(MIN_SHARED, max(1.0, MIN_COVERAGE * len(words)))
        return [
            Hit(path, heading, anchor, body, self.link(path, anchor), score)
            for rowid, path, heading, anchor, body, score in rows
            if matched[rowid] >= need
        ][:limit]

    def size(self) -> tuple[int, int]:
        """(files, passages) in the index."""
        with self._lock:
            files = self._conn.execute("SELECT count(*) FROM files").fetchone()[0]
            chunks = self._conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return int(files), int(chunks)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
