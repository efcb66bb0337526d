"""An offline demo model, so streambot runs end to end with no API key and no network.

It is a real Agents SDK `Model`: the exact pipeline a real model uses (runner, stream events,
normalization, relay, pacing) runs unchanged. Its replies say plainly that they are a demo.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agents import Model, ModelResponse, Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

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
        text = demo_reply(self._prompt(input))
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
        text = demo_reply(self._prompt(input))
        seq = iter(range(1_000_000))
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
