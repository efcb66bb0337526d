"""An offline demo model, so streambot runs end to end with no API key and no network.

It is a real Agents SDK `Model`: the exact pipeline a real model uses (runner, stream events,
normalization, relay, pacing) runs unchanged. Its replies say plainly that they are a demo.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from agents import Model, ModelResponse, Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from core.tools import SEARCH_TOOL

HOW_TO_SWITCH = (
    "To use a real model, set `OPENAI_API_KEY` (or point `[model] base_url` in config.toml at "
    "any OpenAI-compatible server such as Ollama, vLLM or LM Studio) and start streambot again."
)

DEMO_NOTICE = "streambot is running on its offline demo model. " + HOW_TO_SWITCH


def demo_reply(prompt: str) -> str:
    """A plausible Markdown answer: a paragraph, a list and a code block."""
    asked = " ".join(prompt.split())[:200] or "(an empty message)"
    return (
        f"**This is the offline demo model**, not a real AI. You asked: “{asked}”.\n\n"
        "Here is what a streamed answer looks like while it grows:\n\n"
        "1. The bot posts a message at once, so you know it heard you.\n"
        "2. It edits that message as the text arrives, never faster than the platform allows.\n"
        "3. Long answers continue in a new message, with code blocks closed and reopened.\n\n"
        "```python\n"
        "async def answer(question: str) -> str:\n"
        "    reply = await model.stream(question)\n"
        "    return reply.text  # shown to you piece by piece\n"
        "```\n\n"
        f"{HOW_TO_SWITCH}"
    )


def _after_last_user(input: str | list[Any]) -> list[Any]:
    if isinstance(input, str):
        return []
    for i in range(len(input) - 1, -1, -1):
        if _field(input[i], "role") == "user":
            return list(input[i + 1 :])
    return list(input)


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def docs_reply(prompt: str, found: str) -> str:
    """An answer made of the best passage the knowledge search returned, quoted with its
    citation; or, when it found nothing, a plain "the docs do not cover this"."""
    asked = " ".join(prompt.split())[:200]
    if found.startswith("NO RELEVANT PASSAGES"):
        return (
            f"I searched the docs for “{asked}” and they don't cover it, so I won't guess. "
            "Would you like me to get a human to help?\n\n"
            "_(offline demo model: it only quotes the docs)_"
        )
    blocks = re.findall(r"^\[\d+\] ([^\n]+)\nlink: (\S+)\n(.*?)(?=\n\n\[\d+\] |\Z)", found, re.M | re.S)
    if not blocks:
        return "The search returned something I cannot read. _(offline demo model)_"
    heading, link, body = blocks[0]
    quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in body.strip()[:900].splitlines())
    more = ", ".join(f"[{h}]({u})" for h, u, _ in blocks[1:3])
    return (
        f"Here is what the docs say about that:\n\n{quoted}\n\n"
        f"Source: [{heading}]({link})"
        + (f"\nSee also: {more}" if more else "")
        + "\n\n_(offline demo model: it quotes the best passage; a real model writes the answer)_"
    )


def plan(input: str | list[Any], tools: list[Any] | None) -> tuple[str, str]:
    """What the demo model does next: ("call", query) to search the docs when the agent has
    the knowledge search and has not used it for this question yet, else ("text", answer)."""
    prompt = DemoModel._prompt(input)
    names = {getattr(t, "name", "") for t in tools or []}
    if SEARCH_TOOL not in names:
        return "text", demo_reply(prompt)
    outputs = [i for i in _after_last_user(input) if _field(i, "type") == "function_call_output"]
    if not outputs:
        return "call", prompt
    output = _field(outputs[-1], "output")
    return "text", docs_reply(prompt, output if isinstance(output, str) else json.dumps(output))


def _chunks(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class DemoModel(Model):
    """Streams `demo_reply(prompt)` at about `chars_per_second`, like a real model would."""

    def __init__(self, chars_per_second: float = 250.0) -> None:
        self.delay = 4 / chars_per_second if chars_per_second > 0 else 0.0

    @staticmethod
    def _prompt(input: str | list[Any]) -> str:
        if isinstance(input, str):
            return input
        for item in reversed(input):
            role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
            if role == "user":
                content = item.get("content") if isinstance(item, dict) else item.content
                if isinstance(content, str):
                    return content
                return " ".join(str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
        return ""

    @staticmethod
    def _call(query: str, status: str = "completed") -> ResponseFunctionToolCall:
        arguments = json.dumps({"query": query}) if status == "completed" else ""
        return ResponseFunctionToolCall(
            id="demo-call",
            call_id=f"demo-call-{uuid.uuid4().hex[:8]}",
            type="function_call",
            name=SEARCH_TOOL,
            arguments=arguments,
            status=status,
        )

    async def _stream_call(self, query: str, seq: Iterator[int]) -> AsyncIterator[Any]:
        """A call of the knowledge search, streamed as the Responses API streams one."""
        yield ResponseCreatedEvent(
            type="response.created", sequence_number=next(seq), response=self._response("", "in_progress")
        )
        call = self._call(query)
        started = call.model_copy(update={"arguments": "", "status": "in_progress"})
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added", output_index=0, sequence_number=next(seq), item=started
        )
        await asyncio.sleep(self.delay * 20)  # a moment of "thinking", so the step shows
        for chunk in _chunks(call.arguments, 16):
            yield ResponseFunctionCallArgumentsDeltaEvent(
                type="response.function_call_arguments.delta",
                item_id="demo-call",
                output_index=0,
                delta=chunk,
                sequence_number=next(seq),
            )
        yield ResponseFunctionCallArgumentsDoneEvent(
            type="response.function_call_arguments.done",
            item_id="demo-call",
            output_index=0,
            arguments=call.arguments,
            sequence_number=next(seq),
        )
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done", output_index=0, item=call, sequence_number=next(seq)
        )
        done = self._response("").model_copy(update={"output": [call]})
        yield ResponseCompletedEvent(type="response.completed", response=done, sequence_number=next(seq))

    @staticmethod
    def _response(text: str, status: str = "completed") -> Response:
        output = (
            [
                ResponseOutputMessage(
                    id="demo-msg",
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
                )
            ]
            if text
            else []
        )
        return Response(
            id="demo-response",
            created_at=0,
            model="streambot-demo",
            object="response",
            output=output,
            tool_choice="none",
            tools=[],
            parallel_tool_calls=False,
            status=status,
        )

    async def get_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        **kwargs: Any,
    ) -> ModelResponse:
        kind, text = plan(input, tools)
        if kind == "call":
            return ModelResponse(output=[self._call(text)], usage=Usage(), response_id=None)
        return ModelResponse(output=self._response(text).output, usage=Usage(), response_id=None)

    async def stream_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        kind, text = plan(input, tools)
        seq = iter(range(1_000_000))
        if kind == "call":
            async for event in self._stream_call(text, seq):
                yield event
            return
        ids = dict(item_id="demo-msg", output_index=0, content_index=0)
        yield ResponseCreatedEvent(
            type="response.created", sequence_number=next(seq), response=self._response("", "in_progress")
        )
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            output_index=0,
            sequence_number=next(seq),
            item=ResponseOutputMessage(
                id="demo-msg", type="message", role="assistant", status="in_progress", content=[]
            ),
        )
        part = ResponseOutputText(type="output_text", text="", annotations=[])
        yield ResponseContentPartAddedEvent(
            type="response.content_part.added", part=part, sequence_number=next(seq), **ids
        )
        for chunk in _chunks(text):
            await asyncio.sleep(self.delay)
            yield ResponseTextDeltaEvent(
                type="response.output_text.delta", delta=chunk, logprobs=[], sequence_number=next(seq), **ids
            )
        done_part = ResponseOutputText(type="output_text", text=text, annotations=[])
        yield ResponseTextDoneEvent(
            type="response.output_text.done", text=text, logprobs=[], sequence_number=next(seq), **ids
        )
        yield ResponseContentPartDoneEvent(
            type="response.content_part.done", part=done_part, sequence_number=next(seq), **ids
        )
        final = self._response(text)
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done", output_index=0, item=final.output[0], sequence_number=next(seq)
        )
        yield ResponseCompletedEvent(type="response.completed", response=final, sequence_number=next(seq))
