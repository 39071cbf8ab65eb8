"""EAGLE-3 proposer: a one-layer head drafts from the target's own features (see models/eagle3.py).

After every step the head first catches up on what the target computed in it, for every running
request: at each position i whose next token t_{i+1} is now known it feeds (t_{i+1}, the target's
features at i) and writes its own K/V there, so its cache always holds the target-fed positions
0..T-2 of a request with T tokens. The catch-up's output at T-2 predicts t_T, the first guess; each
further guess feeds the previous guess with the head's own output, one decode batch per guess. Guesses
are the argmax over the draft vocabulary, mapped to target ids (deterministic proposals, so verification
keeps the target's distribution for any sampling settings).

The head's cache is its own (DraftKVCache). A request whose earlier positions the target never computed
while it ran (a prefix-cache hit, a recompute after preemption that hit the cache) has no features
there, nor one the head's cache had no room for: it decodes without drafts from then on (counted in
`num_requests_without_features`). Sharing the target's block table would lift this; not done yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.hf.config_types import ModelArchConfig
from forgellm.models.eagle3 import Eagle3Head, default_aux_layers, load_eagle3_config, load_eagle3_head
from forgellm.spec_decode.config import SpeculativeConfig, check_draft_vocab, check_eagle3_hidden_size
from forgellm.spec_decode.draft_kv_cache import DraftKVCache
from forgellm.spec_decode.draft_model import columns_to_drafts
from forgellm.worker.forward_batch import SequenceChunk, build_host_batch
from forgellm.worker.in_flight import StepHiddenStates
from forgellm.worker.model_runner import allocate_kv_cache, kv_block_bytes


def check_eagle3_head(config: SpeculativeConfig, target: ModelArchConfig) -> ModelArchConfig:
    """The head's config, refused (typed errors) unless it is an EAGLE-3 head for this target."""
    head = load_eagle3_config(Path(config.model).expanduser())
    check_eagle3_hidden_size(target.hidden_size, int(head.raw.get("target_hidden_size", head.hidden_size)), config.model)
    check_draft_vocab(target.vocab_size, head.vocab_size, config.model)
    aux_layers(head, target)
    return head


def aux_layers(head: ModelArchConfig, target: ModelArchConfig) -> tuple[int, ...]:
    """The target layers the head was trained on: its config's `eagle_aux_hidden_state_layer_ids`, or the default."""
    layers = head.raw.get("eagle_aux_hidden_state_layer_ids") or head.raw.get("eagle_config", {}).get(
        "eagle_aux_hidden_state_layer_ids"
    )
    if not layers:
        return default_aux_layers(target.num_hidden_layers)
    if len(layers) != 3 or any(not 0 <= int(i) < target.num_hidden_layers for i in layers):
        raise ConfigError(
            f"the EAGLE-3 head reads target layers {list(layers)} but the target has {target.num_hidden_layers} "
            "layers (three layer ids in 0..L-1 expected): it was trained for another model"
        )
    return tuple(int(i) for i in layers)


@dataclass
class _Job:
    """A request that drafts this step."""

    request: Request
    k: int
    block_ids: list[int]


class Eagle3Proposer:
    """Drafts up to k tokens per request with an EAGLE-3 head over the target's features."""

    def __init__(self, head: Eagle3Head, block_size: int, max_model_len: int, layers: tuple[int, ...]) -> None:
        self.head = head
        self.aux_layers = layers
        self.block_size = block_size
        param = next(head.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_model_len = min(max_model_len, head.config.max_position_embeddings)
        self.kv: DraftKVCache | None = None
        # Positions 0..n-1 of a request hold K/V made from the target's features.
        self.valid_until: dict[str, int] = {}
        # Requests with positions the head has no features for: they decode without drafts.
        self.without_features: set[str] = set()
        self.num_requests_without_features = 0

    @classmethod
    def load(
        cls,
        config: SpeculativeConfig,
        target: nn.Module,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int,
        max_model_len: int,
        load_format: str = "auto",
    ) -> Eagle3Proposer:
        """Load the head next to `target`; the target must then capture `aux_layers` (capture_aux_hidden_states)."""
        arch = check_eagle3_head(config, target.config)
        head = load_eagle3_head(Path(config.model).expanduser(), target.config, dtype, device, load_format == "dummy")
        if head.embed_tokens is None:
            head.share_embedding(target.embed_tokens)
        return cls(head, block_size, max_model_len, aux_layers(arch, target.config))

    @property
    def block_bytes(self) -> int:
        return kv_block_bytes(self.head.config, self.block_size, self.dtype)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        allocate_kv_cache(self.head, num_blocks, self.block_size, self.dtype)
        self.kv = DraftKVCache(num_blocks, self.block_size)

    @torch.inference_mode()
    def propose_for(
        self, requests: Sequence[Request], ks: Sequence[int], hidden_states: StepHiddenStates | None = None
    ) -> list[list[int]]:
        """Catch up on the step's features, then up to ks[i] guesses for each running request."""
        running = {r.request_id: (r, k) for r, k in zip(requests, ks)}
        self.kv.retain(running)
        self.valid_until = {rid: n for rid, n in self.valid_until.items() if rid in running}
        self.without_features &= running.keys()
        entries = self._catch_up_entries(running, hidden_states)
        drafts = {r.request_id: [] for r in requests}
        if entries:
            entries.sort(key=lambda entry: -entry[1].k if entry[1] else 1)  # drafting first, most guesses first
            jobs = [job for _, job in entries if job is not None]
            guesses = self._run(entries, jobs, hidden_states.features)
            for job, tokens in zip(jobs, guesses):
                drafts[job.request.request_id] = tokens
        return [drafts[r.request_id] for r in requests]

    def _catch_up_entries(
        self, running: dict[str, tuple[Request, int]], hidden_states: StepHiddenStates | None
    ) -> list[tuple[tuple[SequenceChunk, range], _Job | None]]:
        """Per running request the target computed: its catch-up chunk and feature rows, and its job if it drafts."""
        entries = []
        for request, start, row, count in [] if hidden_states is None else hidden_states.chunks:
            if request.request_id not in running or request.request_id in self.without_features:
                continue
            num_tokens, k = request.num_tokens, running[request.request_id][1]
            end = min(start + count, num_tokens - 1)  # positions whose next token is known
            if end <= start:
                continue
            if start > self.valid_until.get(request.request_id, 0):  # positions the head never saw features for
                self._give_up(request.request_id)
                continue
            # Guess j (1-based) is made at position num_tokens - 3 + j; the last one stays in the context.
            k = min(k, self.max_model_len - num_tokens + 2) if end == num_tokens - 1 else 0
            block_ids = self.kv.reserve(request.request_id, num_tokens + k - 2 if k > 0 else end)
            if block_ids is None:  # the head's cache is full: these features are lost to it
                self._give_up(request.request_id)
                continue
            self.valid_until[request.request_id] = end
            tokens = request.all_token_ids[start + 1 : end + 1]
            chunk = SequenceChunk(tokens, start, block_ids, [len(tokens) - 1] if k > 0 else [])
            entries.append(((chunk, range(row, row + end - start)), _Job(request, k, block_ids) if k > 0 else None))
        return entries

    def _give_up(self, request_id: str) -> None:
        self.without_features.add(request_id)
        self.num_requests_without_features += 1
        self.valid_until.pop(request_id, None)

    def _run(self, entries: list, jobs: list[_Job], features: torch.Tensor) -> list[list[int]]:
        """The catch-up forward (first guesses), then one decode forward per further guess."""
        pin = self.device.type == "cuda"
        chunks = [chunk for (chunk, _), _ in entries]
        rows = [row for (_, feature_rows), _ in entries for row in feature_rows]
        batch = build_host_batch(chunks, self.block_size, pin=pin).to(self.device)
        fed = features.index_select(0, torch.tensor(rows, device=features.device)).to(self.dtype)
        outputs = self.head(batch.input_ids, batch.positions, fed, batch)
        if not jobs:
            return []
        hidden = outputs[batch.logits_indices]  # the drafting requests come first, in job order
        guesses = self.head.to_target_ids(self.head.compute_logits(hidden).argmax(dim=-1))
        columns = [guesses]
        for step in range(1, jobs[0].k):
            count = sum(job.k > step for job in jobs)
            chunks = [SequenceChunk([0], job.request.num_tokens - 2 + step, job.block_ids, [0]) for job in jobs[:count]]
            batch = build_host_batch(chunks, self.block_size, pin=pin).to(self.device)
            batch.input_ids.copy_(guesses[:count])
            hidden = self.head(batch.input_ids, batch.positions, hidden[:count], batch)
            guesses = self.head.to_target_ids(self.head.compute_logits(hidden).argmax(dim=-1))
            columns.append(guesses)
        return columns_to_drafts(columns)
