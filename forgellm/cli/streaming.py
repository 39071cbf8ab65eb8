"""Print one request's text as the engine produces it, and measure how fast it came."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TextIO

from forgellm.sampling_params import SamplingParams


@dataclass
class StreamResult:
    """The finished text of one request, its token count and timings (seconds)."""

    text: str
    num_tokens: int
    finish_reason: str | None
    elapsed: float
    time_to_first_token: float | None

    def summary(self) -> str:
        """One line for stderr: tokens, throughput, latency of the first token, why it stopped."""
        rate = self.num_tokens / self.elapsed if self.elapsed > 0 else 0.0
        parts = [f"{self.num_tokens} tokens in {self.elapsed:.2f} s ({rate:.1f} tokens/s)"]
        if self.time_to_first_token is not None:
            parts.append(f"first token after {self.time_to_first_token * 1000:.0f} ms")
        if self.finish_reason:
            parts.append(f"finish: {self.finish_reason}")
        return ", ".join(parts)


def stream_to(llm: Any, prompt: str | list[int], params: SamplingParams, out: TextIO) -> StreamResult:
    """Run `prompt` through `llm.stream`, writing each new piece of text to `out` as it arrives.

    The engine yields cumulative text that never takes back what it has shown (stop strings are held
    back until resolved), so each delta is the suffix past what was already written.
    """
    start = time.perf_counter()
    first_token_at: float | None = None
    text, num_tokens, finish_reason = "", 0, None
    for request_output in llm.stream(prompt, params):
        completion = request_output.outputs[0]
        if first_token_at is None and completion.token_ids:
            first_token_at = time.perf_counter()
        delta = completion.text[len(text) :]
        if delta:
            out.write(delta)
            # Flush per delta so a terminal or a pipe sees tokens as they are generated.
            out.flush()
        text = completion.text
        num_tokens = len(completion.token_ids)
        finish_reason = completion.finish_reason
    elapsed = time.perf_counter() - start
    ttft = None if first_token_at is None else first_token_at - start
    return StreamResult(text, num_tokens, finish_reason, elapsed, ttft)
