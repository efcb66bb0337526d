"""The adapter protocol: what a platform module declares so that the CLI, `check-config` and
the log scrubber can run it without core naming any platform.

Each adapter module in bots/ (the console's too) defines one `Adapter`: its config section's
model, the environment variables it needs, and how it starts.
Adding a platform is one new module that does the same, plus a line in the CLI's list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from core.config import Config, Problem, Section, missing_env
from core.logs import register_secrets

if TYPE_CHECKING:
    from core.host import Host


class AdapterSettings(Section):
    """The config section every adapter has: `[name] enabled = true` starts it."""

    enabled: bool = False


class Need(NamedTuple):
    """An environment variable the adapter needs with these settings."""

    var: str
    key: str  # the config key that makes it needed, e.g. "<section>.mode"
    why: str


@dataclass(frozen=True)
class Adapter:
    name: str  # its config section, metrics label and record platform
    settings: type[AdapterSettings]
    serve: Callable[[Host, Any], Awaitable[None]]  # runs until cancelled, then shuts down
    needs: Callable[[Any], list[Need]] = lambda settings: []
    secrets: tuple[str, ...] = ()  # environment variables whose values are never logged
    fallback: bool = False  # runs when no other adapter is enabled (the console)

    def __post_init__(self) -> None:
        register_secrets(*self.secrets)

    def problems(self, config: Config, file: str) -> list[Problem]:
        """The environment variables this adapter needs, as configured, that are not set."""
        settings = config.section(self.name, self.settings)
        return missing_env(file, self.needs(settings)) if settings.enabled else []
