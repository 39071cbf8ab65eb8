"""IncrementalDetokenizer: turns a stream of output token ids into text deltas in O(1) per token."""

from __future__ import annotations

from typing import Protocol

# How many prompt tokens precede the output in the decode window. A few are needed because one
# token alone may decode to nothing (a skipped special token) or to part of a character.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs from a tokenizer."""

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Turn token ids into text."""
        ...


class IncrementalDetokenizer:
    """Decodes output tokens as they arrive, emitting only complete characters.

    Each step decodes a short window twice: tokens[prefix_offset:read_offset] (already emitted)
    and tokens[prefix_offset:] (with the new ones); the delta is the difference. Decoding the
    window from a token that was already emitted, rather than from the first new token, lets
    tokenizers that treat the start of a string specially (SentencePiece drops a leading space
    there) decode the new tokens as they would inside the full text. While the window's text ends
    with U+FFFD, the last token ends inside a multi-byte UTF-8 character and the text is held back.

    At the prompt/output boundary the window starts with up to the last 5 prompt tokens, so the
    first output token decodes as it would after the prompt (" Hello", not "Hello"). Those context
    tokens are dropped when their text ends with U+FFFD (the prompt ends inside a character): the
    output then decodes on its own, exactly as `decode(output_ids)` does.
    """

    def __init__(self, tokenizer: Decoder, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        if self._decode(context).endswith(_REPLACEMENT_CHAR):
            context = []
        # Only the window's tokens are kept: everything before prefix_offset is never read again.
        self._tokens: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._pieces: list[str] = []
        self._num_output_tokens = 0

    @property
    def text(self) -> str:
        """The output text emitted so far (the prompt excluded)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def num_output_tokens(self) -> int:
        """How many output tokens have been fed to `update`."""
        return self._num_output_tokens

    def update(self, new_token_ids: list[int]) -> str:
        """Append output tokens and return the text they complete (possibly empty)."""
        if not new_token_ids:
            return ""
        self._tokens.extend(new_token_ids)
        self._num_output_tokens += len(new_token_ids)
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._emit(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character becomes U+FFFD); call when finished."""
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        if len(new_text) <= len(prefix_text):
            return ""
        return self._emit(new_text[len(prefix_text) :])

    def _emit(self, delta: str) -> str:
        """Record `delta` and slide the window so it starts at the tokens just emitted."""
        self._pieces.append(delta)
        # Drop tokens before the new window start so the kept list stays short.
        del self._tokens[: self._read_offset]
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)
