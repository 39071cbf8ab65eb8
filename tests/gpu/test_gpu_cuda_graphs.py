"""CUDA graphs change nothing visible: greedy tokens equal enforce_eager=True's, and replays really happen.

Engines have max_num_seqs=16, so the decode ladder is 1, 2, 4, 8, 16 and prefill graphs are 16, 32,
..., 512 tokens. Batch sizes on the ladder replay their own graph; 3 and 13 replay the next size up,
padded; a prefill of 600 tokens runs eager. Both models: the embedded demo (bf16 checkpoint, context
1024 here) and a tiny random Llama (float32, context 256).
"""

from __future__ import annotations

import pytest

from tests.gpu.helpers import completions, count_calls, greedy, random_prompts

pytestmark = pytest.mark.gpu

MODELS = ["demo", "llama"]
DECODE_LADDER = [1, 2, 4, 8, 16]
PREFILL_SIZES = [16, 32, 64, 128, 256, 512]


def graph_and_eager(engines, model: str):  # noqa: ANN001, ANN201 - the engines fixture, two LLMs
    graphs, eager = engines(model), engines(model, enforce_eager=True)
    assert graphs.engine.core.runner.graph_runner is not None, "CUDA graphs were not captured"
    assert eager.engine.core.runner.graph_runner is None
    return graphs, eager


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch_size", [1, 3, 8, 13, 16])
def test_decode_graphs_give_eager_greedy_tokens(engines, model: str, batch_size: int) -> None:
    graphs, eager = graph_and_eager(engines, model)
    prompts = random_prompts([5 + (7 * i) % 40 for i in range(batch_size)], seed=batch_size)
    expected = completions(eager.generate(prompts, greedy(), use_tqdm=False))
    assert completions(graphs.generate(prompts, greedy(), use_tqdm=False)) == expected


@pytest.mark.parametrize(
    "model, prompt_len",
    [("demo", 16), ("demo", 20), ("demo", 512), ("demo", 600), ("llama", 16), ("llama", 20), ("llama", 200)],
)
def test_prefill_graphs_give_eager_greedy_tokens(engines, model: str, prompt_len: int) -> None:
    """A lone prompt: exactly a graph's size (16, 512), padded up to one (20 -> 32, 200 -> 256), too long for
    any (600; the tiny model's context is 256)."""
    graphs, eager = graph_and_eager(engines, model)
    prompts = random_prompts([prompt_len], seed=prompt_len)
    expected = completions(eager.generate(prompts, greedy(), use_tqdm=False))
    assert completions(graphs.generate(prompts, greedy(), use_tqdm=False)) == expected


def test_padded_prefill_graphs_leave_cached_prefixes_intact(engines) -> None:
    """A padded prefill's padding rows write nothing: a prompt cached earlier is served intact afterwards.

    The 20-token prefill replays the 32-token graph right after a 500-token prompt used the 512-token one,
    whose slots for positions 20..31 lie in that prompt's cached second block.
    """
    graphs, eager = graph_and_eager(engines, "demo")
    long_prompt, short_prompt = random_prompts([500, 20], seed=11)
    expected = completions(eager.generate([long_prompt], greedy(), use_tqdm=False))
    assert completions(graphs.generate([long_prompt], greedy(), use_tqdm=False)) == expected
    graphs.generate([short_prompt], greedy(), use_tqdm=False)
    again = graphs.generate([long_prompt], greedy(), use_tqdm=False)
    assert again[0].num_cached_tokens >= 480  # served from the prefix cache
    assert completions(again) == expected


@pytest.mark.parametrize("model", MODELS)
def test_graphs_with_chunked_prefill_mixed_with_decodes(engines, model: str) -> None:
    """A small step budget: prompts are split over steps and mixed with decodes (eager), the rest replays."""
    options = dict(max_num_batched_tokens=64)
    graphs, eager = engines(model, **options), engines(model, enforce_eager=True, **options)
    prompts = random_prompts([150, 9, 70, 33, 2], seed=7)
    expected = completions(eager.generate(prompts, greedy(), use_tqdm=False))
    assert completions(graphs.generate(prompts, greedy(), use_tqdm=False)) == expected


def test_every_shape_is_captured_and_steps_replay_them(engines, monkeypatch) -> None:
    """Decode steps and short lone prefills replay graphs (no eager forward); other steps run eager."""
    llm = engines("demo")
    runner = llm.engine.core.runner
    graph_runner = runner.graph_runner
    expected_keys = {("decode", s) for s in DECODE_LADDER} | {("prefill", s) for s in PREFILL_SIZES}
    assert set(graph_runner.graphs) == expected_keys
    replays = count_calls(monkeypatch, graph_runner, "replay", key=lambda key, host: key)
    eager = count_calls(monkeypatch, runner.model, "forward")

    # Three prompts: one eager prefill step of all three, then 9 decode steps padded to the graph of 4.
    llm.generate(random_prompts([5, 9, 30], seed=1), greedy(10), use_tqdm=False)
    assert replays == {("decode", 4): 9} and eager["forward"] == 1

    # A lone 20-token prompt: the 32-token prefill graph, then 4 decode steps in the graph of 1.
    replays.clear(), eager.clear()
    llm.generate(random_prompts([20], seed=2), greedy(5), use_tqdm=False)
    assert replays == {("prefill", 32): 1, ("decode", 1): 4} and eager["forward"] == 0

    # Longer than the largest prefill graph: eager prefill, then graph decodes.
    replays.clear(), eager.clear()
    llm.generate(random_prompts([600], seed=3), greedy(5), use_tqdm=False)
    assert replays == {("decode", 1): 4} and eager["forward"] == 1


def test_eager_engine_never_replays(engines, monkeypatch) -> None:
    llm = engines("llama", enforce_eager=True)
    eager = count_calls(monkeypatch, llm.engine.core.runner.model, "forward")
    llm.generate(random_prompts([5, 9, 30], seed=1), greedy(10), use_tqdm=False)
    assert eager["forward"] == 10  # one prefill step and nine decode steps, all eager
