"""Profiles and routes: `[model]` stays the default, profiles inherit what they do not set, the
first matching route picks the profile, and every mistake is a config error naming file, key
and fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import running_discord_bot, slack_bot_for

from bots.cli import SECTIONS, main
from core.config import DEFAULT_PROFILE, Config, ConfigError, RouteConfig, load, parse
from core.events import Event
from core.host import Finished, Host, Question
from core.pacing import Pacer
from core.platform import Rate
from core.profiles import Origin, names, pick, resolve
from fakes.clock import FakeClock
from fakes.discord_server import FakeDiscord
from fakes.openai_server import FakeOpenAI, RecordedRequest
from fakes.scripted import RecordingTarget, ScriptRun, deltas
from fakes.slack_server import TEAM_ID, FakeSlack, settled


def test_a_profile_inherits_every_model_key_it_does_not_set() -> None:
    config = parse(
        {
            "model": {"model": "big", "instructions": "general", "max_output_tokens": 500, "max_turns": 3},
            "profiles": {"support": {"instructions": "docs only", "max_turns": 7, "knowledge": ["docs"]}},
        },
        "c.toml",
    )
    support = resolve(config, "support")
    assert (support.instructions, support.max_turns, support.knowledge) == ("docs only", 7, ["docs"])
    assert (support.model, support.max_output_tokens, support.api) == ("big", 500, "responses")
    default = resolve(config)  # [model] itself, with nothing to search
    assert (default.instructions, default.knowledge, default.tools) == ("general", [], [])
    assert names(config) == ["default", "support"]
    with pytest.raises(KeyError):
        resolve(config, "nope")


def test_profiles_default_adds_tools_to_the_model_section() -> None:
    config = parse({"model": {"model": "m"}, "profiles": {"default": {"knowledge": ["kb"]}}}, "c.toml")
    assert resolve(config).knowledge == ["kb"] and resolve(config).model == "m"
    assert names(config) == ["default"]


def test_the_first_matching_route_wins_and_no_match_is_the_default() -> None:
    routes = [
        RouteConfig(platform="slack", channel_ids=["C1"], profile="support"),
        RouteConfig(platform="discord", guild_ids=[42], dm=False, profile="community"),
        RouteConfig(dm=True, profile="private"),
        RouteConfig(team_ids=["T9"], profile="acme"),
        RouteConfig(platform="slack", profile="slack-rest"),
    ]
    assert pick(routes, Origin("slack", "T9", ("C1",))) == "support"  # before the T9 route
    assert pick(routes, Origin("slack", "T9", ("C2",))) == "acme"
    assert pick(routes, Origin("slack", "T1", ("C2",))) == "slack-rest"
    assert pick(routes, Origin("slack", "T1", ("D1",), dm=True)) == "private"
    assert pick(routes, Origin("discord", "42", ("7", "8"))) == "community"
    assert pick(routes, Origin("discord", "", ("5",), dm=True)) == "private"
    assert pick(routes, Origin("discord", "43", ("7",))) == DEFAULT_PROFILE
    assert pick(routes, Origin("console")) == DEFAULT_PROFILE
    # a thread matches its parent channel's route
    assert pick([RouteConfig(channel_ids=[100], profile="p")], Origin("discord", "1", ("555", "100"))) == "p"
    assert pick([], Origin("slack", "T1", ("C1",))) == DEFAULT_PROFILE


def test_route_and_profile_mistakes_name_file_key_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(
        "[profiles.support]\n"
        'instructions = "x"\n'
        'knowlege = ["docs"]\n'
        'mcp_servers = [{ command = "a", url = "http://b" }, {}]\n'
        "[[routes]]\n"
        'profile = "suport"\n'
        "[[routes]]\n"
        'platform = "irc"\n'
        'profile = "support"\n'
        "[[routes]]\n"
        "channel_ids = []\n"
    )
    with pytest.raises(ConfigError) as err:
        load(path, SECTIONS)
    lines = str(err.value).splitlines()
    assert any(
        line.startswith(f"{path}: profiles.support.knowlege: unknown key: remove it") for line in lines
    )
    assert sum("profiles.support.mcp_servers." in line and "either command" in line for line in lines) == 2
    assert f"{path}: routes.2.profile: field required" in str(err.value)
    assert len(lines) == 4, lines  # the route checks run once the tables themselves are valid
    path.write_text(
        '[profiles.support]\ninstructions = "x"\n[[routes]]\nprofile = "suport"\n'
        '[[routes]]\nplatform = "irc"\nprofile = "support"\n'
    )
    with pytest.raises(ConfigError) as err:
        load(path, SECTIONS)
    assert str(err.value).splitlines() == [
        f"{path}: routes.0.profile: no profile named 'suport': add a [profiles.suport] table or use "
        "one of default, support",
        f"{path}: routes.1.platform: no platform named 'irc': use one of console, discord, slack, "
        "or leave it out to match any",
    ]


def test_profile_paths_resolve_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "desk").mkdir()
    path = tmp_path / "desk" / "bot.toml"
    path.write_text('[profiles.support]\nknowledge = ["docs"]\n')
    monkeypatch.chdir(tmp_path)
    config, _ = load(path, SECTIONS)
    assert config.path("docs") == tmp_path / "desk" / "docs"
    assert config.path("/abs/docs") == Path("/abs/docs")


class Brains:
    """One scripted brain per profile; records which profile answered which prompt."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.built: list[str] = []
        self.answered: list[tuple[str, str]] = []

    def __call__(self, profile: str) -> _Brain:
        self.built.append(profile)
        return _Brain(self, profile)


class _Brain:
    def __init__(self, brains: Brains, profile: str) -> None:
        self.brains, self.profile = brains, profile

    def start(self, prompt: str, conversation: str | None = None) -> ScriptRun:
        self.brains.answered.append((self.profile, prompt))
        script: list[tuple[float, Event]] = deltas(f"{self.profile} says hi")
        return ScriptRun(self.brains.clock, script)


async def test_the_host_answers_each_question_with_its_routes_profile() -> None:
    clock = FakeClock()
    brains = Brains(clock)
    config = parse(
        {
            "profiles": {"support": {"instructions": "docs"}, "dms": {}},
            "routes": [
                {"platform": "chat", "channel_ids": ["help"], "profile": "support"},
                {"dm": True, "profile": "dms"},
            ],
        },
        "c.toml",
    )
    host = Host(config, brains(DEFAULT_PROFILE), Pacer(clock), brains=brains)
    finished: list[Finished] = []
    host.on_finished.append(finished.append)

    class ChatTarget(RecordingTarget):
        platform = "chat"

    async def ask(n: int, channel: str, *, dm: bool = False, parents: tuple[str, ...] = ()) -> str:
        target = ChatTarget(clock, limit=2000, rate=Rate(100, 1.0), key=f"t{n}")
        q = Question(f"r{n}", "ann", channel, f"c{n}", f"q{n}", dm=dm, channels=parents)
        await clock.run(host.answer(q, target))
        return target.shown[-1]

    assert await ask(1, "help") == "support says hi"
    assert await ask(2, "random") == "default says hi"
    assert await ask(3, "thread-9", parents=("help",)) == "support says hi"  # a thread in #help
    assert await ask(4, "D1", dm=True) == "dms says hi"
    assert await ask(5, "help") == "support says hi"
    assert [f.profile for f in finished] == ["support", "default", "support", "dms", "support"]
    assert brains.built == ["default", "support", "dms"]  # one agent per profile, built once
    await asyncio.sleep(0)


def test_ask_profile_flag_rejects_an_unknown_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bot.toml"
    path.write_text('[memory]\npath = ""\n[profiles.support]\ninstructions = "x"\n')
    assert main(["ask", "--config", str(path), "--profile", "sales", "hi"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: --profile: no profile named 'sales': use one of default, support" in err


def test_use_profile_routes_console_questions_to_it() -> None:
    from bots.cli import use_profile

    config = parse(
        {"profiles": {"support": {}}, "routes": [{"platform": "console", "profile": "default"}]}, "c"
    )
    use_profile(config, "support", "c")
    assert pick(config.routes, Origin("console")) == "support"
    assert pick(config.routes, Origin("slack")) == DEFAULT_PROFILE
    assert isinstance(config, Config)


# --- the adapters tell the host where each question comes from ---------------------------------

PROFILES = {"support": {"instructions": "SUPPORT DESK"}, "private": {"instructions": "PRIVATE DESK"}}
DEFAULT_INSTRUCTIONS = Config().model.instructions


def _instructions(request: RecordedRequest) -> str:
    return str(request.body.get("instructions"))


async def test_slack_routes_by_channel_and_dm(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    routes = [
        {"platform": "slack", "channel_ids": ["C0SUPPORT"], "team_ids": [TEAM_ID], "profile": "support"},
        {"platform": "slack", "dm": True, "profile": "private"},
    ]
    async with slack_bot_for(slack, fake_openai, tmp_path, profiles=PROFILES, routes=routes):
        for channel, text in (("C0SUPPORT", "help me"), ("C0GENERAL", "hello all")):
            fake_openai.reply(f"answer to {text}")
            ts = await slack.mention(channel, text)
            await slack.wait_for(lambda c=channel, t=ts: settled(slack, c, t), 30.0, "the reply")
        fake_openai.reply("answer in private")
        ts = await slack.user_message("D0DIRECT", "psst")
        await slack.wait_for(lambda: settled(slack, "D0DIRECT", ts), 30.0, "the reply")
    assert [_instructions(r) for r in fake_openai.requests] == [
        "SUPPORT DESK",
        DEFAULT_INSTRUCTIONS,
        "PRIVATE DESK",
    ]


async def test_discord_routes_by_server_and_dm(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    thread_parent = fake.general.id
    routes = [{"platform": "discord", "guild_ids": [fake.guild_id], "dm": False, "profile": "support"}]
    async with running_discord_bot(
        fake, fake_openai, tmp_path, monkeypatch, profiles=PROFILES, routes=routes
    ) as bot:
        fake_openai.reply("in the server")
        question, _ = await bot.ask("help me")
        fake_openai.reply("in private")
        dm = await fake.dm("psst")
        await bot.outcome(dm.id)
        in_guild, in_dm = bot.logs.finished_replies[question.id], bot.logs.finished_replies[dm.id]
    assert (in_guild.profile, in_guild.question.team, in_guild.question.dm) == (
        "support",
        str(fake.guild_id),
        False,
    )
    assert str(thread_parent) in (in_guild.question.channel, *in_guild.question.channels)
    assert (in_dm.profile, in_dm.question.team, in_dm.question.dm) == ("default", "", True)
    assert [_instructions(r) for r in fake_openai.requests] == ["SUPPORT DESK", DEFAULT_INSTRUCTIONS]
