"""DeltaTracker: what each choice gained since the last send, from cumulative or delta engine outputs."""

from __future__ import annotations

from dataclasses import dataclass

from forgellm.outputs import PositionLogprobs, RequestOutput


@dataclass
class ChoiceDelta:
    """The new part of one choice: text, token ids (with logprobs), and its finish once it ends."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobs] | None
    finish_reason: str | None
    stop_reason: int | str | None
    text_offset: int  # where `text` starts in the choice's whole text


@dataclass
class _Sent:
    text_len: int = 0
    num_tokens: int = 0
    finished: bool = False


class DeltaTracker:
    """Remembers, per choice of one engine request, how much has been sent already."""

    def __init__(self, num_choices: int, first_index: int = 0) -> None:
        self.first_index = first_index  # completions with several prompts number choices across them
        self._sent = [_Sent() for _ in range(num_choices)]

    @property
    def num_tokens(self) -> int:
        """Completion tokens of all choices so far (for usage: delta outputs do not carry the total)."""
        return sum(sent.num_tokens for sent in self._sent)

    def update(self, out: RequestOutput) -> list[ChoiceDelta]:
        """The deltas of the choices that changed in `out` (each finished choice reported once).

        A delta output (out.delta) is taken as is; a cumulative one is cut after what was sent.
        """
        deltas = []
        for completion in out.outputs:
            sent = self._sent[completion.index]
            if sent.finished:
                continue
            if out.delta:
                text, token_ids, logprobs = completion.text, completion.token_ids, completion.logprobs
            else:
                text = completion.text[sent.text_len :]
                token_ids = completion.token_ids[sent.num_tokens :]
                logprobs = completion.logprobs[sent.num_tokens :] if completion.logprobs is not None else None
            finished = completion.finish_reason is not None
            if not text and not token_ids and not finished:
                continue
            deltas.append(
                ChoiceDelta(
                    self.first_index + completion.index,
                    text,
                    token_ids,
                    logprobs,
                    completion.finish_reason,
                    completion.stop_reason,
                    sent.text_len,
                )
            )
            sent.text_len += len(text)
            sent.num_tokens += len(token_ids)
            sent.finished = finished
        return deltas
