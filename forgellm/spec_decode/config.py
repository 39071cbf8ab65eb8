"""SpeculativeConfig: the options of speculative decoding, checked once at start-up.

The same dict comes from `LLM(speculative_config={...})` and from a `speculative_config:` block in a
YAML file, so both go through `SpeculativeConfig.from_dict`. Every bad value is a ConfigError that
names the option and what to change, before any model loads; checks that need a loaded model (its
context length, vocabulary, hidden size) are separate functions the engine calls when it knows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from forgellm.errors import ConfigError

if TYPE_CHECKING:  # this module stays importable without torch (CLI argument parsing)
    import torch
    from torch import nn

SPECULATIVE_METHODS = ("ngram", "draft_model", "eagle3")
# Methods whose drafts come from a checkpoint of their own (`model`); ngram looks up the sequence itself.
METHODS_WITH_MODEL = ("draft_model", "eagle3")
DEFAULT_NUM_SPECULATIVE_TOKENS = 3
# n-gram sizes when unset: 1-grams match almost anywhere and propose noise, beyond 4 matches get rare.
DEFAULT_PROMPT_LOOKUP_MIN = 2
DEFAULT_PROMPT_LOOKUP_MAX = 4

_PREFIX = "speculative_config"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _is_int(value: Any) -> bool:
    # YAML's `true` is a bool, and bool is an int subclass: refuse it rather than read it as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


@dataclass
class SpeculativeConfig:
    """Options of speculative decoding; `method` picks the proposer, the rest size it."""

    method: Literal["ngram", "draft_model", "eagle3"] = field(
        metadata={"help": "proposer: ngram (prompt lookup), draft_model (a smaller model) or eagle3 (an EAGLE-3 head)"}
    )
    model: str | None = _opt(None, "checkpoint directory of the draft model or EAGLE-3 head (not for ngram)")
    num_speculative_tokens: int = _opt(DEFAULT_NUM_SPECULATIVE_TOKENS, "tokens drafted per step (k)")
    prompt_lookup_min: int | None = _opt(
        None, f"ngram: shortest n-gram to look up (default {DEFAULT_PROMPT_LOOKUP_MIN}, or prompt_lookup_max if lower)"
    )
    prompt_lookup_max: int | None = _opt(
        None, f"ngram: longest n-gram to look up (default {DEFAULT_PROMPT_LOOKUP_MAX}, or prompt_lookup_min if higher)"
    )
    disable_by_batch_size: int | Literal["auto"] | None = _opt(
        None,
        'no speculation in steps with more running requests than this; "auto": per batch size, whichever of '
        "speculating and plain decoding measures faster (default: always speculate)",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option; fills ngram's unset n-gram sizes."""
        if self.method not in SPECULATIVE_METHODS:
            raise ConfigError(f"{_PREFIX}.method must be {_choices(SPECULATIVE_METHODS)}, got {self.method!r}")
        if self.method in METHODS_WITH_MODEL:
            if not isinstance(self.model, (str, Path)) or not str(self.model):
                what = "draft model" if self.method == "draft_model" else "EAGLE-3 head"
                raise ConfigError(
                    f"{_PREFIX}.method {self.method} needs a model: the {what}'s checkpoint directory, "
                    f"got {self.model!r}"
                )
            self.model = str(self.model)
        elif self.model is not None:
            raise ConfigError(
                f"{_PREFIX}.model is for methods {_choices(METHODS_WITH_MODEL)}; method {self.method} drafts from "
                f"the request's own tokens and takes no model, got {self.model!r}"
            )
        k = self.num_speculative_tokens
        if not _is_int(k) or k < 1:
            raise ConfigError(f"{_PREFIX}.num_speculative_tokens must be a positive integer, got {k!r}")
        limit = self.disable_by_batch_size
        if limit is not None and limit != "auto" and (not _is_int(limit) or limit < 1):
            raise ConfigError(
                f'{_PREFIX}.disable_by_batch_size must be a positive integer, "auto" (measure) or None (always '
                f"speculate), got {limit!r}"
            )
        self._check_prompt_lookup()

    def _check_prompt_lookup(self) -> None:
        names = ("prompt_lookup_min", "prompt_lookup_max")
        if self.method != "ngram":
            for name in names:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{_PREFIX}.{name} is for method ngram only; method {self.method} does not look up "
                        f"n-grams, got {getattr(self, name)!r}"
                    )
            return
        for name in names:
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{_PREFIX}.{name} must be a positive integer, got {value!r}")
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        # Setting only one of the two must not clash with the other's default: the default moves to meet it.
        if lo is None:
            lo = DEFAULT_PROMPT_LOOKUP_MIN if hi is None else min(DEFAULT_PROMPT_LOOKUP_MIN, hi)
        if hi is None:
            hi = max(DEFAULT_PROMPT_LOOKUP_MAX, lo)
        if lo > hi:
            raise ConfigError(
                f"{_PREFIX}.prompt_lookup_min ({lo}) must be <= prompt_lookup_max ({hi}); "
                "lower the first or raise the second"
            )
        self.prompt_lookup_min, self.prompt_lookup_max = lo, hi

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """Build from `LLM(speculative_config=...)` or a YAML block; None (no speculation) stays None."""
        if values is None or isinstance(values, SpeculativeConfig):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{_PREFIX} must be a dict such as {{'method': 'ngram', 'num_speculative_tokens': 3}}, "
                f"got {type(values).__name__} {values!r}"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown {_PREFIX} option(s) {unknown}; known: {known}")
        if "method" not in values:
            raise ConfigError(f"{_PREFIX} needs a method: {_choices(SPECULATIVE_METHODS)}")
        return cls(**values)

    def validate_for_model(self, max_model_len: int) -> None:
        """Refuse a draft length that cannot fit in the target's context (`max_model_len` tokens)."""
        # A verify step feeds the last emitted token and k drafts, after at least one prompt token.
        k, longest = self.num_speculative_tokens, max_model_len - 2
        if k > longest:
            fix = f"lower num_speculative_tokens to at most {longest} or raise" if longest >= 1 else "raise"
            raise ConfigError(
                f"{_PREFIX}.num_speculative_tokens is {k} but max_model_len is {max_model_len}: a verify step holds "
                f"a prompt token, the last emitted token and {k} draft{'s' if k != 1 else ''} ({k + 2} positions); "
                f"{fix} max_model_len to at least {k + 2}"
            )

    def describe(self) -> str:
        """A few words for logs and benchmark headers."""
        if self.method == "ngram":
            return (
                f"ngram (k={self.num_speculative_tokens}, n-grams {self.prompt_lookup_min}..{self.prompt_lookup_max})"
            )
        return f"{self.method} {self.model} (k={self.num_speculative_tokens})"

    def should_speculate(self, num_running_requests: int) -> bool:
        """Whether a step with this many running requests speculates under a fixed limit (off above an integer
        disable_by_batch_size; "auto" is the SpeculationGovernor's to decide)."""
        limit = self.disable_by_batch_size
        return limit is None or limit == "auto" or num_running_requests <= limit


def check_draft_vocab(target_vocab_size: int, draft_vocab_size: int, draft_path: str | Path) -> None:
    """Refuse a draft model whose vocabulary differs from the target's: its token ids would mean other text."""
    if draft_vocab_size != target_vocab_size:
        raise ConfigError(
            f"draft model {str(draft_path)!r} has a vocabulary of {draft_vocab_size} tokens but the target model's "
            f"has {target_vocab_size}; {_PREFIX}.model must share the target's tokenizer and vocabulary "
            "(e.g. demo-draft for demo)"
        )


def check_eagle3_hidden_size(target_hidden: int, head_hidden: int, path: str | Path) -> None:
    """Refuse an EAGLE-3 head trained on another model's hidden states (a different hidden size)."""
    if head_hidden != target_hidden:
        raise ConfigError(
            f"EAGLE-3 head {str(path)!r} has hidden size {head_hidden} but the target model's is {target_hidden}; "
            f"{_PREFIX}.model must be an EAGLE-3 head trained for this target model"
        )


@dataclass(frozen=True)
class ProposerSetup:
    """What a model-based proposer needs from the engine to load next to the target."""

    target: nn.Module
    dtype: torch.dtype
    device: torch.device
    block_size: int
    max_model_len: int
    load_format: str = "auto"
    model_dir: Path | None = None  # the target's checkpoint (a head may read the target's embedding from it)
