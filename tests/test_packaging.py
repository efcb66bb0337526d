"""What users of the package rely on beyond the bot itself: `python -m bots` is the `streambot`
command, the Docker image installs the locked versions in constraints.txt, and the private
internals of third-party libraries the adapters use are still where the code expects them
(pyproject.toml pins those libraries' minor version; these tests say what to do when a new
release moves one)."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import discord
import pytest
import slack_bolt.adapter.socket_mode.aiohttp as bolt_socket_mode
import slack_sdk.socket_mode.aiohttp as sdk_socket_mode
from discord.http import HTTPClient, Route
from discord.utils import MISSING
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bots.cli import main
from bots.discord_api import RebasedHTTP, RebasedSession

ROOT = Path(__file__).resolve().parents[1]
BAD_CONFIG = '[stream]\ncurser = "▌"\n'  # one unknown key: check-config exits 1 and names it


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bots ARGS` in a child process that imports this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "bots", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# --- python -m bots --------------------------------------------------------------------------


def test_python_m_bots_is_the_streambot_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.toml").write_text(BAD_CONFIG)
    child = run_module("check-config", "config.toml", cwd=tmp_path)

    monkeypatch.chdir(tmp_path)
    code = main(["check-config", "config.toml"])
    assert (child.returncode, child.stdout) == (code, capsys.readouterr().out)
    assert child.returncode == 1 and "config.toml: stream.curser: unknown key" in child.stdout


def test_python_m_bots_help_lists_the_commands(tmp_path: Path) -> None:
    child = run_module("--help", cwd=tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("usage: streambot")
    for command in ("run", "console", "ask", "check-config"):
        assert command in child.stdout


def test_python_m_bots_matches_the_installed_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("streambot")
    if not script.exists():
        pytest.skip("the streambot script is not installed next to this Python (pip install -e .)")
    (tmp_path / "config.toml").write_text(BAD_CONFIG)
    by_script = subprocess.run(
        [str(script), "check-config", "config.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    by_module = run_module("check-config", "config.toml", cwd=tmp_path)
    assert (by_module.returncode, by_module.stdout, by_module.stderr) == (
        by_script.returncode,
        by_script.stdout,
        by_script.stderr,
    )


# --- constraints.txt: the Docker image's locked dependencies ----------------------------------


def locked() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line must be an exact `name==version`."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
            assert match, f"constraints.txt: {line!r} is not name==version: regenerate it (README, Docker)"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    pins = locked()
    assert not {"streambot", "pip", "setuptools"} & set(pins), (
        "constraints.txt pins the project or pip itself"
    )
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"constraints.txt lacks {dependency.name}: regenerate it (README, Docker)"
        assert dependency.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {dependency.name}=={pins[name]}, outside pyproject.toml's "
            f"{dependency}: regenerate it (README, Docker)"
        )


def test_docker_image_installs_with_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert any("constraints.txt" in sources for sources in copied), (
        "the Dockerfile does not COPY constraints.txt"
    )
    assert re.search(r"^RUN pip install -c constraints\.txt \.(\s|$)", dockerfile, re.M), (
        "the Dockerfile installs streambot without -c constraints.txt"
    )


# --- private internals of third-party libraries ------------------------------------------------
# Each test names the internal, the code that relies on it and what to do when it moves, so a
# dependency upgrade fails here, loudly, instead of in production behind a proxy or a reconnect.


@contextlib.contextmanager
def internal(package: str, what: str, user: str, remedy: str) -> Iterator[None]:
    """Turn any failure inside into one message that says what moved and what to do."""
    try:
        yield
    except (AssertionError, AttributeError, TypeError, KeyError, OSError) as exc:
        message = (
            f"{package} {version(package)} changed an internal: {what}. {user} relies on "
            f"it. {remedy}\n({type(exc).__name__}: {exc})"
        )
        raise pytest.fail.Exception(message, pytrace=False) from None


DISCORD_REMEDY = (
    "Adapt bots/discord_api.py and bots/discord_bot.py to this discord.py, then move the discord.py pin in "
    "pyproject.toml to its minor version and regenerate constraints.txt (README, "
    "Docker); or install a discord.py that pyproject.toml allows."
)
SESSION = "discord.http.HTTPClient keeps its aiohttp session in `self.__session` (`_HTTPClient__session`)"
REBASED = "bots/discord_api.py's RebasedHTTP (`[discord] api_base`: REST, interactions, gateway via a proxy)"


def test_discord_http_client_keeps_its_session_in_the_mangled_attribute() -> None:
    with internal("discord.py", SESSION, REBASED, DISCORD_REMEDY):
        for method in ("__init__", "static_login", "request", "ws_connect", "close"):
            source = inspect.getsource(getattr(HTTPClient, method))
            assert "self.__session" in source, f"HTTPClient.{method} no longer uses self.__session"
        assert "_HTTPClient__session" in vars(HTTPClient(None)), (  # type: ignore[arg-type]
            "a new HTTPClient has no _HTTPClient__session attribute"
        )
        # Interaction responses (/ask, the Stop button) take the session straight from state.http.
        assert "http._HTTPClient__session" in inspect.getsource(discord.interactions), (
            "discord.interactions no longer reads state.http._HTTPClient__session"
        )


async def test_discord_http_client_reads_the_session_through_the_rebased_property() -> None:
    opened: list[str] = []

    class Session:
        async def ws_connect(self, url: str, **kwargs: Any) -> str:
            opened.append(url)
            return "socket"

    with internal("discord.py", SESSION, REBASED, DISCORD_REMEDY):
        http = RebasedHTTP("http://127.0.0.1:9/api/v10", HTTPClient(None))  # type: ignore[arg-type]
        # HTTPClient.__init__ set the session to MISSING through the property, not beside it:
        assert "_HTTPClient__session" not in vars(http) and vars(http)["_rebased_session"] is MISSING
        http._HTTPClient__session = Session()  # what static_login does with a real session
        assert isinstance(vars(http)["_rebased_session"], RebasedSession)
        assert await http.ws_connect("ws://127.0.0.1:9/gateway") == "socket"  # discord.py's own code
        assert opened == ["ws://127.0.0.1:9/gateway"]


def test_discord_http_client_settings_rebased_http_copies() -> None:
    what = (
        "HTTPClient's constructor arguments (loop, connector, proxy, proxy_auth, unsync_clock, "
        "http_trace, max_ratelimit_timeout), the attributes that hold them, Route.BASE, or "
        "get_bot_gateway's (shards, url, limits) result"
    )
    with internal("discord.py", what, REBASED, DISCORD_REMEDY):
        original = HTTPClient(
            None,
            proxy="http://proxy:3128",
            unsync_clock=False,  # type: ignore[arg-type]
            max_ratelimit_timeout=45.0,
        )
        http = RebasedHTTP("http://127.0.0.1:9/api/v10", original)
        copied = (
            "loop",
            "connector",
            "proxy",
            "proxy_auth",
            "use_clock",
            "http_trace",
            "max_ratelimit_timeout",
        )
        assert {a: getattr(http, a) for a in copied} == {a: getattr(original, a) for a in copied}
        assert (http.proxy, http.use_clock, http.max_ratelimit_timeout) == ("http://proxy:3128", True, 45.0)
        assert Route.BASE.startswith("https://discord.com/api/v"), f"Route.BASE is {Route.BASE!r}"
        returns = str(inspect.signature(HTTPClient.get_bot_gateway).return_annotation)
        assert returns.startswith("Tuple[int, str,"), f"get_bot_gateway returns {returns}"


def test_discord_sends_each_attempt_through_session_request() -> None:
    what = (
        "HTTPClient.request and the webhook adapter send each attempt as "
        "`async with <session>.request(...) as response`, and discord.http.json_or_text exists"
    )
    user = (
        "bots/discord_api.py's FirstAnswer (a relay request's 429 or 5xx is raised from "
        "`session.request`, so discord.py's retry loops never re-send it)"
    )
    with internal("discord.py", what, user, DISCORD_REMEDY):
        assert "async with self.__session.request(" in inspect.getsource(HTTPClient.request)
        webhook = inspect.getsource(discord.webhook.async_.AsyncWebhookAdapter.request)
        assert "async with session.request(" in webhook
        assert callable(discord.http.json_or_text)


def test_discord_client_keeps_its_state_in_connection() -> None:
    what = (
        "discord.Client keeps its ConnectionState in `client._connection` (with `.http` and `._get_message`)"
    )
    user = (
        "bots/discord_bot.py (DiscordBot.__init__ swaps `_connection.http` for RebasedHTTP; "
        "DiscordBot._message looks cached messages up with `_connection._get_message`)"
    )
    with internal("discord.py", what, user, DISCORD_REMEDY):
        client = discord.Client(intents=discord.Intents.none())
        state = client._connection
        assert state.http is client.http, "client._connection.http is not client.http"
        assert state._get_message(1) is None  # unknown id: None, not an error


def test_slack_socket_mode_connects_to_a_preset_url() -> None:
    what = (
        "slack_sdk's aiohttp SocketModeClient.connect() uses a `wss_uri` set beforehand and "
        "only calls apps.connections.open when it is None"
    )
    user = (
        "bots/slack_bot.py (SlackBot._socket_mode opens the connection URL itself, to fail once "
        "on a bad SLACK_APP_TOKEN instead of retrying forever, and presets handler.client.wss_uri)"
    )
    remedy = (
        "Adapt SlackBot._socket_mode to this slack_sdk; or install a slack-sdk release before "
        "this one and bound slack-sdk below it in pyproject.toml."
    )
    with internal("slack_sdk", what, user, remedy):
        assert bolt_socket_mode.SocketModeClient is sdk_socket_mode.SocketModeClient, (
            "slack_bolt's aiohttp AsyncSocketModeHandler no longer uses slack_sdk.socket_mode.aiohttp"
        )
        source = inspect.getsource(sdk_socket_mode.SocketModeClient.connect)
        assert "if self.wss_uri is None:" in source, "connect() no longer checks for a preset wss_uri"
