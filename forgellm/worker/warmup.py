"""Start-up warm-up: a few throw-away requests before the first user arrives.

Triton compiles a kernel per specialisation (integer arguments equal to 1 or divisible by 16 get
their own variants, and so do prefill, extend-over-a-cached-prefix and mixed batches), and the
first process on a machine compiles them all from scratch: without a warm-up the first requests
pay for it, seconds at worst and milliseconds of TTFT in the common case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forgellm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from forgellm.engine.llm_engine import LLMEngine

# Prompt lengths that cover T == 1, T % 16 == 0 and not, short and long prefills.
_PROMPT_LENGTHS = (1, 7, 16, 100, 128, 1000, 2048)


def warm_up(engine: LLMEngine) -> None:
    """Run prefills of several lengths, one extend over a cached prefix, and a mixed batch; leave no trace."""
    kv = engine.core.kv_cache
    longest = min(engine.max_model_len - 3, engine.config.max_num_batched_tokens, kv.num_blocks * kv.block_size - 3)
    lengths = [n for n in _PROMPT_LENGTHS if n <= longest]
    if not lengths:
        return
    vocab = engine.arch.vocab_size
    prompts = [[(7 * i + 31 * j + 1) % vocab for j in range(n)] for i, n in enumerate(lengths)]
    if len(prompts[-1]) >= 32:  # shares its first half with the longest prompt: an extend step
        half = len(prompts[-1]) // 2
        prompts.append(prompts[-1][:half] + [(5 * j + 3) % vocab for j in range(half)])
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, detokenize=False)
    for index, prompt in enumerate(prompts):  # one at a time: batch-1 prefills and decodes
        _run(engine, [(f"warmup-{index}", prompt)], params)
    _run(engine, [(f"warmup-batch-{i}", p[: max(1, len(p) // 3)]) for i, p in enumerate(prompts)], params)
    kv.reset_prefix_cache()
    kv.reset_stats()
    if engine.core.spec_decoder is not None:  # acceptance counters describe served requests only
        engine.core.spec_decoder.reset_stats()


def _run(engine: LLMEngine, requests: list[tuple[str, list[int]]], params: SamplingParams) -> None:
    for request_id, prompt in requests:
        engine.add_request(request_id, prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
