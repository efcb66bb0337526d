"""Slack adapter pieces that need no server: mention neutralizing, stream deltas, error
mapping, the manifest, config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.cli import SECTIONS
from bots.slack_api import (
    BOT_EVENTS,
    BOT_SCOPES,
    COMMAND,
    ZWJ,
    SlackCallError,
    StreamLost,
    api_base_url,
    call,
    neutralize,
    plain_fallback,
    stable_prefix,
)
from core.config import ConfigError, parse
from core.platform import MessageGone, RateLimited, TransientError

MANIFEST = Path(__file__).resolve().parents[1] / "manifest.yml"


@pytest.mark.parametrize(
    "text",
    [
        "<!channel>",
        "<!here>",
        "<!here|here>",
        "<!everyone>",
        "<!subteam^S123|@devs>",
        "<@U12345>",
        "<@W12345|bob>",
        "@channel",
        "@here!",
        "hey @everyone,",
    ],
)
def test_mentions_are_neutralized(text: str) -> None:
    out = neutralize(text)
    assert out != text and out.replace(ZWJ, "") == text
    assert not re.search(r"<[!@][a-zA-Z]|@(channel|here|everyone)\b", out)


@pytest.mark.parametrize(
    "text",
    [
        "email me@here.com",
        "@channels are fun",
        "<!DOCTYPE html>",
        "<!-- note -->",
        "`@dataclass`",
        "a <b> c",
        "<#C123|general>",
        "<https://example.com|link>",
        "@herein",
    ],
)
def test_harmless_text_is_left_alone(text: str) -> None:
    assert neutralize(text) == text


@given(st.text(alphabet=st.sampled_from(list("<!@>|^ channelhereveryoUW12\n`")), max_size=60))
def test_streamed_prefixes_never_need_taking_back(raw: str) -> None:
    """What is appended to a native stream while it grows is always a prefix of the end result."""
    final = neutralize(raw)
    for i in range(len(raw) + 1):
        assert final.startswith(neutralize(stable_prefix(raw[:i])))


def test_stable_prefix_holds_back_a_temporary_fence_closer() -> None:
    assert stable_prefix("intro\n```py\nx = 1\n```") == "intro\n```py\nx = 1"
    assert stable_prefix("hello <!chan") == "hello "
    assert stable_prefix("plain text") == "plain text"


def test_fallback_text_is_escaped_and_short() -> None:
    assert plain_fallback("a < b & <!here>") == "a &lt; b &amp; &lt;!here&gt;"
    assert len(plain_fallback("x" * 10_000)) == 3000


def test_api_base() -> None:
    assert api_base_url("") is None
    assert api_base_url("http://127.0.0.1:9/api") == "http://127.0.0.1:9/api/"


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> SlackApiError:
    resp = AsyncSlackResponse(
        client=None,
        http_verb="POST",
        api_url="u",
        req_args={},
        data=body,
        headers=headers or {},
        status_code=status,
    )
    return SlackApiError("failed", resp)


async def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_error(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}), RateLimited),
        (_error(500, {"ok": False, "error": "fatal_error"}), TransientError),
        (_error(200, {"ok": False, "error": "service_unavailable"}), TransientError),
        (_error(200, {"ok": False, "error": "message_not_found"}), MessageGone),
        (_error(200, {"ok": False, "error": "channel_not_found"}), MessageGone),
        (_error(200, {"ok": False, "error": "message_not_in_streaming_state"}), StreamLost),
        (_error(200, {"ok": False, "error": "msg_too_long"}), SlackCallError),
        (TimeoutError(), TransientError),
        (ConnectionResetError(), TransientError),
    ],
)
async def test_errors_map_onto_the_core_contract(exc: BaseException, expected: type) -> None:
    with pytest.raises(expected) as info:
        await call("chat.update", _raise(exc))
    if expected is RateLimited:
        assert info.value.retry_after == 7.0


def _manifest_list(section: str) -> set[str]:
    """The `- item` lines under `section:` in manifest.yml (no YAML library needed)."""
    lines = MANIFEST.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{section}:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    items: set[str] = set()
    for line in lines[start + 1 :]:
        if line.strip() and not line.strip().startswith("#"):
            if len(line) - len(line.lstrip()) <= indent and not line.strip().startswith("-"):
                break
            if line.strip().startswith("- "):
                items.add(line.strip()[2:].split("#")[0].strip())
    return items


def test_manifest_grants_exactly_what_the_adapter_uses() -> None:
    assert _manifest_list("bot") == set(BOT_SCOPES)
    assert _manifest_list("bot_events") == BOT_EVENTS
    text = MANIFEST.read_text()
    assert "socket_mode_enabled: true" in text
    assert re.search(r"interactivity:.*\n\s+is_enabled: true", text)
    commands = yaml.safe_load(text)["features"]["slash_commands"]
    assert [c["command"] for c in commands] == [COMMAND]


def test_slack_config_keys() -> None:
    config = parse(
        {
            "slack": {
                "page_chars": 4000,
                "host": "127.0.0.1",
                "suggested_prompts": ["a", "b"],
                "thinking_status": "is typing…",
            }
        },
        "test.toml",
        SECTIONS,
    )
    assert config.slack.page_chars == 4000
    with pytest.raises(ConfigError):
        parse({"slack": {"page_chars": 20000}}, "test.toml", SECTIONS)  # over Slack's Markdown limit
    with pytest.raises(ConfigError):
        parse({"slack": {"suggested_prompts": ["1", "2", "3", "4", "5"]}}, "test.toml", SECTIONS)
