"""Profiles and routes: which agent answers a question, decided from where it was asked.

`[model]` is the profile named "default"; `[profiles.NAME]` tables override any of its keys and
add knowledge and tools. `[[routes]]` are tried in order and the first whose every given
condition matches picks the profile; no match means the default profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import DEFAULT_PROFILE, Config, ModelConfig, ProfileConfig, RouteConfig


@dataclass(frozen=True)
class Origin:
    """Where a question comes from, in the terms routes match on (ids as strings)."""

    platform: str  # the adapter's name
    team: str = ""  # workspace or server
    channels: tuple[str, ...] = ()  # the channel, and the thread parent or category it sits in
    dm: bool = False


def resolve(config: Config, name: str = DEFAULT_PROFILE) -> ProfileConfig:
    """Profile `name` with every `[model]` key it does not set filled in from `[model]`.

    "default" is `[model]` itself, plus `[profiles.default]` when there is one. Raises
    KeyError for a name that is neither.
    """
    if name != DEFAULT_PROFILE and name not in config.profiles:
        raise KeyError(name)
    own = config.profiles.get(name) or ProfileConfig()
    inherited = {
        k: getattr(config.model, k) for k in ModelConfig.model_fields if k not in own.model_fields_set
    }
    return own.model_copy(update=inherited)


def names(config: Config) -> list[str]:
    """Every profile name a route or `--profile` may use."""
    return [DEFAULT_PROFILE, *(n for n in config.profiles if n != DEFAULT_PROFILE)]


def matches(route: RouteConfig, origin: Origin) -> bool:
    if route.platform and route.platform != origin.platform:
        return False
    teams = {str(t) for t in (*route.team_ids, *route.guild_ids)}
    if teams and origin.team not in teams:
        return False
    if route.channel_ids and not {str(c) for c in route.channel_ids} & set(origin.channels):
        return False
    return route.dm is None or route.dm == origin.dm


def pick(routes: list[RouteConfig], origin: Origin) -> str:
    """The profile of the first route matching `origin`; the default profile when none does."""
    return next((r.profile for r in routes if matches(r, origin)), DEFAULT_PROFILE)
