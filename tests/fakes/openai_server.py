"""A hermetic, scriptable fake of the OpenAI HTTP API for tests.

Tests point the *real* `openai.AsyncOpenAI` client (and through it the real Agents SDK models,
`OpenAIResponsesModel` and `OpenAIChatCompletionsModel`) at this aiohttp server on 127.0.0.1,
so the whole path - HTTP, SSE framing, the client's event parsing, the SDK's stream handling -
is exercised exactly as in production, without a network or an API key.

Endpoints:

* `POST /v1/responses` - the Responses API. Streams Server-Sent Events (`event: <type>` +
  `data: <json>` with `sequence_number`) in the same order as the real API.
* `POST /v1/chat/completions` - Chat Completions. Streams `data: <chat.completion.chunk>`
  lines and finishes with `data: [DONE]`.

Both also answer non-streamed requests with a complete response object. Every request is
recorded in `FakeOpenAI.requests`; a missing `Authorization: Bearer ...` header gets an
OpenAI-style 401.

Replies are scripted in a FIFO queue shared by both endpoints (each request pops one, whichever
API it uses); when the queue is empty the fake answers `default_text`::

    fake.tool_call("get_weather", {"city": "Oslo"})
    fake.reply("It is sunny in Oslo.")

How failures surface in the real clients (checked by tests/test_fake_openai.py):

* `error_mid_stream` - Responses: after the deltas a `response.failed` event (or an `error`
  event with `responses_event="error"`). The raw client just yields that event; the Agents SDK
  raises `agents.exceptions.ModelBehaviorError` whose message contains the error message.
  Chat Completions: after the chunks a `data: {"error": {...}}` payload, as the real API sends
  mid-stream; the openai client raises `openai.APIError` with exactly that message (the SDK lets
  it through unchanged).
* `drop_mid_stream` - both APIs: the TCP connection is closed without finishing the chunked
  body; the openai client raises `openai.APIConnectionError`.
* `http_error` - the status and OpenAI-style JSON body before any streaming starts; the client
  raises the matching `openai.APIStatusError` subclass (`RateLimitError` for 429, ...). Note the
  client retries 408/409/429/5xx `max_retries` times by default, honouring Retry-After: use
  `max_retries=0` (the default of `FakeOpenAI.client()`) or script the error several times.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = [
    "CHAT_PATH",
    "DEFAULT_TEXT",
    "RESPONSES_PATH",
    "EmptyReply",
    "FakeOpenAI",
    "HttpErrorReply",
    "MidStreamDrop",
    "MidStreamError",
    "RecordedRequest",
    "Script",
    "TextReply",
    "ToolCallReply",
    "images_in",
    "split_text",
    "user_texts",
]

DEFAULT_TEXT = "fake reply"
RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"


def split_text(text: str, size: int = 3) -> list[str]:
    """Cut `text` into `size`-character chunks, the rough granularity of real token deltas."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _as_chunks(chunks: str | Iterable[str]) -> list[str]:
    return split_text(chunks) if isinstance(chunks, str) else list(chunks)


class RecordedRequest(NamedTuple):
    """One request as the fake received it; unpacks as `(path, body, headers)`."""

    path: str
    body: Any  # parsed JSON body; None if there was none or it was not valid JSON
    headers: CIMultiDictProxy[str]  # case-insensitive: headers["authorization"] works


# --- Scripted replies -----------------------------------------------------------------------


@dataclass(kw_only=True)
class Script:
    """One scripted reply, consumed by exactly one request."""


@dataclass(kw_only=True)
class _Paced(Script):
    """A reply streamed in chunks, with optional pacing so tests can act mid-stream.

    `delay` seconds are slept between chunks (not before the first). With `hold_after=n` the
    stream stops after `n` chunks (0: before the first) until `release()` is called;
    `wait_held()` returns once the server got there. Holding makes mid-stream tests (cancel,
    partial output) deterministic without relying on timing. A client disconnect while held
    or sleeping ends the stream at once and quietly.
    """

    chunks: list[str]
    delay: float = 0.0
    hold_after: int | None = None
    _held: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def release(self) -> None:
        """Let a held stream continue (harmless if it is not held, or never will be)."""
        self._released.set()

    async def wait_held(self, timeout: float = 60.0) -> None:
        """Wait until the server has sent `hold_after` chunks and is holding the rest."""
        try:
            await asyncio.wait_for(self._held.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the scripted reply was not held within {timeout:g} s: was the model ever asked?"
            ) from None

    async def _before_chunk(self, sent: int) -> None:
        if self.hold_after is not None and sent == self.hold_after:
            self._held.set()
            await self._released.wait()
        if self.delay > 0 and sent > 0:
            await asyncio.sleep(self.delay)


@dataclass(kw_only=True)
class TextReply(_Paced):
    """Stream `chunks` as assistant text, then complete normally.

    `reasoning` pieces are streamed first, as a reasoning model's thoughts: Responses
    `response.reasoning_summary_text.delta` events of a reasoning item (a new summary part for
    each piece that starts with a blank line), Chat Completions `reasoning_field` deltas (as
    vLLM and DeepSeek send them). Inline `<think>` text is just text: put it in `chunks`.
    """

    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"  # chat: or "reasoning" (OpenRouter, newer vLLM)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@dataclass(kw_only=True)
class ToolCallReply(_Paced):
    """Call function tool `name`; `chunks` are the pieces of the JSON `arguments`."""

    name: str
    call_id: str

    @property
    def arguments(self) -> str:
        return "".join(self.chunks)


@dataclass(kw_only=True)
class MidStreamError(_Paced):
    """Stream `chunks` of text, then fail with `message` (see the module docstring)."""

    message: str
    code: str = "server_error"
    responses_event: Literal["response.failed", "error"] = "response.failed"


@dataclass(kw_only=True)
class MidStreamDrop(_Paced):
    """Stream `chunks` of text, then close the TCP connection without finishing."""


@dataclass(kw_only=True)
class EmptyReply(Script):
    """Complete normally with no output at all (no message item, no content)."""


@dataclass(kw_only=True)
class HttpErrorReply(Script):
    """Answer with an HTTP error status and JSON body instead of a stream."""

    status: int
    body: Any
    retry_after: float | None = None


_S = TypeVar("_S", bound=Script)


# --- The server -----------------------------------------------------------------------------


class FakeOpenAI:
    """The fake server: script replies, start it, point a client at `base_url`, inspect requests.

    Use `async with FakeOpenAI() as fake:` (or the `fake_openai` pytest fixture) to run it on a
    free port of 127.0.0.1.
    """

    def __init__(self, *, default_text: str = DEFAULT_TEXT) -> None:
        self.default_text = default_text
        """Answered (in ~3-character chunks) when no scripted reply is queued."""
        self.requests: list[RecordedRequest] = []
        """Every request received, in order, including rejected ones."""
        self.reject_images = False
        """Answer 400 to any request carrying a picture, as a text-only model does."""
        self.disconnects = 0
        """Requests the client abandoned before the fake finished them (e.g. a cancelled run)."""
        self._queue: deque[Script] = deque()
        self._ids = itertools.count(1)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- scripting --------------------------------------------------------------------------

    def reply(
        self,
        chunks: str | Sequence[str],
        delay: float = 0.0,
        *,
        hold_after: int | None = None,
        reasoning: Sequence[str] = (),
    ) -> TextReply:
        """Queue a text answer. A str is split into ~3-character deltas; a list is used as is.

        `reply("")` streams a message with no deltas; use `empty()` for no message at all.
        `reasoning` is streamed before the text (see `TextReply`); `hold_after=0` then holds
        the stream after the reasoning, before the first text chunk.
        """
        script = TextReply(chunks=_as_chunks(chunks), delay=delay, hold_after=hold_after)
        script.reasoning = list(reasoning)
        return self._push(script)

    def tool_call(
        self,
        name: str,
        arguments: str | Mapping[str, Any] = "{}",
        *,
        call_id: str | None = None,
        delay: float = 0.0,
        hold_after: int | None = None,
    ) -> ToolCallReply:
        """Queue a call of function tool `name` with `arguments` (JSON text, or a dict to encode).

        The SDK runs the tool and sends its output in the next request, which gets the next
        scripted reply - so queue the follow-up answer too.
        """
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return self._push(
            ToolCallReply(
                name=name,
                call_id=call_id or self._new_id("call"),
                chunks=split_text(args, 8),
                delay=delay,
                hold_after=hold_after,
            )
        )

    def error_mid_stream(
        self,
        chunks_before: str | Sequence[str] = (),
        message: str = "The server had an error while processing your request.",
        *,
        code: str = "server_error",
        responses_event: Literal["response.failed", "error"] = "response.failed",
        delay: float = 0.0,
        hold_after: int | None = None,
    ) -> MidStreamError:
        """Queue a stream that sends `chunks_before` as text, then reports an error.

        Responses: a `response.failed` event (status "failed", `error.code`/`error.message`), or
        a bare `error` event when `responses_event="error"`. Chat Completions: a
        `{"error": {...}}` data line without `[DONE]`. A non-streamed request gets a 500.
        """
        return self._push(
            MidStreamError(
                chunks=_as_chunks(chunks_before),
                message=message,
                code=code,
                responses_event=responses_event,
                delay=delay,
                hold_after=hold_after,
            )
        )

    def drop_mid_stream(
        self,
        chunks_before: str | Sequence[str] = (),
        *,
        delay: float = 0.0,
        hold_after: int | None = None,
    ) -> MidStreamDrop:
        """Queue a stream that sends `chunks_before` as text, then closes the connection."""
        return self._push(MidStreamDrop(chunks=_as_chunks(chunks_before), delay=delay, hold_after=hold_after))

    def empty(self) -> EmptyReply:
        """Queue a reply that completes with no output items (chat: no content, "stop")."""
        return self._push(EmptyReply())

    def http_error(self, status: int, body: Any = None, retry_after: float | None = None) -> HttpErrorReply:
        """Queue an HTTP error answer. `body` may be a full JSON body, or a str used as the
        error message of an OpenAI-style `{"error": {...}}` body (the default picks a message
        and type matching `status`). `retry_after` sets the Retry-After header (seconds).
        """
        if body is None or isinstance(body, str):
            body = _error_body(status, body)
        return self._push(HttpErrorReply(status=status, body=body, retry_after=retry_after))

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        return len(self._queue)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for one path, e.g. "/v1/responses"."""
        return [r for r in self.requests if r.path == path]

    # --- running ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What to pass as `base_url` to `openai.AsyncOpenAI` (ends in /v1)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not running; call start() first")
        return f"http://127.0.0.1:{self._port}/v1"

    def client(self, **kwargs: Any) -> AsyncOpenAI:
        """A real `AsyncOpenAI` for this fake: dummy key, and `max_retries=0` unless given, so
        scripted errors reach the test at once instead of being retried with backoff."""
        from openai import AsyncOpenAI

        options: dict[str, Any] = {"base_url": self.base_url, "api_key": "test", "max_retries": 0}
        return AsyncOpenAI(**(options | kwargs))

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port`; port 0 picks a free one (see `base_url`)."""
        # handler_cancellation: a client that goes away cancels its handler at once, instead
        # of the handler noticing only at its next write (or never, while held).
        runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving. Requests still in flight (a held or slow stream) are cancelled first,
        so stopping never waits for them; their clients see the connection close."""
        self._stopping = True
        for task in list(self._in_flight):
            task.cancel()
        await self.wait_idle()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no request is being handled, e.g. after cancelling a run, so that
        `disconnects` and `requests` are final."""
        try:
            async with asyncio.timeout(timeout):
                while self._in_flight:
                    await asyncio.wait(set(self._in_flight))
        except TimeoutError:
            raise AssertionError(
                f"{len(self._in_flight)} request(s) still in flight after "
                f"{timeout:g} s (a held reply never released?)"
            ) from None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- request handling -------------------------------------------------------------------

    def _push(self, script: _S) -> _S:
        self._queue.append(script)
        return script

    def _pop(self) -> Script:
        if self._queue:
            return self._queue.popleft()
        return TextReply(chunks=split_text(self.default_text))

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):04d}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            return await self._dispatch(request)
        except asyncio.CancelledError:
            if not self._stopping:
                self.disconnects += 1  # aiohttp cancels the handler when the client goes away
            raise
        except ConnectionResetError:
            # The client left between aiohttp noticing and our next write: same thing, and
            # the response is already half sent, so there is nothing left to answer.
            self.disconnects += 1
            return web.Response(status=499)
        finally:
            self._in_flight.discard(task)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(RecordedRequest(request.path, body, request.headers))

        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return _json_error(401, _error_body(401))
        if request.path not in (RESPONSES_PATH, CHAT_PATH):
            return _json_error(404, _error_body(404, f"Unknown request URL: {request.path}"))
        if request.method != "POST":
            return _json_error(405, _error_body(405, f"Use POST for {request.path}"))
        if not isinstance(body, dict):
            return _json_error(400, _error_body(400, "The request body is not a JSON object."))

        if self.reject_images and images_in(body):  # a text-only model, as OpenAI words it
            return _json_error(400, _error_body(400, IMAGES_REFUSED, code="invalid_image"))
        script = self._pop()
        if isinstance(script, HttpErrorReply):
            return _json_error(script.status, script.body, script.retry_after)
        if not body.get("stream"):
            return self._complete(request.path, body, script)
        if request.path == RESPONSES_PATH:
            return await _ResponsesStream(self, request, body).run(script)
        return await _ChatStream(self, request, body).run(script)

    def _complete(self, path: str, body: dict[str, Any], script: Script) -> web.Response:
        """Non-streamed answer: the object a stream of the same script would end with."""
        if isinstance(script, MidStreamError):
            return _json_error(500, _error_body(500, script.message))
        if isinstance(script, MidStreamDrop):
            return _json_error(502, _error_body(502, "Connection dropped (fake)."))
        if path == RESPONSES_PATH:
            item = _responses_item(self, script, status="completed")
            response = _response_object(
                body,
                self._new_id("resp"),
                status="completed",
                output=[item] if item else [],
                usage=_responses_usage(body, script),
            )
            return web.json_response(response)
        return web.json_response(_chat_completion(self, body, script))


# --- Responses API --------------------------------------------------------------------------


class _ResponsesStream:
    """One streamed /v1/responses answer, event by event as the real API sends them."""

    def __init__(self, fake: FakeOpenAI, request: web.Request, body: dict[str, Any]) -> None:
        self.fake = fake
        self.request = request
        self.body = body
        self.id = fake._new_id("resp")
        self.created_at = int(time.time())
        self.seq = 0
        self.resp = web.StreamResponse(headers=_sse_headers(self.id))

    async def send(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        await self.resp.write(f"event: {type_}\ndata: {json.dumps(payload)}\n\n".encode())

    def response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return _response_object(
            self.body, self.id, status=status, output=output, created_at=self.created_at, **extra
        )

    async def run(self, script: Script) -> web.StreamResponse:
        await self.resp.prepare(self.request)
        await self.send("response.created", response=self.response("in_progress", []))
        await self.send("response.in_progress", response=self.response("in_progress", []))

        output: list[dict[str, Any]] = []
        if isinstance(script, ToolCallReply):
            output.append(await self.function_call(script))
        elif isinstance(script, TextReply):
            if script.reasoning:
                output.append(await self.reasoning(script.reasoning))
            output.append(await self.message(script, output_index=len(output)))
        elif isinstance(script, MidStreamDrop):
            await self.message(script, finish=False)
            _drop(self.request)
            return self.resp
        elif isinstance(script, MidStreamError):
            await self.message(script, finish=False)
            if script.responses_event == "error":
                await self.send("error", code=script.code, message=script.message, param=None)
            else:
                error = {"code": script.code, "message": script.message}
                failed = self.response("failed", [], error=error)
                await self.send("response.failed", response=failed)
            await self.resp.write_eof()
            return self.resp

        usage = _responses_usage(self.body, script)
        completed = self.response("completed", output, usage=usage, completed_at=int(time.time()))
        await self.send("response.completed", response=completed)
        await self.resp.write_eof()
        return self.resp

    async def reasoning(self, pieces: list[str]) -> dict[str, Any]:
        """A reasoning item whose summary streams `pieces` (a blank line starts a new part)."""
        item_id = self.fake._new_id("rs")
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
        await self.send("response.output_item.added", output_index=0, item=item)
        parts: list[str] = []
        for piece in pieces:
            if not parts or piece.startswith("\n\n"):
                if parts:
                    await self.summary_done(item_id, len(parts) - 1, parts[-1])
                parts.append("")
                where = {"item_id": item_id, "output_index": 0, "summary_index": len(parts) - 1}
                await self.send("response.reasoning_summary_part.added", **where, part=_summary(""))
                piece = piece.removeprefix("\n\n")
            parts[-1] += piece
            where = {"item_id": item_id, "output_index": 0, "summary_index": len(parts) - 1}
            await self.send("response.reasoning_summary_text.delta", **where, delta=piece)
        await self.summary_done(item_id, len(parts) - 1, parts[-1])
        item = item | {"summary": [_summary(p) for p in parts]}
        await self.send("response.output_item.done", output_index=0, item=item)
        return item

    async def summary_done(self, item_id: str, index: int, text: str) -> None:
        where = {"item_id": item_id, "output_index": 0, "summary_index": index}
        await self.send("response.reasoning_summary_text.done", **where, text=text)
        await self.send("response.reasoning_summary_part.done", **where, part=_summary(text))

    async def message(self, script: _Paced, *, finish: bool = True, output_index: int = 0) -> dict[str, Any]:
        item_id = self.fake._new_id("msg")
        item = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        where = {"item_id": item_id, "output_index": output_index, "content_index": 0}
        await self.send("response.output_item.added", output_index=output_index, item=item)
        await self.send("response.content_part.added", **where, part=_output_text(""))
        for sent, chunk in enumerate(script.chunks):
            await script._before_chunk(sent)
            await self.send("response.output_text.delta", **where, delta=chunk, logprobs=[])
        if not finish:
            return item
        text = "".join(script.chunks)
        await self.send("response.output_text.done", **where, text=text, logprobs=[])
        await self.send("response.content_part.done", **where, part=_output_text(text))
        item = item | {"status": "completed", "content": [_output_text(text)]}
        await self.send("response.output_item.done", output_index=output_index, item=item)
        return item

    async def function_call(self, script: ToolCallReply) -> dict[str, Any]:
        item_id = self.fake._new_id("fc")
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": script.call_id,
            "name": script.name,
        }
        await self.send("response.output_item.added", output_index=0, item=item)
        for sent, chunk in enumerate(script.chunks):
            await script._before_chunk(sent)
            await self.send(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=0,
                delta=chunk,
            )
        await self.send(
            "response.function_call_arguments.done",
            item_id=item_id,
            output_index=0,
            name=script.name,
            arguments=script.arguments,
        )
        item = item | {"status": "completed", "arguments": script.arguments}
        await self.send("response.output_item.done", output_index=0, item=item)
        return item


def _summary(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _responses_item(fake: FakeOpenAI, script: Script, status: str) -> dict[str, Any] | None:
    """The finished output item for a non-streamed Responses answer (None for `empty()`)."""
    if isinstance(script, ToolCallReply):
        return {
            "id": fake._new_id("fc"),
            "type": "function_call",
            "status": status,
            "arguments": script.arguments,
            "call_id": script.call_id,
            "name": script.name,
        }
    if isinstance(script, TextReply):
        return {
            "id": fake._new_id("msg"),
            "type": "message",
            "status": status,
            "content": [_output_text(script.text)],
            "role": "assistant",
        }
    return None


def _response_object(
    body: Mapping[str, Any],
    response_id: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    created_at: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `response` object echoing the request's settings, as the real API does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", "gpt-fake"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    } | extra


def _token_counts(body: Mapping[str, Any], script: Script) -> tuple[int, int]:
    """Deterministic stand-in token counts: ~4 characters of input per token, a chunk each."""
    prompt = json.dumps([body.get("instructions"), body.get("input"), body.get("messages")])
    output = len(script.chunks) if isinstance(script, _Paced) else 0
    output += len(script.reasoning) if isinstance(script, TextReply) else 0
    return len(prompt) // 4 + 1, output


def _responses_usage(body: Mapping[str, Any], script: Script) -> dict[str, Any]:
    prompt, completion = _token_counts(body, script)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


# --- Chat Completions -----------------------------------------------------------------------


class _ChatStream:
    """One streamed /v1/chat/completions answer, chunk by chunk."""

    def __init__(self, fake: FakeOpenAI, request: web.Request, body: dict[str, Any]) -> None:
        self.request = request
        self.body = body
        self.id = fake._new_id("chatcmpl")
        self.created = int(time.time())
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.resp = web.StreamResponse(headers=_sse_headers(self.id))

    async def send_data(self, payload: Mapping[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await self.resp.write(f"data: {data}\n\n".encode())

    async def send_chunk(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        await self.send_data(self.chunk([choice]))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.get("model", "gpt-fake"),
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = None  # the real API sends null usage on every chunk but the last
        return payload | extra

    async def run(self, script: Script) -> web.StreamResponse:
        await self.resp.prepare(self.request)
        finish_reason = "stop"
        if isinstance(script, ToolCallReply):
            finish_reason = "tool_calls"
            call = {
                "index": 0,
                "id": script.call_id,
                "type": "function",
                "function": {"name": script.name, "arguments": ""},
            }
            await self.send_chunk(
                {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
            )
            for sent, piece in enumerate(script.chunks):
                await script._before_chunk(sent)
                argument_delta = {"index": 0, "function": {"arguments": piece}}
                await self.send_chunk({"tool_calls": [argument_delta]})
        else:
            await self.send_chunk({"role": "assistant", "content": "", "refusal": None})
            for piece in script.reasoning if isinstance(script, TextReply) else ():
                await self.send_chunk({script.reasoning_field: piece})
            if isinstance(script, _Paced):
                for sent, piece in enumerate(script.chunks):
                    await script._before_chunk(sent)
                    await self.send_chunk({"content": piece})
            if isinstance(script, MidStreamDrop):
                _drop(self.request)
                return self.resp
            if isinstance(script, MidStreamError):
                await self.send_data(_error_body(500, script.message, code=script.code))
                await self.resp.write_eof()
                return self.resp

        await self.send_chunk({}, finish_reason=finish_reason)
        if self.include_usage:
            await self.send_data(self.chunk([], usage=_chat_usage(self.body, script)))
        await self.send_data("[DONE]")
        await self.resp.write_eof()
        return self.resp


def _chat_usage(body: Mapping[str, Any], script: Script) -> dict[str, Any]:
    prompt, completion = _token_counts(body, script)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completion(fake: FakeOpenAI, body: Mapping[str, Any], script: Script) -> dict[str, Any]:
    """A non-streamed `chat.completion` object for `script`."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
    }
    finish_reason = "stop"
    if isinstance(script, ToolCallReply):
        finish_reason = "tool_calls"
        message["tool_calls"] = [
            {
                "id": script.call_id,
                "type": "function",
                "function": {"name": script.name, "arguments": script.arguments},
            }
        ]
    elif isinstance(script, TextReply):
        message["content"] = script.text
    return {
        "id": fake._new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-fake"),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": _chat_usage(body, script),
    }


# --- What the model was given (both APIs) ---------------------------------------------------

IMAGES_REFUSED = "Invalid content type. image_url is only supported by certain models."


def _messages(body: Mapping[str, Any]) -> list[Any]:
    """The conversation items of a request: Responses `input` or Chat Completions `messages`."""
    items = body.get("input", body.get("messages")) or []
    return [{"role": "user", "content": items}] if isinstance(items, str) else list(items)


def images_in(body: Any) -> list[str]:
    """Every picture URL in a request (Responses `input_image`, Chat Completions `image_url`)."""
    found: list[str] = []
    if not isinstance(body, Mapping):
        return found
    for item in _messages(body):
        content = item.get("content") if isinstance(item, Mapping) else None
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "input_image":
                found.append(part.get("image_url") or "")
            elif part.get("type") == "image_url":
                found.append((part.get("image_url") or {}).get("url", ""))
    return found


def user_texts(body: Any) -> list[str]:
    """The text of each user message in a request, in order (both APIs, parts joined)."""
    texts: list[str] = []
    if not isinstance(body, Mapping):
        return texts
    for item in _messages(body):
        if not isinstance(item, Mapping) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append(
                "\n".join(p.get("text", "") for p in content if p.get("type") in ("input_text", "text"))
            )
    return texts


# --- Shared helpers -------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, default message) as the real API words them
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "unknown_url", "Not found."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    503: (
        "server_error",
        "service_unavailable",
        "The server is overloaded. Please try again later.",
    ),
}


def _error_body(status: int, message: str | None = None, *, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`."""
    fallback_type = "server_error" if status >= 500 else "invalid_request_error"
    type_, default_code, default_message = _ERRORS.get(status, (fallback_type, None, f"HTTP {status}"))
    return {
        "error": {
            "message": message or default_message,
            "type": type_,
            "param": None,
            "code": code or default_code,
        }
    }


def _json_error(status: int, body: Any, retry_after: float | None = None) -> web.Response:
    headers = {"x-request-id": f"req_fake_{status}"}
    if retry_after is not None:
        # Whole seconds when possible: that is what the real API sends.
        seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
        headers["Retry-After"] = str(seconds)
    return web.json_response(body, status=status, headers=headers)


def _sse_headers(request_id: str) -> dict[str, str]:
    return {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "x-request-id": f"req_{request_id}",
    }


def _drop(request: web.Request) -> None:
    """Close the connection mid-body; the client sees an incomplete chunked response."""
    if request.transport is not None:
        request.transport.close()
