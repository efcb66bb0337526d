"""Screening for Slack's HTTP events endpoint: whatever arrives, a 400 or 401, never a 500.

bolt parses a request's body before it checks the signature, so a malformed body from anyone
(invalid UTF-8, a JSON array, a timestamp that is not a number) raised inside bolt or aiohttp:
a 500 and an ERROR traceback per request. `screen` checks the signature on the raw bytes first
and then that the body parses the way bolt will parse it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from slack_bolt.request.internals import parse_body

MAX_AGE = 300.0  # seconds a signed request stays valid (Slack's replay window)


def screen(body: bytes, headers: Mapping[str, str], secret: str, now: float) -> int | None:
    """None when bolt may handle the request; else the status to refuse it with (401: not
    signed by Slack with our secret, 400: signed but not something bolt can parse)."""
    ts = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not (ts.isascii() and ts.isdigit() and len(ts) <= 12) or abs(now - int(ts)) > MAX_AGE:
        return 401
    expected = (
        "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    )
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return 401
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip() or None
    try:
        parsed = parse_body(body.decode("utf-8"), content_type)
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return 400
    if not isinstance(parsed, dict) or not isinstance(parsed.get("event", {}), dict):
        return 400
    return None
