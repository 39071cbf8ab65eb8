"""Logprobs in OpenAI's two shapes: chat (`content` entries) and legacy completions (parallel lists)."""

from __future__ import annotations

from typing import Any

from forgellm.outputs import Logprob, PositionLogprobs

# JSON has no -inf; OpenAI-compatible servers report this floor instead.
_MIN_LOGPROB = -9999.0


def _value(logprob: Logprob) -> float:
    return max(logprob.logprob, _MIN_LOGPROB)


def _top(position: PositionLogprobs, k: int) -> list[tuple[int, Logprob]]:
    ranked = [(t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda item: item[1].rank or 0)[:k]


def _text(token_id: int, logprob: Logprob | None) -> str:
    return logprob.decoded_token if logprob is not None and logprob.decoded_token is not None else f"<{token_id}>"


def chat_logprobs(token_ids: list[int], positions: list[PositionLogprobs], k: int) -> dict[str, Any]:
    """`{"content": [{"token", "logprob", "bytes", "top_logprobs": [...k entries]}]}`."""
    content = []
    for token_id, position in zip(token_ids, positions):
        chosen = position.get(token_id)
        text = _text(token_id, chosen)
        top = [
            {"token": _text(t, lp), "logprob": _value(lp), "bytes": list(_text(t, lp).encode())}
            for t, lp in _top(position, k)
        ]
        content.append(
            {
                "token": text,
                "logprob": _value(chosen) if chosen is not None else _MIN_LOGPROB,
                "bytes": list(text.encode()),
                "top_logprobs": top,
            }
        )
    return {"content": content}


def completion_logprobs(
    token_ids: list[int], positions: list[PositionLogprobs], k: int, text_offset: int
) -> dict[str, Any]:
    """`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`; tops hold the top k and the sampled token."""
    tokens, values, tops, offsets = [], [], [], []
    offset = text_offset
    for token_id, position in zip(token_ids, positions):
        chosen = position.get(token_id)
        text = _text(token_id, chosen)
        tokens.append(text)
        values.append(_value(chosen) if chosen is not None else _MIN_LOGPROB)
        top = {_text(t, lp): _value(lp) for t, lp in _top(position, k)}
        top.setdefault(text, values[-1])
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
