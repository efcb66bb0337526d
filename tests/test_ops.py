"""Operations: /metrics and /healthz, what the relay records, JSON logs, no content or secrets
in logs, and the deployment files. Replies run on the virtual clock; nothing asserts on speed."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import reserved_port, running_discord_bot
from harness import running_slack_bot as running_bot
from prometheus_client import REGISTRY

import core.relay
from bots.cli import SECTIONS
from core import ops
from core.config import parse
from core.events import Done, Failed, TextDelta
from core.logs import JsonFormatter, TextFormatter, add_reply_fields, tag_reply
from core.pacing import Pacer
from core.platform import Rate, RateLimited, TransientError
from core.relay import Reply
from fakes.clock import FakeClock
from fakes.discord_server import FakeDiscord
from fakes.openai_server import FakeOpenAI
from fakes.scripted import RecordingTarget, ScriptRun, deltas
from fakes.slack_server import FakeSlack

ROOT = Path(__file__).resolve().parents[1]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def checks() -> Iterator[dict[str, ops.ReadyCheck]]:
    """The registered readiness checks, restored afterwards (they are process-wide)."""
    saved = dict(ops.ready_checks)
    ops.ready_checks.clear()
    yield ops.ready_checks
    ops.ready_checks.clear()
    ops.ready_checks.update(saved)


@pytest.fixture
async def server(checks: dict[str, ops.ReadyCheck]) -> AsyncIterator[str]:
    srv = ops.OpsServer("127.0.0.1", 0)
    await srv.start()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        await srv.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_metrics_endpoint_serves_prometheus_text(server: str) -> None:
    status, body = await get(f"{server}/metrics")
    assert status == 200
    for name in (
        "streambot_replies_started_total",
        "streambot_replies_active",
        "streambot_time_to_first_text_seconds",
        "streambot_event_loop_lag_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in body


async def test_healthz_is_live_and_ready_until_a_registered_check_fails(
    server: str, checks: dict[str, ops.ReadyCheck]
) -> None:
    status, body = await get(f"{server}/healthz")
    assert status == 200 and json.loads(body)["live"] and json.loads(body)["ready"]

    connected = {"discord": True}
    ops.register_ready("discord", lambda: connected["discord"])

    async def slack_up() -> bool:  # Slack's Socket Mode check is a coroutine
        return True

    ops.register_ready("slack", slack_up)
    assert (await get(f"{server}/readyz"))[0] == 200

    connected["discord"] = False
    status, body = await get(f"{server}/healthz")
    state = json.loads(body)
    assert status == 503
    assert state["live"] and not state["ready"] and state["failed"] == ["discord"]
    assert state["checks"] == {"discord": False, "slack": True}
    assert (await get(f"{server}/readyz"))[0] == 503
    assert (await get(f"{server}/livez"))[0] == 200  # a lost connection is no reason to restart


async def test_a_check_that_raises_counts_as_not_ready(server: str) -> None:
    def broken() -> bool:
        raise RuntimeError("no client yet")

    ops.register_ready("broken", broken)
    status, body = await get(f"{server}/healthz")
    assert status == 503 and json.loads(body)["failed"] == ["broken"]


def relay(platform: str, steps: list, errors: list | None = None) -> tuple[FakeClock, Reply]:
    clock = FakeClock()
    target = RecordingTarget(clock, limit=500, rate=Rate(10, 1.0))
    target.platform = platform  # a label of its own: counters are process-wide
    target.errors = errors or []
    return clock, Reply(ScriptRun(clock, steps), target, Pacer(clock))


async def test_a_reply_is_counted_timed_and_its_429s_recorded() -> None:
    p = "test-done"
    clock, reply = relay(p, deltas("abc def ghi", 3, 1.0), errors=[None, RateLimited(4.0)])
    outcome = await clock.run(reply.run())

    # Virtual time: the placeholder goes out at once; the first delta comes at 1 s and its edit
    # gets a 429 with Retry-After 4 s; the rest arrives meanwhile, so the next (and last) edit,
    # at 5 s, is the first to show text.
    assert reply.target.log == [(0.0, "post", 0), (1.0, "edit", 0), (5.0, "edit", 0)]
    assert outcome.status == "done" and outcome.rate_limited == 1
    assert (outcome.posts, outcome.edits) == (1, 1)
    assert outcome.placeholder_after == 0.0 and outcome.first_text_after == 5.0
    assert sample("streambot_replies_started_total", platform=p) == 1
    assert sample("streambot_replies_finished_total", platform=p, status="done") == 1
    assert sample("streambot_replies_active", platform=p) == 0
    assert sample("streambot_messages_sent_total", platform=p, op="post") == 1
    assert sample("streambot_messages_sent_total", platform=p, op="edit") == 1
    assert sample("streambot_rate_limited_total", platform=p) == 1
    assert sample("streambot_time_to_placeholder_seconds_count", platform=p) == 1
    assert sample("streambot_time_to_placeholder_seconds_sum", platform=p) == 0.0
    assert sample("streambot_time_to_first_text_seconds_count", platform=p) == 1
    assert sample("streambot_time_to_first_text_seconds_sum", platform=p) == 5.0
    bucket = "streambot_time_to_first_text_seconds_bucket"
    assert sample(bucket, platform=p, le="3.0") == 0 and sample(bucket, platform=p, le="5.0") == 1


async def test_model_errors_and_failed_requests_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    p = "test-failed"
    monkeypatch.setattr(core.relay.random, "uniform", lambda a, b: 1.0)  # no jitter: exact times
    steps = deltas("Partial", 4, 0.1)[:-1] + [(0.1, Failed("Model error — 500 boom"))]
    clock, reply = relay(p, steps, errors=[None, TransientError("502")])
    outcome = await clock.run(reply.run())
    assert outcome.status == "failed"
    assert sample("streambot_replies_finished_total", platform=p, status="failed") == 1
    assert sample("streambot_model_errors_total", platform=p) == 1
    assert sample("streambot_failed_requests_total", platform=p, op="edit") == 1
    # The first delta's edit (0.1 s) fails with a 502 and is retried after 0.5 s: that retry,
    # showing the partial text and the error, is the first text anyone saw.
    assert outcome.retries == 1 and reply.target.shown[0].startswith("Partial\n\n⚠️")
    assert outcome.first_text_after == pytest.approx(0.6)
    assert sample("streambot_time_to_first_text_seconds_count", platform=p) == 1
    assert sample("streambot_time_to_first_text_seconds_sum", platform=p) == pytest.approx(0.6)


async def test_an_empty_answer_never_counts_as_first_text() -> None:
    p = "test-empty"
    clock, reply = relay(p, [(0.5, TextDelta("  ")), (0.1, Done())])
    outcome = await clock.run(reply.run())
    assert outcome.status == "empty" and outcome.placeholder_after == 0.0
    assert outcome.first_text_after is None  # the "no text" note is not the model's text
    assert sample("streambot_time_to_first_text_seconds_count", platform=p) == 0
    assert sample("streambot_replies_finished_total", platform=p, status="empty") == 1


def record(message: str, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("streambot.test", level, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_reply_ids_passed_in_extra() -> None:
    line = JsonFormatter().format(
        record("reply done", reply_id="r1", conversation="c1", status="done", outcome=object())
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "reply done" and entry["level"] == "INFO"
    assert entry["logger"] == "streambot.test" and entry["time"].endswith("+00:00")
    assert (entry["reply_id"], entry["conversation"], entry["status"]) == ("r1", "c1", "done")
    assert "outcome" not in entry  # only the known fields: an Outcome holds the reply's text


async def test_lines_logged_during_a_tagged_reply_carry_its_ids() -> None:
    async def relay_line() -> str:  # e.g. the relay's consumer task, started by the reply
        rec = record("retrying")
        add_reply_fields(rec)  # what the handler does as the line is logged
        return JsonFormatter().format(rec)

    async def one_reply() -> str:
        tag_reply(reply_id="r2", conversation="slack:T:C:1", platform="slack")
        return await asyncio.create_task(relay_line())

    entry = json.loads(await asyncio.create_task(one_reply()))
    assert entry["reply_id"] == "r2" and entry["platform"] == "slack"
    elsewhere = record("elsewhere")
    add_reply_fields(elsewhere)
    assert "reply_id" not in json.loads(JsonFormatter().format(elsewhere))


def test_secret_values_never_reach_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "xoxb-1234-abcdefghijkl"
    monkeypatch.setenv("SLACK_BOT_TOKEN", token)
    for formatter in (TextFormatter(), JsonFormatter()):
        try:
            raise RuntimeError(f"auth failed for {token}")
        except RuntimeError:
            rec = record(f"calling with {token}", exc_info=sys.exc_info())
        assert token not in formatter.format(rec)


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_slack_reply_logs_ids_at_info_and_never_the_prompt(
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    checks: dict[str, ops.ReadyCheck],
    mode: str,
) -> None:
    prompt = "Which zebra-quartz-4711 mountain is tallest?"
    answer = "Mount quokka-jade-0815 is the tallest."
    script = fake_openai.reply(answer, delay=0.01, hold_after=0)  # held before its first text
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(add_reply_fields)  # as logs.setup() does
    async with FakeSlack(mode=mode) as slack:
        async with running_bot(
            slack, model_base_url=fake_openai.base_url, memory_path=str(tmp_path / "memory.db")
        ):
            assert await ops._passes(checks["slack"])  # registered by serve(); connected/listening
            asked = time.monotonic()
            ts = await slack.mention("C0GENERAL", prompt)
            await script.wait_held()  # the reply has started: it asked the model
            held = time.monotonic()
            await slack.wait_for(  # native streams show the thread's "is thinking…" status instead
                lambda: slack.bot_messages("C0GENERAL", ts) or any(s[1] == ts for s in slack.statuses),
                30.0,
                "the placeholder",
            )  # out before the model says anything
            await asyncio.sleep(0.2)  # the model keeps the bot waiting
            released = time.monotonic()
            script.release()
            await slack.wait_for(lambda: answer in slack.reply_text("C0GENERAL", ts), 30.0, "the reply")
            await slack.wait_for(
                lambda: any(getattr(r, "status", None) for r in caplog.records), 30.0, "the reply's log line"
            )
            logged = time.monotonic()
        assert not await ops._passes(checks["slack"])  # disconnected or stopped: not ready

    lines = [JsonFormatter().format(r) for r in caplog.records if r.levelno >= logging.INFO]
    assert not [line for line in lines if "zebra-quartz" in line or "quokka-jade" in line]
    done = [json.loads(line) for line in lines if '"status": "done"' in line]
    assert done and done[0]["reply_id"] and done[0]["conversation"].startswith("slack:")
    assert done[0]["platform"] == "slack"
    assert done[0]["output_tokens"] > 0 and done[0]["input_tokens"] > 0  # what the reply cost
    # What the model and the test did bounds both latencies: the placeholder went out while the
    # model held its text back; the text could not show before the model was released, and both
    # were logged before the test saw the log line.
    placeholder, first_text = done[0]["placeholder_after"], done[0]["first_text_after"]
    assert 0 <= placeholder < first_text
    assert released - held <= first_text <= logged - asked


async def test_discord_reply_is_counted_and_logged_with_ids_but_not_its_prompt(
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    checks: dict[str, ops.ReadyCheck],
) -> None:
    script = fake_openai.reply("Mount quokka-jade-0815 is the tallest.", delay=0.01, hold_after=0)
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(add_reply_fields)
    finished = sample("streambot_replies_finished_total", platform="discord", status="done")
    async with FakeDiscord() as fake:
        async with running_discord_bot(fake, fake_openai, tmp_path, monkeypatch) as bot:
            await fake.wait_for(checks["discord"], 30.0)  # registered by serve(); up once ready
            asked = time.monotonic()
            question = await fake.send(f"<@{fake.bot.id}> Which zebra-quartz-4711 mountain is tallest?")
            await script.wait_held()  # the reply has started: it asked the model
            held = time.monotonic()
            await fake.wait_for(lambda: fake.reply_pages(question))  # the placeholder, before any text
            await asyncio.sleep(0.2)  # the model keeps the bot waiting
            released = time.monotonic()
            script.release()
            outcome = await bot.outcome(question.id)
            logged = time.monotonic()
        assert not await ops._passes(checks["discord"])  # closed: not ready

    assert outcome.status == "done"
    assert 0 <= outcome.placeholder_after < outcome.first_text_after
    assert released - held <= outcome.first_text_after <= logged - asked
    assert sample("streambot_replies_finished_total", platform="discord", status="done") == finished + 1
    lines = [JsonFormatter().format(r) for r in caplog.records if r.levelno >= logging.INFO]
    assert not [line for line in lines if "zebra-quartz" in line or "quokka-jade" in line]
    done = [json.loads(line) for line in lines if '"status": "done"' in line]
    assert done and done[0]["conversation"].startswith("discord:") and done[0]["platform"] == "discord"
    assert (done[0]["placeholder_after"], done[0]["first_text_after"]) == (
        outcome.placeholder_after,
        outcome.first_text_after,
    )


async def _start_cli_with_ops(tmp_path: Path) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """`streambot run` with its ops endpoint on a reserved port (a new one if it could not listen
    there): the process, the port and its stderr lines up to the one saying it listens."""
    for _ in range(3):
        with reserved_port() as port:  # held until the process listens on it
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bots.cli",
                "--log-format",
                "json",
                "--log-level",
                "INFO",
                "run",
                "--ops",
                f"127.0.0.1:{port}",
                cwd=tmp_path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert proc.stderr is not None
            lines: list[str] = []
            try:
                async with asyncio.timeout(60):
                    while line := (await proc.stderr.readline()).decode():
                        lines.append(line)
                        if f"ops endpoint on http://127.0.0.1:{port}" in line:
                            return proc, port, lines
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(f"the ops endpoint did not start within 60 s: {lines}") from None
        await proc.wait()  # it ended without listening there: try another port
    raise AssertionError(f"streambot exited ({proc.returncode}) without serving: {lines}")


async def test_the_cli_serves_health_and_logs_json_as_the_docker_image_runs_it(tmp_path: Path) -> None:
    proc, port, lines = await _start_cli_with_ops(tmp_path)
    try:
        # the console (no adapters configured) waits for input meanwhile
        status, body = await get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["ready"]
        assert proc.stdin is not None
        proc.stdin.close()  # end of input: the console, and with it the process, exits
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    entries = [json.loads(line) for line in "".join(lines).splitlines() + err.decode().splitlines()]
    assert any(e["logger"] == "streambot.ops" for e in entries)


def test_ops_address_option() -> None:
    from bots.cli import _address

    assert _address("0.0.0.0:9108") == ("0.0.0.0", 9108)
    for bad in ("9108", "host:", "host:99999", ":9108"):
        with pytest.raises(argparse.ArgumentTypeError):
            _address(bad)


# --- deployment files ------------------------------------------------------------------------


def dockerfile_instructions() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    rows = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    found: dict[str, str] = {}
    for key, value in rows:
        found[key] = found.get(key, "") + "\n" + value if key in found else value
    return found


def test_dockerfile_runs_a_real_streambot_command_from_existing_sources() -> None:
    from bots.cli import main

    steps = dockerfile_instructions()
    assert steps["FROM"].startswith("python:3.11-slim") and steps["USER"] != "root"
    for copy in steps["COPY"].splitlines():
        *sources, _ = copy.split()
        assert all((ROOT / s).exists() for s in sources), copy
    cmd = json.loads(steps["CMD"])
    assert cmd[0] == "streambot"
    with pytest.raises(SystemExit) as help_exit:  # argparse accepts every option of the CMD
        main([*cmd[1:], "--help"])
    assert help_exit.value.code == 0
    port = cmd[cmd.index("--ops") + 1].rsplit(":", 1)[1]
    assert steps["EXPOSE"] == port and f"127.0.0.1:{port}/healthz" in steps["HEALTHCHECK"]


def test_compose_mounts_an_existing_valid_config_and_runs_redis() -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert re.search(r"^  streambot:\n    build: \.$", text, re.M)
    assert re.search(r"^  redis:\n    image: redis:7$", text, re.M)
    assert "env_file: .env" in text
    mount = re.search(r"- \./(\S+):/config/config\.toml:ro", text)
    assert mount, "the config is mounted read-only where the Dockerfile's CMD reads it"
    data = tomllib.loads((ROOT / mount[1]).read_text())
    assert data["memory"] == {"backend": "redis", "url": "redis://redis:6379/0"}
    parse(data, mount[1], SECTIONS)
    env_names = re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    assert {"OPENAI_API_KEY", "DISCORD_BOT_TOKEN", "SLACK_BOT_TOKEN"} <= set(env_names)


def test_compose_is_valid_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(compose["services"]) == {"streambot", "redis"}
