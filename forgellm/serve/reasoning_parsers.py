"""Reasoning parsers: a reasoning model's `<think>...</think>` goes to `reasoning_content`, the rest to `content`
(`--reasoning-parser qwen3 | deepseek_r1`), whole or streamed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningParser:
    """Where reasoning starts and ends. `opened_by_prompt`: the chat template writes the opening tag itself
    (DeepSeek-R1), so an output without it still begins in reasoning; Qwen3 writes it in the output and
    skips it altogether when thinking is off (`chat_template_kwargs={"enable_thinking": false}`)."""

    start: str = "<think>"
    end: str = "</think>"
    opened_by_prompt: bool = False

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a finished output."""
        body = text.lstrip()
        if body.startswith(self.start):
            body = body[len(self.start) :]
        elif not self.opened_by_prompt:
            return None, text
        reasoning, marker, content = body.partition(self.end)
        if not marker:  # it never stopped reasoning (max_tokens): all of it is reasoning
            return reasoning, ""
        return reasoning, content.lstrip("\n")

    def streamer(self) -> ReasoningStream:
        return ReasoningStream(self)


REASONING_PARSERS: dict[str, ReasoningParser] = {
    "qwen3": ReasoningParser(),
    "deepseek_r1": ReasoningParser(opened_by_prompt=True),
}


@dataclass
class ReasoningStream:
    """One streamed choice: text is split between reasoning and content as it comes, holding back any tail
    that may be the start of a tag."""

    parser: ReasoningParser
    text: str = ""
    sent: int = 0  # characters of `text` sent (as reasoning or content)

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, content) to send now for `delta`."""
        self.text += delta
        return self._emit(final=False)

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) still to send once the choice has ended."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> tuple[str, str]:
        reasoning, content = self.parser.split(self.text)
        # Send up to where the text is settled: not a tail that could still grow into a tag.
        settled = len(self.text) if final else _settled(self.text, (self.parser.start, self.parser.end))
        if reasoning is None:
            if not final and self.parser.start.startswith(self.text.lstrip()[: len(self.parser.start)]):
                return "", ""  # it may still open with the tag
            out, self.sent = self.text[self.sent : settled], max(self.sent, settled)
            return "", out
        head = len(self.text) - len(content)  # content starts here
        # As split(): the opening tag counts only at the start (after whitespace), the end is the first after it.
        leading = len(self.text) - len(self.text.lstrip())
        opened = self.text.startswith(self.parser.start, leading)
        reasoning_start = leading + len(self.parser.start) if opened else 0
        reasoning_end = self.text.find(self.parser.end, reasoning_start)
        reasoning_end = len(self.text) if reasoning_end < 0 else reasoning_end
        start = max(self.sent, reasoning_start)
        think = self.text[start : min(reasoning_end, settled)] if start < min(reasoning_end, settled) else ""
        talk = ""
        if settled > head:
            talk = self.text[max(head, self.sent) : settled]
        self.sent = max(self.sent, settled)
        return think, talk


def _settled(text: str, tags: tuple[str, ...]) -> int:
    """Length of `text` whose end cannot be the beginning of one of `tags`."""
    for size in range(min(max(map(len, tags)) - 1, len(text)), 0, -1):
        if any(tag.startswith(text[-size:]) for tag in tags):
            return len(text) - size
    return len(text)
