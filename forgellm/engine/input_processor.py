"""Turning a user prompt into validated token ids, before anything reaches the engine.

Every check here raises a typed error whose message says what to change; nothing is queued until
the whole request is valid, so a bad request never disturbs the ones already running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from forgellm.errors import ContextLengthError, InvalidRequestError
from forgellm.hf.generation_config import GenerationDefaults
from forgellm.hf.tokenizer import Tokenizer
from forgellm.sampling_params import SamplingParams

Prompt = str | Sequence[int]


@dataclass
class ProcessedPrompt:
    """A validated request: its token ids, the text it came from, and resolved sampling settings."""

    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int


class InputProcessor:
    """Tokenizes and validates prompts against the model's vocabulary and context length."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_model_len: int, defaults: GenerationDefaults) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.defaults = defaults

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults where it states them."""
        d = self.defaults
        values = {
            "temperature": d.temperature,
            "top_p": d.top_p,
            "top_k": d.top_k,
            "min_p": d.min_p,
            "repetition_penalty": d.repetition_penalty,
        }
        return SamplingParams(**{k: v for k, v in values.items() if v is not None})

    def tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """Text is encoded with the tokenizer's special tokens (e.g. BOS); ids are checked as given."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty; give at least one character or token", "prompt")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        if not ids:
            raise InvalidRequestError("the prompt is empty; give at least one token id", "prompt")
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size:
                raise InvalidRequestError(
                    f"token id {token!r} is outside the vocabulary [0, {self.vocab_size})", "prompt"
                )
        return None, ids

    def process(self, prompt: Prompt, params: SamplingParams | None) -> ProcessedPrompt:
        """Tokenize, check lengths and resolve max_tokens; raises before any state changes."""
        params = params if params is not None else self.default_sampling_params()
        text, ids = self.tokenize(prompt)
        n, limit = len(ids), self.max_model_len
        if n >= limit:
            raise ContextLengthError(
                f"the prompt has {n} tokens but max_model_len is {limit} (which must also leave room "
                f"for at least one generated token); shorten the prompt or raise max_model_len",
                "prompt",
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
        if n + max_tokens > limit:
            raise ContextLengthError(
                f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) is {n + max_tokens} tokens, more "
                f"than max_model_len ({limit}); set max_tokens to at most {limit - n}",
                "max_tokens",
            )
        if params.min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({params.min_tokens}) exceeds the {max_tokens} tokens that fit", "min_tokens"
            )
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and k > self.vocab_size:
                raise InvalidRequestError(f"{name} ({k}) exceeds the vocabulary size {self.vocab_size}", name)
        if params.max_tokens is None:
            params = replace(params, max_tokens=max_tokens)
        return ProcessedPrompt(text, ids, params, max_tokens)
