"""Log set-up: readable text or one JSON object per line, with secrets scrubbed either way.

JSON lines carry `reply_id`, `conversation`, `platform`, `status` and the reply's latencies when
a log call passes them in `extra=`, or when the host tagged the running reply with `tag_reply`
(so the relay's and the model source's lines about a reply carry its ids too). Message content (prompts, model
text) is only ever logged at DEBUG.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from core.config import env

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = (
    "reply_id",
    "conversation",
    "platform",
    "profile",
    "status",
    "placeholder_after",
    "first_text_after",
    "input_tokens",
    "output_tokens",
)
# Values of these variables never reach a log line: the model key, what adapters register,
# and, as a safety net, any variable whose name says it holds a secret.
SECRET_VARS = {"OPENAI_API_KEY", "REDIS_URL"}
SECRET_NAME = re.compile(r"(TOKEN|SECRET|API_KEY|PASSWORD)$")
_reply: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "streambot_reply", default=None
)


def register_secrets(*names: str) -> None:
    """Environment variables whose values are scrubbed from every log line from now on."""
    SECRET_VARS.update(names)


def secret_values() -> list[str]:
    names = SECRET_VARS | {n for n in os.environ if SECRET_NAME.search(n)}
    return sorted({v for n in names if len(v := env(n)) >= 8}, key=len, reverse=True)


def tag_reply(**fields: Any) -> None:
    """Attach ids to every log line of the current task and the tasks it starts (one reply)."""
    _reply.set({**(_reply.get() or {}), **fields})


def add_reply_fields(record: logging.LogRecord) -> bool:
    """Handler filter: copy the tags of the reply being logged about onto the record. Filters
    run in the task that logs, so the tags are that task's; `extra=` fields win."""
    for name, value in (_reply.get() or {}).items():
        if not hasattr(record, name):
            setattr(record, name, value)
    return True


class TextFormatter(logging.Formatter):
    """The default format. A secret's value never reaches the output, even inside a traceback
    or a third-party library's debug line: it is replaced by ***."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = secret_values()

    def format(self, record: logging.LogRecord) -> str:
        text = self.render(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)


class JsonFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, message, the reply's ids, exception."""

    def render(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup(level: str = "WARNING", fmt: str = "text") -> None:
    """Log to stderr in `fmt` ("text" or "json") from `level` up, replacing earlier set-up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(add_reply_fields)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def fatal(message: str) -> None:
    """Say why the process stops, as one line on stderr: a JSON object when the logs are JSON
    (so a log pipeline reads it), else the plain message (like `check-config`'s lines)."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("streambot").critical(message)
    else:
        print(message, file=sys.stderr)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level_name(value: str) -> str:
    """`--log-level`: a level name in any case; ValueError for anything else."""
    if value.upper() not in LEVELS:
        raise ValueError(f"use {', '.join(LEVELS)}, not {value!r}")
    return value.upper()
