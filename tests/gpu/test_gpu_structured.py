"""Constrained decoding on a GPU: the grammar bitmask is applied to CUDA logits inside the sampler, with CUDA
graphs, asynchronous scheduling (a constrained row makes the next step wait for its token) and speculative
decoding (constrained rows do not draft) in the same batch as unconstrained rows. The CPU suite checks the
same constraints with `jsonschema`; the GPU image has no jsonschema, so outputs are checked by `json.loads`,
`re.fullmatch` and the schema's few rules written out."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from forgellm import SamplingParams
from tests.gpu.helpers import completions, greedy

pytestmark = pytest.mark.gpu

ITEMS = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4}
RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
PHONE = r"\+1-[0-9]{3}-[0-9]{4}"
SUM_GRAMMAR = 'root ::= num " + " num " = " num\nnum ::= [1-9] [0-9]?'
PROMPTS = ["Give me the record as JSON:", "def parse(data):", "The answer is", "import json\n"]


def _items_ok(text: str) -> bool:
    value = json.loads(text)
    return isinstance(value, list) and 1 <= len(value) <= 4 and all(isinstance(v, bool) for v in value)


def _record_ok(text: str) -> bool:
    value = json.loads(text)
    return (
        set(value) == {"name", "age"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 12
        and type(value["age"]) is int
        and 0 <= value["age"] <= 120
    )


CONSTRAINTS = {
    "items": ({"json": ITEMS}, _items_ok),
    "record": ({"json": RECORD, "disable_any_whitespace": True}, _record_ok),
    "phone": ({"regex": PHONE}, lambda text: re.fullmatch(PHONE, text) is not None),
    "sum": ({"grammar": SUM_GRAMMAR}, lambda text: re.fullmatch(r"[1-9][0-9]? \+ [1-9][0-9]? = [1-9][0-9]?", text)),
    "choice": ({"choice": ["red", "green", "blue"]}, lambda text: text in ("red", "green", "blue")),
}


@pytest.fixture(autouse=True)
def _needs_xgrammar() -> None:
    if importlib.util.find_spec("xgrammar") is None:  # fail, not skip: a skipped GPU test reads as a pass
        pytest.fail("the structured-output GPU tests need xgrammar: pip install 'forgellm[structured]'")


def mixed_batch(samples_per_constraint: int, temperature: float) -> tuple[list[str], list[SamplingParams], list]:
    """Every constraint, n = 4 per request, interleaved with unconstrained requests."""
    prompts, params, kinds = [], [], []
    for i in range(samples_per_constraint // 4):
        for name, (constraint, _) in CONSTRAINTS.items():
            prompts.append(PROMPTS[i % len(PROMPTS)])
            params.append(
                SamplingParams(temperature=temperature, max_tokens=256, n=4, seed=i, structured_outputs=constraint)
            )
            kinds.append(name)
        prompts.append(PROMPTS[i % len(PROMPTS)])
        params.append(SamplingParams(temperature=temperature, max_tokens=12, seed=i, ignore_eos=True))
        kinds.append(None)
    return prompts, params, kinds


def generate(llm, temperature: float, samples: int = 32) -> list[tuple[str | None, list[tuple[int, ...]], list]]:  # noqa: ANN001
    prompts, params, kinds = mixed_batch(samples, temperature)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [(kind, [tuple(c.token_ids) for c in out.outputs], out.outputs) for kind, out in zip(kinds, outputs)]


def assert_valid(results) -> None:  # noqa: ANN001
    for kind, _, outputs in results:
        if kind is None:
            continue
        for completion in outputs:
            assert completion.finish_reason == "stop", (kind, completion.text)
            assert CONSTRAINTS[kind][1](completion.text), (kind, completion.text)


@pytest.mark.parametrize("async_scheduling", ["on", "off"])
def test_sampled_outputs_are_valid_in_a_mixed_graphed_batch(engines, async_scheduling: str) -> None:
    llm = engines("demo", async_scheduling=async_scheduling)
    assert llm.engine.core.async_scheduling == (async_scheduling == "on")
    results = generate(llm, temperature=1.0, samples=64)
    assert_valid(results)
    assert len({c.text for kind, _, cs in results if kind == "record" for c in cs}) > 8  # sampled, not one answer


def test_asynchronous_scheduling_gives_the_same_constrained_tokens(engines) -> None:
    on, off = engines("demo", async_scheduling="on"), engines("demo", async_scheduling="off")
    greedy_on, greedy_off = generate(on, temperature=0.0), generate(off, temperature=0.0)
    assert_valid(greedy_on)
    assert [tokens for _, tokens, _ in greedy_on] == [tokens for _, tokens, _ in greedy_off]


def test_speculative_engine_serves_constrained_rows_without_drafts_beside_drafting_ones(engines) -> None:
    plain = engines("demo", dtype="float32", async_scheduling="off")
    spec = engines("demo", dtype="float32", speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    spec_results, plain_results = generate(spec, temperature=0.0), generate(plain, temperature=0.0)
    assert_valid(spec_results)
    assert [tokens for _, tokens, _ in spec_results] == [tokens for _, tokens, _ in plain_results]
    # Beside a constrained request, one whose prompt repeats itself drafts (n-gram lookup) and is verified.
    prompts = ["1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4,", "The answer is"]
    params = [greedy(48), SamplingParams(temperature=0.0, max_tokens=64, structured_outputs={"regex": PHONE})]
    drafted = spec.engine.stats().num_draft_tokens
    together = spec.generate(prompts, params, use_tqdm=False)
    assert spec.engine.stats().num_draft_tokens > drafted
    assert re.fullmatch(PHONE, together[1].outputs[0].text)
    assert completions(together) == completions(plain.generate(prompts, params, use_tqdm=False))


def test_logit_controls_on_cuda_logits(engines) -> None:
    llm = engines("demo")
    biased = llm.generate(["The answer is"], greedy(16, logit_bias={5: 100.0}), use_tqdm=False)
    assert set(biased[0].outputs[0].token_ids) == {5}  # +100 on one id wins every greedy step
    allowed = llm.generate(["The answer is"], greedy(16, allowed_token_ids=[7, 8, 9]), use_tqdm=False)
    assert set(allowed[0].outputs[0].token_ids) <= {7, 8, 9}
    free = llm.generate(["The answer is"], greedy(16), use_tqdm=False)[0].outputs[0].token_ids
    banned = llm.generate(["The answer is"], greedy(16, bad_words_token_ids=[[free[0]]]), use_tqdm=False)
    assert free[0] not in banned[0].outputs[0].token_ids
