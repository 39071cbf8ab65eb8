"""Which usage a stream reports: OpenAI's last usage chunk, and vLLM's usage in every chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgellm.serve.protocol import StreamOptions


@dataclass(frozen=True)
class StreamUsage:
    """`final` (include_usage): a last chunk with no choices carries the totals, and every other
    chunk says `usage: null`, as OpenAI does. `continuous` (continuous_usage_stats, vLLM's
    extension that guidellm sends): every chunk carries the usage so far. The two are independent."""

    final: bool = False
    continuous: bool = False

    @classmethod
    def of(cls, options: StreamOptions | None) -> StreamUsage:
        if options is None:
            return cls()
        return cls(final=options.include_usage, continuous=options.continuous_usage_stats)

    def base(self, header: dict[str, Any]) -> dict[str, Any]:
        """The fields every chunk starts from: `header`, with `usage: null` when a last chunk carries it."""
        return {**header, "usage": None} if self.final else dict(header)

    def add_running(self, chunk: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """`chunk` with the usage so far when `continuous` (as vLLM: no token details until the end)."""
        if self.continuous:
            chunk["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        return chunk
