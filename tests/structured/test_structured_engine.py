"""Constrained decoding with the demo model on the CPU: the demo is tiny, so only the constraint makes its
output valid. Every sampled output (temperature 1) is checked by `jsonschema` or `re.fullmatch`: 200 per
constraint, n = 4, batched with unconstrained requests, under forced preemption and with asynchronous
scheduling on; bad constraints are typed errors naming the field, and the engine keeps serving."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from forgellm import LLM, SamplingParams
from forgellm.errors import InvalidRequestError

pytest.importorskip("xgrammar")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "scores": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}
ITEMS = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4}
PHONE = r"\+1-[0-9]{3}-[0-9]{4}"
SUM_GRAMMAR = 'root ::= num " + " num " = " num\nnum ::= [1-9] [0-9]?'
CONSTRAINTS = {
    # Compact: with any whitespace allowed the tiny demo spends its tokens on it (each run is bounded, but a
    # five-field record has many runs); the small array below keeps the default whitespace.
    "person": (
        {"json": PERSON, "disable_any_whitespace": True},
        lambda text: jsonschema.validate(json.loads(text), PERSON),
    ),
    "items": ({"json": ITEMS}, lambda text: jsonschema.validate(json.loads(text), ITEMS)),
    "phone": ({"regex": PHONE}, lambda text: _match(PHONE, text)),
    "sum": ({"grammar": SUM_GRAMMAR}, lambda text: _match(r"[1-9][0-9]? \+ [1-9][0-9]? = [1-9][0-9]?", text)),
    "choice": ({"choice": ["red", "green", "blue"]}, lambda text: _match("red|green|blue", text)),
}
PROMPTS = ["Give me the record as JSON:", "def parse(data):", "The answer is", "import json\n"]


def _match(pattern: str, text: str) -> None:
    assert re.fullmatch(pattern, text), text


@pytest.fixture(scope="module")
def demo() -> LLM:
    return LLM(device="cpu", seed=0)


def run(llm: LLM, samples: int, names: list[str], n: int = 4, max_tokens: int = 160) -> dict[str, list]:
    """`samples` outputs per constraint (n per request), interleaved with unconstrained requests."""
    prompts, params, kinds = [], [], []
    for i in range(samples // n):
        for name in names:
            prompts.append(PROMPTS[i % len(PROMPTS)])
            constraint = CONSTRAINTS[name][0]
            params.append(
                SamplingParams(temperature=1.0, max_tokens=max_tokens, n=n, seed=i, structured_outputs=constraint)
            )
            kinds.append(name)
        prompts.append(PROMPTS[i % len(PROMPTS)])
        params.append(SamplingParams(temperature=1.0, max_tokens=8, seed=i))
        kinds.append(None)
    outputs = {name: [] for name in names}
    for kind, out in zip(kinds, llm.generate(prompts, params, use_tqdm=False)):
        if kind is not None:
            outputs[kind].extend(out.outputs)
    return outputs


def assert_all_valid(outputs: dict[str, list]) -> None:
    for name, completions in outputs.items():
        check = CONSTRAINTS[name][1]
        for completion in completions:
            assert completion.finish_reason == "stop", (name, completion.text)
            check(completion.text)


def test_every_sample_is_valid_200_per_constraint(demo):
    outputs = run(demo, 200, list(CONSTRAINTS))
    assert all(len(v) == 200 for v in outputs.values())
    assert_all_valid(outputs)
    assert len({c.text for c in outputs["person"]}) > 100  # sampled, not one answer repeated


def test_valid_under_preemption_and_with_asynchronous_scheduling():
    cramped = LLM(device="cpu", seed=0, num_kv_blocks=24, max_num_seqs=16)
    outputs = run(cramped, 32, ["person", "phone"])
    assert cramped.engine.stats().num_preemptions > 0
    assert_all_valid(outputs)
    overlapped = LLM(device="cpu", seed=0, async_scheduling="on")
    assert overlapped.engine.core.async_scheduling
    assert_all_valid(run(overlapped, 32, ["person", "sum", "choice"]))


def test_logprobs_report_the_constrained_distribution(demo):
    """Few tokens can spell "yes" (y, ye, yes, e, es, s, then EOS): their probabilities sum to 1 at every
    step, and every other token reported has logprob -inf."""
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=5, structured_outputs={"choice": ["yes"]})
    out = demo.generate(["Answer:"], params, use_tqdm=False)[0].outputs[0]
    assert out.text == "yes" and out.finish_reason == "stop"
    for position in out.logprobs:
        finite = [entry for entry in position.values() if entry.logprob > -math.inf]
        assert math.isclose(sum(math.exp(entry.logprob) for entry in finite), 1.0, abs_tol=1e-3)
        assert len(finite) < len(position)  # masked tokens are there, at -inf


def test_a_grammar_that_cannot_finish_in_max_tokens_ends_with_length(demo):
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=0, structured_outputs={"regex": "(ab)+c{40}"})
    out = demo.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and re.fullmatch("(ab)+c*", out.text)


@pytest.mark.parametrize(
    ("constraint", "param"),
    [
        ({"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "structured_outputs.json"),
        ({"json": "{not json"}, "structured_outputs.json"),
        ({"regex": "(unclosed"}, "structured_outputs.regex"),
        ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar"),
    ],
)
def test_a_constraint_that_does_not_compile_is_refused_and_the_engine_goes_on(demo, constraint, param):
    with pytest.raises(InvalidRequestError, match="does not compile") as err:
        demo.generate(["x"], SamplingParams(structured_outputs=constraint), use_tqdm=False)
    assert err.value.param == param
    ok = demo.generate(["x"], SamplingParams(max_tokens=8, structured_outputs={"choice": ["fine"]}), use_tqdm=False)
    assert ok[0].outputs[0].text == "fine"


def test_llm_chat_renders_tools_and_a_structural_tag_forces_the_call(demo):
    """The Python API: LLM.chat(tools=...) shows the tools to the model (the demo's template renders them),
    and the server's forcing grammar works here too, through SamplingParams."""
    from forgellm.serve.tool_parsers import TOOL_PARSERS
    from forgellm.serve.tools import ToolCalling

    tool = {"type": "function", "function": {"name": "lookup", "parameters": PERSON["properties"]["address"]}}
    messages = [{"role": "user", "content": "Where is the office?"}]
    assert demo.render_chat(messages, tools=[tool]) != demo.render_chat(messages)
    calling = ToolCalling(TOOL_PARSERS["hermes"](), [tool], "required", parallel=False)
    params = SamplingParams(temperature=1.0, max_tokens=80, seed=0, structured_outputs=calling.constraint())
    text = demo.chat(messages, params, tools=[tool], use_tqdm=False)[0].outputs[0].text
    message, finish_reason = calling.message(text, "stop")
    assert finish_reason == "tool_calls" and message["tool_calls"][0]["function"]["name"] == "lookup"
    jsonschema.validate(json.loads(message["tool_calls"][0]["function"]["arguments"]), PERSON["properties"]["address"])


def test_a_token_the_grammar_refuses_stops_the_request_and_an_ended_grammar_masks_nothing(demo):
    """Request.append_token feeds the grammar; a token it does not allow (never sampled under the mask, but
    e.g. forced) is recorded and check_stop ends the request; a finished grammar leaves its bitmask row
    all ones (a request computed once more after it ended, under async scheduling, is not masked)."""
    import torch

    from forgellm.engine.request import Request, RequestStatus
    from forgellm.scheduling.stop_checker import check_stop
    from forgellm.structured.params import StructuredOutputsParams
    from forgellm.structured.state import bitmask_width

    constraint = StructuredOutputsParams(choice=["yes"])
    grammars = demo.engine.input_processor.grammars
    request = Request("r", [5, 6], SamplingParams(), 8, grammar=grammars.new_state(constraint))
    no = demo.get_tokenizer().encode("no", add_special_tokens=False)[0]
    request.append_token(no)
    assert request.grammar.rejected_token == no
    assert check_stop(request, no, 2048) and request.status is RequestStatus.FINISHED_STOPPED
    bitmask = torch.zeros(1, bitmask_width(grammars.vocab_size), dtype=torch.int32)
    request.grammar.fill_bitmask(bitmask, 0)
    assert not bitmask.any()  # left as the caller filled it
    fresh = grammars.new_state(constraint)
    fresh.fill_bitmask(bitmask, 0)
    assert 0 < int(torch.tensor([bin(w & 0xFFFFFFFF).count("1") for w in bitmask[0].tolist()]).sum()) < 64


def test_async_scheduling_keeps_the_forward_overlap_and_gives_the_sync_tokens():
    """Under async scheduling a step with a constrained request whose last token is in flight queues its
    forward pass first (launch with defer_sampling), collects the step before (advancing the grammar),
    then queues its sampling: the tokens, logprobs and finish reasons are those of synchronous scheduling."""
    requests = []
    for i, name in enumerate(["person", "phone", "sum", "choice", "items"]):
        constraint = CONSTRAINTS[name][0]
        requests.append(SamplingParams(temperature=0.0, max_tokens=60, logprobs=2, structured_outputs=constraint))
        requests.append(SamplingParams(temperature=1.0, seed=i, max_tokens=60, n=2, structured_outputs=constraint))
    requests.append(SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, presence_penalty=1.5))
    requests.append(
        SamplingParams(temperature=0.0, max_tokens=60, repetition_penalty=1.3, structured_outputs={"regex": PHONE})
    )
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(requests))]

    def outputs(llm: LLM) -> list:
        results = llm.generate(prompts, requests, use_tqdm=False)
        return [
            [(c.token_ids, c.finish_reason, c.logprobs and [sorted(e) for e in c.logprobs]) for c in o.outputs]
            for o in results
        ]

    overlapped = LLM(device="cpu", seed=0, async_scheduling="on")
    runner = overlapped.engine.core.runner
    order: list[str] = []
    launch, collect, sample_deferred = runner.launch, runner.collect, runner.sample_deferred

    def recording_launch(*args, defer_sampling=False, **kwargs):  # noqa: ANN002, ANN003, ANN202
        order.append("launch-deferred" if defer_sampling else "launch")
        return launch(*args, defer_sampling=defer_sampling, **kwargs)

    def recording(name, method):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            order.append(name)
            return method(*args, **kwargs)

        return wrapper

    runner.launch = recording_launch
    runner.collect, runner.sample_deferred = recording("collect", collect), recording("sample", sample_deferred)
    runner.prefetch_masks = recording("prefetch", runner.prefetch_masks)
    got = outputs(overlapped)
    assert got == outputs(LLM(device="cpu", seed=0, async_scheduling="off"))
    deferred = [i for i, event in enumerate(order) if event == "launch-deferred"]
    assert len(deferred) > 20  # steady decoding defers every step
    for i in deferred:
        # The forward is queued, the step before read, its masks started; the sampling is queued next, before
        # any other forward pass.
        assert order[i + 1 : i + 3] == ["collect", "prefetch"], order[i : i + 3]
        later = order[i + 3 :]
        if later:
            assert later[0] == "sample", order[i : i + 4]


@pytest.mark.parametrize("mode", ["serial", "threads", "xgrammar"])
def test_a_batch_of_grammars_advanced_and_masked_together_equals_one_at_a_time(demo, mode, monkeypatch):
    """The GrammarPool (in series, on Python threads, on xgrammar's pool) accepts a step's tokens ahead of
    the requests and fills the batch's masks: the same bits as one grammar at a time, ended grammars' rows
    left alone, rows without a grammar untouched, and no token accepted twice."""
    import torch

    from forgellm.engine.request import Request
    from forgellm.structured.grammar_pool import GrammarPool
    from forgellm.structured.params import StructuredOutputsParams
    from forgellm.structured.state import accept_ahead, accept_then_fill_async, bitmask_width, fill_bitmasks

    grammars = demo.engine.input_processor.grammars
    monkeypatch.setattr(grammars, "pool", GrammarPool(mode, threads=3, min_rows_per_thread=1))
    tokenizer = demo.get_tokenizer()
    texts = ['{"name": "a', "[true, ", "+1-55", "12 + ", "red"]

    def requests() -> list[Request]:
        made = []
        for name in CONSTRAINTS:
            state = grammars.new_state(StructuredOutputsParams(**CONSTRAINTS[name][0]))
            made.append(Request(name, [5, 6], SamplingParams(), 64, grammar=state))
        return made

    one_at_a_time, together = requests(), requests()
    for request, text in zip(one_at_a_time, texts):
        for token in tokenizer.encode(text, add_special_tokens=False):
            request.append_token(token)
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    for position in range(max(len(ids) for ids in encoded)):
        step = [(r, ids[position]) for r, ids in zip(together, encoded) if position < len(ids)]
        accept_ahead([(r.grammar, r.num_output_tokens, token) for r, token in step])
        for request, token in step:
            request.append_token(token)  # seen ahead: not accepted a second time
    ended = grammars.new_state(StructuredOutputsParams(choice=["yes"]))
    for token in tokenizer.encode("yes", add_special_tokens=False) + [tokenizer.eos_token_id]:
        ended.accept(token)
    assert ended.is_terminated and all(r.grammar.is_active for r in one_at_a_time + together)
    width = bitmask_width(grammars.vocab_size)
    expected = torch.full((8, width), -1, dtype=torch.int32)
    for row, request in zip([1, 2, 4, 5, 6], one_at_a_time):
        request.grammar.fill_bitmask(expected, row)
    assert (expected[[0, 3, 7]] == -1).all() and (expected[[1, 2, 4, 5, 6]] != -1).any(dim=1).all()
    batched = torch.full((8, width), -1, dtype=torch.int32)
    fill_bitmasks([(1, together[0].grammar), (2, together[1].grammar), (4, together[2].grammar),
                   (5, together[3].grammar), (6, together[4].grammar), (7, ended)], batched)  # fmt: skip
    assert torch.equal(batched, expected)
    # In one pass (as the engine does under asynchronous scheduling): each grammar accepts its last token and
    # fills its row right after, the requests append after the accepts' wait, the masks come with the other.
    fused = requests()
    for position in range(max(len(ids) for ids in encoded) - 1):
        step = [(r, ids[position]) for r, ids in zip(fused, encoded) if position < len(ids) - 1]
        accept_ahead([(r.grammar, r.num_output_tokens, token) for r, token in step])
        for request, token in step:
            request.append_token(token)
    last = [(r.grammar, r.num_output_tokens, ids[-1]) for r, ids in zip(fused, encoded)]
    rows = [(row, r.grammar) for row, r in zip([1, 2, 4, 5, 6], fused)] + [(7, ended)]
    in_one_pass = torch.full((8, width), -1, dtype=torch.int32)
    accepted, filled = accept_then_fill_async(last, rows, in_one_pass)
    accepted()
    for request, ids in zip(fused, encoded):
        request.append_token(ids[-1])
        assert request.grammar.num_tokens == request.num_output_tokens == len(ids)
    filled()
    assert torch.equal(in_one_pass, expected)
