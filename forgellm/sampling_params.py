"""SamplingParams: how to turn logits into tokens, validated at construction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forgellm.errors import InvalidRequestError
from forgellm.structured.params import StructuredOutputsParams

_GREEDY_EPS = 1e-5
# What torch.Generator.manual_seed takes; sample i of a request draws from (seed + i) mod 2**64.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


@dataclass
class SamplingParams:
    """Per-request sampling settings, named as vLLM users know them.

    `max_tokens=None` means "until the context is full". `logprobs=k` returns the sampled token's
    logprob plus the top-k alternatives at each step; `prompt_logprobs=k` does the same for the prompt.
    Logprobs are those of the model's raw distribution (before penalties and temperature).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    detokenize: bool = True  # False: token ids only (no text, no stop strings), e.g. for benchmarks
    # Logit controls: token id -> bias added to its logit (-100..100, OpenAI's), the only tokens that may be
    # sampled, and words never to produce (text, tokenized at admission into bad_words_token_ids: each
    # word as written and after a space; token-id sequences may also be given directly).
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    bad_words_token_ids: list[list[int]] | None = None
    # A constraint on the output (JSON schema, regex, choice, grammar), as vLLM's StructuredOutputsParams or
    # its dict; guided_decoding is the older spelling of the same thing.
    structured_outputs: StructuredOutputsParams | dict[str, Any] | None = None
    guided_decoding: StructuredOutputsParams | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == 0:  # OpenAI-style clients send 0 for "off"
            self.top_k = -1
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise InvalidRequestError(
                    "give structured_outputs or guided_decoding (its older name), not both", "structured_outputs"
                )
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        self.structured_outputs = StructuredOutputsParams.from_value(self.structured_outputs)
        self._validate()

    def _validate(self) -> None:
        """Checks that need no engine: types, ranges, finite floats (the engine's limits come later)."""

        def bad(param: str, why: str) -> InvalidRequestError:
            return InvalidRequestError(f"{param} {why}, got {getattr(self, param)!r}", param=param)

        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            # bool is an int: True would pass as 1.0 and hide a wrongly typed field.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "must be a finite number")
        if not _is_int(self.n) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if not self.temperature >= 0.0:
            raise bad("temperature", "must be >= 0 (0 means greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not _is_int(self.top_k) or (self.top_k < 1 and self.top_k != -1):
            raise bad("top_k", "must be -1 (off) or an integer >= 1")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            raise bad("seed", "must be an integer in [-2**63, 2**64 - 1]")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "must be an integer >= 1 (or None for 'until the context is full')")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be <= max_tokens ({self.max_tokens})")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if not self.repetition_penalty > 0.0:
            raise bad("repetition_penalty", "must be > 0 (1 means off)")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise bad(name, "must be None or an integer >= 0")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise bad("stop", "must hold non-empty strings")
        if self.stop and not self.detokenize:
            raise bad("stop", "needs detokenize=True (stop strings are matched on text)")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must hold non-negative integers")
        self._validate_logit_controls(bad)

    def _validate_logit_controls(self, bad: Callable[[str, str], InvalidRequestError]) -> None:
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or any(
                not _is_int(t)
                or t < 0
                or isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not -100 <= v <= 100
                for t, v in self.logit_bias.items()
            ):
                raise bad("logit_bias", "must map token ids (integers >= 0) to biases in [-100, 100]")
        if self.allowed_token_ids is not None and (
            not isinstance(self.allowed_token_ids, list)
            or not self.allowed_token_ids
            or any(not _is_int(t) or t < 0 for t in self.allowed_token_ids)
        ):
            raise bad("allowed_token_ids", "must be a non-empty list of token ids (integers >= 0)")
        if self.bad_words is not None and (
            not isinstance(self.bad_words, list) or any(not isinstance(w, str) or not w.strip() for w in self.bad_words)
        ):
            raise bad("bad_words", "must be a list of non-blank strings")
        if self.bad_words_token_ids is not None and (
            not isinstance(self.bad_words_token_ids, list)
            or any(
                not isinstance(w, list) or not w or any(not _is_int(t) or t < 0 for t in w)
                for w in self.bad_words_token_ids
            )
        ):
            raise bad("bad_words_token_ids", "must be a list of non-empty lists of token ids (integers >= 0)")

    def sample_seed(self, index: int) -> int | None:
        """The seed of sample `index` (of n), in torch.Generator's range; None when unseeded."""
        return None if self.seed is None else (self.seed + index) % 2**64

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature < _GREEDY_EPS


_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
