"""The EAGLE-3 proposer computes what the head was trained to compute.

tools/train_eagle3.py trains the head in plain torch over whole sequences (EAGLE-3's unrolled
training-time test). Here a seeded head of that trainer is exported in the published layout, loaded by
the engine, and every proposal it makes while generating is recomputed by the trainer's forward over
the same tokens: the target's features at positions 0..T-2, step 0 fed t_{T-1}, later steps fed the
earlier guesses. The guesses must agree, so the paged, incremental inference path (catch-up on each
step's features, K/V of guesses, positions, the draft-to-target map) matches the training math.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from forgellm import LLM, SamplingParams
from forgellm.hf.config import load_model_config
from forgellm.models.eagle3 import default_aux_layers
from forgellm.worker.model_runner import load_model

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train_eagle3.py"


def trainer():  # noqa: ANN201 - the tools/train_eagle3.py module
    spec = importlib.util.spec_from_file_location("train_eagle3", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_eagle3"] = module
    spec.loader.exec_module(module)
    return module


def _recompute(tool, head, arch, target_dir, layers, draft_ids, calls) -> None:  # noqa: ANN001
    """Assert every recorded proposal equals the trainer's forward over the same tokens."""
    model = load_model(Path(target_dir), arch, torch.float32, torch.device("cpu"))
    model.capture_aux_hidden_states(layers, 64)
    embedding = model.embed_tokens.weight.detach()
    for tokens, drafts in calls:
        count = len(tokens)
        features, _ = tool.target_features(model, tokens[: count - 1], torch.device("cpu"))
        extended = torch.tensor(tokens + drafts[:-1])
        embeds = [embedding[extended[s + 1 : s + count]].unsqueeze(0) for s in range(len(drafts))]
        with torch.no_grad():
            logits = head(embeds, features.unsqueeze(0), len(drafts))
        expected = [int(draft_ids[step[0, count - 2].argmax()]) for step in logits]
        assert drafts == expected, f"after {count} tokens"


@pytest.mark.parametrize("batched", [False, True])
def test_inference_guesses_equal_the_training_forward(tiny_model_dir, tmp_path, monkeypatch, batched: bool):
    """One request; or three of different lengths near the end of a short context, so that in one step the
    guess loop runs rows that make different numbers of guesses."""
    tool = trainer()
    target_dir = tiny_model_dir("llama")
    arch = load_model_config(target_dir)
    layers = default_aux_layers(arch.num_hidden_layers)
    torch.manual_seed(0)
    draft_ids = torch.arange(0, arch.vocab_size, 2)  # a draft vocabulary of every other token
    head = tool.TrainableEagle3(arch.hidden_size, 4, 2, 16, 96, len(draft_ids), arch.hidden_size,
                                arch.rms_norm_eps, arch.rope.theta)  # fmt: skip
    with torch.no_grad():  # sharper than the default init, so argmaxes are far from ties
        for param in head.parameters():
            param.mul_(3.0)
    tool.write_head(head, draft_ids, arch, layers, tmp_path / "head", torch.float32)
    spec = {"method": "eagle3", "model": str(tmp_path / "head"), "num_speculative_tokens": 3}
    options = {"max_model_len": 32, "num_kv_blocks": 14} if batched else {}
    llm = LLM(str(target_dir), dtype="float32", device="cpu", block_size=4, speculative_config=spec, **options)
    proposer = llm.engine.core.spec_decoder.proposer
    calls, mixed = [], []
    original = proposer.propose_for

    def recording(requests, ks, hidden_states=None):  # noqa: ANN001, ANN202
        drafts = original(requests, ks, hidden_states)
        calls.extend((list(r.all_token_ids), d) for r, d in zip(requests, drafts) if d)
        mixed.append(len({len(d) for d in drafts if d}) > 1)
        return drafts

    monkeypatch.setattr(proposer, "propose_for", recording)
    prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
    prompts = [prompt, prompt[4:], [30, 31] + prompt + [32, 33]] if batched else [prompt]
    params = [SamplingParams(temperature=0.0, max_tokens=n) for n in ((15, 11, 13) if batched else (16,))]
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert len(calls) >= 4 * len(prompts)
    assert any(mixed) == batched
    _recompute(tool, head, arch, target_dir, layers, draft_ids, calls)
