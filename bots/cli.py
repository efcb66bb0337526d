"""The `streambot` command: console chat, one-shot ask, run the configured adapters, check config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bots import console, discord_bot, slack_bot, usage_report
from core import config as cfg
from core import logs, profiles
from core import report as desk_report
from core.adapter import Adapter
from core.attachments import local_file
from core.backend import Backend, open_backend, open_ledger
from core.demo import DEMO_NOTICE
from core.errors import SetupError
from core.host import Host
from core.ops import OpsServer
from core.sources import Brain, build_brain
from core.tools import build_tools, knowledge_base
from core.webserver import raise_descriptor_limit

ADAPTERS: tuple[Adapter, ...] = (discord_bot.ADAPTER, slack_bot.ADAPTER, console.ADAPTER)
SECTIONS = {a.name: a.settings for a in ADAPTERS}


def _load(path: str | None) -> tuple[cfg.Config, str]:
    try:
        return cfg.load(path, SECTIONS)
    except cfg.ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def problems_of(config: cfg.Config, source: str) -> list[cfg.Problem]:
    """What the core and every enabled adapter need from the environment but do not have, and
    what no profile can do without (its tools, its knowledge folders)."""
    problems = cfg.check_env(config, source) + [p for a in ADAPTERS for p in a.problems(config, source)]
    for name in profiles.names(config):
        try:
            build_tools(config, name, profiles.resolve(config, name))
        except cfg.ConfigError as exc:
            problems += exc.problems
    return problems


def enabled(config: cfg.Config) -> list[Adapter]:
    """The adapters to start: every enabled one, and the fallback (the console) when none is."""
    chosen = [a for a in ADAPTERS if config.section(a.name, a.settings).enabled]
    if not any(not a.fallback for a in chosen):
        chosen += [a for a in ADAPTERS if a.fallback and a not in chosen]
    return chosen


def check_config(path: str | None) -> int:
    """Print every problem as `file: key: what is wrong: how to fix` (exit 1), or a summary."""
    try:
        config, source = cfg.load(path, SECTIONS)
        problems = problems_of(config, source)
    except cfg.ConfigError as exc:
        problems = exc.problems
    if problems:
        for p in problems:
            print(p)
        return 1
    model = (
        "offline demo model (no OPENAI_API_KEY or base_url)"
        if cfg.uses_demo_model(config)
        else f"{config.model.model} via the {config.model.api} API"
        + (f" at {config.model.base_url}" if config.model.base_url else "")
    )
    where = (
        cfg.redis_where(cfg.redis_url(config)) if config.memory.backend == "redis" else config.memory.path
    )  # host:port only: a Redis URL may hold a password
    print(
        f"{source}: OK\n  model: {model}\n  memory: {config.memory.backend} at "
        f"{where or '(nowhere: memory is off)'}\n  adapters: {', '.join(a.name for a in enabled(config))}"
    )
    if config.ops.enabled and config.ops.port:
        print(f"  ops: http://{config.ops.host}:{config.ops.port} (/metrics, /healthz)")
    if config.profiles:
        print(f"  profiles: {', '.join(profiles.names(config))} ({len(config.routes)} route(s))")
    return 0


async def run(config: cfg.Config, source: str) -> int:
    """Start every enabled adapter (the console when no chat platform is enabled) and, when
    `[ops]` is enabled, the /metrics and /healthz endpoint beside them."""
    problems = problems_of(config, source)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    raise_descriptor_limit()  # soft RLIMIT_NOFILE up to the hard limit: room for connections
    ops = OpsServer(config.ops.host, config.ops.port) if config.ops.enabled and config.ops.port else None
    if ops is not None:
        try:
            await ops.start()
        except OSError as exc:
            print(
                f"{source}: ops.port: cannot listen on {config.ops.host}:{config.ops.port} "
                f"({exc.strerror or exc}): pick a free port or set ops.enabled = false",
                file=sys.stderr,
            )
            return 1
    backend = open_backend(config)
    try:
        await backend.store.check()  # an unreachable Redis stops the start with one line
        await _serve(config, backend)
        return 0
    finally:
        await backend.store.close()
        if backend.usage is not None:
            await backend.usage.close()
        if ops is not None:
            await ops.stop()


async def _serve(config: cfg.Config, backend: Backend) -> None:
    """Run the adapters until one ends (the console when its user leaves) or the process is
    cancelled (Ctrl-C, SIGTERM); each adapter lets the host shut down with grace on its way out."""
    host = _host(config, backend)
    brain = host.brain
    adapters = enabled(config)
    if brain.demo and any(not a.fallback for a in adapters):
        logging.getLogger("streambot").warning(DEMO_NOTICE)
    _cancel_on_sigterm()
    tasks = [asyncio.ensure_future(a.serve(host, config.section(a.name, a.settings))) for a in adapters]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # what stopped an adapter (a bad token, say) is the process's answer


def _host(config: cfg.Config, backend: Backend | None = None) -> Host:
    """A host with one Brain per profile, every one built now so that a profile's mistake
    (a tool that does not import, say) stops the start instead of a later question."""
    redis = backend.redis if backend else None

    def brain(profile: str) -> Brain:
        return build_brain(config, redis=redis, profile=profile)

    if backend is None:
        host = Host(config, brain(cfg.DEFAULT_PROFILE), brains=brain)
    else:
        host = Host(
            config, brain(cfg.DEFAULT_PROFILE), backend.pacer, backend.store, backend.gate, brains=brain
        )
    for name in profiles.names(config):
        host.brain_for(name)
    return host


def use_profile(config: cfg.Config, name: str, source: str) -> None:
    """`--profile NAME`: the console's questions go to profile NAME whatever the routes say."""
    if name not in profiles.names(config):
        raise cfg.ConfigError(
            [
                cfg.Problem(
                    source,
                    "--profile",
                    f"no profile named {name!r}",
                    f"use one of {', '.join(profiles.names(config))}, or add [profiles.{name}]",
                )
            ]
        )
    config.routes = [cfg.RouteConfig(platform=console.ADAPTER.name, profile=name), *config.routes]


def _cancel_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, Kubernetes) shuts down like Ctrl-C: the running task is
    cancelled, and each adapter lets its replies finish within `[stream] shutdown_grace`."""
    task = asyncio.current_task()
    if task is not None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass


async def ask(
    config: cfg.Config, question: str, source: str = "built-in defaults", paths: list[str] | None = None
) -> int:
    # Only memory matters here: the chat adapters' tokens are not needed to ask one question.
    problems = cfg.check_env(config, source)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    try:
        files = tuple(local_file(path) for path in paths or [])
    except OSError as exc:
        print(f"--file {exc}: give the path of a picture, text file or PDF", file=sys.stderr)
        return 2
    host = _host(config)
    brain = host.brain_for(host.profile_for(console.make_question(question), console.ADAPTER.name))
    if brain.demo:
        Console(stderr=True).print(DEMO_NOTICE, style="yellow", markup=False)
    try:
        outcome = await console.ask(
            host,
            config.section("console", console.ConsoleSettings),
            question,
            Console(),
            files,
        )
    finally:
        await host.shutdown()  # lets background work finish: the answer's facts for the report
        if host.brain.redis is not None:
            await host.brain.redis.aclose()
    return 0 if outcome is not None and outcome.status == "done" else 1


async def report(config: cfg.Config, as_json: bool, top: int) -> int:
    """Per profile: questions, cited answers, "not in the docs", handoffs, 👍/👎 and the
    questions most often left unanswered; a table, or JSON with `--json`."""
    ledger = open_ledger(config)
    try:
        answers, votes, handoffs = await ledger.everything()
    finally:
        await ledger.close()
    reports = desk_report.build(answers, votes, handoffs, top)
    if as_json:
        print(json.dumps(desk_report.as_json(reports), ensure_ascii=False, indent=2))
        return 0
    out = Console()
    if not reports:
        out.print("No answers recorded yet.")
        return 0
    table = Table(title="streambot report")
    for column in ("profile", "questions", "cited", "not in docs", "handed off", "👍", "👎"):
        table.add_column(column, justify="left" if column == "profile" else "right")
    for r in reports:
        table.add_row(r.profile, *map(str, (r.questions, r.cited, r.not_in_docs, r.handed_off, r.up, r.down)))
    out.print(table)
    for r in reports:
        if r.unanswered:
            out.print(f"\nMost often unanswered ({r.profile}):")
            for item in r.unanswered:
                out.print(f"  {item['count']:>4} × {escape(item['question'])}")
    return 0


def kb(config: cfg.Config, command: str, profile: str | None, query: str = "", limit: int = 5) -> int:
    """`streambot kb index|search`: what the bot's knowledge search has and finds."""
    with_knowledge = [n for n in profiles.names(config) if profiles.resolve(config, n).knowledge]
    if profile is None and len(with_knowledge) == 1:
        profile = with_knowledge[0]
    if profile is None or profile not in with_knowledge:
        fix = (
            f"use --profile {' or '.join(with_knowledge)}"
            if with_knowledge
            else ('add knowledge = ["docs/"] to a [profiles.NAME] table')
        )
        what = f"profile {profile!r} has no knowledge" if profile else "which profile's knowledge?"
        print(f"{config.source}: --profile: {what}: {fix}", file=sys.stderr)
        return 1
    p = profiles.resolve(config, profile)
    build_tools(config, profile, p)  # a missing knowledge folder is a config error
    base = knowledge_base(config, profile, p)
    assert base is not None
    try:
        if command == "index":
            files, passages = base.size()
            print(f"{profile}: {base.last_sync}")
            print(f"{profile}: {files} files, {passages} passages in {base.db}")
            return 0
        hits = base.search(query, limit)
        if not hits:
            print(f"Nothing relevant for {query!r}: the bot would say the docs do not cover it.")
            return 1
        for n, hit in enumerate(hits, 1):
            text = " ".join(hit.body.split())
            print(f"{n}. {hit.heading or hit.path}  ({hit.link}, bm25 {hit.score:.2f})")
            print(f"   {text[:300]}{'…' if len(text) > 300 else ''}")
        return 0
    finally:
        base.close()


def _address(value: str) -> tuple[str, int]:
    """HOST:PORT for --ops."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 0.0.0.0:9108, not {value!r}")
    return host, int(port)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {value!r}")
    return int(value)


def _level(value: str) -> str:
    try:
        return logs.level_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """A mistaken flag is one line (`streambot: error: ...`), like every other operator mistake."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="streambot", description="Stream LLM answers into Discord, Slack and the terminal.")
    parser.add_argument(
        "--log-level", default="WARNING", type=_level, help="DEBUG, INFO, WARNING (default), ERROR, CRITICAL"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or json: one object per line (default: [ops] log_format)",
    )
    sub = parser.add_subparsers(dest="command")
    p_run = sub.add_parser("run", help="start every adapter enabled in the config (the default)")
    p_run.add_argument("--config", "-c", help="config file (default: ./config.toml if present)")
    p_run.add_argument(
        "--ops", type=_address, metavar="HOST:PORT", help="serve /metrics and /healthz there (turns [ops] on)"
    )
    p_console = sub.add_parser("console", help="chat in the terminal")
    p_console.add_argument("--config", "-c")
    p_console.add_argument("--page-chars", type=int, help="page size, to watch paging (min 200)")
    p_console.add_argument("--profile", help="answer with this [profiles.NAME] (default: as [[routes]] say)")
    p_ask = sub.add_parser("ask", help="stream one answer to stdout and exit")
    p_ask.add_argument("question", nargs="+")
    p_ask.add_argument(
        "--file",
        "-f",
        action="append",
        default=[],
        metavar="PATH",
        help="a picture, text file or PDF to ask about",
    )
    p_ask.add_argument("--config", "-c")
    p_ask.add_argument("--profile", help="answer with this [profiles.NAME] (default: as [[routes]] say)")
    p_report = sub.add_parser("report", help="questions, citations, handoffs and 👍/👎 per profile")
    p_report.add_argument("--config", "-c")
    p_report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_report.add_argument(
        "--top", type=int, default=desk_report.TOP_UNANSWERED, help="unanswered questions shown"
    )
    p_kb = sub.add_parser("kb", help="the knowledge search: index a profile's docs, or search them")
    kb_sub = p_kb.add_subparsers(dest="kb_command", required=True)
    for name, about in (
        ("index", "bring the index up to date and say what it holds"),
        ("search", "show the passages the bot would find"),
    ):
        p_kb_cmd = kb_sub.add_parser(name, help=about)
        if name == "search":
            p_kb_cmd.add_argument("query", nargs="+")
            p_kb_cmd.add_argument("--limit", type=_positive, default=5, help="passages to show (default 5)")
        p_kb_cmd.add_argument("--config", "-c")
        p_kb_cmd.add_argument(
            "--profile", help="the profile whose knowledge (default: the only one with any)"
        )
    p_usage = sub.add_parser("usage", help="the people and channels that used the most tokens")
    p_usage.add_argument("--config", "-c")
    p_usage.add_argument("--days", type=_positive, default=7, help="the last N days, today included (7)")
    p_usage.add_argument("--top", type=_positive, default=10, help="rows per table (10)")
    p_usage.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    p_check = sub.add_parser("check-config", help="validate a config and the environment")
    p_check.add_argument("path", nargs="?")
    args = parser.parse_args(argv)

    logs.setup(args.log_level, args.log_format or "text")
    command = args.command or "run"
    if command == "check-config":
        return check_config(args.path)
    config, source = _load(getattr(args, "config", None))
    if not args.log_format and config.ops.log_format != "text":
        logs.setup(args.log_level, config.ops.log_format)
    try:
        if command == "kb":
            query = " ".join(getattr(args, "query", []))
            return kb(config, args.kb_command, args.profile, query, getattr(args, "limit", 5))
        if getattr(args, "profile", None):
            use_profile(config, args.profile, source)
        if command == "ask":
            return asyncio.run(ask(config, " ".join(args.question), source, args.file))
        if command == "report":
            return asyncio.run(report(config, args.json, args.top))
        if command == "usage":
            return asyncio.run(usage_report.report(config, source, args.days, args.top, args.json))
        if getattr(args, "ops", None):
            config.ops.enabled = True
            config.ops.host, config.ops.port = args.ops
        if command == "console":
            settings = config.section("console", console.ConsoleSettings)
            if args.page_chars:
                settings.page_chars = args.page_chars
            for adapter in ADAPTERS:
                config.section(adapter.name, adapter.settings).enabled = adapter is console.ADAPTER
        return asyncio.run(run(config, source))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    except cfg.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except SetupError as exc:  # a rejected token, a memory file that cannot be opened, ...
        logs.fatal(str(exc))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
