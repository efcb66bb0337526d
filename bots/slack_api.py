"""Slack Web API conventions the adapter relies on: the `[slack]` settings, the scopes and
events the app needs, each method's rate, how Slack's answers map onto the core's errors, and
message content (Markdown blocks, the Stop button, mentions made inert).

Every request maps Slack's answers onto the core's errors: 429 -> RateLimited(Retry-After),
5xx/timeouts -> TransientError, deleted message/channel -> MessageGone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from typing import Any, Literal

import aiohttp
from pydantic import Field
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import ContextActionsBlock, FeedbackButtonObject, FeedbackButtonsElement

from core.adapter import AdapterSettings
from core.platform import MessageGone, Rate, RateLimited, TransientError

BOT_TOKEN, APP_TOKEN, SIGNING_SECRET = "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"


class SlackSettings(AdapterSettings):
    """`[slack]` in the config file (documented in config.example.toml)."""

    mode: Literal["socket", "http"] = "socket"
    api_base: str = ""
    port: int = Field(3000, ge=1, le=65535)
    host: str = "0.0.0.0"  # HTTP mode: address the events endpoint (/slack/events) listens on
    streaming: Literal["auto", "native", "edit"] = "auto"
    page_chars: int = Field(11000, ge=500, le=12000)  # per message; Slack's Markdown limit is 12,000
    allow_dms: bool = True
    channel_ids: list[str] = []
    user_ids: list[str] = []
    suggested_prompts: list[str] = Field(  # offered when an assistant thread opens (at most 4)
        ["What can you help me with?", "Explain a concept simply", "Review a piece of code"], max_length=4
    )
    thinking_status: str = Field("is thinking…", max_length=50)  # assistant threads and native streams
    # rotated under the status until the first text shows (native streams, assistant threads)
    loading_messages: list[str] = Field([], max_length=10)
    native_stop_button: bool = True  # native streams: a Stop button beside the stream while it runs


# What manifest.yml must grant, and why (tests/test_slack_units.py keeps the two in step).
BOT_SCOPES = {
    "app_mentions:read": "app_mention events",
    "assistant:write": "assistant.threads.setStatus / setSuggestedPrompts / setTitle",
    "channels:history": "thread follow-ups in public channels; conversations.replies",
    "chat:write": "chat.postMessage / update / delete / startStream / appendStream / stopStream",
    "commands": "the /streambot slash command (/streambot new)",
    "files:read": "pictures and files attached to questions (url_private with the bot token)",
    "reactions:write": "👀 on a question while its placeholder waits its turn; 🆘 on a handed-off thread",
    "groups:history": "thread follow-ups in private channels",
    "im:history": "direct messages and assistant threads",
    "mpim:history": "thread follow-ups in group DMs",
    "users:read": "people's display names, so the model knows who is speaking",
}
BOT_EVENTS = {
    "app_mention",
    "assistant_thread_started",
    "message.channels",
    "message.groups",
    "message.im",
    "message.mpim",
}

STOP_ACTION = "streambot_stop"
STOP_CONTROL = "streambot_stop_control"  # block id of the Stop button posted beside a native stream
FEEDBACK_ACTION = "streambot_feedback"
REASON_VIEW = "streambot_feedback_reason"
HUMAN_ACTION = "streambot_human"
RESOLVED_ACTION = "streambot_resolved"
COMMAND = "/streambot"  # manifest.yml declares it
MARKDOWN_LIMIT = 12_000  # markdown blocks, markdown_text
FALLBACK_CHARS = 3_000  # plain `text` beside blocks: notifications and screen readers

# Slack evaluates limits per method per workspace (chat.postMessage: per channel) and answers
# only 429s, never "how much is left": these rates are the starting guess, a little under the
# documented tiers, and each 429 pauses and slows its budget (core/pacing.py). Slack allows
# bursts ("sporadic bursts are welcome" on Tier 3, "generous burst behaviour" on Tier 4), so the
# budgets are token buckets holding about half a minute's allowance: when many replies start at
# once, every one shows its first text at once, and the steady rate below the tier's takes over.
# One reply's own requests are still spread out (`*_SPACING`, per reply): a quick answer would
# otherwise spend the burst on half-written frames that nobody has time to read.
# chat.postMessage: about 1/s per channel, short bursts. Slack counts a request when it arrives,
# we when we send it: a burst as big as Slack's leaves no room for requests that arrive bunched
# (a busy event loop, the network), so ours keeps one message of it spare, as the others keep
# half of theirs.
POST_RATE = Rate(55, 60.0, burst=2)
UPDATE_RATE = Rate(48, 60.0, burst=25)  # chat.update: Tier 3, 50+ per minute
UPDATE_SPACING = 1.0
START_RATE = Rate(18, 60.0, burst=10)  # chat.startStream: Tier 2, 20+ per minute
STOP_RATE = Rate(18, 60.0, burst=10)  # chat.stopStream: Tier 2 as well
APPEND_RATE = Rate(95, 60.0, burst=50)  # chat.appendStream: Tier 4, 100+ per minute
APPEND_SPACING = 0.5
REACTION_RATE = Rate(48, 60.0, burst=20)  # reactions.add: Tier 3
ACK_EMOJI = "eyes"  # added to a question whose placeholder is held up by chat.postMessage's limit

GONE_ERRORS = {"message_not_found", "channel_not_found", "thread_not_found", "is_archived"}
TRANSIENT_ERRORS = {
    "fatal_error",
    "internal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
    "org_login_required",
}
STREAM_LOST = "message_not_in_streaming_state"
# startStream refusals that mean "not for this whole workspace/app" rather than "not here".
NATIVE_OFF_FOR_WORKSPACE = {
    "unknown_method",
    "method_deprecated",
    "deprecated_endpoint",
    "missing_scope",
    "not_allowed_token_type",
    "feature_not_enabled",
    "not_allowed",
    "access_denied",
}

ZWJ = "\u200d"
# Model output must never ping anyone: break @channel/@here/@everyone, <!channel>-style special
# mentions, user-group and user mentions by putting an invisible joiner after the sigil.
# Special mentions in any case (<!HERE>, @Channel): Slack honours those too.
_PING = re.compile(
    r"<(?=!(?i:channel|here|everyone|subteam\^))|<(?=@[UWB][A-Z0-9])"
    r"|(?<![\w.])@(?=(?i:channel|here|everyone)\b)"
)
# The end of a half-streamed text that might still become a mention: held back while streaming
# natively, because text appended to a stream can never be changed afterwards.
_PARTIAL_PING = re.compile(r"[<@][^\s<>@]{0,10}\Z")
# A fence closer on the last line, which the core adds while a code block is still open.
_TRAILING_CLOSER = re.compile(r"\n? {0,3}(?:`{3,}|~{3,})[ \t]*\Z")


def neutralize(text: str) -> str:
    """`text` with every mention made inert (still readable, never a notification)."""
    return _PING.sub(lambda m: m.group(0) + ZWJ, text)


def stable_prefix(raw: str) -> str:
    """The part of a still-growing page that can be appended to a stream for good: without a
    temporary fence closer and without a possible mention that is not finished yet."""
    raw = _TRAILING_CLOSER.sub("", raw)
    m = _PARTIAL_PING.search(raw)
    return raw[: m.start()] if m else raw


def plain_fallback(text: str) -> str:
    """The notification text beside blocks: escaped as Slack's `text` field requires."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text if len(text) <= FALLBACK_CHARS else text[: FALLBACK_CHARS - 1] + "…"


def content(text: str, stop_id: str | None = None) -> dict[str, Any]:
    """A message's text as a markdown block (plus a Stop button for reply `stop_id`)."""
    text = neutralize(text)[:MARKDOWN_LIMIT]
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": text}]
    if stop_id:
        blocks.append(stop_block(stop_id))
    return {"text": plain_fallback(text), "blocks": blocks}


def end_blocks(reply_id: str, *, feedback: bool, human: bool) -> list[dict[str, Any]]:
    """What goes under a finished answer: Slack's native 👍/👎 and a "Get a human" button."""
    blocks: list[dict[str, Any]] = []
    if feedback:
        buttons = FeedbackButtonsElement(
            action_id=FEEDBACK_ACTION,
            positive_button=FeedbackButtonObject(
                text="Good answer", accessibility_label="This answer helped", value=f"up:{reply_id}"
            ),
            negative_button=FeedbackButtonObject(
                text="Bad answer", accessibility_label="This answer did not help", value=f"down:{reply_id}"
            ),
        )
        blocks.append(ContextActionsBlock(elements=[buttons]).to_dict())
    if human:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": HUMAN_ACTION,
                        "value": reply_id,
                        "text": {"type": "plain_text", "text": "🙋 Get a human", "emoji": True},
                    }
                ],
            }
        )
    return blocks


def reason_view(reply_id: str) -> dict[str, Any]:
    """The modal a 👎 opens: an optional reason."""
    return {
        "type": "modal",
        "callback_id": REASON_VIEW,
        "private_metadata": reply_id,
        "title": {"type": "plain_text", "text": "What was wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "optional": True,
                "label": {"type": "plain_text", "text": "What was missing or wrong (optional)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "text",
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }


def handoff_message(group: str, reason: str, resolve_value: str) -> dict[str, Any]:
    """The one message that pings the team (`<!subteam^…>`, only when a group is set up)."""
    ping = f"<!subteam^{group}> " if group else ""
    text = f"{ping}🆘 A person is needed in this thread: {neutralize(reason)}"
    button = {
        "type": "button",
        "action_id": RESOLVED_ACTION,
        "value": resolve_value,
        "style": "primary",
        "text": {"type": "plain_text", "text": "✅ Resolved", "emoji": True},
    }
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": [button]},
        ],
    }


def stop_control(reply_id: str) -> dict[str, Any]:
    """The Stop button posted beside a native stream (a stream cannot hold buttons)."""
    return {"text": "⏹ Stop", "blocks": [{**stop_block(reply_id), "block_id": STOP_CONTROL}]}


def stop_block(reply_id: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": STOP_ACTION,
                "value": reply_id,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Stop", "emoji": True},
            }
        ],
    }


class SlackCallError(Exception):
    """Slack refused a request for good (an `error` code that retrying will not fix)."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method} failed: {error}")
        self.method = method
        self.error = error


class StreamLost(Exception):
    """The native stream behind a message ended under us (expired or failed)."""


def error_of(exc: SlackApiError) -> tuple[int | None, str, Any]:
    resp = exc.response
    status = getattr(resp, "status_code", None) or getattr(resp, "status", None)
    error = ""
    data = getattr(resp, "data", None)
    if isinstance(data, dict):
        error = str(data.get("error", ""))
    headers = getattr(resp, "headers", None) or {}
    return status, error, headers


def _retry_after(headers: Any) -> float:
    for key in ("Retry-After", "retry-after"):
        try:
            value = headers.get(key)
        except AttributeError:
            value = None
        if value is not None:
            try:
                return float(value[0] if isinstance(value, list) else value)
            except (TypeError, ValueError):
                break
    return 1.0


async def call(method: str, request: Awaitable[Any]) -> Any:
    """Run one Web API request, translating failures into the core's error types."""
    try:
        return await request
    except SlackApiError as exc:
        status, error, headers = error_of(exc)
        if status == 429 or error == "ratelimited":
            raise RateLimited(_retry_after(headers), f"{method} rate limited") from None
        if (status or 0) >= 500 or error in TRANSIENT_ERRORS:
            raise TransientError(f"{method}: {error or status}") from None
        if error in GONE_ERRORS:
            raise MessageGone(f"{method}: {error}") from None
        if error == STREAM_LOST:
            raise StreamLost(method) from None
        raise SlackCallError(method, error or f"HTTP {status}") from None
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise TransientError(f"{method}: {type(exc).__name__}") from None


def quiet_token_notice(record: logging.LogRecord) -> bool:
    """bolt warns that SLACK_BOT_TOKEN is unused when given a client: we built that client."""
    message = record.getMessage()
    return "`token` will be unused" not in message and "`token` (or SLACK_BOT_TOKEN" not in message


def api_base_url(api_base: str) -> str | None:
    """`[slack] api_base` as slack_sdk wants it (ending in a slash), or None for slack.com."""
    base = api_base.strip()
    if not base:
        return None
    return base if base.endswith("/") else base + "/"
