"""Shared fixtures. Tests are hermetic: nothing leaves 127.0.0.1 and no real API key is used."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

# Before anything imports the Agents SDK: its trace exporter would otherwise post to OpenAI.
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
# A real key or endpoint in the developer's environment must never be picked up by a test.
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_name, None)
# Loopback must not be routed through a proxy configured for the real internet.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1,localhost"]))

import pytest  # noqa: E402
from agents import set_tracing_disabled  # noqa: E402

from fakes.discord_server import FakeDiscord  # noqa: E402
from fakes.openai_server import FakeOpenAI  # noqa: E402
from fakes.slack_server import FakeSlack  # noqa: E402

set_tracing_disabled(True)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A running fake OpenAI API on a free 127.0.0.1 port: script replies, then use
    `fake_openai.client()` or `AsyncOpenAI(base_url=fake_openai.base_url, api_key="test")`."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running fake Discord (REST + gateway) on a free 127.0.0.1 port."""
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """A running fake Slack (Web API + Socket Mode) on a free 127.0.0.1 port."""
    async with FakeSlack() as fake:
        yield fake
