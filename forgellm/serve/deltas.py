"""DeltaTracker: turns the engine's cumulative outputs into what each choice gained since the last send."""

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

    def update(self, out: RequestOutput) -> list[ChoiceDelta]:
        """The deltas of the choices that changed in `out` (each finished choice reported once)."""
        deltas = []
        for completion in out.outputs:
            sent = self._sent[completion.index]
            if sent.finished:
                continue
            text = completion.text[sent.text_len :]
            token_ids = completion.token_ids[sent.num_tokens :]
            finished = completion.finish_reason is not None
            if not text and not token_ids and not finished:
                continue
            logprobs = completion.logprobs[sent.num_tokens :] if completion.logprobs is not None else None
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
            sent.text_len = len(completion.text)
            sent.num_tokens = len(completion.token_ids)
            sent.finished = finished
        return deltas
