"""EAGLE-3 proposer: a one-layer head drafts from the target's own features (see models/eagle3.py).

After every step the head first catches up on what the target computed in it: at each position i whose
next token t_{i+1} is now known it feeds (t_{i+1}, the target's features at i) and writes its own K/V
there, so for a request of T tokens its cache holds positions 0..T-2. The catch-up's output at T-2
predicts t_T, the first guess; each further guess feeds the previous guess with the head's own output
(eagle3_guesses.py: all k - 1 of them in one loop, one CUDA graph on a GPU). Guesses are the argmax over the
draft vocabulary mapped to target ids (deterministic proposals: verification keeps the target's distribution
for any sampling settings). A catch-up covers every position the target computed, those of rejected drafts
too (see _catch_up_entries), so after a uniform verify step it is a uniform batch a CUDA graph serves.

The head's K/V live in the target's blocks (its own tensors, indexed by the target's block tables), so
a prefix-cache hit brings the head's K/V of the cached positions with it: every step's catch-up covers
every request the target computed, speculating or not. The scheduler holds k lookahead slots past each
request's tokens (`num_lookahead_tokens`) for the guesses' K/V; a request without them guesses less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from forgellm.distributed import SINGLE_DEVICE
from forgellm.engine.request import Request
from forgellm.errors import ConfigError
from forgellm.hf.config_types import ModelArchConfig
from forgellm.models.eagle3 import (
    Eagle3Head,
    default_aux_layers,
    load_eagle3_config,
    load_eagle3_head,
    load_full_embedding,
)
from forgellm.spec_decode.config import ProposerSetup, SpeculativeConfig, check_draft_vocab, check_eagle3_hidden_size
from forgellm.spec_decode.eagle3_guesses import Eagle3Guesses
from forgellm.spec_decode.guess_inputs import GuessInputs
from forgellm.worker.cuda_graphs import CudaGraphRunner
from forgellm.worker.forward_batch import ForwardBatch, SequenceChunk
from forgellm.worker.in_flight import StepHiddenStates
from forgellm.worker.kv_cache_memory import allocate_kv_cache, kv_block_bytes


def check_eagle3_head(config: SpeculativeConfig, target: ModelArchConfig) -> ModelArchConfig:
    """The head's config, refused (typed errors) unless it is an EAGLE-3 head for this target."""
    head = load_eagle3_config(Path(config.model).expanduser())
    check_eagle3_hidden_size(
        target.hidden_size, int(head.raw.get("target_hidden_size", head.hidden_size)), config.model
    )
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


def eagle3_target_layers(config: SpeculativeConfig | None, target: ModelArchConfig) -> tuple[int, ...]:
    """The target layers whose inputs an EAGLE-3 head reads (none for the other methods): a pipeline's later
    stages capture theirs for rank 0."""
    if config is None or config.method != "eagle3":
        return ()
    return aux_layers(check_eagle3_head(config, target), target)


@dataclass
class _Job:
    """A request that drafts this step, from row `row` of the catch-up's logits rows."""

    request: Request
    k: int
    block_ids: list[int]
    row: int = 0


class _HeadOverFeatures(nn.Module):
    """The head as a CudaGraphRunner drives a model, forward(input_ids, positions, batch): its features come
    from a static buffer filled before each forward (a graph reads the buffer captured)."""

    def __init__(self, head: Eagle3Head, width: int) -> None:
        super().__init__()
        self.head = head
        self.width = width
        self.features = torch.empty(0)

    def allocate(self, rows: int) -> None:
        param = next(self.head.parameters())
        self.features = torch.zeros(rows, self.width, dtype=param.dtype, device=param.device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self.head(input_ids, positions, self.features[: input_ids.shape[0]], batch)


class Eagle3Proposer:
    """Drafts up to k tokens per request with an EAGLE-3 head over the target's features."""

    def __init__(self, head: Eagle3Head, block_size: int, max_model_len: int, layers: tuple[int, ...], k: int) -> None:
        self.head = head
        self.aux_layers = layers
        self.block_size = block_size
        self.k = k
        param = next(head.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_model_len = min(max_model_len, head.config.max_position_embeddings)
        self.inputs = GuessInputs(block_size, self.device)
        # The catch-up's graphs (GPU, capture_cuda_graphs) read the target's 3 H_t wide features from a buffer.
        self.catch_up = _HeadOverFeatures(head, int(head.fc.weight.shape[-1]))
        self.catch_up_graphs: CudaGraphRunner | None = None
        self.guesses: Eagle3Guesses | None = None  # guesses 2..k, sized by prepare_host_buffers

    @classmethod
    def load(cls, config: SpeculativeConfig, setup: ProposerSetup) -> Eagle3Proposer:
        """Load the head next to the target, which must then capture `aux_layers` (capture_aux_hidden_states)."""
        target = setup.target
        arch = check_eagle3_head(config, target.config)
        path = Path(config.model).expanduser()
        head = load_eagle3_head(path, target.config, setup.dtype, setup.device, setup.load_format == "dummy")
        if head.embed_tokens is None:
            embedding = target.embed_tokens
            if getattr(target, "parallel", SINGLE_DEVICE).tp_size > 1:  # rank 0's shard: the head needs every row
                random = setup.load_format == "dummy"
                embedding = load_full_embedding(setup.model_dir, target.config, setup.dtype, setup.device, random)
            head.share_embedding(embedding)
        layers = aux_layers(arch, target.config)
        return cls(head, setup.block_size, setup.max_model_len, layers, config.num_speculative_tokens)

    @property
    def block_bytes(self) -> int:
        return kv_block_bytes(self.head, self.block_size, self.dtype)

    def prepare_host_buffers(self, max_num_batched_tokens: int, max_num_seqs: int, k: int) -> None:
        """Pin the inputs of the catch-up and the guess loop once (GPU only); size the loop's device buffers."""
        max_blocks = -(-self.max_model_len // self.block_size)
        self.inputs.prepare(max_num_batched_tokens, max_num_seqs, max_blocks, 2)
        if k > 1:
            self.guesses = Eagle3Guesses(
                self.head, k - 1, max_num_seqs, max_blocks, self.max_model_len, self.block_size
            )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """The head's K/V for as many blocks as the target has: it is indexed by the target's block tables."""
        allocate_kv_cache(self.head, num_blocks, self.block_size, self.dtype)

    def capture_cuda_graphs(self, max_num_seqs: int, max_prefill_tokens: int) -> None:
        """Graphs for the catch-ups of uniform steps (k + 1 tokens per request after verifying k drafts, one
        after plain decoding, one request's prefill) and for the guess loop (after allocate_kv_cache)."""
        max_blocks = -(-self.max_model_len // self.block_size)
        self.catch_up_graphs = CudaGraphRunner(
            self.catch_up, max_num_seqs, max_blocks, self.max_model_len, self.device, max_prefill_tokens, self.k + 1
        )
        self.catch_up.allocate(self.catch_up_graphs.input_ids.shape[0])
        self.catch_up_graphs.capture()
        if self.guesses is not None:
            self.guesses.capture()

    @torch.inference_mode()
    def propose_for(
        self, requests: Sequence[Request], ks: Sequence[int], hidden_states: StepHiddenStates | None = None
    ) -> list[list[int]]:
        """Catch up on the step's features, then up to ks[i] guesses for each running request."""
        wanted = {r.request_id: k for r, k in zip(requests, ks) if k > 0}
        entries = [] if hidden_states is None else self._catch_up_entries(hidden_states, wanted)
        drafts = {r.request_id: [] for r in requests}
        if entries:
            entries.sort(key=lambda entry: -entry[2].k if entry[2] else 1)  # drafting first, most guesses first
            jobs = [job for _, _, job in entries if job is not None]
            for job, guesses in zip(jobs, self._run(entries, jobs, hidden_states.features)):
                drafts[job.request.request_id] = guesses
        return [drafts[r.request_id] for r in requests]

    def _catch_up_entries(self, hidden_states: StepHiddenStates, wanted: dict[str, int]) -> list:
        """(chunk, feature rows, job or None) for every request the target computed positions of.

        A chunk covers every position the target computed, also those past the request's tokens (rejected
        drafts, the last token): fed a filler token, they write K/V that the guesses overwrite before any
        forward reads it (a guess writes its position, then attends). So after verifying k drafts every
        request's catch-up is k + 1 tokens long, a uniform batch that a CUDA graph serves.
        """
        entries = []
        for request, start, row, count, block_ids in hidden_states.chunks:
            num_tokens = request.num_tokens
            last = num_tokens - 2  # the last position whose next token is known: its output makes guess 1
            k = wanted.get(request.request_id, 0) if start <= last < start + count else 0
            # Guess j (1-based) writes position num_tokens - 3 + j: within the context and the held slots.
            k = min(k, self.max_model_len - num_tokens + 2, len(block_ids) * self.block_size - num_tokens + 2)
            tokens = request.all_token_ids[start + 1 : start + count + 1]
            tokens = tokens + [0] * (count - len(tokens))
            chunk = SequenceChunk(tokens, start, block_ids, [])
            job = _Job(request, k, block_ids, last - start) if k > 0 else None
            entries.append((chunk, range(row, row + count), job))
        return entries

    def _run(self, entries: list, jobs: list[_Job], features: torch.Tensor) -> list[list[int]]:
        """The catch-up forward (first guesses), then the further guesses' loop (one graph replay on a GPU)."""
        # Index tensors are made before anything launches: a copy from pageable memory waits for the device.
        host = self._catch_up_batch(entries, jobs)
        rows = [row for _, feature_rows, _ in entries for row in feature_rows]
        if rows == list(range(len(rows))):  # every row of the step, in order (all requests catch up alike)
            features = features[: len(rows)]
        else:
            features = features.index_select(0, torch.tensor(rows, device=features.device))
        job_rows = torch.tensor([job.row for job in jobs], device=self.device) if jobs else None
        hidden = self._catch_up(host, features)
        if not jobs:
            return []
        hidden = hidden.index_select(0, job_rows)
        first = self.head.to_target_ids(self.head.compute_logits(hidden).argmax(dim=-1))
        looping = [job for job in jobs if job.k > 1]  # a prefix: jobs are sorted by k
        if not looping:
            return [[guess] for guess in first.tolist()]
        n = len(looping)
        # Guess 2 is computed at position T - 1, the request's last token's.
        chunks = [SequenceChunk([0], job.request.num_tokens - 1, job.block_ids, [0]) for job in looping]
        host = self.inputs.batch(chunks, 1)
        steps = self.inputs.steps([job.k - 1 for job in looping])
        rest = self.guesses.run(host, steps, first[:n], hidden[:n])  # [k - 1, n]
        flat = torch.cat([first, rest.t().flatten()]).tolist()
        later = self.guesses.num_steps
        return [
            [flat[i]] + flat[len(jobs) + i * later : len(jobs) + i * later + job.k - 1] if i < n else [flat[i]]
            for i, job in enumerate(jobs)
        ]

    def _catch_up_batch(self, entries: list, jobs: list[_Job]) -> ForwardBatch:
        """The catch-up's host batch; its output rows: every token's if all chunks are as long (a graph's
        uniform batch, or a single request), else each job's last known position. Sets each job's row."""
        chunks = [chunk for chunk, _, _ in entries]
        uniform = len({len(chunk.token_ids) for chunk in chunks}) == 1
        offset = 0
        for chunk, _, job in entries:
            if uniform:
                chunk.logits_positions = list(range(len(chunk.token_ids)))
            elif job is not None:
                chunk.logits_positions = [job.row]
            if job is not None:
                job.row = offset + chunk.logits_positions.index(job.row)
            offset += len(chunk.logits_positions)
        return self.inputs.batch(chunks, 0)

    def _catch_up(self, host: ForwardBatch, features: torch.Tensor) -> torch.Tensor:
        """The head's outputs at the catch-up's logits rows: a graph replay when one fits, else eager."""
        runner = self.catch_up_graphs
        key = None if runner is None else runner.key_for(host)
        if key is None:
            batch = host.to(self.device)
            return self.head(batch.input_ids, batch.positions, features.to(self.dtype), batch)[batch.logits_indices]
        runner.load(host, key)
        self.catch_up.features[: features.shape[0]].copy_(features)
        return runner.replay(key, host)
