"""The fake OpenAI server, driven by the real `openai` client and the real Agents SDK.

If these pass, tests elsewhere can trust that what the fake streams is what production code
would see from the real API, including how failures surface.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, get_args

import aiohttp
import openai
import pytest
from agents import Agent, ModelBehaviorError, RunConfig, Runner, function_tool
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.models.openai_responses import OpenAIResponsesModel
from agents.result import RunResultStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from fakes.openai_server import CHAT_PATH, RESPONSES_PATH, FakeOpenAI, split_text

Api = Literal["responses", "chat_completions"]

TEXT = "Hello there! This answer arrives in many small pieces."
RUN_CONFIG = RunConfig(tracing_disabled=True)
# Generous guard so a broken cancel path fails the test instead of hanging it; never a
# timing assertion.
GUARD = 10.0


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with fake_openai.client() as client:
        yield client


@pytest.fixture(params=["responses", "chat_completions"])
def api(request: pytest.FixtureRequest) -> Api:
    return request.param


def make_agent(api: Api, client: openai.AsyncOpenAI, **kwargs: Any) -> Agent[Any]:
    model: OpenAIResponsesModel | OpenAIChatCompletionsModel
    if api == "responses":
        model = OpenAIResponsesModel(model="gpt-test", openai_client=client)
    else:
        model = OpenAIChatCompletionsModel(model="gpt-test", openai_client=client)
    return Agent(name="tester", instructions="Be brief.", model=model, **kwargs)


def path_of(api: Api) -> str:
    return RESPONSES_PATH if api == "responses" else CHAT_PATH


async def collect_deltas(result: RunResultStreaming, into: list[str]) -> None:
    """Append every streamed text delta to `into` (a list the caller keeps, so the deltas
    received before an exception are still there to assert on)."""
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            into.append(event.data.delta)


async def run_streamed(agent: Agent[Any], input: Any = "hi") -> tuple[list[str], RunResultStreaming]:
    result = Runner.run_streamed(agent, input, run_config=RUN_CONFIG)
    deltas: list[str] = []
    await collect_deltas(result, deltas)
    return deltas, result


def error_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def server_noise(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Warnings from the server side (the SDK legitimately logs the errors it raises)."""
    return [r for r in error_logs(caplog) if r.name.startswith(("aiohttp", "asyncio"))]


# Every Responses stream event model of the installed SDK, by its `type`.
RESPONSE_EVENT_MODELS: dict[str, type[BaseModel]] = {
    get_args(model.model_fields["type"].annotation)[0]: model
    for model in get_args(get_args(ResponseStreamEvent)[0])
}


async def raw_sse(fake: FakeOpenAI, path: str, body: dict[str, Any]) -> list[tuple[str | None, str]]:
    """POST without the openai client and split the body into (event, data) pairs, so the
    framing itself is checked rather than the client's tolerance of it."""
    url = fake.base_url + path.removeprefix("/v1")
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer test"}) as session:
        async with session.post(url, json=body) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            text = await resp.text()
    assert text.endswith("\n\n")
    pairs = []
    for block in text.removesuffix("\n\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "data"}
        pairs.append((fields.get("event"), fields["data"]))
    return pairs


SCRIPTS: dict[str, Callable[[FakeOpenAI], object]] = {
    "text": lambda fake: fake.reply(TEXT),
    "tool_call": lambda fake: fake.tool_call("lookup", {"query": "a fairly long argument"}),
    "empty": lambda fake: fake.empty(),
    "failed": lambda fake: fake.error_mid_stream("Partial", "boom"),
    "error_event": lambda fake: fake.error_mid_stream("Partial", "boom", responses_event="error"),
}


# --- the raw openai client ------------------------------------------------------------------


async def test_raw_responses_stream_matches_the_real_event_sequence(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.reply(TEXT)

    stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
    events = [event async for event in stream]

    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas == split_text(TEXT) and len(deltas) > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))

    done = events[types.index("response.output_text.done")]
    assert done.text == TEXT
    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.model == "gpt-test"
    assert completed.output_text == TEXT
    assert completed.output[0].id == events[2].item.id
    assert completed.usage is not None and completed.usage.output_tokens == len(deltas)


@pytest.mark.parametrize("script", SCRIPTS)
async def test_responses_events_validate_against_the_sdk_models(fake_openai: FakeOpenAI, script: str) -> None:
    SCRIPTS[script](fake_openai)
    body = {"model": "gpt-test", "input": "hi", "stream": True}

    pairs = await raw_sse(fake_openai, RESPONSES_PATH, body)

    for seq, (event, data) in enumerate(pairs):
        payload = json.loads(data)
        assert event == payload["type"] and payload["sequence_number"] == seq
        RESPONSE_EVENT_MODELS[event].model_validate(payload)  # raises on a missing/bad field
    last = json.loads(pairs[-1][1])
    if script in ("failed", "error_event"):
        assert last["type"] == ("response.failed" if script == "failed" else "error")
    else:
        assert last["type"] == "response.completed"
        Response.model_validate(last["response"])


@pytest.mark.parametrize("script", ["text", "tool_call", "empty", "failed"])
async def test_chat_chunks_validate_against_the_sdk_models(fake_openai: FakeOpenAI, script: str) -> None:
    SCRIPTS[script](fake_openai)
    body = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    pairs = await raw_sse(fake_openai, CHAT_PATH, body)

    assert all(event is None for event, _ in pairs)
    data = [d for _, d in pairs]
    if script == "failed":
        assert json.loads(data[-1])["error"]["message"] == "boom"
        data = data[:-1]
    else:
        assert data[-1] == "[DONE]"
        data = data[:-1]
        assert json.loads(data[-1])["usage"] is not None
    for chunk in data:
        ChatCompletionChunk.model_validate(json.loads(chunk))


@pytest.mark.parametrize("script", ["text", "tool_call", "empty"])
async def test_non_streamed_objects_validate_against_the_sdk_models(
    fake_openai: FakeOpenAI, script: str
) -> None:
    SCRIPTS[script](fake_openai)  # one for each API
    SCRIPTS[script](fake_openai)
    responses_body = {"model": "gpt-test", "input": "hi"}
    chat_body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer test"}) as session:
        async with session.post(f"{fake_openai.base_url}/responses", json=responses_body) as r:
            assert r.status == 200
            response = Response.model_validate(await r.json())
        async with session.post(f"{fake_openai.base_url}/chat/completions", json=chat_body) as r:
            assert r.status == 200
            completion = ChatCompletion.model_validate(await r.json())

    assert response.status == "completed"
    assert response.output_text == (completion.choices[0].message.content or "")
    assert len(response.output) == (0 if script == "empty" else 1)
    expected_finish = "tool_calls" if script == "tool_call" else "stop"
    assert completion.choices[0].finish_reason == expected_finish


async def test_raw_chat_stream_sends_chunks_finish_reason_usage_and_done(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.reply(TEXT)

    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(split_text(TEXT))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


async def test_chunk_lists_are_streamed_verbatim_and_the_default_reply_follows(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.reply(["Hel", "lo wor", "ld"])

    async def deltas() -> list[str]:
        stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
        return [e.delta async for e in stream if e.type == "response.output_text.delta"]

    assert await deltas() == ["Hel", "lo wor", "ld"]
    assert fake_openai.pending == 0
    assert "".join(await deltas()) == fake_openai.default_text == "fake reply"


async def test_non_streamed_requests_get_complete_objects(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.reply("plain answer")
    fake_openai.tool_call("lookup", {"q": "x"}, call_id="call_1")

    response = await client.responses.create(model="gpt-test", input="hi")
    completion = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )

    assert response.output_text == "plain answer"
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "lookup",
        {"q": "x"},
    )
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_requests_are_recorded_with_body_and_headers(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    await client.responses.create(model="gpt-test", input="first", stream=True)

    ((path, body, headers),) = fake_openai.requests
    assert path == RESPONSES_PATH
    assert body["input"] == "first" and body["stream"] is True
    assert headers["authorization"] == "Bearer test"


async def test_missing_auth_header_gets_an_openai_style_401(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("must not be consumed")

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake_openai.base_url}/responses", json={"model": "gpt-test", "input": "hi"}
        ) as resp:
            status, body = resp.status, await resp.json()

    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "API key" in body["error"]["message"]
    assert fake_openai.pending == 1
    assert len(fake_openai.requests) == 1


async def test_rate_limit_with_retry_after_raises_when_retries_are_off(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.http_error(429, retry_after=7)

    async with fake_openai.client(max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.responses.create(model="gpt-test", input="hi", stream=True)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert len(fake_openai.requests) == 1


async def test_the_client_retries_a_server_error_honouring_retry_after(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.http_error(503, retry_after=0.01)
    fake_openai.reply("second time lucky")

    async with fake_openai.client(max_retries=1) as client:
        response = await client.responses.create(model="gpt-test", input="hi")

    assert response.output_text == "second time lucky"
    assert len(fake_openai.requests) == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, openai.AuthenticationError), (500, openai.InternalServerError)],
)
async def test_http_errors_map_to_the_client_exception(
    fake_openai: FakeOpenAI,
    client: openai.AsyncOpenAI,
    status: int,
    error_type: type[openai.APIStatusError],
) -> None:
    fake_openai.http_error(status, "scripted failure")

    with pytest.raises(error_type, match="scripted failure"):
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )


async def test_raw_responses_error_mid_stream_is_a_failed_event(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.error_mid_stream("Part", "upstream exploded")

    stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
    events = [e async for e in stream]

    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Par", "t"]
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.message == "upstream exploded"


async def test_a_held_stream_continues_when_released(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    script = fake_openai.reply(["a", "b", "c"], hold_after=2)

    stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
    deltas: list[str] = []
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
            if len(deltas) == 2:
                await script.wait_held()
                script.release()

    assert deltas == ["a", "b", "c"]


async def test_stopping_the_fake_ends_a_held_stream(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI() as fake, fake.client() as client:
        script = fake.reply(TEXT, hold_after=1)
        stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
        events = aiter(stream)
        async with asyncio.timeout(GUARD):
            while (await anext(events)).type != "response.output_text.delta":
                pass
        await script.wait_held()
        await asyncio.wait_for(fake.stop(), GUARD)

        with pytest.raises(openai.APIConnectionError):
            async for _ in events:
                pass
    assert fake.disconnects == 0
    assert error_logs(caplog) == []


# --- the Agents SDK -------------------------------------------------------------------------


async def test_sdk_streams_text_deltas_and_final_output(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    fake_openai.reply(TEXT)

    deltas, result = await run_streamed(make_agent(api, client))

    assert "".join(deltas) == TEXT and len(deltas) > 1
    assert result.final_output == TEXT
    (request,) = fake_openai.requests
    assert request.path == path_of(api)
    assert request.body["model"] == "gpt-test" and request.body["stream"] is True


async def test_sdk_sends_earlier_turns_as_history(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    fake_openai.reply("Nice to meet you, Ada.")
    fake_openai.reply("Your name is Ada.")
    agent = make_agent(api, client)

    _, first = await run_streamed(agent, "My name is Ada.")
    follow_up = [*first.to_input_list(), {"role": "user", "content": "Who am I?"}]
    _, second = await run_streamed(agent, follow_up)

    assert second.final_output == "Your name is Ada."
    body = fake_openai.requests[1].body
    history = json.dumps(body["input"] if api == "responses" else body["messages"])
    for earlier in ("My name is Ada.", "Nice to meet you, Ada.", "Who am I?"):
        assert earlier in history
    if api == "responses":
        assert body["instructions"] == "Be brief."
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_sdk_runs_a_scripted_tool_call_then_streams_the_follow_up(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather report for a city."""
        calls.append(city)
        return f"Sunny in {city}, 21C"

    fake_openai.tool_call("get_weather", {"city": "Oslo"}, call_id="call_w1")
    fake_openai.reply("It is sunny in Oslo.")

    deltas, result = await run_streamed(make_agent(api, client, tools=[get_weather]), "weather?")

    assert calls == ["Oslo"]
    assert "".join(deltas) == "It is sunny in Oslo."
    assert result.final_output == "It is sunny in Oslo."
    first, second = (r.body for r in fake_openai.requests)
    if api == "responses":
        assert [t["name"] for t in first["tools"]] == ["get_weather"]
        outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
        assert [(o["call_id"], o["output"]) for o in outputs] == [("call_w1", "Sunny in Oslo, 21C")]
    else:
        assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
        outputs = [m for m in second["messages"] if m["role"] == "tool"]
        assert [(o["tool_call_id"], o["content"]) for o in outputs] == [("call_w1", "Sunny in Oslo, 21C")]


async def test_sdk_raises_a_meaningful_error_after_partial_output(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    fake_openai.error_mid_stream(["Partial ", "answer"], "upstream exploded")
    result = Runner.run_streamed(make_agent(api, client), "hi", run_config=RUN_CONFIG)
    deltas: list[str] = []

    # Responses: a `response.failed` event, which the SDK turns into ModelBehaviorError.
    # Chat Completions: an `{"error": ...}` data line, which the openai client raises as APIError.
    expected = ModelBehaviorError if api == "responses" else openai.APIError
    with pytest.raises(expected, match="upstream exploded"):
        await collect_deltas(result, deltas)

    assert deltas == ["Partial ", "answer"]


async def test_sdk_raises_on_a_bare_responses_error_event(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake_openai.error_mid_stream("Part", "quota gone", code="rate_limit_exceeded", responses_event="error")
    result = Runner.run_streamed(make_agent("responses", client), "hi", run_config=RUN_CONFIG)
    deltas: list[str] = []

    with pytest.raises(ModelBehaviorError, match="code=rate_limit_exceeded; message=quota gone"):
        await collect_deltas(result, deltas)

    assert "".join(deltas) == "Part"


async def test_sdk_raises_connection_error_when_the_stream_is_dropped(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.drop_mid_stream(["Half ", "way"])
    result = Runner.run_streamed(make_agent(api, client), "hi", run_config=RUN_CONFIG)
    deltas: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        await collect_deltas(result, deltas)

    assert deltas == ["Half ", "way"]
    await asyncio.wait_for(fake_openai.wait_idle(), GUARD)
    assert server_noise(caplog) == []


async def test_sdk_completes_an_empty_reply_without_text(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    fake_openai.empty()

    deltas, result = await run_streamed(make_agent(api, client))

    assert deltas == []
    assert result.final_output == ""
    assert len(fake_openai.requests) == 1


async def test_sdk_surfaces_http_errors(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, api: Api
) -> None:
    fake_openai.http_error(429, retry_after=3)

    with pytest.raises(openai.RateLimitError):
        await run_streamed(make_agent(api, client))

    assert len(fake_openai.requests) == 1  # neither the client nor the SDK retried


@pytest.mark.parametrize("pacing", ["hold", "delay"])
async def test_cancelling_a_run_mid_stream_disconnects_quietly(
    fake_openai: FakeOpenAI,
    client: openai.AsyncOpenAI,
    api: Api,
    pacing: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "hold": the server waits for release() after the first chunk. "delay": it sleeps a minute
    # between chunks, so it is asleep when the client leaves (and the test fails on GUARD,
    # rather than passing slowly, if a disconnect does not end the sleep).
    if pacing == "hold":
        script = fake_openai.reply(TEXT, hold_after=1)
    else:
        script = fake_openai.reply(TEXT, delay=60.0)
    result = Runner.run_streamed(make_agent(api, client), "hi", run_config=RUN_CONFIG)

    deltas: list[str] = []
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
            if pacing == "hold":
                await script.wait_held()
            result.cancel()

    await asyncio.wait_for(fake_openai.wait_idle(), GUARD)
    assert deltas == split_text(TEXT)[:1]
    assert fake_openai.disconnects == 1
    assert error_logs(caplog) == []
