"""Hostile input (issue 13): whatever arrives, no question is lost and no traceback is shown.

Each test here failed on the code before the fix it names; the figures they stand for are in
benchmarks/hostile_bench.py.
"""

from __future__ import annotations

import re

import pytest

from bots.slack_bot import ZWJ, neutralize

# --- 4. special mentions in any case ---------------------------------------------------------


@pytest.mark.parametrize("text", [
    "<!HERE>", "<!Channel>", "<!EVERYONE>", "<!HeRe|x>", "<!SUBTEAM^S1|@devs>",
    "@HERE", "@Channel!", "hey @EveryOne,",
])
def test_special_mentions_are_neutralized_in_any_case(text: str) -> None:
    out = neutralize(text)
    assert out != text and out.replace(ZWJ, "") == text
    assert not re.search(r"<[!@][a-zA-Z]|@(channel|here|everyone)\b", out, re.IGNORECASE)


@pytest.mark.parametrize("text", ["<!DOCTYPE html>", "@Herein", "@CHANNELS", "ME@HERE.com"])
def test_case_insensitivity_leaves_lookalikes_alone(text: str) -> None:
    assert neutralize(text) == text
