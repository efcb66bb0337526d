"""What users of the package rely on beyond the bot itself: `python -m bots` is the `streambot`
command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bots.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD_CONFIG = '[stream]\ncurser = "▌"\n'  # one unknown key: check-config exits 1 and names it


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bots ARGS` in a child process that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "bots", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# --- python -m bots --------------------------------------------------------------------------


def test_python_m_bots_is_the_streambot_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
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
    by_script = subprocess.run([str(script), "check-config", "config.toml"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    by_module = run_module("check-config", "config.toml", cwd=tmp_path)
    assert (by_module.returncode, by_module.stdout, by_module.stderr) == (
        by_script.returncode, by_script.stdout, by_script.stderr)
