"""The README's two commands are the ones users and CI run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert f"```sh\n{ci_command}\n```" in readme


def test_readme_install_command_starts_the_bot() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (
        "```sh\npython3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/streambot\n```" in readme
    )
