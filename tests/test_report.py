"""`streambot report`: per profile, from the ledger the bot writes (SQLite or Redis)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bots.cli import main
from core.ledger import AnswerFacts, HandoffFacts, Ledger, SqliteLedger
from core.redis_ledger import RedisLedger
from core.redis_state import connect
from core.report import build
from fakes.redis_server import redis_url  # noqa: F401  (the fixture)


async def fill(ledger: Ledger) -> None:
    """Two profiles' worth of answers, votes (some changed) and handoffs."""
    facts = [
        AnswerFacts("r1", "support", "slack", "c1", "How do I rotate a key?", "done", cited=True),
        AnswerFacts("r2", "support", "slack", "c2", "Where is the SLA?", "done", not_in_docs=True),
        AnswerFacts("r3", "support", "slack", "c3", "where is the SLA", "done", not_in_docs=True),
        AnswerFacts("r4", "support", "discord", "c4", "Pricing for teams?", "failed"),
        AnswerFacts("r5", "default", "console", "c5", "hello", "done"),
    ]
    for f in facts:
        await ledger.record_answer(f)
    await ledger.vote("r1", "ann", "up")
    await ledger.vote("r1", "bob", "up")
    await ledger.vote("r1", "bob", "down")  # Bob changes his mind: his last vote counts
    await ledger.give_reason("r1", "bob", "outdated")
    await ledger.vote("r5", "ann", "up")
    assert await ledger.open_handoff(HandoffFacts("c2", "support", "not in docs", "model"))
    assert not await ledger.open_handoff(HandoffFacts("c2", "support", "again", "ann"))  # once
    assert await ledger.resolve_handoff("c2", "agent")
    assert await ledger.open_handoff(HandoffFacts("c2", "support", "back again", "ann"))  # a new one


EXPECTED = {
    "profiles": [
        {
            "profile": "default",
            "questions": 1,
            "cited": 0,
            "not_in_docs": 0,
            "handed_off": 0,
            "up": 1,
            "down": 0,
            "unanswered": [],
        },
        {
            "profile": "support",
            "questions": 4,
            "cited": 1,
            "not_in_docs": 2,
            "handed_off": 2,
            "up": 1,
            "down": 1,
            "unanswered": [
                {"question": "where is the SLA", "count": 2},
                {"question": "Pricing for teams?", "count": 1},
            ],
        },
    ]
}


def write_config(tmp_path: Path, memory: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(memory)
    return path


def test_report_as_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def prepare() -> None:
        ledger = SqliteLedger(str(tmp_path / "memory.db"))
        await fill(ledger)
        await ledger.close()

    asyncio.run(prepare())
    config = write_config(tmp_path, f'[memory]\npath = "{tmp_path / "memory.db"}"\n')
    assert main(["report", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    assert main(["report", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 7}
    assert [c.strip() for c in rows["support"].split("│")[2:-1]] == ["4", "1", "2", "2", "1", "1"]
    assert [c.strip() for c in rows["default"].split("│")[2:-1]] == ["1", "0", "0", "0", "1", "0"]
    assert "2 × where is the SLA" in table and "1 × Pricing for teams?" in table


def test_report_with_nothing_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f'[memory]\npath = "{tmp_path / "fresh.db"}"\n')
    assert main(["report", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"profiles": []}
    assert main(["report", "--config", str(config)]) == 0
    assert "No answers recorded yet." in capsys.readouterr().out


def test_redis_ledger_matches_sqlite(
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    async def prepare() -> None:
        ledger = RedisLedger(connect(redis_url), owns_client=True)
        await fill(ledger)
        _, votes, _ = await ledger.everything()
        assert sorted((v.user, v.vote, v.reason) for v in votes if v.reply_id == "r1") == [
            ("ann", "up", ""),
            ("bob", "down", "outdated"),
        ]
        assert (await ledger.handoff("c2")) is not None and (await ledger.handoff("c1")) is None
        await ledger.close()

    asyncio.run(prepare())
    config = write_config(tmp_path, f'[memory]\nbackend = "redis"\nurl = "{redis_url}"\n')
    assert main(["report", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_unanswered_groups_by_wording_and_caps_the_list() -> None:
    facts: list[Any] = [
        AnswerFacts(f"r{i}", "p", "x", f"c{i}", f"Question {i % 7}?", "done", not_in_docs=True)
        for i in range(30)
    ]
    [report] = build(facts, [], [], top=3)
    assert [u["count"] for u in report.unanswered] == [5, 5, 4]  # 30 over 7 wordings, the most first
    assert report.questions == 30 and report.not_in_docs == 30


def test_the_offline_example_answer_is_counted_as_cited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: `streambot ask` on the support-desk example (the offline demo model cites
    the passage it quotes), then `streambot report` counts a cited answer for its profile."""
    import shutil

    example = Path(__file__).resolve().parents[1] / "examples" / "support-desk"
    shutil.copytree(example, tmp_path / "desk")
    config = tmp_path / "desk" / "config.toml"
    config.write_text(config.read_text().replace('path = ""', f'path = "{tmp_path / "memory.db"}"', 1))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["ask", "--config", str(config), "--profile", "support", "How do I rotate an API key?"]) == 0
    assert main(["ask", "--config", str(config), "--profile", "support", "Do you sell pizza?"]) in (0, 1)
    capsys.readouterr()
    assert main(["report", "--config", str(config), "--json"]) == 0
    [support] = json.loads(capsys.readouterr().out)["profiles"]
    assert support["profile"] == "support" and support["questions"] == 2
    assert support["cited"] == 1 and support["not_in_docs"] == 1
    assert support["unanswered"] == [{"question": "Do you sell pizza?", "count": 1}]
