"""Split a reasoning model's `<think>…</think>` text from its answer, delta by delta.

Reasoning models served by Ollama, vLLM or LM Studio without a reasoning parser stream their
thoughts inside the output text. The rule: a `<think>` (or `<thinking>`) tag opens thinking
only where the message has shown no answer yet (whitespace aside), so an answer that *talks
about* the tag keeps it; everything up to the matching close tag is thinking. Text that may
still become a tag (`<th` at the end of a delta) is held back until the next delta decides, so
no prefix of a tag is ever shown and any split of the stream gives the same answer. A think
block never closed leaves no answer: all of it was thinking (the relay says the model only
thought). The answer's leading whitespace after a think block is dropped ("</think>\\n\\n").
"""

from __future__ import annotations

from core.events import TextDelta, Thinking

OPEN_TAGS = ("<think>", "<thinking>")
CLOSE_TAGS = ("</think>", "</thinking>")


class ThinkSplitter:
    """One message's text in, answer (`TextDelta`) and thoughts (`Thinking`) out."""

    def __init__(self) -> None:
        self._held = ""  # undecided text: leading whitespace or a possible tag prefix
        self.thinking = False  # inside a think block now
        self.answered = False  # some answer text was passed on: no more tags are looked for
        self.thought = False  # some thinking was seen

    def feed(self, text: str) -> list[TextDelta | Thinking]:
        """The events `text` decides; undecided text waits for the next call or `end`."""
        if self.answered:
            return [TextDelta(text)] if text else []
        out: list[TextDelta | Thinking] = []
        buf = self._held + text
        while buf:
            if self.thinking:
                found = _find(buf, CLOSE_TAGS)
                if found is None:
                    keep = _partial(buf, CLOSE_TAGS)
                    _add(out, Thinking(buf[: len(buf) - keep]))
                    buf = buf[len(buf) - keep :]
                    break
                at, tag = found
                _add(out, Thinking(buf[:at]))
                buf, self.thinking = buf[at + len(tag) :], False
                continue
            stripped = buf.lstrip()
            if not stripped:
                break  # only whitespace so far: hold it, a tag may follow
            opener = next((t for t in OPEN_TAGS if stripped.startswith(t)), None)
            if opener is not None:
                buf, self.thinking, self.thought = stripped[len(opener) :], True, True
                out.append(Thinking(""))  # the status shows at once, before any thought text
                continue
            if any(t.startswith(stripped) for t in OPEN_TAGS):
                break  # "<thi": wait for the rest
            self.answered = True
            out.append(TextDelta(stripped if self.thought else buf))
            buf = ""
        self._held = buf
        return out

    def end(self) -> list[TextDelta | Thinking]:
        """The message ended: decide what was held back (an unclosed think block is dropped
        as thinking; a tag prefix that never completed was answer text)."""
        held, self._held = self._held, ""
        if self.thinking:
            return [Thinking(held)] if held else []
        if self.thought:
            held = held.lstrip()
        if held:
            self.answered = True
            return [TextDelta(held)]
        return []


def _find(text: str, tags: tuple[str, ...]) -> tuple[int, str] | None:
    """The first of `tags` in `text`: (position, tag)."""
    hits = [(i, t) for t in tags if (i := text.find(t)) >= 0]
    return min(hits) if hits else None


def _partial(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of one of `tags`."""
    longest = max(len(t) for t in tags)
    for k in range(min(len(text), longest - 1), 0, -1):
        if any(t.startswith(text[-k:]) for t in tags):
            return k
    return 0


def _add(out: list[TextDelta | Thinking], event: Thinking) -> None:
    if event.text:
        out.append(event)
