"""Prometheus metrics, recorded by the relay (every reply of every platform passes through it)
and, for feedback and handoffs, by the host.

All series carry a `platform` label (`Target.platform`: the adapter's name). They live in
prometheus-client's default registry, next to its process metrics (CPU, memory, open files);
`core.ops` serves them at /metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double what a scrape has to read

# From "instant" to "the model is very slow": placeholders should land in the first buckets,
# first text within a few seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)

REPLIES_STARTED = Counter("streambot_replies_started", "Replies started.", ["platform"])
REPLIES_FINISHED = Counter(
    "streambot_replies_finished",
    "Replies finished, by how they ended: done, stopped, failed "
    "(model error) or empty (the model said nothing).",
    ["platform", "status"],
)
REPLIES_ACTIVE = Gauge("streambot_replies_active", "Replies streaming now.", ["platform"])
TIME_TO_PLACEHOLDER = Histogram(
    "streambot_time_to_placeholder_seconds",
    "From a reply's start until its first message (the placeholder) was shown.",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TEXT = Histogram(
    "streambot_time_to_first_text_seconds",
    "From a reply's start until the model's first text was shown.",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
MESSAGES_SENT = Counter(
    "streambot_messages_sent",
    "Successful platform requests: op is post (a new message) or edit.",
    ["platform", "op"],
)
RATE_LIMITED = Counter("streambot_rate_limited", "429 answers received from the platform.", ["platform"])
FAILED_REQUESTS = Counter(
    "streambot_failed_requests",
    "Platform posts and edits that failed (other than 429), retried or given up on.",
    ["platform", "op"],
)
MODEL_ERRORS = Counter(
    "streambot_model_errors",
    "Model runs that failed (the reply keeps its partial text and says what failed).",
    ["platform"],
)
EVENT_LOOP_LAG = Gauge(
    "streambot_event_loop_lag_seconds",
    "How late the event loop last woke a 0.5 s sleep; liveness fails when it stays high.",
)
FEEDBACK = Counter(
    "streambot_feedback",
    "👍/👎 clicks on answers (every click: people may change their mind; the ledger keeps the last).",
    ["platform", "profile", "vote"],
)
HANDOFFS = Counter(
    "streambot_handoffs",
    "Conversations handed to a person, by who asked: the model or a person (each pinged once).",
    ["platform", "profile", "by"],
)
TOKENS = Counter(
    "streambot_tokens",
    "Model tokens the replies used, as the model reported them: kind is input or output.",
    ["platform", "kind"],
)
