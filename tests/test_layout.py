"""The layout the README promises: core names no platform and imports no adapter; every adapter
is registered through the one protocol, the console included."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bots.cli import ADAPTERS, SECTIONS
from core.adapter import AdapterSettings
from core.config import Config

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted((ROOT / "core").glob("*.py"))


def test_core_imports_no_adapter_module() -> None:
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "bots"], f"{path.name} imports {names}"


def test_core_names_no_platform() -> None:
    platforms = [a.name for a in ADAPTERS if a.name != "console"]
    assert platforms  # the test means something only with chat adapters registered
    pattern = re.compile("|".join(platforms), re.I)
    # The one exception: the `handoff` keys of a profile, fixed by the config contract
    # (`handoff = { slack_group = "S…", discord_role = 1234 }`), name whom each platform pings.
    contract = re.compile(r"\b(slack_group|discord_role)\b")
    for path in CORE:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = contract.sub("", line)
            assert not pattern.search(line), f"core/{path.name}:{n} names a platform: {line.strip()}"


def test_state_storage_does_not_import_rendering_or_its_backends() -> None:
    tree = ast.parse((ROOT / "core" / "state.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"core.paging", "core.markdown", "core.redis_state", "core.config"}


def test_every_adapter_uses_the_one_protocol() -> None:
    names = [a.name for a in ADAPTERS]
    assert len(set(names)) == len(names) and "console" in names
    assert [a.name for a in ADAPTERS if a.fallback] == ["console"]
    for adapter in ADAPTERS:
        assert issubclass(adapter.settings, AdapterSettings)
        assert adapter.name not in Config.model_fields  # its section is its own, not core's
        assert SECTIONS[adapter.name] is adapter.settings
