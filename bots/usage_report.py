"""`streambot usage`: the people, channels and profiles that used the most model tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from core import config as cfg
from core.usage import By, LocalUsage, Row, UsageStore, day_of, first_day

TITLES: dict[By, str] = {"user": "people", "channel": "channels", "profile": "profiles"}


def open_for_report(config: cfg.Config) -> UsageStore | None:
    """The usage store `[memory]` names; None when the SQLite file does not exist yet (opening
    it would create an empty database where the operator may have made a typo)."""
    if config.memory.backend == "redis":
        from core.redis_state import connect
        from core.usage import RedisUsage

        return RedisUsage(connect(cfg.redis_url(config)))
    path = config.memory.path
    if path and path != ":memory:" and not Path(path).exists():
        return None
    return LocalUsage(path)


async def report(config: cfg.Config, source: str, days: int, top: int, as_json: bool) -> int:
    problems = cfg.check_env(config, source)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    store = open_for_report(config)
    today = day_of()
    tables: dict[By, list[Row]] = {"user": [], "channel": [], "profile": []}
    if store is None:
        print(
            f"{source}: memory.path: {config.memory.path} does not exist yet, so no usage was "
            "recorded: check the path, or run streambot with this config first",
            file=sys.stderr,
        )
    else:
        try:
            for by in tables:
                tables[by] = await store.top(by, days, top, today)
        finally:
            await store.close()
            if (redis := getattr(store, "redis", None)) is not None:
                await redis.aclose()
    since = first_day(days, today)
    if as_json:
        data: dict[str, Any] = {"since": since, "until": today, "days": days}
        data |= {TITLES[by]: [r.to_dict() for r in rows] for by, rows in tables.items()}
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    console = Console()
    period = f"{since} to {today}" if days > 1 else today
    console.print(f"Model tokens, {period} (UTC)", style="bold", markup=False)
    for by, rows in tables.items():
        console.print(_table(by, rows))
    return 0


def _table(by: By, rows: list[Row]) -> Table:
    table = Table(title=f"Top {TITLES[by]}", title_justify="left")
    table.add_column({"user": "person", "channel": "channel", "profile": "profile"}[by])
    if by != "profile":
        table.add_column("platform")
    for name in ("replies", "input", "output", "total"):
        table.add_column(name, justify="right")
    for r in rows:
        who = f"{r.name} ({r.key})" if r.name else r.key
        numbers = [f"{n:,}" for n in (r.replies, r.input_tokens, r.output_tokens, r.total_tokens)]
        table.add_row(who, *([r.platform] if by != "profile" else []), *numbers)
    if not rows:
        table.add_row("(none)", *([""] if by != "profile" else []), "", "", "", "")
    return table
