"""Benchmark requests: seeded random prompts, length ranges, ShareGPT loading and filtering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgellm.bench.datasets import load_sharegpt, parse_range, random_requests


def test_parse_range() -> None:
    assert parse_range("64:256") == (64, 256)
    assert parse_range("5:5") == (5, 5)
    for bad in ("64", "1:2:3", "a:b", "0:4", "9:3"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_random_requests_fixed_lengths_are_seeded() -> None:
    first = random_requests(5, 12, 7, vocab_size=100, seed=3)
    again = random_requests(5, 12, 7, vocab_size=100, seed=3)
    other = random_requests(5, 12, 7, vocab_size=100, seed=4)
    assert first == again and first != other
    assert all(len(r.prompt_token_ids) == 12 and r.output_len == 7 for r in first)
    assert all(0 <= t < 100 for r in first for t in r.prompt_token_ids)
    assert len({tuple(r.prompt_token_ids) for r in first}) == 5  # distinct prompts: no prefix-cache hits


def test_random_requests_ranges() -> None:
    requests = random_requests(200, (4, 9), (1, 3), vocab_size=50, seed=0)
    input_lens = {len(r.prompt_token_ids) for r in requests}
    output_lens = {r.output_len for r in requests}
    assert input_lens == set(range(4, 10)) and output_lens == {1, 2, 3}  # both ends included


def test_random_requests_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        random_requests(0, 4, 4, vocab_size=10)
    with pytest.raises(ValueError):
        random_requests(1, 0, 4, vocab_size=10)


def encode(text: str) -> list[int]:
    """One token per word: lengths are easy to reason about."""
    return [len(word) for word in text.split()]


def conversation(prompt_words: int, reply_words: int, **extra: object) -> dict:
    return {
        "id": "x",
        "conversations": [
            {"from": "human", "value": " ".join(["w"] * prompt_words)},
            {"from": "gpt", "value": " ".join(["r"] * reply_words)},
        ],
        **extra,
    }


@pytest.fixture
def sharegpt_file(tmp_path: Path) -> Path:
    data = [
        conversation(10, 20),
        conversation(5, 6),
        conversation(2, 50),  # prompt too short
        conversation(10, 2),  # reply too short
        conversation(2000, 10),  # prompt too long
        conversation(1000, 1100),  # prompt + reply too long
        {"conversations": [{"from": "human", "value": "only one turn"}]},
        {"no": "conversations"},
        "not even a dict",
        conversation(30, 40),
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return path


def test_load_sharegpt_filters_and_measures(sharegpt_file: Path) -> None:
    requests = load_sharegpt(sharegpt_file, 100, encode, seed=0)
    assert sorted((len(r.prompt_token_ids), r.output_len) for r in requests) == [(5, 6), (10, 20), (30, 40)]


def test_load_sharegpt_is_seeded_and_limited(sharegpt_file: Path) -> None:
    first = load_sharegpt(sharegpt_file, 2, encode, seed=1)
    assert len(first) == 2
    assert first == load_sharegpt(sharegpt_file, 2, encode, seed=1)
    orders = {tuple(len(r.prompt_token_ids) for r in load_sharegpt(sharegpt_file, 3, encode, seed=s)) for s in range(8)}
    assert len(orders) > 1  # the seed shuffles


def test_load_sharegpt_fixed_output_len(sharegpt_file: Path) -> None:
    requests = load_sharegpt(sharegpt_file, 100, encode, output_len=3)
    # Once the output length is fixed, a short or long reply no longer matters.
    assert {r.output_len for r in requests} == {3}
    assert sorted(len(r.prompt_token_ids) for r in requests) == [5, 10, 10, 30, 1000]


def test_load_sharegpt_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_sharegpt(tmp_path / "missing.json", 1, encode)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sharegpt(bad, 1, encode)
    bad.write_text(json.dumps({"conversations": []}))
    with pytest.raises(ValueError, match="JSON list"):
        load_sharegpt(bad, 1, encode)
    bad.write_text(json.dumps([conversation(1, 1)]))
    with pytest.raises(ValueError, match="no conversation usable"):
        load_sharegpt(bad, 1, encode)
