"""The Discord adapter's pure parts: access rules, set-up facts, URL rebasing, error mapping."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bots.cli import SECTIONS
from bots.discord_api import (
    DiscordSettings,
    RebasedHTTP,
    intents,
    invite_url,
    is_allowed,
    permissions,
    platform_errors,
)
from core.config import ConfigError, parse
from core.platform import MessageGone, RateLimited, TransientError

GUILD, CHANNEL, PARENT, USER, ROLE = 1, 10, 11, 100, 1000


def allowed(
    config: DiscordSettings,
    *,
    user: int = USER,
    roles: frozenset[int] = frozenset(),
    guild: int | None = GUILD,
    channels: frozenset[int] = frozenset({CHANNEL}),
) -> bool:
    return is_allowed(config, user_id=user, role_ids=set(roles), guild_id=guild, channel_ids=set(channels))


def test_everyone_is_allowed_by_default() -> None:
    assert allowed(DiscordSettings())
    assert allowed(DiscordSettings(), guild=None)


@pytest.mark.parametrize(
    ("options", "kwargs", "expected"),
    [
        ({"guild_ids": [GUILD]}, {}, True),
        ({"guild_ids": [2]}, {}, False),
        ({"blocked_guild_ids": [GUILD]}, {}, False),
        ({"channel_ids": [CHANNEL]}, {}, True),
        ({"channel_ids": [PARENT]}, {"channels": frozenset({CHANNEL, PARENT})}, True),  # a thread's parent
        ({"channel_ids": [99]}, {}, False),
        ({"blocked_channel_ids": [PARENT]}, {"channels": frozenset({CHANNEL, PARENT})}, False),
        ({"user_ids": [USER]}, {}, True),
        ({"user_ids": [5]}, {}, False),
        ({"role_ids": [ROLE]}, {"roles": frozenset({ROLE})}, True),
        ({"role_ids": [ROLE]}, {}, False),
        ({"role_ids": [ROLE], "user_ids": [USER]}, {}, True),  # listed users need no role
        ({"blocked_role_ids": [ROLE]}, {"roles": frozenset({ROLE})}, False),
        ({"allow_dms": False}, {"guild": None}, False),
        ({"allow_dms": True, "role_ids": [ROLE]}, {"guild": None}, False),  # roles cannot be checked in DMs
        ({"allow_dms": True, "role_ids": [ROLE], "user_ids": [USER]}, {"guild": None}, True),
        ({"guild_ids": [2], "channel_ids": [99]}, {"guild": None}, True),  # server lists do not apply to DMs
    ],
)
def test_access_rules(options: dict[str, Any], kwargs: dict[str, Any], expected: bool) -> None:
    assert allowed(DiscordSettings(**options), **kwargs) is expected


@given(
    options=st.fixed_dictionaries(
        {},
        optional={
            "guild_ids": st.lists(st.sampled_from([GUILD, 2])),
            "channel_ids": st.lists(st.sampled_from([CHANNEL, 99])),
            "user_ids": st.lists(st.sampled_from([USER, 5])),
            "role_ids": st.lists(st.sampled_from([ROLE, 7])),
            "allow_dms": st.booleans(),
        },
    ),
    guild=st.sampled_from([GUILD, None]),
    roles=st.frozensets(st.sampled_from([ROLE, 7])),
)
def test_blocklists_always_win(options: dict[str, Any], guild: int | None, roles: frozenset[int]) -> None:
    blocked = DiscordSettings(**options, blocked_user_ids=[USER])
    assert not allowed(blocked, guild=guild, roles=roles)
    if roles:
        assert not allowed(
            DiscordSettings(**options, blocked_role_ids=sorted(roles)), guild=guild, roles=roles
        )


def test_shard_ids_need_a_shard_count() -> None:
    with pytest.raises(ConfigError, match="shard_ids needs shard_count"):
        parse({"discord": {"shard_ids": [0]}}, "config.toml", SECTIONS)
    with pytest.raises(ConfigError, match="every shard id must be in 0..1"):
        parse({"discord": {"shard_ids": [2], "shard_count": 2}}, "config.toml", SECTIONS)
    assert parse(
        {"discord": {"shard_ids": [1], "shard_count": 2}}, "config.toml", SECTIONS
    ).discord.shard_ids == [1]


def test_intents_are_exactly_what_is_needed() -> None:
    wanted = intents()
    on = {name for name, value in wanted if value}
    assert on == {"guilds", "guild_messages", "dm_messages", "message_content"}


def test_permissions_and_invite_url() -> None:
    plain = permissions(DiscordSettings())
    assert {n for n, v in plain if v} == {
        "read_messages",
        "send_messages",
        "send_messages_in_threads",
        "read_message_history",
    }
    assert permissions(DiscordSettings(open_threads=True)).create_public_threads
    url = invite_url(42, DiscordSettings())
    assert url.startswith("https://discord.com/oauth2/authorize?client_id=42")
    assert f"permissions={plain.value}" in url and "scope=bot+applications.commands" in url


async def test_rebasing_is_per_client() -> None:
    http = RebasedHTTP("http://127.0.0.1:9/api/v10/", discord.http.HTTPClient(None))  # type: ignore[arg-type]
    assert http.rebase("https://discord.com/api/v10/users/@me") == "http://127.0.0.1:9/api/v10/users/@me"
    assert http.rebase("https://cdn.discordapp.com/x.png") == "https://cdn.discordapp.com/x.png"
    assert discord.http.Route.BASE == "https://discord.com/api/v10"  # nothing global changed

    async def gateway_bot() -> tuple[int, str, dict[str, Any]]:
        return 1, "ws://127.0.0.1:9/gateway", {}

    http.get_bot_gateway = gateway_bot  # type: ignore[method-assign]
    assert (
        await http.gateway_for("wss://gateway.discord.gg/?v=10&encoding=json")
        == "ws://127.0.0.1:9/gateway?v=10&encoding=json"
    )
    assert (
        await http.gateway_for("wss://gateway-us-east1-b.discord.gg/?v=10") == "ws://127.0.0.1:9/gateway?v=10"
    )
    assert await http.gateway_for("ws://127.0.0.1:9/gateway?v=10") == "ws://127.0.0.1:9/gateway?v=10"


def _response(status: int, headers: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(status=status, reason="", headers=headers or {})


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (discord.NotFound(_response(404), {"code": 10008, "message": "Unknown Message"}), MessageGone),
        (discord.DiscordServerError(_response(502), "bad gateway"), TransientError),
        (discord.HTTPException(_response(503), "unavailable"), TransientError),
        (discord.HTTPException(_response(429, {"Retry-After": "3"}), "cloudflare"), RateLimited),
        (discord.RateLimited(40.0), RateLimited),
        (aiohttp.ClientConnectionError("reset"), TransientError),
        (TimeoutError(), TransientError),
    ],
)
def test_errors_reach_the_relay_as_its_own(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected), platform_errors():
        raise raised


def test_other_errors_stay_permanent() -> None:
    forbidden = discord.Forbidden(_response(403), {"code": 50013, "message": "Missing Permissions"})
    with pytest.raises(discord.Forbidden), platform_errors():
        raise forbidden
