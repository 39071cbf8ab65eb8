"""Turning a user prompt into validated token ids, before anything reaches the engine.

Every check here raises a typed error whose message says what to change; nothing is queued until
the whole request is valid, so a bad request never disturbs the ones already running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from forgellm.engine.admission import RequestLimits
from forgellm.errors import InvalidRequestError
from forgellm.hf.generation_config import GenerationDefaults
from forgellm.hf.tokenizer import Tokenizer
from forgellm.multimodal.inputs import MultimodalPrompt, VisionPromptBuilder
from forgellm.sampling_params import SamplingParams
from forgellm.structured.backend import GrammarBackend

# Text, token ids, or vLLM's prompt dicts: {"prompt": text} (TextPrompt) or
# {"prompt_token_ids": ids} (TokensPrompt).
Prompt = str | Sequence[int] | Mapping[str, Any]


@dataclass
class ProcessedPrompt:
    """A validated request: its token ids, the text it came from, and resolved sampling settings."""

    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int
    multimodal: MultimodalPrompt | None = None  # images, with their placeholders expanded in the ids


class InputProcessor:
    """Tokenizes prompts and admits them against the engine's limits (RequestLimits)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        limits: RequestLimits,
        defaults: GenerationDefaults,
        stop_token_ids: Iterable[int] = (),
        vision: VisionPromptBuilder | None = None,
    ) -> None:
        """`stop_token_ids`: the tokens that end an output (the model's EOS), which end a grammar too;
        `vision`: a vision-language model's image handling (None: the model takes text only)."""
        self.tokenizer = tokenizer
        self.vision = vision
        self.limits = limits
        self.defaults = defaults
        stops = list(stop_token_ids) or [t for t in (tokenizer.eos_token_id,) if t is not None]
        self.grammars = GrammarBackend(tokenizer, limits.vocab_size, stops)
        # Read once here (a pass over the vocabulary), not on the first request.
        self.max_chars_per_token = tokenizer.max_chars_per_token

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
        """Text is encoded with the tokenizer's special tokens (e.g. BOS); ids are checked as given.

        A text too long for the context whatever its tokens is refused before it is tokenized.
        """
        prompt = _unwrap(prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty; give at least one character or token", "prompt")
            self.limits.check_text_length(len(prompt), self.max_chars_per_token)
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        if not ids:
            raise InvalidRequestError("the prompt is empty; give at least one token id", "prompt")
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.limits.vocab_size:
                raise InvalidRequestError(
                    f"token id {token!r} is outside the vocabulary [0, {self.limits.vocab_size})", "prompt"
                )
        return None, ids

    def process(self, prompt: Prompt, params: SamplingParams | None) -> ProcessedPrompt:
        """Check, tokenize, admit and resolve max_tokens; raises a typed error before any state changes."""
        params = params if params is not None else self.default_sampling_params()
        self.limits.check_sampling(params)  # cheap checks first, before tokenizing
        multimodal = None
        if isinstance(prompt, Mapping) and "multi_modal_data" in prompt:
            if self.vision is None:
                raise InvalidRequestError(
                    "this model takes text only: send the prompt without images", "multi_modal_data"
                )
            data = prompt["multi_modal_data"]
            if not isinstance(data, Mapping):
                raise InvalidRequestError(
                    "multi_modal_data must be a dict such as {'image': [...]}", "multi_modal_data"
                )
            text, ids = self.tokenize({k: v for k, v in prompt.items() if k != "multi_modal_data"})
            ids, multimodal = self.vision.build(ids, data)
        else:
            text, ids = self.tokenize(prompt)
            if self.vision is not None:  # placeholders without images are refused, not read as text
                self.vision.build(ids, {})
        max_tokens = self.limits.check_length(len(ids), params)
        if params.max_tokens is None:
            params = replace(params, max_tokens=max_tokens)
        if params.bad_words:
            params = replace(params, bad_words=None, bad_words_token_ids=self.bad_words_token_ids(params))
        if params.structured_outputs is not None:
            self.grammars.compile(params.structured_outputs)  # here, off the engine loop; refused with a 400
        return ProcessedPrompt(text, ids, params, max_tokens, multimodal)

    def bad_words_token_ids(self, params: SamplingParams) -> list[list[int]]:
        """`params.bad_words` as token-id sequences, each word as written and after a space (a word mid-text
        is usually tokenized with its leading space), added to any ids given directly."""
        words = [list(w) for w in params.bad_words_token_ids or ()]
        for word in params.bad_words or ():
            for text in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(text, add_special_tokens=False)
                if ids and ids not in words:
                    words.append(ids)
        return words


def _unwrap(prompt: Prompt) -> str | Sequence[int]:
    """The text or token ids of a prompt, unwrapping vLLM's {"prompt": ...} / {"prompt_token_ids": ...}."""
    if not isinstance(prompt, Mapping):
        if not isinstance(prompt, (str, Sequence)):
            raise InvalidRequestError(
                f"a prompt must be text, a list of token ids or a prompt dict, got {type(prompt).__name__}", "prompt"
            )
        return prompt
    keys = set(prompt)
    if keys == {"prompt"} and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    ids = prompt.get("prompt_token_ids")
    if keys == {"prompt_token_ids"} and isinstance(ids, Sequence) and not isinstance(ids, str):
        return ids
    raise InvalidRequestError(
        f"a prompt dict takes exactly one key, 'prompt' (text) or 'prompt_token_ids' (a list of ids); "
        f"got {sorted(map(str, keys))}",
        "prompt",
    )
