"""RequestLimits: the engine's real limits, and the one admission check every request passes.

The engine builds them once its KV cache is sized and hands them to whatever tokenizes prompts
(InputProcessor, here or in a server process), so a request that could never run is refused with a
typed error before anything is queued, and nothing past admission checks lengths again.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgellm.config import EngineConfig
from forgellm.errors import CapacityError, ContextLengthError, InvalidRequestError
from forgellm.sampling_params import SamplingParams


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of this engine (plain data: it crosses process boundaries)."""

    max_model_len: int
    vocab_size: int
    block_size: int
    num_kv_blocks: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    max_n: int
    max_logprobs: int
    max_stop_strings: int
    max_stop_str_len: int

    @classmethod
    def from_config(
        cls, config: EngineConfig, max_model_len: int, vocab_size: int, num_kv_blocks: int
    ) -> RequestLimits:
        """The limits of an engine built from `config` with this context, vocabulary and KV cache."""
        return cls(
            max_model_len=max_model_len,
            vocab_size=vocab_size,
            block_size=config.block_size,
            num_kv_blocks=num_kv_blocks,
            max_num_batched_tokens=config.max_num_batched_tokens,
            enable_chunked_prefill=config.enable_chunked_prefill,
            max_n=config.max_n,
            max_logprobs=config.max_logprobs,
            max_stop_strings=config.max_stop_strings,
            max_stop_str_len=config.max_stop_str_len,
        )

    def check_sampling(self, params: SamplingParams) -> None:
        """Sampling values within this engine's limits (the values themselves were checked by SamplingParams)."""
        if params.n > self.max_n:
            raise InvalidRequestError(f"n is {params.n} but this engine allows at most {self.max_n} (max_n)", "n")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            limit = min(self.max_logprobs, self.vocab_size)
            if k is not None and k > limit:
                raise InvalidRequestError(f"{name} is {k} but this engine returns at most {limit} (max_logprobs)", name)
        if len(params.stop) > self.max_stop_strings:
            raise InvalidRequestError(
                f"{len(params.stop)} stop strings given but at most {self.max_stop_strings} are allowed "
                "(max_stop_strings)",
                "stop",
            )
        longest = max((len(s) for s in params.stop), default=0)
        if longest > self.max_stop_str_len:
            raise InvalidRequestError(
                f"a stop string has {longest} characters but at most {self.max_stop_str_len} are allowed "
                "(max_stop_str_len)",
                "stop",
            )
        token_lists = {
            "stop_token_ids": params.stop_token_ids,
            "logit_bias": list(params.logit_bias or ()),
            "allowed_token_ids": params.allowed_token_ids or [],
            "bad_words_token_ids": [t for word in params.bad_words_token_ids or () for t in word],
        }
        for name, token_ids in token_lists.items():
            bad = next((t for t in token_ids if t >= self.vocab_size), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"{name}: token id {bad} is outside the vocabulary [0, {self.vocab_size})", name
                )

    def check_text_length(self, num_chars: int, max_chars_per_token: int) -> None:
        """Refuse a text that cannot fit the context whatever its tokens, before tokenizing it.

        No token covers more than `max_chars_per_token` characters of text, so a text of N characters
        has at least N / max_chars_per_token tokens; the factor 2 leaves room for normalizers that
        shorten text before it is split.
        """
        longest = 2 * max_chars_per_token * self.max_model_len
        if num_chars > longest:
            raise ContextLengthError(
                f"the prompt has {num_chars} characters, more than max_model_len ({self.max_model_len}) "
                f"tokens can hold (at most {max_chars_per_token} characters a token); shorten the prompt",
                "prompt",
            )

    def check_length(self, num_prompt_tokens: int, params: SamplingParams) -> int:
        """Check that the prompt and its output fit the context, a step and the KV cache; returns max_tokens.

        `max_tokens=None` resolves to what is left of the context.
        """
        n, limit = num_prompt_tokens, self.max_model_len
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
        if not self.enable_chunked_prefill and n > self.max_num_batched_tokens:
            raise ContextLengthError(
                f"the prompt has {n} tokens but chunked prefill is off and a step holds at most "
                f"{self.max_num_batched_tokens} (max_num_batched_tokens); enable chunked prefill or raise it",
                "prompt",
            )
        # The last sampled token's K/V is never computed, hence the -1.
        kv_tokens = n + max_tokens - 1
        if -(-kv_tokens // self.block_size) > self.num_kv_blocks:
            capacity = self.num_kv_blocks * self.block_size
            raise CapacityError(
                f"the request needs up to {kv_tokens} tokens of KV cache but the whole cache holds "
                f"{capacity}; lower max_tokens or give the engine more KV-cache memory"
            )
        return max_tokens
