"""The all-greedy verify shortcut: the target's argmax up to its first disagreement with the drafts."""

from __future__ import annotations

import torch

from forgellm.sampling.rejection_sampler import rejection_sample
from forgellm.spec_decode.verify import greedy_verify


def logits_choosing(choices: list[list[int]], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(choices), len(choices[0]), vocab)
    for b, row in enumerate(choices):
        for i, token in enumerate(row):
            logits[b, i, token] = 1.0
    return logits


def test_hand_made_cases():
    # The target would pick 1, 2, 3, 4 at the four positions of each row.
    logits = logits_choosing([[1, 2, 3, 4]] * 4)
    drafts = torch.tensor([[1, 2, 3], [1, 5, 3], [0, 2, 3], [1, 2, -1]])  # all right; 2nd wrong; 1st wrong; two drafts
    assert greedy_verify(logits, drafts).tolist() == [[1, 2, 3, 4], [1, 2, -1, -1], [1, -1, -1, -1], [1, 2, 3, -1]]


def test_ties_go_to_the_lowest_id_as_in_plain_greedy_decoding():
    logits = torch.zeros(1, 2, 5)
    logits[0, :, 2] = logits[0, :, 4] = 3.0
    assert greedy_verify(logits, torch.tensor([[4]])).tolist() == [[2, -1]]
    assert greedy_verify(logits, torch.tensor([[2]])).tolist() == [[2, 2]]


def test_matches_rejection_sampling_on_one_hot_rows():
    generator = torch.Generator().manual_seed(0)
    batch, k, vocab = 64, 4, 5  # a small vocabulary: drafts are often right
    logits = torch.randn(batch, k + 1, vocab, generator=generator)
    drafts = torch.randint(0, vocab, (batch, k), generator=generator)
    num_drafts = torch.randint(0, k + 1, (batch,), generator=generator)
    drafts = torch.where(torch.arange(k) < num_drafts.unsqueeze(1), drafts, -1)
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), vocab).float()
    expected = rejection_sample(one_hot, drafts, None, torch.ones(batch, dtype=torch.bool), None, num_drafts)
    assert torch.equal(greedy_verify(logits, drafts), expected.token_ids)
