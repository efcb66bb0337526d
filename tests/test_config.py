"""Config: every problem named as `file: key: what is wrong: how to fix`; secrets never printed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from bots.cli import SECTIONS, main
from core.config import (
    Config,
    ConfigError,
    HandoffConfig,
    McpServerConfig,
    ModelConfig,
    ProfileConfig,
    RouteConfig,
    load,
    parse,
)

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_is_valid_and_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    config = parse(tomllib.loads(text), "config.example.toml", SECTIONS)
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    tables = {"profiles", "routes"}  # [profiles.NAME] and [[routes]]: see the test below
    models = {
        name: field.annotation for name, field in Config.model_fields.items() if name not in tables
    } | SECTIONS
    assert set(sections) == set(models)  # every core and adapter section, nothing else
    for name, model in models.items():
        for key in model.model_fields:  # set, or shown commented out
            assert re.search(rf"^(# )?{key} = ", sections[name], re.M), f"{name}.{key} undocumented"
        # the example shows the defaults
        shown = getattr(config, name) if name in Config.model_fields else config.section(name, model)
        assert shown == model(), f"[{name}] differs from the defaults"


def test_example_profile_and_route_parse_and_document_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    start = text.index("# [profiles.support]")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(
        line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("#   #")
    )
    config = parse(tomllib.loads(uncommented), "example", SECTIONS)
    support = config.profiles["support"]
    assert support.knowledge == ["docs/"] and support.tools == ["mypkg.tools:lookup_order"]
    assert [s.command or s.url for s in support.mcp_servers] == ["npx", "http://127.0.0.1:9000/mcp"]
    assert support.handoff == HandoffConfig(slack_group="S0ONCALL", discord_role=1234)
    assert config.routes[0].profile == "support" and config.routes[0].channel_ids == ["C0SUPPORT"]
    for model in (ProfileConfig, RouteConfig, McpServerConfig, HandoffConfig):
        for key in model.model_fields.keys() - ModelConfig.model_fields.keys():  # "any [model] key"
            assert re.search(rf"\b{key} = ", block), f"{model.__name__}.{key} undocumented"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\napi = "graphql"\nmax_turns = 0\n[stream]\ncurser = "|"\n')
    with pytest.raises(ConfigError) as err:
        load(bad)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad}: model.api: ") and "use 'responses' or" in lines[0]
    assert any(line.startswith(f"{bad}: stream.curser: unknown key: remove it") for line in lines)


def test_syntax_errors_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(ConfigError, match=r"broken.toml: \(syntax\): not valid TOML"):
        load(broken)
    with pytest.raises(ConfigError, match=r"nope.toml: \(file\): file not found"):
        load(tmp_path / "nope.toml")


def test_no_config_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load() == (Config(), "built-in defaults")


def test_check_config_reports_missing_secrets(tmp_path, monkeypatch, capsys) -> None:
    for var in ("DISCORD_BOT_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "c.toml"
    path.write_text("[discord]\nenabled = true\n[slack]\nenabled = true\n")
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{path}: discord.enabled: DISCORD_BOT_TOKEN is not set" in out[0]
    assert any("SLACK_APP_TOKEN" in line and "export SLACK_APP_TOKEN=" in line for line in out)


def test_check_config_ok_summary_never_prints_secrets(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "discord-secret-token-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-key")
    path = tmp_path / "c.toml"
    path.write_text("[discord]\nenabled = true\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "discord" in out and "gpt-4.1-mini" in out
    assert "secret" not in out


def test_check_config_with_no_keys_says_demo(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
    assert "offline demo model" in capsys.readouterr().out
