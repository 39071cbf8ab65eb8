"""Completions `echo` and `prompt_logprobs`: what a choice shows of its prompt, as vLLM shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgellm.hf.tokenizer import Tokenizer
from forgellm.outputs import RequestOutput
from forgellm.serve.logprobs import echo_logprobs, prompt_logprobs_list


@dataclass(frozen=True)
class PromptView:
    """What a completions request asks to see of its prompts.

    `echo`: the prompt's text starts every choice (with its logprobs first when `top_k` is set);
    `echo_only`: max_tokens 0, the one token the engine generated anyway is dropped;
    `prompt_k`: vLLM's `prompt_logprobs` field in each choice (None: not asked for).
    """

    echo: bool
    echo_only: bool
    top_k: int | None
    prompt_k: int | None

    @property
    def waits_for_prompt_logprobs(self) -> bool:
        """Whether the prompt's part needs the engine's prompt logprobs (a stream waits for them)."""
        return (self.echo and self.top_k is not None) or self.prompt_k is not None

    def prompt_text(self, out: RequestOutput, tokenizer: Tokenizer) -> str:
        """The prompt as the caller sent it; token-id prompts are decoded (special tokens kept)."""
        if out.prompt is not None:
            return out.prompt
        return tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)

    def prompt_part(self, out: RequestOutput, tokenizer: Tokenizer) -> tuple[str, dict[str, Any] | None]:
        """An echoed choice's prompt: its text, and its logprobs (first token null) when asked for."""
        text = self.prompt_text(out, tokenizer)
        if self.top_k is None:
            return text, None
        ids = out.prompt_token_ids
        positions = out.prompt_logprobs or [None]
        first = tokenizer.decode(ids[:1], skip_special_tokens=False)
        return text, echo_logprobs(ids, positions, self.top_k, first)

    def prompt_logprobs(self, out: RequestOutput) -> list[dict[str, dict[str, Any]] | None] | None:
        """vLLM's per-choice `prompt_logprobs` list, if the request asked for it."""
        if self.prompt_k is None or out.prompt_logprobs is None:
            return None
        return prompt_logprobs_list(out.prompt_token_ids, out.prompt_logprobs, self.prompt_k)

    def strip_generation(self, out: RequestOutput) -> RequestOutput:
        """With echo_only, `out` without its generated token (in place): the answer ends at the prompt
        with finish_reason "length" (max_tokens 0 reached), and usage counts no completion tokens."""
        if not self.echo_only:
            return out
        for completion in out.outputs:
            completion.text, completion.token_ids = "", []
            if completion.logprobs is not None:
                completion.logprobs = []
            if completion.finish_reason is not None:
                completion.finish_reason, completion.stop_reason = "length", None
        return out
