"""Speculative decoding under tensor and pipeline parallelism on the CPU (gloo, TP=2, PP=2, TP=2 x PP=2): n-gram,
a draft model and EAGLE-3 heads give one device's plain greedy tokens (and, under PP, its drafts). The proposers
run on rank 0 alone (a draft model whole, an EAGLE-3 head over rank 0's features, which tensor parallelism keeps
whole and a pipeline's later stages send with the logits); a head without an embedding of its own gets the
target's whole table from its checkpoint (rank 0's is a vocab shard), equal to one device's."""

from __future__ import annotations

import pytest
import torch

from forgellm import LLM
from forgellm.sampling_params import SamplingParams
from tests.fixtures.make_eagle3_head import make_eagle3_head

PROMPT_IDS = [[11, 12, 13, 14, 15] * 3, [30, 31, 32, 33, 34, 35], list(range(40, 70))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def token_ids(llm: LLM) -> list[list[int]]:
    prompts = [{"prompt_token_ids": ids} for ids in PROMPT_IDS]
    return [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def target(tiny_model_dir):  # noqa: ANN201
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def plain(target):  # noqa: ANN201
    return token_ids(LLM(str(target), dtype="float32", block_size=4))


@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle3", "eagle3-own-embedding"])
def test_speculation_under_tp2_gives_plain_decodings_tokens(target, plain, tmp_path, method) -> None:
    spec = {"method": method.split("-")[0], "num_speculative_tokens": 3}
    if method == "draft_model":
        spec["model"] = str(target)  # the target drafting for itself: every guess is right
    elif method.startswith("eagle3"):
        spec["model"] = str(make_eagle3_head(target, tmp_path / "head", own_embedding=method.endswith("embedding")))
    llm = LLM(str(target), dtype="float32", block_size=4, tensor_parallel_size=2, speculative_config=spec)
    try:
        assert token_ids(llm) == plain
        stats = llm.engine.stats()
        assert stats.num_spec_steps > 0 and stats.num_draft_tokens > 0
        if method == "draft_model":
            assert stats.num_accepted_tokens == stats.num_draft_tokens
        if method == "eagle3":  # the shared table is the target's whole one, not rank 0's half
            head = llm.engine.core.spec_decoder.proposer.head
            whole = LLM(str(target), dtype="float32", num_kv_blocks=8).engine.core.runner.model.embed_tokens.weight
            assert head.target_embedding.parallel.tp_size == 1 and torch.equal(head.target_embedding.weight, whole)
        assert llm.engine.core.kv_cache.usage == 0.0
    finally:
        llm.engine.shutdown()


def recorded_drafts(llm: LLM) -> list[list[list[int]]]:
    """Greedy-generate PROMPT_IDS, recording every proposal rank 0's proposer makes (a list per call)."""
    proposer, calls = llm.engine.core.spec_decoder.proposer, []
    propose_for = proposer.propose_for

    def recording(requests, ks, hidden_states=None):  # noqa: ANN001, ANN202
        drafts = propose_for(requests, ks, hidden_states)
        calls.append([list(d) for d in drafts])
        return drafts

    proposer.propose_for = recording
    assert token_ids(llm) == llm.plain_tokens
    return calls


@pytest.mark.parametrize(("method", "tp"), [("ngram", 1), ("draft_model", 1), ("eagle3", 1), ("eagle3", 2)])
def test_speculation_under_pipeline_parallelism_gives_one_devices_drafts_and_tokens(
    target, plain, tmp_path, method, tp
) -> None:
    """PP=2 (and TP=2 x PP=2): plain decoding's greedy tokens, and the very drafts one device proposes. An EAGLE-3
    head reads target layers 1, 1 and 0 (the tiny target's defaults): layer 1 runs on the second stage, whose
    captured columns reach rank 0 with the logits; without them the drafts differ."""
    spec = {"method": method, "num_speculative_tokens": 3}
    if method == "draft_model":
        spec["model"] = str(target)
    elif method == "eagle3":
        spec["model"] = str(make_eagle3_head(target, tmp_path / "head"))
    one = LLM(str(target), dtype="float32", block_size=4, speculative_config=spec)
    one.plain_tokens = plain
    expected = recorded_drafts(one)
    split = LLM(
        str(target),
        dtype="float32",
        block_size=4,
        tensor_parallel_size=tp,
        pipeline_parallel_size=2,
        speculative_config=spec,
    )
    try:
        split.plain_tokens = plain
        assert recorded_drafts(split) == expected
        assert any(any(d) for call in expected for d in call)  # something was drafted
        assert not hasattr(split.engine.core, "max_steps_in_flight")  # one batch in the pipeline at a time
        assert split.engine.stats().num_accepted_per_position == one.engine.stats().num_accepted_per_position
        assert split.engine.core.kv_cache.usage == 0.0
    finally:
        split.engine.shutdown()


def test_speculation_with_pipeline_micro_batches_is_refused(target) -> None:
    from forgellm.errors import ConfigError

    with pytest.raises(ConfigError, match="use pipeline_micro_batches 0 or 1 with speculative_config"):
        LLM(
            str(target),
            pipeline_parallel_size=2,
            pipeline_micro_batches=2,
            speculative_config={"method": "ngram", "num_speculative_tokens": 3},
        )


def test_a_target_checkpoint_without_an_embedding_is_named_for_a_head_that_shares_it(target, tmp_path) -> None:
    """Under TP a head without its own embedding reads the target's whole table from the checkpoint: a checkpoint
    that has none is a ModelLoadError naming the tensors looked for."""
    from forgellm.errors import ModelLoadError
    from forgellm.hf.config import load_model_config
    from forgellm.models.eagle3 import load_full_embedding

    head = make_eagle3_head(target, tmp_path / "head")  # its checkpoint has no model.embed_tokens.weight
    with pytest.raises(ModelLoadError, match=r"no token embedding \(model.embed_tokens.weight or"):
        load_full_embedding(head, load_model_config(target), torch.float32, torch.device("cpu"))
