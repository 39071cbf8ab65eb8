"""Rejection sampling for speculative decoding: verify a proposer's draft tokens against the target model.

Speculation is only worth shipping if it changes speed and nothing else, so verification follows
Leviathan et al. 2023 / Chen et al. 2023 exactly: draft token x_i is accepted with probability
min(1, p(x_i) / q(x_i)); at the first rejection the emitted token comes from the residual
norm(max(0, p - q)); if all drafts are accepted a bonus token comes from p at the next position.
The emitted tokens are then distributed exactly as tokens sampled one at a time from p.

`p` is the target's *final* distribution, after the same penalties, temperature and top-k/top-p/min-p
filtering the normal sampler applies (`forgellm.sampling.sampler.apply_top_k_top_p_min_p`), so every
sampling setting keeps its meaning under speculation. Greedy rows use exact matching instead.

Everything runs on the probabilities' device without a host synchronisation. Each row draws a fixed
number of random values (k uniforms and V exponentials) whatever it accepts, so a seeded request's
result depends only on its seed and its inputs, not on its companions in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RejectionOutput:
    """Tokens emitted by one verification step: accepted drafts, then one recovered or bonus token."""

    token_ids: torch.Tensor  # [B, k + 1] int64; -1 after the last emitted token
    num_accepted: torch.Tensor  # [B] int64 in 0..num_draft_tokens; emitted tokens = num_accepted + 1


def acceptance_probs(
    target_probs: torch.Tensor, draft_token_ids: torch.Tensor, draft_probs: torch.Tensor | None
) -> torch.Tensor:
    """[B, k] probability min(1, p(x_i) / q(x_i)) of accepting each draft token x_i (q one-hot when None).

    `target_probs` may be [B, k, V] or [B, k + 1, V]; only the first k positions are read.
    """
    k = draft_token_ids.shape[1]
    ids = draft_token_ids.clamp_min(0).unsqueeze(-1)  # padding (-1) reads token 0; the caller masks it
    p = target_probs[:, :k].gather(-1, ids).squeeze(-1)
    if draft_probs is None:
        return p.clamp(0.0, 1.0)
    q = draft_probs.gather(-1, ids).squeeze(-1)
    # A token the proposer gave q = 0 cannot have been drawn from q; accept it only if p allows it.
    ratio = torch.where(q > 0, p / torch.where(q > 0, q, 1.0), (p > 0).to(p.dtype))
    return ratio.clamp(0.0, 1.0)


def recovery_probs(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_token_ids: torch.Tensor,
    is_bonus: torch.Tensor,
) -> torch.Tensor:
    """[N, V] distribution of the token emitted after a rejection: norm(max(0, p - q)), or p where `is_bonus`.

    Inputs are one position per row: p [N, V], q [N, V] (None: one-hot at `draft_token_ids` [N]).
    """
    if draft_probs is None:
        residual = target_probs.scatter(-1, draft_token_ids.clamp_min(0).unsqueeze(-1), 0.0)
    else:
        residual = (target_probs - draft_probs).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # No residual mass means p <= q everywhere, i.e. p == q: a rejection then has probability 0, and
    # p is the right fallback for the one that rounding may still produce.
    use_p = is_bonus.unsqueeze(-1) | (mass <= 0)
    residual = residual / torch.where(mass > 0, mass, 1.0)
    return torch.where(use_p, target_probs, residual)


def _accept_mask(uniform: torch.Tensor, accept_probs: torch.Tensor) -> torch.Tensor:
    """Accept where u < a, u ~ U[0, 1): probability exactly a (and never when a = 0)."""
    return uniform < accept_probs


def rejection_sample(
    target_probs: torch.Tensor,
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    greedy: torch.Tensor,
    generators: Sequence[torch.Generator | None] | None = None,
    num_draft_tokens: torch.Tensor | None = None,
    default_generator: torch.Generator | None = None,
) -> RejectionOutput:
    """Verify each row's drafts against the target's final distribution and emit 1..k+1 tokens per row.

    target_probs [B, k+1, V] float; draft_token_ids [B, k] int64 (padding past a row's
    num_draft_tokens may be anything, e.g. -1); draft_probs [B, k, V] or None for deterministic
    proposers such as n-gram lookup; greedy [B] bool: those rows accept while the draft equals the
    argmax of target_probs (ties: lowest id, like the normal sampler's argmax of logits) and then
    emit that argmax; generators[i]: row i's seeded generator or None (then `default_generator`);
    num_draft_tokens [B] int64 in 0..k, None meaning k for every row.

    Greedy rows compare with the argmax of probabilities; softmax may merge logits that differ in the
    last bit, so a caller that needs bit-exact agreement with logits.argmax passes one-hot rows.
    """
    _check_shapes(target_probs, draft_token_ids, draft_probs, greedy, generators, num_draft_tokens)
    batch, k = draft_token_ids.shape
    device = target_probs.device
    rows = torch.arange(batch, device=device)
    positions = torch.arange(k, device=device)
    if num_draft_tokens is None:
        valid = torch.ones(batch, k, dtype=torch.bool, device=device)
        num_drafts = torch.full((batch,), k, dtype=torch.int64, device=device)
    else:
        num_drafts = num_draft_tokens.to(device=device, dtype=torch.int64)
        valid = positions < num_drafts.unsqueeze(1)
    draft_ids = torch.where(valid, draft_token_ids.long(), 0)

    uniform, noise = _draw(batch, k, target_probs.shape[-1], generators, default_generator, target_probs)
    target_argmax = target_probs.argmax(dim=-1)  # [B, k+1]
    accepted_random = _accept_mask(uniform, acceptance_probs(target_probs, draft_ids, draft_probs))
    accepted_greedy = draft_ids == target_argmax[:, :k]
    accepted = torch.where(greedy.unsqueeze(1), accepted_greedy, accepted_random) & valid
    # Tokens are accepted up to the first rejection: the running product is 1 exactly on that prefix.
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)

    # Only the position of the first rejection (or the bonus position) needs a distribution, so
    # [B, V] is gathered there instead of building residuals for all k + 1 positions.
    p_at = target_probs[rows, num_accepted]
    q_at, x_at = None, torch.zeros(batch, dtype=torch.int64, device=device)
    if k > 0:  # with k = 0 every row takes the bonus token and q is never read
        at = num_accepted.clamp_max(k - 1)
        q_at = None if draft_probs is None else draft_probs[rows, at]
        x_at = draft_ids[rows, at]
    weights = recovery_probs(p_at, q_at, x_at, num_accepted >= num_drafts)
    # Exponential race: argmax(w / E), E ~ Exp(1), is an exact draw from w with one kernel and no sync.
    random_last = weights.div(noise).argmax(dim=-1)
    greedy_last = target_argmax[rows, num_accepted]
    last = torch.where(greedy, greedy_last, random_last)

    all_positions = torch.arange(k + 1, device=device)
    padded_drafts = torch.cat([draft_ids, draft_ids.new_zeros(batch, 1)], dim=1)
    accepted_n = num_accepted.unsqueeze(1)
    token_ids = torch.where(all_positions < accepted_n, padded_drafts, -1)
    token_ids = torch.where(all_positions == accepted_n, last.unsqueeze(1), token_ids)
    return RejectionOutput(token_ids=token_ids, num_accepted=num_accepted)


def _draw(
    batch: int,
    k: int,
    vocab_size: int,
    generators: Sequence[torch.Generator | None] | None,
    default_generator: torch.Generator | None,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k uniforms and V Exp(1) values per row; seeded rows draw theirs from their own generator."""
    uniform = torch.empty(batch, k, dtype=torch.float32, device=like.device)
    noise = torch.empty(batch, vocab_size, dtype=torch.float32, device=like.device)
    seeded = [(row, g) for row, g in enumerate(generators or ()) if g is not None]
    if len(seeded) < batch:
        uniform.uniform_(generator=default_generator)
        noise.exponential_(generator=default_generator)
    # The one loop over rows, as in the normal sampler: a generator draws for one row at a time.
    for row, generator in seeded:
        uniform[row].uniform_(generator=generator)
        noise[row].exponential_(generator=generator)
    # An exact 0 draw would turn a zero weight's 0/0 into NaN, which argmax would pick.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return uniform, noise


def _check_shapes(
    target_probs: torch.Tensor,
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    greedy: torch.Tensor,
    generators: Sequence[torch.Generator | None] | None,
    num_draft_tokens: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the shapes when the inputs do not describe one [B, k] batch over V tokens."""
    if draft_token_ids.dim() != 2:
        raise ValueError(f"draft_token_ids must be [B, k], got shape {tuple(draft_token_ids.shape)}")
    batch, k = draft_token_ids.shape
    if target_probs.dim() != 3 or tuple(target_probs.shape[:2]) != (batch, k + 1):
        raise ValueError(
            f"target_probs must be [B, k+1, V] = [{batch}, {k + 1}, V] for draft_token_ids of shape "
            f"{tuple(draft_token_ids.shape)}, got shape {tuple(target_probs.shape)}"
        )
    vocab_size = target_probs.shape[2]
    if draft_probs is not None and tuple(draft_probs.shape) != (batch, k, vocab_size):
        raise ValueError(
            f"draft_probs must be [B, k, V] = [{batch}, {k}, {vocab_size}], got shape {tuple(draft_probs.shape)}"
        )
    if tuple(greedy.shape) != (batch,) or greedy.dtype != torch.bool:
        raise ValueError(f"greedy must be a bool tensor of shape [{batch}], got {greedy.dtype} {tuple(greedy.shape)}")
    if generators is not None and len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch} rows")
    if num_draft_tokens is not None and tuple(num_draft_tokens.shape) != (batch,):
        raise ValueError(f"num_draft_tokens must have shape [{batch}], got shape {tuple(num_draft_tokens.shape)}")
    # num_draft_tokens' values are not range-checked: that would need a host sync every step.
