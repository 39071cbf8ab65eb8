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


def echo_logprobs(
    prompt_ids: list[int], positions: list[PositionLogprobs | None], k: int, first_text: str
) -> dict[str, Any]:
    """The prompt's part of an echoed completion's logprobs: as `completion_logprobs`, but the first
    token, which nothing scores, has null logprob and top_logprobs (`first_text` is its text)."""
    scored = [p or {} for p in positions[1 : len(prompt_ids)]]
    rest = completion_logprobs(prompt_ids[1:], scored, k, len(first_text))
    return {
        "tokens": [first_text, *rest["tokens"]],
        "token_logprobs": [None, *rest["token_logprobs"]],
        "top_logprobs": [None, *rest["top_logprobs"]],
        "text_offset": [0, *rest["text_offset"]],
    }


def join_completion_logprobs(first: dict[str, Any], second: dict[str, Any] | None) -> dict[str, Any]:
    """Two consecutive parts of a completion's logprobs (the prompt's, then the generated ones) as one."""
    if second is None:
        return first
    return {key: [*first[key], *second[key]] for key in first}


def prompt_logprobs_list(
    prompt_ids: list[int], positions: list[PositionLogprobs | None], k: int
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: null for the first token, then per prompt token
    {token id: {"logprob", "rank", "decoded_token"}} holding the actual token and the top k."""
    result: list[dict[str, dict[str, Any]] | None] = []
    for token_id, position in zip(prompt_ids, positions):
        if position is None:
            result.append(None)
            continue
        result.append(
            {
                str(t): {"logprob": _value(lp), "rank": lp.rank, "decoded_token": _text(t, lp)}
                for t, lp in position.items()
                if t == token_id or (lp.rank is not None and lp.rank <= k)
            }
        )
    return result
