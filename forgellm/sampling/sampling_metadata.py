"""SamplingMetadata: one step's sampling settings as tensors on the logits' device."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forgellm.engine.request import Request
from forgellm.structured.state import bitmask_width, fill_bitmasks_async

# Up to this k, torch.topk costs about a quarter of a full sort (H200, 152k vocabulary, 256 rows:
# 0.65 ms for k = 4096 against 2.8 ms); above it, the sort path is used.
_MAX_TOP_K_BOUND = 4096


@dataclass
class SamplingMetadata:
    """Per-row sampling settings for one batch of logits, row i = request i.

    Optional tensors are None when no row of the batch needs that step, so the sampler skips it;
    an all-greedy batch without penalties or logprobs costs one argmax.
    """

    num_rows: int
    all_greedy: bool
    all_random: bool
    greedy_mask: torch.Tensor | None  # [N] bool; None unless the batch mixes greedy and random rows
    # [N] float32; 1.0 on greedy rows so dividing by it is harmless. None when every row uses 1.0.
    temperature: torch.Tensor | None
    top_k: torch.Tensor | None  # [N] int64, vocab_size where off
    # When every random row has a small top-k, the largest: filtering then needs only that many
    # best tokens per row (torch.topk) instead of a sort of the whole vocabulary.
    top_k_bound: int | None
    top_p: torch.Tensor | None  # [N] float32, 1.0 where off
    min_p: torch.Tensor | None  # [N] float32, 0.0 where off
    presence_penalties: torch.Tensor | None  # [N] float32
    frequency_penalties: torch.Tensor | None  # [N] float32
    repetition_penalties: torch.Tensor | None  # [N] float32
    output_token_counts: torch.Tensor | None  # [N, V] int32, with presence/frequency/repetition
    prompt_token_mask: torch.Tensor | None  # [N, V] bool, only with a repetition penalty
    # (row, token) pairs to mask to -inf while a row has fewer than min_tokens output tokens.
    min_tokens_rows: torch.Tensor | None  # [M] int64
    min_tokens_token_ids: torch.Tensor | None  # [M] int64
    max_num_logprobs: int | None  # largest `logprobs` of the batch; None when no row asks
    generators: dict[int, torch.Generator]  # row -> its seeded generator (random rows only)
    # (row, token, bias) triples of logit_bias.
    logit_bias_rows: torch.Tensor | None = None  # [M] int64
    logit_bias_token_ids: torch.Tensor | None = None  # [M] int64
    logit_bias_values: torch.Tensor | None = None  # [M] float32
    # Rows with allowed_token_ids, and their [R, V] masks of allowed tokens.
    allowed_rows: torch.Tensor | None = None  # [R] int64
    allowed_mask: torch.Tensor | None = None  # [R, V] bool
    # (row, token, required last token or -1) of the bad words that may end at this sample.
    bad_words_rows: torch.Tensor | None = None  # [M] int64
    bad_words_token_ids: torch.Tensor | None = None  # [M] int64
    bad_words_required: torch.Tensor | None = None  # [M] int64
    # [N] int64: each row's last output token where it is still on the device (else -1); set by the
    # model runner under asynchronous scheduling, for bad words that wait on it.
    last_token_ids: torch.Tensor | None = None
    # [N, ceil(V / 32)] int32 token bitmasks of constrained rows (bit set: allowed), all ones elsewhere.
    grammar_bitmask: torch.Tensor | None = None

    @property
    def no_penalties(self) -> bool:
        """True when no row has a presence, frequency or repetition penalty."""
        return self.output_token_counts is None

    @classmethod
    def from_requests(
        cls,
        requests: Sequence[Request],
        generators: Sequence[torch.Generator | None],
        vocab_size: int,
        device: torch.device,
        num_prior_outputs: Sequence[int] | None = None,
        histories: Sequence[Sequence[int]] | None = None,
        grammar_bitmask: torch.Tensor | None = None,
    ) -> SamplingMetadata:
        """Build the metadata of one step; `generators[i]` is request i's seeded generator or None.

        `num_prior_outputs[i]`: request i's output tokens before this sample, counting tokens still
        in flight that its host list lacks (default: the host list's length). `histories[i]`: the
        output tokens row i follows that the host knows (default: request i's; a verify step's rows
        add their drafts); at most one more may be in flight. `grammar_bitmask`: the rows' host bitmask,
        already filled (see `grammar_bitmask_async`); by default constrained rows are filled here.
        """
        if len(generators) != len(requests):
            raise ValueError(f"got {len(requests)} requests but {len(generators)} generators")
        if num_prior_outputs is None:
            num_prior_outputs = [r.num_output_tokens for r in requests]
        params = [r.sampling_params for r in requests]
        greedy = [p.is_greedy for p in params]
        # Filters only matter on random rows; greedy rows take the argmax whatever they say.
        random_params = [None if g else p for p, g in zip(params, greedy, strict=True)]
        temps = [1.0 if p is None else p.temperature for p in random_params]
        top_ks = [vocab_size if p is None or p.top_k < 1 else min(p.top_k, vocab_size) for p in random_params]
        top_ps = [1.0 if p is None else p.top_p for p in random_params]
        min_ps = [0.0 if p is None else p.min_p for p in random_params]
        presence = [p.presence_penalty for p in params]
        frequency = [p.frequency_penalty for p in params]
        repetition = [p.repetition_penalty for p in params]
        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        random_top_ks = [k for k, p in zip(top_ks, random_params, strict=True) if p is not None]
        top_k_bound = max(random_top_ks) if random_top_ks else None
        if top_k_bound is not None and top_k_bound > min(_MAX_TOP_K_BOUND, vocab_size - 1):
            top_k_bound = None

        def put(values: list | torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
            host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
            return to_device(host, device)

        need_repetition = any(r != 1.0 for r in repetition)
        need_penalties = need_repetition or any(presence) or any(frequency)
        counts = prompt_mask = None
        if need_penalties:
            counts = _token_counts([r.output_token_ids for r in requests], vocab_size, device)
        if need_repetition:
            prompt_mask = _token_counts([r.prompt_token_ids for r in requests], vocab_size, device) > 0
        min_rows, min_ids = _min_tokens_pairs(requests, num_prior_outputs, vocab_size)
        controls = _logit_controls(requests, histories, num_prior_outputs, vocab_size, put)
        if grammar_bitmask is None and any(r.grammar is not None for r in requests):
            grammar_bitmask, wait = grammar_bitmask_async(requests, vocab_size)
            wait()
        if grammar_bitmask is not None:
            controls["grammar_bitmask"] = put(grammar_bitmask, None)

        return cls(
            num_rows=len(requests),
            all_greedy=all(greedy),
            all_random=not any(greedy),
            greedy_mask=put(greedy, torch.bool) if any(greedy) and not all(greedy) else None,
            temperature=put(temps, torch.float32) if any(t != 1.0 for t in temps) else None,
            top_k=put(top_ks, torch.int64) if any(k < vocab_size for k in top_ks) else None,
            top_k_bound=top_k_bound,
            top_p=put(top_ps, torch.float32) if any(p < 1.0 for p in top_ps) else None,
            min_p=put(min_ps, torch.float32) if any(p > 0.0 for p in min_ps) else None,
            presence_penalties=put(presence, torch.float32) if any(presence) else None,
            frequency_penalties=put(frequency, torch.float32) if any(frequency) else None,
            repetition_penalties=put(repetition, torch.float32) if need_repetition else None,
            output_token_counts=counts,
            prompt_token_mask=prompt_mask,
            min_tokens_rows=put(min_rows, torch.int64) if min_rows else None,
            min_tokens_token_ids=put(min_ids, torch.int64) if min_ids else None,
            max_num_logprobs=max(logprobs) if logprobs else None,
            generators={i: g for i, g in enumerate(generators) if g is not None and not greedy[i]},
            **controls,
        )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device`; through pinned memory so the copy does not block the host."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _token_counts(token_lists: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[N, V] int32 occurrence counts of each token id in each row's list."""
    n = len(token_lists)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=n)
    # numpy reads Python ints about 8x faster than torch.tensor does, and prompts can be long.
    ids = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    valid = (ids >= 0) & (ids < vocab_size)
    flat_index = to_device(torch.from_numpy(rows[valid] * vocab_size + ids[valid]), device)
    counts = torch.zeros(n * vocab_size, dtype=torch.int32, device=device)
    ones = torch.ones(1, dtype=torch.int32, device=device).expand(flat_index.shape[0])
    counts.scatter_add_(0, flat_index, ones)
    return counts.view(n, vocab_size)


def _min_tokens_pairs(
    requests: Sequence[Request], num_prior_outputs: Sequence[int], vocab_size: int
) -> tuple[list[int], list[int]]:
    """(rows, token ids) that must not be sampled because the row has not reached min_tokens."""
    rows: list[int] = []
    token_ids: list[int] = []
    for row, (request, num_outputs) in enumerate(zip(requests, num_prior_outputs, strict=True)):
        params = request.sampling_params
        if num_outputs >= params.min_tokens:
            continue
        # With ignore_eos the EOS is an ordinary token, so it stays allowed.
        banned = set(params.stop_token_ids or ())
        if not params.ignore_eos:
            banned |= request.eos_token_ids
        for token in sorted(t for t in banned if 0 <= t < vocab_size):
            rows.append(row)
            token_ids.append(token)
    return rows, token_ids


def _logit_controls(
    requests: Sequence[Request],
    histories: Sequence[Sequence[int]] | None,
    num_prior_outputs: Sequence[int],
    vocab_size: int,
    put: Callable[[list | torch.Tensor, torch.dtype | None], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The metadata fields of logit_bias, allowed_token_ids and bad words (none when no row uses them). Only
    rows with bad words read their output history (a copy of the output list: not on every decode step)."""
    params = [r.sampling_params for r in requests]
    fields: dict[str, torch.Tensor] = {}
    bias = [(row, token, value) for row, p in enumerate(params) for token, value in (p.logit_bias or {}).items()]
    if bias:
        fields |= _columns(bias, ("logit_bias_rows", "logit_bias_token_ids", "logit_bias_values"), put, torch.float32)
    allowed = [(row, p.allowed_token_ids) for row, p in enumerate(params) if p.allowed_token_ids]
    if allowed:
        mask = torch.zeros(len(allowed), vocab_size, dtype=torch.bool)
        for i, (_, ids) in enumerate(allowed):
            mask[i, ids] = True
        fields |= {"allowed_rows": put([row for row, _ in allowed], torch.int64), "allowed_mask": put(mask, None)}
    bans = [
        (row, token, required)
        for row, p in enumerate(params)
        if p.bad_words_token_ids
        for history in [histories[row] if histories is not None else requests[row].output_token_ids]
        for token, required in _bad_word_bans(p.bad_words_token_ids, history, num_prior_outputs[row] - len(history))
    ]
    if bans:
        fields |= _columns(bans, ("bad_words_rows", "bad_words_token_ids", "bad_words_required"), put, torch.int64)
    return fields


def _columns(entries: list[tuple], names: tuple[str, ...], put: Callable, value_dtype: torch.dtype) -> dict:
    """(row, token, value) entries as one device tensor per column: rows and tokens int64, values `value_dtype`."""
    dtypes = (torch.int64, torch.int64, value_dtype)
    return {name: put(list(column), dtype) for name, column, dtype in zip(names, zip(*entries), dtypes)}


def _bad_word_bans(words: Sequence[Sequence[int]], history: Sequence[int], num_pending: int) -> set[tuple[int, int]]:
    """(token, required last token or -1) for each bad word that this sample could complete.

    A word's last token is banned when the output ends with the word's other tokens; with a token still
    in flight (`num_pending` = 1) the host checks all but the last of them and leaves that one to the
    device.
    """
    bans = set()
    for word in words:
        *prefix, last = word
        if not prefix:
            bans.add((last, -1))
        elif num_pending == 0:
            if len(history) >= len(prefix) and list(history[len(history) - len(prefix) :]) == prefix:
                bans.add((last, -1))
        elif len(prefix) - 1 <= len(history) and list(history[len(history) - len(prefix) + 1 :]) == prefix[:-1]:
            bans.add((last, prefix[-1]))
    return bans


def grammar_bitmask_async(requests: Sequence[Request], vocab_size: int) -> tuple[torch.Tensor, Callable[[], None]]:
    """A host bitmask [N, ceil(V / 32)] for the rows' grammars (all ones for unconstrained rows), and the wait
    for its filling, which runs on the grammars' pool meanwhile."""
    bitmask = new_grammar_bitmask(len(requests), vocab_size)
    wait = fill_bitmasks_async([(row, r.grammar) for row, r in enumerate(requests) if r.grammar is not None], bitmask)
    return bitmask, wait


def new_grammar_bitmask(num_rows: int, vocab_size: int, pin: bool = False) -> torch.Tensor:
    """An all-ones host bitmask [num_rows, ceil(V / 32)] (every token allowed); `pin`: in page-locked memory, so
    its copy to the GPU (`to_device`) starts without a staging copy."""
    return torch.full((num_rows, bitmask_width(vocab_size)), -1, dtype=torch.int32, pin_memory=pin)
